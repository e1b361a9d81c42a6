"""The release configuration a single-file build carries (written by ``selfupdate build``).

Inside a build, ``selfupdate/_build_config.py`` holds the app's name, version, channel and
repository URL as literals, and ``selfupdate/_release_root.json`` the trusted TUF root byte for
byte (when the build was given one); neither exists in a checkout. An app's ``--version``
reads this on its fastest path: one tiny module, no ``json``, no ``dataclasses``.
"""

from __future__ import annotations

# No module-level os: an app's --version and its registered children read build_info(), and
# importing os (with stat, posixpath, _collections_abc) is ~3 ms a fast child does not pay.
CONFIG_MODULE = "_build_config"
ROOT_NAME = "_release_root.json"


class BuildInfo:
    """What the build embedded: the update set-up of this single file."""

    __slots__ = ("app", "version", "channel", "repo_url", "_has_root")

    def __init__(self, app: str, version: str, channel: str, repo_url: str | None,
                 has_root: bool) -> None:
        self.app, self.version, self.channel = app, version, channel
        self.repo_url, self._has_root = repo_url, has_root

    def __repr__(self) -> str:
        return (f"BuildInfo(app={self.app!r}, version={self.version!r}, "
                f"channel={self.channel!r}, repo_url={self.repo_url!r})")

    @property
    def trusted_root(self) -> bytes | None:
        """The embedded trusted root metadata (TUF ``root.json``), or None."""
        if not self._has_root:
            return None
        import os

        try:
            with open(os.path.join(os.path.dirname(__file__), ROOT_NAME), "rb") as f:
                return f.read()
        except OSError:
            return None


_cached: list[BuildInfo | None] = []


def build_info() -> BuildInfo | None:
    """This single file's build configuration; None outside a ``selfupdate build`` archive."""
    if not _cached:
        try:
            from selfupdate import _build_config as c
        except ImportError:
            _cached.append(None)
        else:
            _cached.append(BuildInfo(c.APP, c.VERSION, c.CHANNEL, c.REPO_URL, c.TRUSTED_ROOT))
    return _cached[0]
