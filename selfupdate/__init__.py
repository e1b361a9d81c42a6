"""Signed releases (TUF) and in-place self-update for single-file Python programs.

Public surface (each name is loaded on first use, so ``import selfupdate`` stays cheap: it
never imports ``tuf``, ``requests`` or ``cryptography``; a program's ``--version`` and its
registered children pay nothing for it):

- :class:`UpdateClient`, :class:`Release` (:mod:`selfupdate.client`): find, download and
  verify the newest release of an app on its channel.
- :class:`FetchConfig` (:mod:`selfupdate._fetch`): timeouts, deadline, minimum speed.
- :class:`SelfUpdateError` (:mod:`selfupdate.errors`): base of every error; ``str(e)`` is one
  sentence saying what went wrong and what to do.

The publisher is the ``selfupdate`` command (:mod:`selfupdate.cli`, :mod:`selfupdate.publish`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selfupdate._fetch import FetchConfig
    from selfupdate.client import Release, UpdateClient
    from selfupdate.errors import SelfUpdateError

__all__ = ["FetchConfig", "Release", "SelfUpdateError", "UpdateClient"]

_LAZY = {
    "FetchConfig": "selfupdate._fetch",
    "Release": "selfupdate.client",
    "UpdateClient": "selfupdate.client",
    "SelfUpdateError": "selfupdate.errors",
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
