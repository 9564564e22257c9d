"""Recorded real OpenMX runs: recording them (``record``) and the replay stand-in for ``openmx`` (``standin``).

The stand-in is a production feature (``aiida-deeph setup openmx-replay``, the demo without an OpenMX
install): it finds the recorded run with the same physics and copies its outputs back, computing nothing.
``python -m aiida_deeph.replay INPUT`` runs it.
"""
