"""The release configuration a single-file build carries (written by ``selfupdate build``).

``selfupdate/_release.json`` (app, version, channel, repository URL) and, when the build was
given one, ``selfupdate/_release_root.json`` (the trusted TUF root, byte for byte) exist only
inside a build, never in a checkout. Stdlib only, read on demand: apps' start-up paths may ask.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

_HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_NAME = "_release.json"
ROOT_NAME = "_release_root.json"


@dataclass(frozen=True)
class BuildConfig:
    """What the build embedded: the update set-up of this single file."""

    app: str
    version: str
    channel: str
    repo_url: str | None
    trusted_root: bytes | None


_cached: list[BuildConfig | None] = []


def load() -> BuildConfig | None:
    """This build's configuration, or None outside a build made by ``selfupdate build``."""
    if _cached:
        return _cached[0]
    config = _read()
    _cached.append(config)
    return config


def _read() -> BuildConfig | None:
    try:
        with open(os.path.join(_HERE, CONFIG_NAME), "rb") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    root: bytes | None = None
    if data.get("trusted_root"):
        try:
            with open(os.path.join(_HERE, ROOT_NAME), "rb") as f:
                root = f.read()
        except OSError:
            root = None
    return BuildConfig(
        app=str(data.get("app") or ""),
        version=str(data.get("version") or ""),
        channel=str(data.get("channel") or "stable"),
        repo_url=data.get("repo_url") or None,
        trusted_root=root,
    )
