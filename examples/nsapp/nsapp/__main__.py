"""``python -m nsapp``."""

import sys

from nsapp.cli import main

if __name__ == "__main__":
    sys.exit(main())
