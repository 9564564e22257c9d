"""``python -m aiida_deeph.replay INPUT``: the replay stand-in for ``openmx``."""
import sys

from aiida_deeph.replay.standin import main

sys.exit(main())
