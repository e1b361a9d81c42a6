"""Signed releases (TUF) and in-place self-update for single-file Python programs.

Public surface (each name is loaded on first use, so ``import selfupdate`` stays cheap: it
never imports ``tuf``, ``requests`` or ``cryptography``; a program's ``--version`` and its
registered children pay nothing for it):

- :class:`UpdateClient`, :class:`Release` (:mod:`selfupdate.client`): find, download and
  verify the newest release of an app on its channel.
- :class:`FetchConfig` (:mod:`selfupdate._fetch`): timeouts, deadline, minimum speed.
- :class:`SelfUpdateError` (:mod:`selfupdate.errors`): base of every error; ``str(e)`` is one
  sentence saying what went wrong and what to do; the install-side leaves
  :class:`InstallError`, :class:`UpdateInProgressError`, :class:`KnownBadError`,
  :class:`TrialFailedError`, :class:`NoPreviousBuildError`.
- :func:`configure`, :func:`migration`, :func:`health_check`, :func:`at_start`,
  :func:`start_auto_update` (:mod:`selfupdate.app`): what an app calls to update itself in
  place (:mod:`selfupdate.install` does the work).

The publisher is the ``selfupdate`` command (:mod:`selfupdate.cli`, :mod:`selfupdate.publish`).
"""

from __future__ import annotations

# mypy treats TYPE_CHECKING as True; importing typing at run time costs ~3-5 ms at every start
# of an app that uses selfupdate.app.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from selfupdate._fetch import FetchConfig
    from selfupdate.app import at_start, configure, health_check, migration, start_auto_update
    from selfupdate.client import Release, UpdateClient
    from selfupdate.errors import (
        InstallError,
        KnownBadError,
        NoPreviousBuildError,
        SelfUpdateError,
        TrialFailedError,
        UpdateInProgressError,
    )

__all__ = [
    "FetchConfig",
    "InstallError",
    "KnownBadError",
    "NoPreviousBuildError",
    "Release",
    "SelfUpdateError",
    "TrialFailedError",
    "UpdateClient",
    "UpdateInProgressError",
    "at_start",
    "configure",
    "health_check",
    "migration",
    "start_auto_update",
]

_LAZY = {
    "FetchConfig": "selfupdate._fetch",
    "Release": "selfupdate.client",
    "UpdateClient": "selfupdate.client",
    "SelfUpdateError": "selfupdate.errors",
    "InstallError": "selfupdate.errors",
    "KnownBadError": "selfupdate.errors",
    "NoPreviousBuildError": "selfupdate.errors",
    "TrialFailedError": "selfupdate.errors",
    "UpdateInProgressError": "selfupdate.errors",
    "at_start": "selfupdate.app",
    "configure": "selfupdate.app",
    "health_check": "selfupdate.app",
    "migration": "selfupdate.app",
    "start_auto_update": "selfupdate.app",
}


def __getattr__(name: str) -> Any:
    # PEP 562: resolve the public names on first access only.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'selfupdate' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
