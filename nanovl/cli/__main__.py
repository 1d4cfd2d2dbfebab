import sys

from nanovl.cli import main

sys.exit(main())
