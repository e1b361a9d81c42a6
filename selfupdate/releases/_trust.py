"""Which release to install: pure decisions over verified TUF targets metadata (no I/O).

The signed ``targets`` metadata lists every release file. Each of ours carries, in the
target's ``custom`` field (signed with the rest)::

    {"selfupdate": {"app": "myapp", "version": "2.0.0", "channel": "stable",
                    "notes": "optional release notes"}}

so a file cannot be passed off as another app's, another channel's or another version's
release without breaking the signature. Targets without that field (other files in the same
repository) are ignored; targets whose field is malformed are ignored too, so one bad entry
cannot stop every update, and reported by :func:`releases` through ``skipped``.

A release the publisher withdrew (``selfupdate yank``) keeps its target (and file, until
``selfupdate prune``), but its fields move to another key::

    {"selfupdate_withdrawn": {"app": "myapp", "version": "2.0.0", "channel": "stable",
                              "withdrawn": "2026-05-01T12:00:00Z", "reason": "..." or null}}

so that every client, also one built before withdrawals existed, stops being offered it (the
release key is gone), while a client running it can find out why (:func:`withdrawn`).

Everything here takes already-verified python-tuf objects or plain values, and returns values
or raises; :mod:`selfupdate.releases.client` does the fetching.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.version import InvalidVersion, Version

__all__ = [
    "CUSTOM_KEY",
    "MAX_NOTES_BYTES",
    "WITHDRAWN_KEY",
    "Release",
    "Withdrawn",
    "check_name",
    "check_notes",
    "check_release",
    "custom_fields",
    "lowers_listed_versions",
    "newest_release",
    "parse_version",
    "prune_plan",
    "release_from_target",
    "releases",
    "withdrawn",
    "withdrawn_fields",
]

CUSTOM_KEY = "selfupdate"  # key inside TargetFile.custom holding our fields
WITHDRAWN_KEY = "selfupdate_withdrawn"  # the same fields, once the release is withdrawn
MAX_NOTES_BYTES = 8192  # UTF-8 bytes of release notes: they travel in every targets refresh
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
        notes: release notes as published (``selfupdate publish --notes``), or None; not
            part of equality (a release is the file, its name and its version).
    """

    app: str
    channel: str
    version: str
    target_path: str
    length: int
    sha256: str
    notes: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Withdrawn:
    """A release the publisher withdrew (``selfupdate yank``): no client is offered it.

    Attributes:
        app, channel, version, target_path: as of the release.
        withdrawn: when, ISO 8601 UTC (``2026-05-01T12:00:00Z``).
        reason: the publisher's reason, or None.
    """

    app: str
    channel: str
    version: str
    target_path: str
    withdrawn: str
    reason: str | None


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


def check_notes(notes: str) -> str:
    """Return ``notes`` if they can be published as release notes.

    Raises:
        ValueError: empty, longer than :data:`MAX_NOTES_BYTES` in UTF-8, or holding control
            characters other than newline and tab (a client prints them to a terminal).
    """
    if not isinstance(notes, str) or not notes.strip():
        raise ValueError("the release notes are empty: pass some text or a file with some")
    size = len(notes.encode("utf-8", "surrogatepass"))
    if size > MAX_NOTES_BYTES:
        raise ValueError(
            f"the release notes are {size} bytes, more than the {MAX_NOTES_BYTES} allowed: "
            "shorten them or link to the full notes"
        )
    bad = sorted({f"U+{ord(c):04X}" for c in notes if _is_control(c)})
    if bad:
        raise ValueError(
            f"the release notes hold control characters ({', '.join(bad[:3])}), which a "
            "terminal would interpret: remove them"
        )
    return notes


def _is_control(c: str) -> bool:
    o = ord(c)
    return c not in "\n\t" and (o < 0x20 or 0x7F <= o < 0xA0 or 0xD800 <= o < 0xE000)


