"""The publisher's repository files, and the re-signing chain every command shares.

``REPO_DIR`` holds only what clients fetch (see :mod:`selfupdate.releases.publish`). Every
write is atomic (temp file, fsync, ``os.replace``, fsync of the directory), and files are
written in the order clients read them backwards (targets before snapshot before timestamp):
:class:`Chain` re-signs from the role that changed up to the timestamp, so a client refreshing
meanwhile sees the old state or the new one, and metadata never names a file not yet there.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from selfupdate import _durable, errors
from selfupdate.releases import _keys

DEFAULT_EXPIRY_DAYS: dict[str, int] = {
    "root": 365,  # rotated rarely, by hand, with the root key (keep it offline)
    "targets": 180,  # re-signed at every publish, yank and prune
    "snapshot": 30,  # re-signed at every publish and refresh
    "timestamp": 14,  # re-signed at every publish and refresh: run refresh from cron
}
_SER = JSONSerializer(compact=False)
_ROOT_VERSION = re.compile(r"^[1-9][0-9]{0,9}\.root\.json$")


def now_utc(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).replace(microsecond=0)


class Repo:
    """Reads and writes the metadata of one repository directory."""

    def __init__(self, repo_dir: Path) -> None:
        self.dir = repo_dir
        self.meta_dir = repo_dir / "metadata"
        self.targets_dir = repo_dir / "targets"

    def _read(self, name: str, cls: type[Signed]) -> Metadata[Any]:
        path = self.meta_dir / name
        try:
            md: Metadata[Any] = Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError:
            raise errors.RepositoryStateError(
                f"{self.dir} is not a complete selfupdate repository (no metadata/{name}): "
                "run `selfupdate init` or pass the right --repo"
            ) from None
        except OSError:
            raise  # unreadable is not corrupt: the CLI says to check permissions, not restore
        except Exception as e:  # tuf's DeserializationError and friends
            raise errors.RepositoryStateError(
                f"{path} is not valid TUF metadata ({e}): restore it from a backup"
            ) from e
        if not isinstance(md.signed, cls):
            raise errors.RepositoryStateError(
                f"{path} holds {md.signed.type} metadata, not {cls.type}: restore it"
            )
        return md

    def exists(self) -> bool:
        return (self.meta_dir / "root.json").exists()

    def root(self) -> Metadata[Root]:
        return self._read("root.json", Root)

    def roots(self) -> list[bytes]:
        """Every root version the repository serves (``N.root.json``, the chain clients
        walk), and ``root.json``: a build embedding any of them can verify updates."""
        found = [self.meta_dir / "root.json"]
        found += sorted(p for p in self.meta_dir.iterdir() if _ROOT_VERSION.match(p.name))
        return [p.read_bytes() for p in found]

    def timestamp(self) -> Metadata[Timestamp]:
        return self._read("timestamp.json", Timestamp)

    def snapshot(self, ts: Timestamp) -> Metadata[Snapshot]:
        return self._read(f"{ts.snapshot_meta.version}.snapshot.json", Snapshot)

    def targets(self, snap: Snapshot) -> Metadata[Targets]:
        return self._read(f"{snap.meta['targets.json'].version}.targets.json", Targets)

    def target_file(self, target_path: str, sha256: str) -> Path:
        """Where the file of a target lies (consistent-snapshot name: hash-prefixed)."""
        d, _, name = target_path.rpartition("/")
        return self.targets_dir / d / f"{sha256}.{name}"

    def write(self, md: Metadata[Any]) -> bytes:
        """Write signed metadata under its consistent-snapshot name; return its bytes."""
        data = md.to_bytes(_SER)
        role = md.signed.type
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        if role == Timestamp.type:
            _durable.write_atomic(self.meta_dir / "timestamp.json", data)
        else:
            _durable.write_atomic(self.meta_dir / f"{md.signed.version}.{role}.json", data)
            if role == Root.type:
                _durable.write_atomic(self.meta_dir / "root.json", data)
        return data


def sign(md: Metadata[Any], *signers: CryptoSigner) -> Metadata[Any]:
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return md


def meta_file(md: Metadata[Any], data: bytes) -> MetaFile:
    return MetaFile(
        version=md.signed.version,
        length=len(data),
        hashes={"sha256": hashlib.sha256(data).hexdigest()},
    )


def expiry_days(keys_dir: Path, override: Mapping[str, int] | None) -> dict[str, int]:
    days = dict(DEFAULT_EXPIRY_DAYS)
    stored = _keys.read_config(keys_dir).get("expiry_days", {})
    if isinstance(stored, dict):
        days.update({k: int(v) for k, v in stored.items() if k in days})
    days.update(check_expiry(override))
    return days


def check_expiry(override: Mapping[str, int] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for role, value in (override or {}).items():
        if role not in DEFAULT_EXPIRY_DAYS:
            raise errors.PublishError(
                f"unknown role {role!r} in an expiry setting: use one of "
                + ", ".join(DEFAULT_EXPIRY_DAYS)
            )
        if not isinstance(value, int) or value <= 0:
            raise errors.PublishError(
                f"the expiry of {role} must be a positive number of days, not {value!r}"
            )
        out[role] = value
    return out


def signer_for(keys_dir: Path, role: str, root: Root) -> CryptoSigner:
    """Load the key of ``role`` and check that the repository's root trusts it."""
    signer = _keys.load(keys_dir, role)
    if signer.public_key.keyid not in root.roles[role].keyids:
        raise errors.KeysError(
            f"the {role} key in {keys_dir} is not one the repository's root trusts: pass the "
            "keys directory that belongs to this repository"
        )
    return signer


