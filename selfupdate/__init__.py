"""Signed releases (TUF) and in-place self-update for single-file Python programs.

The surface an app uses, each name loaded on first use so that ``import selfupdate`` stays
cheap (it never imports ``tuf``, ``requests`` or ``cryptography``; a program's ``--version``
and its registered children pay nothing for it):

- :func:`configure`, :func:`migration`, :func:`health_check`, :func:`at_start`,
  :func:`update`, :func:`rollback`, :func:`start_auto_update` (:mod:`selfupdate.app`): what an
  app calls to update itself in place;
- :class:`UpdateClient`, :class:`Release` (:mod:`selfupdate.releases.client`): find, download
  and verify the newest release of an app on its channel; :class:`FetchConfig`
  (:mod:`selfupdate.releases._fetch`): timeouts, deadline, minimum speed;
- :mod:`selfupdate.service` (import it by name): a server that updates itself without
  refusing a connection: ``listeners``, ``notify``, ``Service``, ``HTTPServer``,
  ``RequestHandler``, ``serve_http``;
- :func:`build_info` (:mod:`selfupdate._release`): what ``selfupdate build`` embedded in this
  single file (app, version, channel, repository URL, trusted root), or None outside one;
- :mod:`errors` and its base :class:`SelfUpdateError` (``str(e)`` is one sentence saying what
  went wrong and what to do), with the install-side leaves :class:`InstallError`,
  :class:`UpdateInProgressError`, :class:`KnownBadError`, :class:`TrialFailedError`,
  :class:`NoPreviousBuildError`.

Two halves with separate dependencies: :mod:`selfupdate.releases` (signed releases: the only
place ``tuf``, ``requests``, ``cryptography`` and ``securesystemslib`` are imported; also the
publisher, the ``selfupdate`` command) and :mod:`selfupdate.install` (installing a verified
file: stdlib and ``reexec_core`` only). :mod:`selfupdate.app` ties them together for an app.
"""

from __future__ import annotations

# mypy treats TYPE_CHECKING as True; importing typing at run time costs ~3-5 ms at every start
# of an app that uses selfupdate.app.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from selfupdate import errors
    from selfupdate._release import BuildInfo, build_info
    from selfupdate.app import (
        at_start,
        configure,
        health_check,
        migration,
        rollback,
        start_auto_update,
        update,
    )
    from selfupdate.errors import (
        InstallError,
        KnownBadError,
        NoPreviousBuildError,
        SelfUpdateError,
        TrialFailedError,
        UpdateInProgressError,
        UpdateInterrupted,
    )
    from selfupdate.releases._fetch import FetchConfig
    from selfupdate.releases.client import Release, UpdateClient

__all__ = [
    "BuildInfo",
    "FetchConfig",
    "InstallError",
    "KnownBadError",
    "NoPreviousBuildError",
    "Release",
    "SelfUpdateError",
    "TrialFailedError",
    "UpdateClient",
    "UpdateInProgressError",
    "UpdateInterrupted",
    "at_start",
    "build_info",
    "configure",
    "errors",
    "health_check",
    "migration",
    "rollback",
    "start_auto_update",
    "update",
]

# name -> module that defines it ("" for a submodule of this package of that name)
_LAZY = {
    "BuildInfo": "selfupdate._release",
    "build_info": "selfupdate._release",
    "FetchConfig": "selfupdate.releases._fetch",
    "Release": "selfupdate.releases.client",
    "UpdateClient": "selfupdate.releases.client",
    "errors": "",
    "SelfUpdateError": "selfupdate.errors",
    "InstallError": "selfupdate.errors",
    "KnownBadError": "selfupdate.errors",
    "NoPreviousBuildError": "selfupdate.errors",
    "TrialFailedError": "selfupdate.errors",
    "UpdateInProgressError": "selfupdate.errors",
    "UpdateInterrupted": "selfupdate.errors",
    "at_start": "selfupdate.app",
    "configure": "selfupdate.app",
    "health_check": "selfupdate.app",
    "migration": "selfupdate.app",
    "rollback": "selfupdate.app",
    "start_auto_update": "selfupdate.app",
    "update": "selfupdate.app",
}


def __getattr__(name: str) -> Any:
    # PEP 562: resolve the public names on first access only.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'selfupdate' has no attribute {name!r}")
    import sys

    # __import__, not importlib.import_module: importing importlib costs ~1 ms, and an app's
    # --version reads build_info() through here.
    target = module or f"selfupdate.{name}"
    __import__(target)
    value = getattr(sys.modules[target], name) if module else sys.modules[target]
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
