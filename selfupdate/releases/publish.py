"""The publisher: a TUF repository of releases, as plain static files.

``REPO_DIR`` holds only what clients fetch, so any static host serves it as is
(``python -m http.server``, nginx, an object store, a CDN)::

    metadata/1.root.json, 2.root.json, ...   every root version (clients walk the chain)
    metadata/root.json                       the current root (to embed in builds)
    metadata/N.targets.json                  consistent snapshots (TUF spec 5.x: file names
    metadata/N.snapshot.json                 carry versions, so a client never mixes states)
    metadata/timestamp.json                  the entry point, written last
    targets/APP/CHANNEL/SHA256.APP-VERSION.EXT   release files, named by content hash

Every write is atomic (temp file, fsync, ``os.replace``, fsync of the directory), and files
are written in the order clients read them backwards (targets before snapshot before
timestamp), so a client refreshing during a publish sees the old state or the new one.

Signing keys live in ``KEYS_DIR`` (see :mod:`selfupdate.releases._keys`). Each function raises
:class:`selfupdate.errors.PublishError` subclasses for anything the user can fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from selfupdate import _durable, errors
from selfupdate.releases import _keys
from selfupdate.releases._trust import (
    Release,
    check_name,
    custom_fields,
    parse_version,
    releases,
)

__all__ = [
    "DEFAULT_EXPIRY_DAYS",
    "PublishResult",
    "RoleStatus",
    "Status",
    "init",
    "publish",
    "refresh",
    "rotate",
    "status",
]

DEFAULT_EXPIRY_DAYS: dict[str, int] = {
    "root": 365,  # rotated rarely, by hand, with the root key (keep it offline)
    "targets": 180,  # re-signed at every publish
    "snapshot": 30,  # re-signed at every publish and refresh
    "timestamp": 14,  # re-signed at every publish and refresh: run refresh from cron
}
WARN_DAYS = 7  # status warns about anything that expires sooner
_SER = JSONSerializer(compact=False)


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` did."""

    release: Release
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RoleStatus:
    role: str
    version: int
    expires: datetime
    keyids: list[str]
    threshold: int


@dataclass(frozen=True)
class Status:
    """What :func:`status` found."""

    app: str | None
    roles: list[RoleStatus]
    releases: dict[tuple[str, str], list[Release]]  # (app, channel) -> oldest first
    warnings: list[str]


def _now(now: datetime | None) -> datetime:
    return (now or datetime.now(UTC)).replace(microsecond=0)


# ---------------------------------------------------------------------------------------------
# Repository files


class _Repo:
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

    def timestamp(self) -> Metadata[Timestamp]:
        return self._read("timestamp.json", Timestamp)

    def snapshot(self, ts: Timestamp) -> Metadata[Snapshot]:
        return self._read(f"{ts.snapshot_meta.version}.snapshot.json", Snapshot)

    def targets(self, snap: Snapshot) -> Metadata[Targets]:
        return self._read(f"{snap.meta['targets.json'].version}.targets.json", Targets)

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


def _sign(md: Metadata[Any], *signers: CryptoSigner) -> Metadata[Any]:
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return md


def _meta_file(md: Metadata[Any], data: bytes) -> MetaFile:
    return MetaFile(
        version=md.signed.version,
        length=len(data),
        hashes={"sha256": hashlib.sha256(data).hexdigest()},
    )


def _expiry_days(keys_dir: Path, override: Mapping[str, int] | None) -> dict[str, int]:
    days = dict(DEFAULT_EXPIRY_DAYS)
    stored = _keys.read_config(keys_dir).get("expiry_days", {})
    if isinstance(stored, dict):
        days.update({k: int(v) for k, v in stored.items() if k in days})
    days.update(_check_expiry(override))
    return days


def _check_expiry(override: Mapping[str, int] | None) -> dict[str, int]:
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


def _signer_for(keys_dir: Path, role: str, root: Root) -> CryptoSigner:
    """Load the key of ``role`` and check that the repository's root trusts it."""
    signer = _keys.load(keys_dir, role)
    if signer.public_key.keyid not in root.roles[role].keyids:
        raise errors.KeysError(
            f"the {role} key in {keys_dir} is not one the repository's root trusts: pass the "
            "keys directory that belongs to this repository"
        )
    return signer


