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

:func:`publish_build` (``selfupdate publish``) checks the build against what it is published
as, from the archive itself (:mod:`selfupdate.releases._archive`); :func:`yank` and
:func:`prune` take releases back (:mod:`selfupdate.releases._maintain`); the files and the
re-signing chain are in :mod:`selfupdate.releases._repo`.

Signing keys live in ``KEYS_DIR`` (see :mod:`selfupdate.releases._keys`). Each function raises
:class:`selfupdate.errors.PublishError` subclasses for anything the user can fix, and
:class:`RefusedError` for a command refused as asked (nothing written).
"""

from __future__ import annotations

import contextlib
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import (
    Metadata,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from selfupdate import _durable, errors
from selfupdate.releases import _archive, _deltas, _keys, _repo
from selfupdate.releases._archive import RefusedError
from selfupdate.releases._maintain import prune, yank
from selfupdate.releases._repo import (
    DEFAULT_EXPIRY_DAYS,
    Chain,
    Repo,
    check_expiry,
    copy_target,
    meta_file,
    now_utc,
    open_repo,
    sign,
    signer_for,
)
from selfupdate.releases._rollout import Rollout, rollout_fields, rollout_of
from selfupdate.releases._rollout_repo import set_rollout
from selfupdate.releases._trust import (
    CUSTOM_KEY,
    Release,
    Withdrawn,
    check_name,
    check_notes,
    custom_fields,
    parse_version,
    releases,
    withdrawn,
)

__all__ = [
    "DEFAULT_EXPIRY_DAYS",
    "PublishResult",
    "RefusedError",
    "RoleStatus",
    "Status",
    "init",
    "prune",
    "publish",
    "publish_build",
    "refresh",
    "rotate",
    "set_rollout",
    "status",
    "yank",
]

WARN_DAYS = 7  # status warns about anything that expires sooner
# The names the test helpers (and older callers) know these by.
_Repo, _Chain, _sign, _meta_file = Repo, Chain, sign, meta_file


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` did."""

    release: Release
    warnings: list[str] = field(default_factory=list)
    build: _archive.BuildConfig | None = None  # what publish_build read from the build
    deltas: list[tuple[str, int]] = field(default_factory=list)  # (target path, bytes) made


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
    withdrawn: dict[tuple[str, str], list[Withdrawn]] = field(default_factory=dict)
    rollouts: dict[str, Rollout] = field(default_factory=dict)  # target path -> its rollout


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
    (the trusted root to embed in builds: ``selfupdate build --trusted-root``).

    Nothing is left behind when it fails: the directories it created and the keys it wrote
    are removed again, so ``init`` can be run again once the cause is fixed.

    Raises:
        selfupdate.errors.KeysError: ``keys_dir`` exists and is not empty, lies inside
            ``repo_dir``, or holds it.
        selfupdate.errors.RepositoryStateError: ``repo_dir`` already has a repository, or
            cannot be created.
        OSError: the keys or the metadata cannot be written.
    """
    try:
        check_name("app", app)
    except ValueError as e:
        raise errors.PublishError(f"{e}") from None
    days = dict(DEFAULT_EXPIRY_DAYS) | check_expiry(expiry_days)
    now = now_utc(now)
    _keys.check_separate(keys_dir, repo_dir)
    repo = Repo(repo_dir)
    if repo.exists():
        raise errors.RepositoryStateError(
            f"{repo_dir} already holds a repository: use `selfupdate publish`, or choose an "
            "empty directory for a new one"
        )
    _keys.check_new(keys_dir)
    # Every check is done: from here on, what is created is removed again on failure.
    made = _missing_dirs(repo.targets_dir / app) + _missing_dirs(repo.meta_dir)
    keys_existed = keys_dir.exists()
    try:
        try:
            # Before any key exists: a repository path that is a file or not writable must
            # not leave behind a keys directory that no repository trusts.
            (repo.targets_dir / app).mkdir(parents=True, exist_ok=True)
            repo.meta_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise errors.RepositoryStateError(
                f"cannot create the repository directory {repo_dir} ({e.strerror}): pass a "
                "--repo directory you can write"
            ) from e
        _keys.create_dir(keys_dir)
        _init_signed(keys_dir, repo, app, days, now)
    except BaseException:
        # Until root.json is written (last) no repository trusts the new keys: remove them,
        # and the skeleton, so that `init` can simply be run again (after a full disk,
        # Ctrl-C, ...).
        if not repo.exists():
            _keys.remove_all(keys_dir, remove_dir=not keys_existed)
            _remove_skeleton(repo, made)
        raise
    return repo.meta_dir / "root.json"


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, outermost first."""
    out: list[Path] = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out[::-1]


