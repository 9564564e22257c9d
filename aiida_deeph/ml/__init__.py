"""DeepH-2 machine-learning core (pure: torch, e3nn, numpy, h5py; never aiida/pymatgen/mp-api).

Modules: ``harmonics`` (OpenMX <-> e3nn real harmonics), ``wigner_eckart`` (blocks <-> irreps),
``so2`` (SO(2) convolution and equivariant layers), ``config`` (ModelConfig and presets; torch-free),
``graph`` (graphs of Hamiltonians, batching), ``model`` (DeepH2), ``init`` (on-site reference, growth for
new elements), ``loss`` (gauge-invariant loss and metrics), ``data`` (streaming datasets), ``train``,
``predict``, ``evaluate``.
Import the submodules directly; this package imports nothing heavy.
"""