class _Chain:
    """Re-sign targets -> snapshot -> timestamp (only from the role that changed)."""

    def __init__(self, keys_dir: Path, repo: _Repo, days: dict[str, int], now: datetime) -> None:
        self.keys_dir, self.repo, self.days, self.now = keys_dir, repo, days, now
        self.root = repo.root().signed
        self.ts = repo.timestamp()
        self.snap = repo.snapshot(self.ts.signed)
        self.targets = repo.targets(self.snap.signed)

    def _bump(self, md: Metadata[Any]) -> None:
        md.signed.version += 1
        md.signed.expires = self.now + timedelta(days=self.days[md.signed.type])

    def from_targets(self) -> None:
        self._bump(self.targets)
        _sign(self.targets, _signer_for(self.keys_dir, "targets", self.root))
        data = self.repo.write(self.targets)
        self.snap.signed.meta["targets.json"] = _meta_file(self.targets, data)
        self.from_snapshot()

    def from_snapshot(self) -> None:
        self._bump(self.snap)
        _sign(self.snap, _signer_for(self.keys_dir, "snapshot", self.root))
        data = self.repo.write(self.snap)
        self.ts.signed.snapshot_meta = _meta_file(self.snap, data)
        self.from_timestamp()

    def from_timestamp(self) -> None:
        self._bump(self.ts)
        _sign(self.ts, _signer_for(self.keys_dir, "timestamp", self.root))
        self.repo.write(self.ts)


def _open(keys_dir: Path, repo_dir: Path) -> _Repo:
    _keys.check_separate(keys_dir, repo_dir)
    _keys.check_dir(keys_dir)
    repo = _Repo(repo_dir)
    if not repo.exists():
        raise errors.RepositoryStateError(
            f"{repo_dir} is not a selfupdate repository (no metadata/root.json): run "
            "`selfupdate init` first or pass the right --repo"
        )
    return repo


# ---------------------------------------------------------------------------------------------
# Commands