def _remove_skeleton(repo: Repo, made: list[Path]) -> None:
    """Undo a failed ``init``: the metadata it may have written and the directories it made.
    Best effort: the caller is already handling the error that stopped it."""
    with contextlib.suppress(OSError):
        for name in ("1.targets.json", "1.snapshot.json", "timestamp.json", "1.root.json"):
            (repo.meta_dir / name).unlink(missing_ok=True)
    for d in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()  # only if empty: never anything that was not ours


def _init_signed(
    keys_dir: Path, repo: Repo, app: str, days: dict[str, int], now: datetime
) -> None:
    """Write the new keys, then the initial metadata with ``root.json`` last: a repository
    "exists" (:meth:`Repo.exists`) only once it is complete."""
    signers = {role: _keys.generate() for role in _keys.ROLES}
    for role, signer in signers.items():
        _keys.save(keys_dir, role, signer)
    _keys.write_config(keys_dir, {"format": 1, "app": app, "expiry_days": days})

    def exp(role: str) -> datetime:
        return now + timedelta(days=days[role])

    root = Root(expires=exp("root"), consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    root_md = sign(Metadata(root), signers["root"])
    targets_md = sign(Metadata(Targets(expires=exp("targets"))), signers["targets"])
    targets_data = repo.write(targets_md)
    snap_md = sign(
        Metadata(
            Snapshot(
                expires=exp("snapshot"),
                meta={"targets.json": meta_file(targets_md, targets_data)},
            )
        ),
        signers["snapshot"],
    )
    snap_data = repo.write(snap_md)
    ts_md = sign(
        Metadata(Timestamp(expires=exp("timestamp"), snapshot_meta=meta_file(snap_md, snap_data))),
        signers["timestamp"],
    )
    repo.write(ts_md)
    repo.write(root_md)


def inspect_file(path: Path) -> list[str]:
    """Warnings about a file that cannot be inspected (:func:`publish` signs it anyway)."""
    try:
        if not zipfile.is_zipfile(path):
            return [f"{path} is not a zip or .pyz archive, so it could not be inspected"]
        with zipfile.ZipFile(path) as z:
            if "__main__.py" not in z.namelist():
                return [f"{path} has no __main__.py, so it is not a runnable .pyz"]
    except OSError as e:
        return [f"{path} could not be inspected ({e.strerror})"]
    return []


def publish_build(
    keys_dir: Path,
    repo_dir: Path,
    file: Path,
    *,
    version: str | None = None,
    channel: str | None = None,
    app: str | None = None,
    notes: str | None = None,
    allow_downgrade: bool = False,
    expiry_days: Mapping[str, int] | None = None,
    now: datetime | None = None,
    rollout: int | None = None,
    schedule: tuple[int, int] | None = None,
    critical: bool = False,
    deltas: int = _deltas.DEFAULT_DELTAS,
) -> PublishResult:
    """Publish a build made by ``selfupdate build``, after checking it against what it is
    published as (what ``selfupdate publish`` does). Everything is checked before anything is
    written.

    The build's own configuration (read from the archive, never run:
    :mod:`selfupdate.releases._archive`) must name ``app`` (default: the repository's, from
    ``init``) and ``version`` (default: the build's own), and embed one of the repository's
    roots (any ``metadata/N.root.json``: clients walk the chain from it). ``channel``
    defaults to the one the build follows. ``deltas``: as for :func:`publish`.

    ``rollout`` (a percentage, 1-100), ``schedule`` (``(step, every)``: percentage points
    added every ``every`` seconds) and ``critical`` (every machine at once) are signed with
    the release (:mod:`selfupdate.releases._rollout`); without them every machine on the
    channel is offered it at its next check.

    Raises:
        RefusedError: not such a build, another app's build, another version, no embedded
            root or one of another repository, a version already published on the channel.
        selfupdate.errors.VersionNotNewerError: not newer than the channel's newest, and
            ``allow_downgrade`` is false.
        selfupdate.errors.PublishError: a bad name, version, notes or file.
    """
    repo = open_repo(keys_dir, repo_dir)
    with _keys.locked(keys_dir):
        app = app or str(_keys.read_config(keys_dir).get("app", ""))
        try:
            check_name("app", app)
            if channel is not None:
                check_name("channel", channel)
            if version is not None:
                parse_version(version)
        except ValueError as e:
            raise errors.PublishError(f"{e}") from None
        _check_file(file)
        # The keys first: a wrong keys directory is what to fix before anything else.
        Chain(keys_dir, repo, _repo.expiry_days(keys_dir, expiry_days), now_utc(now)).check_keys()
        build = _archive.read_build(file)
        why = _archive.refusal(
            build, file, app=app, version=version, roots=repo.roots(), repo_dir=repo_dir
        )
        if why is not None:
            raise RefusedError(why)
        warnings: list[str] = []
        if channel is not None and channel != build.channel:
            warnings.append(
                f"{file} follows channel {build.channel!r}: clients that install it from "
                f"{channel!r} follow {build.channel!r} from then on"
            )
        result = _publish(
            keys_dir, repo, file, build.version, channel or build.channel, app, expiry_days,
            now, notes=notes, allow_downgrade=allow_downgrade, warnings=warnings,
            phases=(rollout, schedule, critical), deltas=deltas,
        )  # fmt: skip
        return PublishResult(result.release, result.warnings, build, result.deltas)


def publish(
    keys_dir: Path,
    repo_dir: Path,
    file: Path,
    version: str,
    *,
    channel: str = "stable",
    app: str | None = None,
    notes: str | None = None,
    allow_downgrade: bool = False,
    expiry_days: Mapping[str, int] | None = None,
    now: datetime | None = None,
    rollout: int | None = None,
    schedule: tuple[int, int] | None = None,
    critical: bool = False,
    deltas: int = _deltas.DEFAULT_DELTAS,
) -> PublishResult:
    """Add ``file`` as release ``version`` of the app on ``channel``; re-sign targets,
    snapshot and timestamp.

    This signs any file as asked, without looking inside (it warns when the file is not a
    runnable .pyz): for a build made by ``selfupdate build`` use :func:`publish_build`, which
    checks that the build is what it is published as.

    With ``deltas`` > 0, deltas to this build are made from the ``deltas`` newest releases
    before it on the channel (:mod:`selfupdate.releases._deltas`), each a target of its own;
    a delta not smaller than the build is not published.

    Raises:
        selfupdate.errors.VersionNotNewerError: ``version`` is not newer than the newest
            release on ``channel`` (and ``allow_downgrade`` is false).
        RefusedError: ``version`` is already on ``channel`` (published or withdrawn).
        selfupdate.errors.PublishError: bad version, channel, notes or file.
    """
    repo = open_repo(keys_dir, repo_dir)
    with _keys.locked(keys_dir):
        app = app or str(_keys.read_config(keys_dir).get("app", ""))
        _check_file(file)
        return _publish(
            keys_dir, repo, file, version, channel, app, expiry_days, now, notes=notes,
            allow_downgrade=allow_downgrade, warnings=inspect_file(file),
            phases=(rollout, schedule, critical), deltas=deltas,
        )  # fmt: skip


def _check_file(file: Path) -> None:
    if not file.is_file():
        raise errors.PublishError(f"{file} is not a readable file: pass the build to publish")


def _publish(
    keys_dir: Path,
    repo: Repo,
    file: Path,
    version: str,
    channel: str,
    app: str,
    expiry_days: Mapping[str, int] | None,
    now: datetime | None,
    *,
    notes: str | None,
    allow_downgrade: bool,
    warnings: list[str],
    deltas: int = _deltas.DEFAULT_DELTAS,
    phases: tuple[int | None, tuple[int, int] | None, bool] = (None, None, False),
) -> PublishResult:
    stamp = now_utc(now)
    try:
        check_name("app", app)
        check_name("channel", channel)
        new = parse_version(version)
        if notes is not None:
            check_notes(notes)
        step, every = phases[1] or (0, 0)
        staged = rollout_fields(
            percent=phases[0], step=step, every=every, critical=phases[2], now=stamp
        )
    except ValueError as e:
        raise errors.PublishError(f"{e}") from None
    days = _repo.expiry_days(keys_dir, expiry_days)
    chain = Chain(keys_dir, repo, days, stamp)

    targets = chain.targets.signed.targets
    listed: list[Release | Withdrawn] = [*releases(targets), *withdrawn(targets)]
    on_channel = [r for r in listed if r.app == app and r.channel == channel]
    same = [r for r in on_channel if parse_version(r.version) == new]
    newest = max(on_channel, key=lambda r: parse_version(r.version), default=None)
    if newest is not None and new <= parse_version(newest.version):
        if not allow_downgrade:
            raise errors.VersionNotNewerError(app, channel, version, newest.version)
        if same:
            raise RefusedError(
                f"{app} {same[0].version} was already published on channel {channel!r} "
                f"(as {same[0].target_path}): publish another version"
            )

    # Every key the chain will sign with, before anything is written: a broken or wrong key
    # must not leave a copied target file behind that no metadata names.
    chain.check_keys()
    # Keep a real extension (.pyz, .zip, .whl) so a download has a sensible name.
    ext = file.suffix if re.fullmatch(r"\.[A-Za-z][A-Za-z0-9]{0,7}", file.suffix) else ""
    name = f"{app}-{version}{ext}"
    target_path = f"{app}/{channel}/{name}"
    dest_dir = repo.targets_dir / app / channel
    known = set(dest_dir.iterdir()) if dest_dir.is_dir() else set()
    length, sha256 = copy_target(file, dest_dir, name)
    tf = TargetFile(
        length,
        {"sha256": sha256},
        target_path,
        {"custom": _with(custom_fields(app, channel, version, notes), staged)},
    )
    targets[target_path] = tf
    release = Release(app, channel, version, target_path, length, sha256, notes)
    timestamp = repo.meta_dir / "timestamp.json"
    published_before = timestamp.read_bytes()
    made: list[Path] = []
    try:
        made, more, added = _deltas.add_deltas(repo, targets, release, file, deltas)
        warnings = warnings + more
        chain.from_targets()
    except BaseException:
        # Until timestamp.json changes no client can reach the new target: remove the copy,
        # unless it was there before (the same build published earlier on this channel).
        copied = dest_dir / f"{sha256}.{name}"
        with contextlib.suppress(OSError):  # best effort: the original error is what counts
            if timestamp.read_bytes() == published_before:
                for f in [copied] if copied not in known else []:
                    f.unlink()
                for f in made:
                    f.unlink()
        raise
    return PublishResult(release, warnings, deltas=added)


def _with(custom: dict[str, Any], phases: dict[str, Any]) -> dict[str, Any]:
    """``custom`` with the rollout fields ``phases`` added to the release's own."""
    custom[CUSTOM_KEY] = {**custom[CUSTOM_KEY], **phases}
    return custom


def refresh(
    keys_dir: Path,
    repo_dir: Path,
    *,
    expiry_days: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> None:
    """Re-sign snapshot and timestamp with fresh expiry dates (run it from cron)."""
    repo = open_repo(keys_dir, repo_dir)
    with _keys.locked(keys_dir):
        days = _repo.expiry_days(keys_dir, expiry_days)
        Chain(keys_dir, repo, days, now_utc(now)).from_snapshot()


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
    repo = open_repo(keys_dir, repo_dir)
    with _keys.locked(keys_dir):
        return _rotate(keys_dir, repo, role, _repo.expiry_days(keys_dir, expiry_days), now_utc(now))


def _rotate(keys_dir: Path, repo: Repo, role: str, days: dict[str, int], now: datetime) -> str:
    root_md = repo.root()
    root = root_md.signed
    old_root_signer = signer_for(keys_dir, "root", root)
    old_signer = _keys.load(keys_dir, role)
    old_keyid = old_signer.public_key.keyid
    chain = Chain(keys_dir, repo, days, now)  # read the current state before changing keys

    new_signer = _keys.generate()
    # The new key is on disk before any metadata names it, so a crash cannot leave the
    # repository trusting a key nobody has.
    _keys.save(keys_dir, f"{role}.next", new_signer)

    root.revoke_key(old_keyid, role)
    root.add_key(new_signer.public_key, role)
    root.version += 1
    root.expires = now + timedelta(days=days["root"])
    signers = [old_root_signer] + ([new_signer] if role == "root" else [])
    repo.write(sign(root_md, *signers))

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
    now = now_utc(now)
    repo = Repo(repo_dir)
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
    gone: dict[tuple[str, str], list[Withdrawn]] = {}
    for w in withdrawn(targets.targets):
        gone.setdefault((w.app, w.channel), []).append(w)
    apps = {a for a, _ in [*by_channel, *gone]}
    app = next(iter(apps)) if len(apps) == 1 else None
    phases = {}
    for path, tf in targets.targets.items():
        with contextlib.suppress(ValueError):  # malformed: clients hold it back; not shown
            if (rollout := rollout_of(tf.custom)[0]) is not None:
                phases[path] = rollout
    return Status(app, roles, by_channel, warnings, gone, phases)
