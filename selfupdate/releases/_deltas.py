"""Deltas as TUF targets: which ones the publisher makes, how they are linked to the builds they
rebuild, which ones ``prune`` removes, and which one a client may use (pure, except
:func:`add_deltas`, which writes the files).

A delta is a target of its own (length and sha256 signed like any other), with, in its signed
``custom`` field::

    {"selfupdate_delta": {"app": "myapp", "channel": "stable", "from": "1.0.0", "to": "2.0.0",
                          "base": {"length": 7209049, "sha256": "e781..."},
                          "target": "myapp/stable/myapp-2.0.0.pyz",
                          "target_sha256": "11bd..."}}

``base`` is the build it applies to (the client compares it with the sha256 of the file it has
installed, never with the version), ``target`` and ``target_sha256`` the full target it rebuilds
(whose signed length and hashes the rebuilt file must match). The key is not the release key,
so no client takes a delta for a release (:func:`selfupdate.releases._trust.releases` ignores
it). The file format is :mod:`selfupdate.releases._delta`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tuf.api.metadata import TargetFile

from selfupdate import _durable
from selfupdate.releases._delta import make_delta
from selfupdate.releases._trust import (
    Release,
    Withdrawn,
    check_name,
    parse_version,
    releases,
    withdrawn,
)

__all__ = [
    "DEFAULT_DELTAS",
    "DELTA_KEY",
    "Delta",
    "add_deltas",
    "delta_for",
    "deltas",
    "stale_deltas",
]

DELTA_KEY = "selfupdate_delta"
DEFAULT_DELTAS = 3  # deltas made at each publish: from the newest releases before it
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Delta:
    """A delta target, as signed."""

    target_path: str  # the delta's own target path
    length: int
    sha256: str
    app: str
    channel: str
    from_version: str
    to_version: str
    base_length: int
    base_sha256: str
    target: str  # the full target it rebuilds
    target_sha256: str


def delta_fields(base: Release, new: Release) -> dict[str, Any]:
    """The ``custom`` dict of the delta from ``base`` to ``new``."""
    return {DELTA_KEY: {
        "app": new.app, "channel": new.channel, "from": base.version, "to": new.version,
        "base": {"length": base.length, "sha256": base.sha256},
        "target": new.target_path, "target_sha256": new.sha256,
    }}


def _delta_from(path: str, tf: Any) -> Delta | None:
    custom = tf.custom
    f = custom.get(DELTA_KEY) if isinstance(custom, Mapping) else None
    if not isinstance(f, Mapping):
        return None
    try:
        base = f["base"]
        d = Delta(path, tf.length, tf.hashes["sha256"], check_name("app", f["app"]),
                  check_name("channel", f["channel"]), f["from"], f["to"], base["length"],
                  base["sha256"], f["target"], f["target_sha256"])
        parse_version(d.from_version)
        parse_version(d.to_version)
    except (KeyError, TypeError, ValueError):
        return None  # malformed: never used (a full download instead)
    ints = all(isinstance(n, int) and n >= 0 for n in (d.length, d.base_length))
    hexes = all(isinstance(h, str) and _SHA256.fullmatch(h)
                for h in (d.sha256, d.base_sha256, d.target_sha256))
    return d if ints and hexes and isinstance(d.target, str) else None


def deltas(targets: Mapping[str, Any]) -> list[Delta]:
    """Every well-formed delta in ``targets`` (path -> ``TargetFile``-like)."""
    out = [d for p, tf in targets.items() if (d := _delta_from(p, tf)) is not None]
    out.sort(key=lambda d: d.target_path)
    return out


def delta_for(
    targets: Mapping[str, Any], release: Release, base_length: int, base_sha256: str
) -> Delta | None:
    """The smallest delta that rebuilds ``release`` (its target path and sha256) from the file
    of ``base_length`` bytes hashing to ``base_sha256``, if it is smaller than the release;
    else None."""
    fits = [d for d in deltas(targets)
            if d.target == release.target_path and d.target_sha256 == release.sha256
            and d.app == release.app and d.channel == release.channel
            and d.base_sha256 == base_sha256 and d.base_length == base_length
            and d.length < release.length]
    return min(fits, key=lambda d: d.length, default=None)


def stale_deltas(targets: Mapping[str, Any], removed: set[str]) -> list[str]:
    """The deltas ``prune`` removes besides the targets in ``removed``: those whose full
    target is gone, withdrawn or another file, and those whose base release (``from``, with
    those bytes) is no longer listed, offered or withdrawn."""
    live = {r.target_path: r.sha256 for r in releases(targets) if r.target_path not in removed}
    items: list[Release | Withdrawn] = [*releases(targets), *withdrawn(targets)]
    listed = [(x.app, x.channel, parse_version(x.version), x.target_path)
              for x in items if x.target_path not in removed]
    bases = {(a, c, v, targets[p].hashes.get("sha256")) for a, c, v, p in listed}
    return [d.target_path for d in deltas(targets)
            if d.target_path not in removed
            and (live.get(d.target) != d.target_sha256
                 or (d.app, d.channel, parse_version(d.from_version), d.base_sha256) not in bases)]


def add_deltas(
    repo: Any, targets: dict[str, TargetFile], new: Release, file: Path, count: int
) -> tuple[list[Path], list[str], list[tuple[str, int]]]:
    """Make deltas to ``new`` (whose build is ``file``) from the ``count`` newest releases
    before it on its channel whose files are in ``repo``, and add them to ``targets``.

    Returns:
        The delta files written (to remove if the publish fails before its timestamp), a
        warning per base that could not be used (no file in the repository), and the deltas
        added as (target path, length).

    Raises:
        OSError: a delta cannot be written (a full disk, ...).
    """
    if count <= 0:
        return [], [], []
    v = parse_version(new.version)
    older = [r for r in releases(targets)
             if r.app == new.app and r.channel == new.channel and parse_version(r.version) < v]
    written: list[Path] = []
    warnings: list[str] = []
    added: list[tuple[str, int]] = []
    dest_dir = repo.targets_dir / new.app / new.channel
    try:
        for base in older[::-1][:count]:
            base_file = repo.target_file(base.target_path, base.sha256)
            if not base_file.is_file():
                warnings.append(f"no delta from {base.version}: its file {base_file} is not "
                                "in the repository")
                continue
            name = f"{new.app}-{base.version}-to-{new.version}.delta"
            made = _write_delta(base_file, file, dest_dir, name, base)
            if isinstance(made, str):
                warnings.append(f"no delta from {base.version}: {made}")
                continue
            if made is None:
                continue  # not smaller than the build: useless
            path, length, sha256 = made
            written.append(path)
            delta_path = f"{new.app}/{new.channel}/{name}"
            targets[delta_path] = TargetFile(length, {"sha256": sha256}, delta_path,
                                             {"custom": delta_fields(base, new)})
            added.append((delta_path, length))
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    return written, warnings, added


class _Hashing:
    """A write-only file that hashes what goes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.n += len(data)
        return self.f.write(data)


def _write_delta(base: Path, target: Path, dest_dir: Path, name: str, signed: Release
                 ) -> tuple[Path, int, str] | str | None:
    """Write the delta ``base`` -> ``target`` as ``dest_dir/SHA256.name`` (atomically).
    Returns its path, length and sha256; None when it is not smaller than ``target``; a
    reason when the base file is not the bytes ``signed`` says."""
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".delta.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            hashing = _Hashing(out)
            stats = make_delta(base, target, hashing)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        header = stats.header
        if (header.base_length, header.base_sha256) != (signed.length, signed.sha256):
            Path(tmp).unlink()
            return f"its file {base} does not match its signed length and hash"
        if hashing.n >= target.stat().st_size:
            Path(tmp).unlink()
            return None
        dest = dest_dir / f"{hashing.h.hexdigest()}.{name}"
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _durable.fsync_dir(dest_dir)
    return dest, hashing.n, hashing.h.hexdigest()
