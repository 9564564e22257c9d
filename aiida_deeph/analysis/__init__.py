"""Analyses of trained models (pure: numpy, scipy, h5py, matplotlib; torch only to predict; no aiida)."""
