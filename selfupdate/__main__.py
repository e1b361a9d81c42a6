"""``python -m selfupdate``: the publisher's command line (see :mod:`selfupdate.releases.cli`)."""

import sys

from selfupdate.releases.cli import main

sys.exit(main())
