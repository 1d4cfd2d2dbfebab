"""``python -m loadtest ...``: the same as ``nanovl loadtest ...``."""

import sys

from loadtest.cli import main

# Guarded: --client-processes spawns children that re-import the main module.
if __name__ == "__main__":
    sys.exit(main())
