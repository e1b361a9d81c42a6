"""Which release to install: pure decisions over verified TUF targets metadata (no I/O).

The signed ``targets`` metadata lists every release file. Each of ours carries, in the
target's ``custom`` field (signed with the rest)::

    {"selfupdate": {"app": "myapp", "version": "2.0.0", "channel": "stable"}}

so a file cannot be passed off as another app's, another channel's or another version's
release without breaking the signature. Targets without that field (other files in the same
repository) are ignored; targets whose field is malformed are ignored too, so one bad entry
cannot stop every update, and reported by :func:`releases` through ``skipped``.

Everything here takes already-verified python-tuf objects or plain values, and returns values
or raises; :mod:`selfupdate.releases.client` does the fetching.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

__all__ = [
    "CUSTOM_KEY",
    "Release",
    "check_name",
    "check_release",
    "custom_fields",
    "lowers_listed_versions",
    "newest_release",
    "parse_version",
    "release_from_target",
    "releases",
]

CUSTOM_KEY = "selfupdate"  # key inside TargetFile.custom holding our fields
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Release:
    """One release of an app on a channel, as listed in signed targets metadata.

    Attributes:
        app: application name.
        channel: release channel (``stable``, ``beta``, ...).
        version: PEP 440 version string as published.
        target_path: TUF target path (relative to the repository's ``targets/``).
        length: size in bytes.
        sha256: hex SHA-256 of the file.
    """

    app: str
    channel: str
    version: str
    target_path: str
    length: int
    sha256: str


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid app or channel name.

    Raises:
        ValueError: not 1-64 characters of letters, digits, ``.``, ``_``, ``-``.
    """
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"invalid {kind} name {value!r}: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return value


def parse_version(value: str) -> Version:
    """PEP 440 version, or ``ValueError`` with a readable message."""
    try:
        return Version(value)
    except (InvalidVersion, TypeError):
        raise ValueError(f"{value!r} is not a PEP 440 version: use one like 1.2.0") from None


def custom_fields(app: str, channel: str, version: str) -> dict[str, Any]:
    """The ``custom`` dict the publisher signs into a target (inverse of
    :func:`release_from_target`)."""
    parse_version(version)  # validate; the string is kept as the publisher typed it
    return {
        CUSTOM_KEY: {
            "app": check_name("app", app),
            "channel": check_name("channel", channel),
            "version": version,
        }
    }


def release_from_target(
    path: str, length: int, hashes: Mapping[str, str], custom: Any
) -> Release | None:
    """The :class:`Release` a target describes, ``None`` if it is not one of ours.

    Raises:
        ValueError: the target claims to be a release (has our custom key) but a field is
            missing or invalid.
    """
    if not isinstance(custom, Mapping) or CUSTOM_KEY not in custom:
        return None
    fields = custom[CUSTOM_KEY]
    if not isinstance(fields, Mapping):
        raise ValueError(f"target {path}: custom.{CUSTOM_KEY} is not an object")
    try:
        app = check_name("app", fields["app"])
        channel = check_name("channel", fields["channel"])
        version = fields["version"]
        parse_version(version)
    except KeyError as e:
        raise ValueError(f"target {path}: custom.{CUSTOM_KEY} lacks {e.args[0]!r}") from None
    except ValueError as e:
        raise ValueError(f"target {path}: {e}") from None
    sha256 = hashes.get("sha256")
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"target {path}: no valid sha256 hash")
    if not isinstance(length, int) or length < 0:
        raise ValueError(f"target {path}: invalid length")
    return Release(app, channel, version, path, length, sha256)


def releases(targets: Mapping[str, Any], skipped: list[str] | None = None) -> list[Release]:
    """Every valid release in ``targets`` (path -> ``tuf.api.metadata.TargetFile``-like with
    ``length``, ``hashes``, ``custom``), oldest first by version.

    Args:
        skipped: if given, receives one line per target that claims to be a release but is
            malformed.
    """
    out: list[Release] = []
    for path, tf in targets.items():
        try:
            rel = release_from_target(path, tf.length, tf.hashes, tf.custom)
        except ValueError as e:
            if skipped is not None:
                skipped.append(str(e))
            continue
        if rel is not None:
            out.append(rel)
    out.sort(key=lambda r: (parse_version(r.version), r.app, r.channel, r.target_path))
    return out


def newest_release(
    candidates: Iterable[Release], app: str, channel: str, current_version: str | None
) -> Release | None:
    """The newest release of ``app`` on ``channel`` strictly newer than ``current_version``.

    ``None`` when there is none (up to date; or only older releases: never a downgrade).
    ``current_version=None`` means "anything": the newest on the channel.

    Raises:
        ValueError: ``current_version`` is not a PEP 440 version.
    """
    floor = parse_version(current_version) if current_version is not None else None
    best: Release | None = None
    best_v: Version | None = None
    for rel in candidates:
        if rel.app != app or rel.channel != channel:
            continue
        v = parse_version(rel.version)
        if floor is not None and v <= floor:
            continue
        if best_v is None or v > best_v:
            best, best_v = rel, v
    return best


def check_release(
    release: Release,
    signed: Release | None,
    app: str,
    channel: str,
    current_version: str | None,
) -> str | None:
    """Why ``release`` (given by a caller) must not be downloaded, or ``None`` if it may.

    Args:
        release: what the caller asks for.
        app, channel: what this client updates.
        signed: what the signed metadata says about ``release.target_path`` (``None``: not
            listed or not a release).
        current_version: the running version, when known: the release must be newer.
    """
    if signed is None:
        return "it is not a release listed in the signed metadata"
    if signed.app != app or signed.channel != channel:
        return (
            f"it is a release of {signed.app} on channel {signed.channel!r}, "
            f"not of {app} on {channel!r}"
        )
    if signed != release:
        return (
            f"the signed metadata describes it as {signed.app} {signed.version} "
            f"({signed.channel}, {signed.length} bytes), not as asked"
        )
    if current_version is not None and parse_version(release.version) <= parse_version(
        current_version
    ):
        return f"it is not newer than the running version {current_version} (downgrade)"
    return None


def lowers_listed_versions(trusted: Mapping[str, int], new: Mapping[str, int] | None) -> bool:
    """True when a new snapshot (``new``: file name -> version it lists) drops a file the
    trusted snapshot lists or lists it at a lower version: a rollback (TUF spec 5.5.5).

    ``new=None`` (the new snapshot could not be read) is not taken for a rollback.
    """
    if new is None:
        return False
    return any(name not in new or new[name] < version for name, version in trusted.items())
