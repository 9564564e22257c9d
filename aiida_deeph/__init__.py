"""aiida-deeph: OpenMX Hamiltonian databases and DeepH-2 models with AiiDA provenance.

Pure core (no aiida import): ``aiida_deeph.io``, ``aiida_deeph.physics``, ``aiida_deeph.overlap``,
``aiida_deeph.ml``, ``aiida_deeph.structures``, ``aiida_deeph.cli``.
AiiDA shell: ``aiida_deeph.calculations``, ``aiida_deeph.parsers``, ``aiida_deeph.data``,
``aiida_deeph.workflows``.
"""

__version__ = "0.1.0"