class Chain:
    """Re-sign targets -> snapshot -> timestamp (only from the role that changed)."""

    def __init__(self, keys_dir: Path, repo: Repo, days: dict[str, int], now: datetime) -> None:
        self.keys_dir, self.repo, self.days, self.now = keys_dir, repo, days, now
        self.root = repo.root().signed
        self.ts = repo.timestamp()
        self.snap = repo.snapshot(self.ts.signed)
        self.targets = repo.targets(self.snap.signed)

    def check_keys(self) -> None:
        """Load every key :meth:`from_targets` signs with, before anything is written: a
        broken or wrong key must not leave a half-done change behind."""
        for role in ("targets", "snapshot", "timestamp"):
            signer_for(self.keys_dir, role, self.root)

    def _bump(self, md: Metadata[Any]) -> None:
        md.signed.version += 1
        md.signed.expires = self.now + timedelta(days=self.days[md.signed.type])

    def from_targets(self) -> None:
        self._bump(self.targets)
        sign(self.targets, signer_for(self.keys_dir, "targets", self.root))
        data = self.repo.write(self.targets)
        self.snap.signed.meta["targets.json"] = meta_file(self.targets, data)
        self.from_snapshot()

    def from_snapshot(self) -> None:
        self._bump(self.snap)
        sign(self.snap, signer_for(self.keys_dir, "snapshot", self.root))
        data = self.repo.write(self.snap)
        self.ts.signed.snapshot_meta = meta_file(self.snap, data)
        self.from_timestamp()

    def from_timestamp(self) -> None:
        self._bump(self.ts)
        sign(self.ts, signer_for(self.keys_dir, "timestamp", self.root))
        self.repo.write(self.ts)


def open_repo(keys_dir: Path, repo_dir: Path) -> Repo:
    """The repository at ``repo_dir``, after checking the keys directory that signs it."""
    _keys.check_separate(keys_dir, repo_dir)
    _keys.check_dir(keys_dir)
    repo = Repo(repo_dir)
    if not repo.exists():
        raise errors.RepositoryStateError(
            f"{repo_dir} is not a selfupdate repository (no metadata/root.json): run "
            "`selfupdate init` first or pass the right --repo"
        )
    return repo


def copy_target(src: Path, dest_dir: Path, name: str) -> tuple[int, str]:
    """Copy ``src`` to ``dest_dir/SHA256.name`` (hashing in the same pass), atomically."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    length = 0
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".publish.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                out.write(chunk)
                length += len(chunk)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
        digest = h.hexdigest()
        os.replace(tmp, dest_dir / f"{digest}.{name}")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _durable.fsync_dir(dest_dir)
    return length, digest
