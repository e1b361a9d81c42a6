"""``python -m selfupdate``: the publisher's command line (see :mod:`selfupdate.cli`)."""

import sys

from selfupdate.cli import main

sys.exit(main())