def _one_line(text: str, limit: int) -> bool:
    return bool(text.strip()) and len(text) <= limit and not any(
        _is_control(c) or c in "\n\t" for c in text
    )


def custom_fields(
    app: str, channel: str, version: str, notes: str | None = None
) -> dict[str, Any]:
    """The ``custom`` dict the publisher signs into a target (inverse of
    :func:`release_from_target`)."""
    parse_version(version)  # validate; the string is kept as the publisher typed it
    fields: dict[str, Any] = {
        "app": check_name("app", app),
        "channel": check_name("channel", channel),
        "version": version,
    }
    if notes is not None:
        fields["notes"] = check_notes(notes)
    return {CUSTOM_KEY: fields}


def withdrawn_fields(
    custom: Mapping[str, Any], withdrawn_at: str, reason: str | None
) -> dict[str, Any]:
    """The ``custom`` dict of a withdrawn release, from the one it was published with: the
    release key is replaced (every client stops offering it), other keys are kept.

    Raises:
        ValueError: ``custom`` is not a release's, or ``reason`` is not a short plain line.
    """
    fields = custom.get(CUSTOM_KEY)
    if not isinstance(fields, Mapping):
        raise ValueError(f"custom.{CUSTOM_KEY} is missing: not a release")
    if reason is not None and not _one_line(reason, 200):
        raise ValueError("the reason must be one line of at most 200 characters")
    out = {k: v for k, v in custom.items() if k != CUSTOM_KEY}
    out[WITHDRAWN_KEY] = {
        "app": fields["app"],
        "channel": fields["channel"],
        "version": fields["version"],
        "withdrawn": withdrawn_at,
        "reason": reason,
    }
    return out


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
    notes = fields.get("notes")
    try:
        notes = check_notes(notes) if notes is not None else None
    except ValueError:
        notes = None  # notes that do not fit are dropped: they must never stop an update
    return Release(app, channel, version, path, length, sha256, notes)


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


def withdrawn(targets: Mapping[str, Any]) -> list[Withdrawn]:
    """Every withdrawn release in ``targets`` (as for :func:`releases`), oldest first by
    version; malformed entries are left out."""
    out: list[Withdrawn] = []
    for path, tf in targets.items():
        custom = tf.custom
        fields = custom.get(WITHDRAWN_KEY) if isinstance(custom, Mapping) else None
        if not isinstance(fields, Mapping):
            continue
        try:
            app = check_name("app", fields["app"])
            channel = check_name("channel", fields["channel"])
            version = fields["version"]
            parse_version(version)
            at, reason = fields["withdrawn"], fields.get("reason")
        except (KeyError, ValueError):
            continue
        if isinstance(at, str) and (reason is None or isinstance(reason, str)):
            out.append(Withdrawn(app, channel, version, path, at, reason))
    out.sort(key=lambda w: (parse_version(w.version), w.app, w.channel, w.target_path))
    return out


def prune_plan(
    offered: Iterable[Release], withdrawn_: Iterable[Withdrawn], keep: int
) -> list[str]:
    """The target paths ``selfupdate prune --keep KEEP`` removes: per app and channel, every
    release and withdrawn release older than the ``keep``-th newest offered release. The
    newest is always kept; a channel with no offered release keeps everything.

    Raises:
        ValueError: ``keep`` < 1.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest release is always kept), not {keep}")
    offered, withdrawn_ = list(offered), list(withdrawn_)
    groups: dict[tuple[str, str], list[Version]] = {}
    for rel in offered:
        groups.setdefault((rel.app, rel.channel), []).append(parse_version(rel.version))
    floors = {k: sorted(vs, reverse=True)[: keep][-1] for k, vs in groups.items()}
    out: list[tuple[Version, str]] = []
    items: list[Release | Withdrawn] = [*offered, *withdrawn_]
    for item in items:
        floor = floors.get((item.app, item.channel))
        v = parse_version(item.version)
        if floor is not None and v < floor:
            out.append((v, item.target_path))
    return [path for _, path in sorted(out)]


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