def init(
    keys_dir: Path,
    repo_dir: Path,
    app: str,
    *,
    expiry_days: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> Path:
    """Create keys and the initial signed metadata. Returns the path of ``root.json``
    (the trusted root to embed in builds: ``./build.sh --trusted-root``).

    Raises:
        selfupdate.errors.KeysError: ``keys_dir`` exists and is not empty, or lies inside
            ``repo_dir``.
        selfupdate.errors.RepositoryStateError: ``repo_dir`` already has a repository, or
            cannot be created.
        OSError: the keys or the metadata cannot be written; the new keys are removed
            again, so ``init`` can be run again once the cause is fixed.
    """
    try:
        check_name("app", app)
    except ValueError as e:
        raise errors.PublishError(f"{e}") from None
    days = dict(DEFAULT_EXPIRY_DAYS) | _check_expiry(expiry_days)
    now = _now(now)
    _keys.check_separate(keys_dir, repo_dir)
    repo = _Repo(repo_dir)
    if repo.exists():
        raise errors.RepositoryStateError(
            f"{repo_dir} already holds a repository: use `selfupdate publish`, or choose an "
            "empty directory for a new one"
        )
    _keys.check_new(keys_dir)
    try:
        # Before any key exists: a repository path that is a file or not writable must not
        # leave behind a keys directory that no repository trusts (and that a second
        # `init` would then refuse as not empty).
        (repo.targets_dir / app).mkdir(parents=True, exist_ok=True)
        repo.meta_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise errors.RepositoryStateError(
            f"cannot create the repository directory {repo_dir} ({e.strerror}): pass a --repo "
            "directory you can write"
        ) from e
    keys_existed = keys_dir.exists()
    _keys.create_dir(keys_dir)
    try:
        _init_signed(keys_dir, repo, app, days, now)
    except BaseException:
        # Until root.json is written (last) no repository trusts the new keys: remove them,
        # so that `init` can simply be run again (after a full disk, Ctrl-C, ...).
        if not repo.exists():
            _keys.remove_all(keys_dir, remove_dir=not keys_existed)
        raise
    return repo.meta_dir / "root.json"


def _init_signed(
    keys_dir: Path, repo: _Repo, app: str, days: dict[str, int], now: datetime
) -> None:
    """Write the new keys, then the initial metadata with ``root.json`` last: a repository
    "exists" (:meth:`_Repo.exists`) only once it is complete."""
    signers = {role: _keys.generate() for role in _keys.ROLES}
    for role, signer in signers.items():
        _keys.save(keys_dir, role, signer)
    _keys.write_config(keys_dir, {"format": 1, "app": app, "expiry_days": days})

    def exp(role: str) -> datetime:
        return now + timedelta(days=days[role])

    root = Root(expires=exp("root"), consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    root_md = _sign(Metadata(root), signers["root"])
    targets_md = _sign(Metadata(Targets(expires=exp("targets"))), signers["targets"])
    targets_data = repo.write(targets_md)
    snap_md = _sign(
        Metadata(
            Snapshot(
                expires=exp("snapshot"),
                meta={"targets.json": _meta_file(targets_md, targets_data)},
            )
        ),
        signers["snapshot"],
    )
    snap_data = repo.write(snap_md)
    ts_md = _sign(
        Metadata(Timestamp(expires=exp("timestamp"), snapshot_meta=_meta_file(snap_md, snap_data))),
        signers["timestamp"],
    )
    repo.write(ts_md)
    repo.write(root_md)


def inspect_file(path: Path) -> list[str]:
    """Warnings about a build that cannot be inspected (it is published anyway)."""
    try:
        if not zipfile.is_zipfile(path):
            return [f"{path} is not a zip or .pyz archive, so it could not be inspected"]
        with zipfile.ZipFile(path) as z:
            if "__main__.py" not in z.namelist():
                return [f"{path} has no __main__.py, so it is not a runnable .pyz"]
    except OSError as e:
        return [f"{path} could not be inspected ({e.strerror})"]
    return []


def publish(
    keys_dir: Path,
    repo_dir: Path,
    file: Path,
    version: str,
    *,
    channel: str = "stable",
    app: str | None = None,
    expiry_days: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> PublishResult:
    """Add ``file`` as release ``version`` of the app on ``channel``; re-sign targets,
    snapshot and timestamp.

    Raises:
        selfupdate.errors.VersionNotNewerError: ``version`` is not newer than the newest
            release on ``channel``.
        selfupdate.errors.PublishError: bad version, channel or file.
    """
    repo = _open(keys_dir, repo_dir)
    with _keys.locked(keys_dir):
        return _publish(keys_dir, repo, file, version, channel, app, expiry_days, now)


def _publish(
    keys_dir: Path,
    repo: _Repo,
    file: Path,
    version: str,
    channel: str,
    app: str | None,
    expiry_days: Mapping[str, int] | None,
    now: datetime | None,
) -> PublishResult:
    app = app or str(_keys.read_config(keys_dir).get("app", ""))
    try:
        check_name("app", app)
        check_name("channel", channel)
        parse_version(version)
    except ValueError as e:
        raise errors.PublishError(f"{e}") from None
    if not file.is_file():
        raise errors.PublishError(f"{file} is not a readable file: pass the build to publish")
    days = _expiry_days(keys_dir, expiry_days)
    chain = _Chain(keys_dir, repo, days, _now(now))

    existing = [
        r for r in releases(chain.targets.signed.targets) if r.app == app and r.channel == channel
    ]
    if existing and parse_version(version) <= parse_version(existing[-1].version):
        raise errors.VersionNotNewerError(app, channel, version, existing[-1].version)

    # Every key the chain will sign with, before anything is written: a broken or wrong key
    # must not leave a copied target file behind that no metadata names.
    for role in ("targets", "snapshot", "timestamp"):
        _signer_for(keys_dir, role, chain.root)
    warnings = inspect_file(file)
    # Keep a real extension (.pyz, .zip, .whl) so a download has a sensible name.
    ext = file.suffix if re.fullmatch(r"\.[A-Za-z][A-Za-z0-9]{0,7}", file.suffix) else ""
    name = f"{app}-{version}{ext}"
    target_path = f"{app}/{channel}/{name}"
    dest_dir = repo.targets_dir / app / channel
    known = set(dest_dir.iterdir()) if dest_dir.is_dir() else set()
    length, sha256 = _copy_target(file, dest_dir, name)
    tf = TargetFile(
        length,
        {"sha256": sha256},
        target_path,
        {"custom": custom_fields(app, channel, version)},
    )
    chain.targets.signed.targets[target_path] = tf
    timestamp = repo.meta_dir / "timestamp.json"
    published_before = timestamp.read_bytes()
    try:
        chain.from_targets()
    except BaseException:
        # Until timestamp.json changes no client can reach the new target: remove the copy,
        # unless it was there before (the same build published earlier on this channel).
        copied = dest_dir / f"{sha256}.{name}"
        with contextlib.suppress(OSError):  # best effort: the original error is what counts
            if copied not in known and timestamp.read_bytes() == published_before:
                copied.unlink()
        raise
    return PublishResult(Release(app, channel, version, target_path, length, sha256), warnings)


def _copy_target(src: Path, dest_dir: Path, name: str) -> tuple[int, str]:
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


def refresh(
    keys_dir: Path,
    repo_dir: Path,
    *,
    expiry_days: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> None:
    """Re-sign snapshot and timestamp with fresh expiry dates (run it from cron)."""
    repo = _open(keys_dir, repo_dir)
    with _keys.locked(keys_dir):
        _Chain(keys_dir, repo, _expiry_days(keys_dir, expiry_days), _now(now)).from_snapshot()


def rotate(
    keys_dir: Path,
    repo_dir: Path,
    role: str,
    *,
    expiry_days: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> str:
    """Replace the key of ``role`` with a new one; return the new key id.

    A new root version lists the new key. For ``root`` itself, the new root is signed by
    the old *and* the new root key, so clients that trust the old root follow the chain
    (TUF spec 5.3.4). The role's metadata (and what depends on it) is re-signed with the
    new key. The old key moves to ``KEYS_DIR/retired/``.
    """
    if role not in _keys.ROLES:
        raise errors.PublishError(f"unknown role {role!r}: use one of {', '.join(_keys.ROLES)}")
    repo = _open(keys_dir, repo_dir)
    with _keys.locked(keys_dir):
        return _rotate(keys_dir, repo, role, _expiry_days(keys_dir, expiry_days), _now(now))


def _rotate(keys_dir: Path, repo: _Repo, role: str, days: dict[str, int], now: datetime) -> str:
    root_md = repo.root()
    root = root_md.signed
    old_root_signer = _signer_for(keys_dir, "root", root)
    old_signer = _keys.load(keys_dir, role)
    old_keyid = old_signer.public_key.keyid
    chain = _Chain(keys_dir, repo, days, now)  # read the current state before changing keys

    new_signer = _keys.generate()
    # The new key is on disk before any metadata names it, so a crash cannot leave the
    # repository trusting a key nobody has.
    _keys.save(keys_dir, f"{role}.next", new_signer)

    root.revoke_key(old_keyid, role)
    root.add_key(new_signer.public_key, role)
    root.version += 1
    root.expires = now + timedelta(days=days["root"])
    signers = [old_root_signer] + ([new_signer] if role == "root" else [])
    repo.write(_sign(root_md, *signers))

    _keys.retire(keys_dir, role, old_keyid)
    os.replace(keys_dir / f"{role}.next.pem", keys_dir / f"{role}.pem")
    _durable.fsync_dir(keys_dir)

    chain.root = root
    if role == "targets":
        chain.from_targets()
    elif role == "snapshot":
        chain.from_snapshot()
    elif role == "timestamp":
        chain.from_timestamp()
    return str(new_signer.public_key.keyid)


def status(repo_dir: Path, *, now: datetime | None = None) -> Status:
    """Roles, versions, expiry dates and releases per channel; warnings for anything that
    expires within :data:`WARN_DAYS` days."""
    now = _now(now)
    repo = _Repo(repo_dir)
    if not repo.exists():
        raise errors.RepositoryStateError(
            f"{repo_dir} is not a selfupdate repository (no metadata/root.json): pass the "
            "right --repo"
        )
    root = repo.root().signed
    ts = repo.timestamp().signed
    snap = repo.snapshot(ts).signed
    targets = repo.targets(snap).signed
    roles: list[RoleStatus] = []
    warnings: list[str] = []
    fix = {
        "root": "selfupdate rotate --role root",
        "targets": "selfupdate publish (or rotate --role targets)",
        "snapshot": "selfupdate refresh",
        "timestamp": "selfupdate refresh",
    }
    for md in (root, targets, snap, ts):
        r = root.roles[md.type]
        roles.append(RoleStatus(md.type, md.version, md.expires, list(r.keyids), r.threshold))
        left = md.expires - now
        day = md.expires.strftime("%Y-%m-%d")
        if left <= timedelta(0):
            warnings.append(f"{md.type} expired on {day}: run `{fix[md.type]}` now")
        elif left < timedelta(days=WARN_DAYS):
            warnings.append(
                f"{md.type} expires on {day}, in {left.days} days: run `{fix[md.type]}`"
            )
    by_channel: dict[tuple[str, str], list[Release]] = {}
    for rel in releases(targets.targets):
        by_channel.setdefault((rel.app, rel.channel), []).append(rel)
    apps = {a for a, _ in by_channel}
    return Status(next(iter(apps)) if len(apps) == 1 else None, roles, by_channel, warnings)
