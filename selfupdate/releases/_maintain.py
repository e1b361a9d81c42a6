"""Taking releases back: ``yank`` (withdraw a release) and ``prune`` (remove old ones).

Both change only the targets metadata, then re-sign snapshot and timestamp (bottom-up, as
every publisher write: :class:`selfupdate.releases._repo.Chain`). ``yank`` keeps the file (a
client running the release can still be told it was withdrawn, see
:func:`selfupdate.releases._trust.withdrawn`); ``prune`` removes files only once the new
timestamp no longer leads to them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from packaging.version import Version

from selfupdate import _durable, errors
from selfupdate.releases import _keys, _repo
from selfupdate.releases._archive import RefusedError
from selfupdate.releases._deltas import stale_deltas
from selfupdate.releases._repo import Chain, now_utc, open_repo
from selfupdate.releases._trust import (
    Release,
    Withdrawn,
    check_name,
    parse_version,
    prune_plan,
    releases,
    withdrawn,
    withdrawn_fields,
)

__all__ = ["editing", "prune", "yank"]


def yank(
    keys_dir: Path,
    repo_dir: Path,
    app: str,
    version: str,
    *,
    channel: str | None = None,
    reason: str | None = None,
    expiry_days: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> list[Withdrawn]:
    """Withdraw release ``version`` of ``app`` (on ``channel``, or on every channel that has
    it): no client is offered it any more; clients running it keep it. Returns what was
    withdrawn now (empty if it already was).

    Raises:
        RefusedError: no such release (nothing written).
        selfupdate.errors.PublishError: a bad name, version or reason.
    """
    with editing(keys_dir, repo_dir, app, version, channel, expiry_days, now) as (chain, wanted):
        targets = chain.targets.signed.targets

        def same(r: Release | Withdrawn) -> bool:
            return (
                r.app == app
                and parse_version(r.version) == wanted
                and (channel is None or r.channel == channel)
            )

        hits = [r for r in releases(targets) if same(r)]
        if not hits:
            if any(same(w) for w in withdrawn(targets)):
                return []
            on = f" on channel {channel!r}" if channel else ""
            raise RefusedError(
                f"{app} {version} is not a release{on} in {repo_dir}: "
                "see `selfupdate status` for what is published"
            )
        chain.check_keys()
        at = chain.now.strftime("%Y-%m-%dT%H:%M:%SZ")
        done: list[Withdrawn] = []
        for rel in hits:
            tf = targets[rel.target_path]
            try:
                tf.unrecognized_fields["custom"] = withdrawn_fields(tf.custom or {}, at, reason)
            except ValueError as e:
                raise errors.PublishError(f"{e}") from None
            done.append(Withdrawn(rel.app, rel.channel, rel.version, rel.target_path, at, reason))
        chain.from_targets()
        return done


@contextmanager
def editing(
    keys_dir: Path,
    repo_dir: Path,
    app: str,
    version: str,
    channel: str | None,
    expiry_days: Mapping[str, int] | None,
    now: datetime | None,
) -> Iterator[tuple[Chain, Version]]:
    """Check the names, open the repository and hold the keys' lock: the chain to change and
    re-sign, and the version asked for (``yank``, ``rollout``).

    Raises:
        selfupdate.errors.PublishError: a bad name or version.
    """
    try:
        check_name("app", app)
        if channel is not None:
            check_name("channel", channel)
        wanted = parse_version(version)
    except ValueError as e:
        raise errors.PublishError(f"{e}") from None
    repo = open_repo(keys_dir, repo_dir)
    with _keys.locked(keys_dir):
        yield Chain(keys_dir, repo, _repo.expiry_days(keys_dir, expiry_days), now_utc(now)), wanted


def prune(
    keys_dir: Path,
    repo_dir: Path,
    keep: int,
    *,
    dry_run: bool = False,
    expiry_days: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Remove the releases no client can be offered any more: per app and channel, keep the
    ``keep`` newest (never fewer than one: the newest always stays) and what was withdrawn
    after the oldest of them; remove the rest from the targets metadata, and the deltas whose
    base or full target is gone (or withdrawn, for the target), re-sign, then delete their
    files. Returns the target paths removed (or, with ``dry_run``, that would be).

    Raises:
        selfupdate.errors.PublishError: ``keep`` < 1.
    """
    if not isinstance(keep, int) or keep < 1:
        raise errors.PublishError(
            f"--keep must be at least 1 (the newest release is always kept), not {keep!r}"
        )
    repo = open_repo(keys_dir, repo_dir)
    with _keys.locked(keys_dir):
        chain = Chain(keys_dir, repo, _repo.expiry_days(keys_dir, expiry_days), now_utc(now))
        targets = chain.targets.signed.targets
        plan = prune_plan(releases(targets), withdrawn(targets), keep)
        plan += stale_deltas(targets, set(plan))  # from or to a build that is gone
        if not plan or dry_run:
            return plan
        chain.check_keys()
        files = []
        for path in plan:
            sha256 = targets.pop(path).hashes.get("sha256")
            if sha256:
                files.append(repo.target_file(path, sha256))
        chain.from_targets()
        # Only now: the published timestamp no longer leads to these files. (A client that
        # read the previous timestamp a moment ago may still ask for one: it gets a 404 and
        # tries again at its next check.)
        for f in files:
            f.unlink(missing_ok=True)
        for d in sorted({f.parent for f in files}):
            _durable.fsync_dir(d)
        return plan
