"""``python -m selfupdate.conformance``: the TUF conformance suite's client-under-test.

A forwarder kept at this name for the suite's client script (``make conformance``); the client
is :mod:`selfupdate.releases.conformance`. Nothing imports this module but ``-m``.
"""

import sys

from selfupdate.releases.conformance import main

if __name__ == "__main__":
    sys.exit(main())
