"""Signed releases: the only part of :mod:`selfupdate` that imports ``tuf``, ``requests``,
``cryptography`` and ``securesystemslib`` (each module imports them itself; this package's
``__init__`` imports nothing).

- :mod:`~selfupdate.releases.client`: :class:`UpdateClient` (python-tuf's ngclient workflow)
  and :func:`download_verified`;
- :mod:`~selfupdate.releases._fetch`: the ``requests`` transport (timeouts, deadline, minimum
  speed, length caps, no cross-host redirects, ``file://``);
- :mod:`~selfupdate.releases._trust`: which release to take, pure functions over verified
  metadata;
- :mod:`~selfupdate.releases.publish`, :mod:`~selfupdate.releases._keys`,
  :mod:`~selfupdate.releases.cli`: the publisher and its command line ``selfupdate``;
- :mod:`~selfupdate.releases.conformance`: the client-under-test of the TUF conformance suite
  (``python -m selfupdate.conformance``).
"""
