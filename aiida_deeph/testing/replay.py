"""Alias kept for replay scripts written by earlier versions (``python -m aiida_deeph.testing.replay``):
the stand-in lives in :mod:`aiida_deeph.replay.standin`."""
import sys

if __name__ == "__main__":
    from aiida_deeph.replay.standin import main

    sys.exit(main())
