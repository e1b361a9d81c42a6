"""The update client: find, download and verify the newest release of an app on its channel.

Built on python-tuf's ``ngclient.Updater`` (the TUF client workflow: root chain, timestamp,
snapshot, targets, with every signature, threshold, version and expiry check) and on our
:class:`selfupdate.releases._fetch.Fetcher` (timeouts, deadline, minimum speed, length caps). Which
release to take is decided by the pure functions of :mod:`selfupdate.releases._trust`.

Usage::

    client = UpdateClient("myapp", "https://example.org/myapp", trusted_root_bytes)
    release = client.check("1.0.0")           # None: up to date
    if release is not None:
        with open(tmp_path, "xb") as f:
            client.download_to(release, f)    # verified, or raised and f left empty

The metadata cache (TUF's trusted local copies, which give rollback protection across runs)
lives under the app's state directory. The embedded ``trusted_root`` is always the starting
point (ngclient's ``bootstrap``): cached metadata is only ever used after it verified against
that root's chain, never trusted blindly, and a cache that cannot even be read or written is
wiped and rebuilt from the embedded root.

Several repository URLs are mirrors, tried in order file by file with the same verification
(:mod:`selfupdate.releases._mirrors`); a release in a phased rollout is offered only to the
machines its share places in it (:mod:`selfupdate.releases._rollout`, ``rollout_waiting``).

Every failure is a :class:`selfupdate.errors.SelfUpdateError`; python-tuf's exceptions are
converted in one place, :func:`metadata_error` (:mod:`selfupdate.releases._tuf_errors`), by
their type.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TypeVar

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater
from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet

from selfupdate import errors
from selfupdate.releases._choice import choose
from selfupdate.releases._fetch import FetchConfig, Fetcher
from selfupdate.releases._install_id import lazy_install_id
from selfupdate.releases._mirrors import MirrorFetcher, base_urls, refresh_with_failover
from selfupdate.releases._rollout import Waiting, held_back, newest_waiting
from selfupdate.releases._trust import (
    Release,
    Withdrawn,
    check_name,
    check_release,
    lowers_listed_versions,
    parse_version,
    release_from_target,
)
from selfupdate.releases._tuf_errors import _short, metadata_error

__all__ = [
    "FetchConfig",
    "Release",
    "UpdateClient",
    "default_cache_dir",
    "download_verified",
    "metadata_error",
    "target_url",
    "trusted_set",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def default_cache_dir(app: str) -> Path:
    """Where :class:`UpdateClient` caches metadata when not told: the app's XDG state dir."""
    import platformdirs

    return Path(platformdirs.user_state_dir(app)) / "tuf-metadata"


class UpdateClient:
    """Find and fetch verified releases of one app on one channel.

    Args:
        app: application name, as published (``selfupdate publish`` binds it into the
            signed metadata).
        repo_url: where the repository is served: ``http(s)://...``, ``file://...`` or a
            plain directory path. Metadata is read from ``URL/metadata/``, releases from
            ``URL/targets/``.
        trusted_root: the repository's initial ``root.json`` as embedded in the program.
        channel: release channel to follow.
        cache_dir: metadata cache; default :func:`default_cache_dir`.
        config: transport limits (timeouts, deadline, minimum speed).
        progress: progress bar while downloading a release; ``None`` = only when stderr
            is a terminal.
        install_id, state_dir: where this machine stands in phased rollouts: the ID given,
            else ``$SELFUPDATE_INSTALL_ID``, else one made on first use and kept in
            ``state_dir`` (default: the app's XDG state dir) (:mod:`._install_id`).

    Raises:
        ValueError: ``app`` or ``channel`` is not a valid name.
        TypeError: ``trusted_root`` is not bytes.
        selfupdate.errors.ConfigError: the trusted root is not valid self-signed TUF root
            metadata, or the URL scheme is not supported.
    """

    def __init__(
        self,
        app: str,
        repo_url: str,
        trusted_root: bytes,
        *,
        channel: str = "stable",
        cache_dir: Path | None = None,
        config: FetchConfig | None = None,
        progress: bool | None = None,
        install_id: str | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.app = check_name("app", app)
        self.channel = check_name("channel", channel)
        if not isinstance(trusted_root, bytes):
            raise TypeError("trusted_root must be the bytes of root.json")
        _check_trusted_root(trusted_root)
        self.repo_url = repo_url
        bases = base_urls(repo_url)  # several: mirrors, tried in order (._mirrors)
        self._base = bases[0]
        self._root = trusted_root
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(app)
        self.fetcher = MirrorFetcher(bases, config, progress=progress)
        self._install_id = lazy_install_id(
            install_id, state_dir if state_dir is not None else default_cache_dir(app).parent
        )
        self.rollout_waiting: Waiting | None = None  # after check(): newer, not offered yet
        self._updater: Updater | None = None  # refreshed successfully
        self._active: Updater | None = None  # being refreshed (for error messages)
        self._current: str | None = None
        # After check() or find(): the publisher's withdrawal of the version checked, if any.
        self.installed_withdrawn: Withdrawn | None = None

    # -- public -----------------------------------------------------------------------------

    def check(self, current_version: str) -> Release | None:
        """Refresh the signed metadata; return the newest release newer than
        ``current_version`` on this client's app and channel, or ``None`` (up to date).

        Only reports: nothing is downloaded but metadata. Sets :attr:`installed_withdrawn`.

        Raises:
            ValueError: ``current_version`` is not a PEP 440 version.
            selfupdate.errors.ReleaseNotFoundError: the repository has releases, but none of
                this app on this channel (a wrong channel or app name, or URL).
            selfupdate.errors.SelfUpdateError: the metadata could not be fetched or verified.
        """
        parse_version(current_version)
        self._current = current_version
        return self._choose(current_version, None)

    def find(self, version: str, current_version: str | None = None) -> Release:
        """Refresh the signed metadata; return the release ``version`` of this app on this
        channel (``update --to``: it may be older than the running version).

        Raises:
            selfupdate.errors.ReleaseNotFoundError: it is not published (the sentence lists
                what is).
            selfupdate.errors.SelfUpdateError: the metadata could not be fetched or verified.
        """
        self._current = None  # a chosen version may be older: download_to allows it
        release = self._choose(current_version, version)
        assert release is not None  # choose() raises instead
        return release

    def _choose(self, current: str | None, to: str | None) -> Release | None:
        updater = self._refresh()
        # ngclient has no public "list all targets" call (see trusted_set()).
        targets = trusted_set(updater).targets.targets
        skipped: list[str] = []
        now = trusted_set(updater).reference_time  # the clock TUF's expiry checks use
        held = {} if to is not None else held_back(
            targets, self.app, self.channel, self._install_id, now, skipped
        )
        release, self.installed_withdrawn = choose(
            targets, self.app, self.channel, current, to, skipped, held
        )
        self.rollout_waiting = newest_waiting(held, release.version if release else current)
        for line in skipped:
            logger.warning("ignoring a malformed release entry: %s", line)
        return release

    def download_to(self, release: Release, fileobj: BinaryIO) -> None:
        """Stream ``release`` into ``fileobj``, verifying its signed length and hashes.

        ``release`` must be one this client's signed metadata lists for its app and channel
        (and, after :meth:`check`, newer than the version checked). On any failure,
        ``fileobj`` is truncated back to where it started (when it is seekable) and the
        error raised: nothing unverified is left for the caller.

        Raises:
            selfupdate.errors.WrongReleaseError: ``release`` is not to be installed.
            selfupdate.errors.TargetMismatchError: the file does not match its metadata.
            selfupdate.errors.FetchError: transport failures (incl. endless/slow data).
            selfupdate.errors.SelfUpdateError: metadata failures (if not refreshed yet).
            OSError: writing to ``fileobj`` failed.
        """
        updater = self._updater or self._refresh()
        try:
            info = self._call(lambda: updater.get_targetinfo(release.target_path))
        except _LocalCacheError as e:
            raise errors.CacheError(str(self._metadata_dir), e.reason) from e.__cause__
        signed: Release | None = None
        if info is not None:
            try:
                signed = release_from_target(info.path, info.length, info.hashes, info.custom)
            except ValueError:
                signed = None
        why = check_release(release, signed, self.app, self.channel, self._current)
        if why is not None or info is None:
            raise errors.WrongReleaseError(release.target_path, why or "it is not listed")

        consistent = bool(trusted_set(updater).root.consistent_snapshot)
        label = f"{release.app} {release.version}"
        self.fetcher.each_mirror(label, lambda base: download_verified(
            self.fetcher, info, fileobj, base_url=f"{base}/targets/",
            consistent_snapshot=consistent, label=label))  # fmt: skip

    @property
    def served_by(self) -> dict[str, str]:
        """Mirror bases that served the metadata and the release last (``"metadata"``,
        ``"release"``); empty with a single repository URL."""
        return dict(self.fetcher.served) if len(self.fetcher.bases) > 1 else {}

    # -- internals ----------------------------------------------------------------------------

    def _refresh(self) -> Updater:
        """A fresh Updater (ngclient refreshes once per instance) with refreshed metadata."""
        self._updater = None
        for attempt in (1, 2):
            try:
                updater = refresh_with_failover(self.fetcher, self._refreshed_updater)
            except _LocalCacheError as e:
                if attempt == 2:
                    raise errors.CacheError(str(self._metadata_dir), e.reason) from e.__cause__
                # info, not warning: with no logging configured a warning reaches stderr as a
                # second line beside the one-sentence error (or the successful result).
                logger.info("metadata cache unusable (%s): rebuilding it", e.reason)
                try:
                    self._wipe_cache()
                except OSError as wipe:
                    reason = wipe.strerror or type(wipe).__name__
                    raise errors.CacheError(str(self._metadata_dir), reason) from wipe
                continue
            self._updater = updater
            return updater
        raise AssertionError("unreachable")

    def _refreshed_updater(self) -> Updater:
        updater = self._active = self._new_updater()
        self._call(updater.refresh)
        return updater

    @property
    def _metadata_dir(self) -> Path:
        return self.cache_dir / "metadata"

    def _new_updater(self) -> Updater:
        try:
            self._metadata_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            return Updater(
                str(self._metadata_dir),
                f"{self._base}/metadata/",
                None,
                f"{self._base}/targets/",
                fetcher=self.fetcher,
                bootstrap=self._root,
            )
        except OSError as e:
            raise _LocalCacheError(e.strerror or type(e).__name__) from e

    def _wipe_cache(self) -> None:
        md = self._metadata_dir
        if md.is_symlink() or md.is_file():
            md.unlink()
        elif md.exists():
            shutil.rmtree(md)

    def _call(self, fn: Callable[[], _T]) -> _T:
        with self._converting():
            return fn()

    @contextmanager
    def _converting(self) -> Iterator[None]:
        try:
            yield
        except errors.LengthExceededError as e:
            # Snapshot and targets metadata have their length signed (in timestamp and
            # snapshot): a longer file does not belong with the rest (mix-and-match). Root and
            # timestamp only have configured caps: longer is endless data.
            role = _last_role(self.fetcher)
            if role in ("snapshot", "targets") and "/metadata/" in e.url:
                raise errors.InconsistentMetadataError(
                    role, f"longer than the {e.limit} bytes signed for it"
                ) from e
            raise
        except errors.SelfUpdateError:
            raise
        except tuf_exc.RepositoryError as e:
            raise _converted(e, self) from e
        except tuf_exc.DownloadError as e:
            cause = e.__cause__
            if isinstance(cause, errors.SelfUpdateError):
                raise cause from e
            raise errors.FetchError(f"a download failed ({e}): try again", "") from e
        except OSError as e:
            # ngclient's own file work (reading and persisting the cache); transport errors
            # are DownloadErrors, so an OSError here is about the local cache.
            raise _LocalCacheError(e.strerror or type(e).__name__) from e


def target_url(base_url: str, info: TargetFile, consistent_snapshot: bool) -> str:
    """URL of a target file: ``base_url`` (ending in ``/``) + its path, with the first listed
    hash prefixed to the file name under consistent snapshots (TUF spec 5.7.3; the same rule
    as ngclient's ``download_target``)."""
    path = info.path
    if consistent_snapshot:
        digest = next(iter(info.hashes.values()))
        dirname, sep, basename = path.rpartition("/")
        path = f"{dirname}{sep}{digest}.{basename}"
    return f"{base_url}{path}"


def download_verified(
    fetcher: Fetcher,
    info: TargetFile,
    fileobj: BinaryIO,
    *,
    base_url: str,
    consistent_snapshot: bool,
    label: str = "",
) -> None:
    """Stream the target ``info`` (verified metadata) into ``fileobj`` in one pass: length
    capped at the signed length, every signed hash computed on the way and compared at the
    end. On any failure ``fileobj`` is truncated back to where it started, then the error
    raised. Shared by :meth:`UpdateClient.download_to` and the conformance client.

    Raises:
        selfupdate.errors.TargetMismatchError: a hash differs or is of an unknown algorithm.
        selfupdate.errors.FetchError: transport failures (incl. endless and slow data).
        OSError: writing to ``fileobj`` failed.
    """
    hashers = {}
    for alg in info.hashes:
        try:
            hashers[alg] = hashlib.new(alg)
        except ValueError:
            raise errors.TargetMismatchError(
                info.path, f"unsupported hash algorithm {alg!r}"
            ) from None
    url = target_url(base_url, info, consistent_snapshot)
    start = _tell(fileobj)
    try:
        fetcher.copy_to(
            url, fileobj, info.length, label=label or info.path, hashers=list(hashers.values())
        )
        for alg, h in hashers.items():
            if h.hexdigest() != info.hashes[alg]:
                raise errors.TargetMismatchError(info.path, f"its {alg} hash differs")
        fileobj.flush()
    except BaseException:
        _rewind(fileobj, start)
        raise


class _LocalCacheError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def trusted_set(updater: Updater) -> TrustedMetadataSet:
    """ngclient's verified metadata: ``Updater._trusted_set``, private in python-tuf.

    ngclient has no public call that lists every target of the verified top-level targets
    metadata, tells whether the root uses consistent snapshots, or says which role was
    verified how far; its ``TrustedMetadataSet`` (a mapping role -> ``Signed``, with ``root``,
    ``snapshot``, ``targets`` and ``reference_time``) is the only place those are known to be
    verified. tuf is pinned below 8, and
    ``tests/test_client.py::test_tuf_trusted_set_has_the_shape_we_read`` fails loudly if this
    shape changes. Every read of it goes through here.
    """
    return updater._trusted_set


def _converted(e: tuf_exc.RepositoryError, client: UpdateClient) -> errors.MetadataError:
    """python-tuf's verification error ``e`` as ours, from what the client knows: the role that
    failed, and (where tuf uses one exception type for two failures) the metadata itself."""
    updater = client._active
    trusted = trusted_set(updater) if updater is not None else None
    role = _failed_role(e, trusted, client.fetcher)
    lowered = False
    listed = True
    if trusted is not None and role == "snapshot":
        old = trusted.get("snapshot")
        new = _last_fetched(client.fetcher, "snapshot")
        if isinstance(old, Snapshot) and new is not None:
            lowered = lowers_listed_versions(_listed(old), _listed_in(new))
    if trusted is not None and role == "targets":
        snap = trusted.get("snapshot")
        listed = not isinstance(snap, Snapshot) or "targets.json" in snap.meta
    foreign = (
        isinstance(e, tuf_exc.UnsignedMetadataError)
        and trusted is not None
        and _first_fetch(trusted, client._root)
        and _signed_by_strangers(_last_fetched(client.fetcher, role), trusted.root)
    )
    return metadata_error(
        e,
        role,
        lowered=lowered,
        listed=listed,
        expires=_expiry(client, trusted, role),
        foreign=foreign,
        url=client.repo_url,
    )


def _first_fetch(trusted: TrustedMetadataSet, embedded_root: bytes) -> bool:
    """Nothing is trusted yet beyond the embedded root: no timestamp (cached or fetched), and
    no newer root was accepted from the repository (which would show it is the right one)."""
    if trusted.get("timestamp") is not None:
        return False
    try:
        embedded = Metadata[Root].from_bytes(embedded_root).signed.version
    except (DeserializationError, ValueError, TypeError, KeyError):
        return False
    return bool(trusted.root.version == embedded)


def _signed_by_strangers(data: bytes | None, root: Root) -> bool:
    """Every signature of the (unverified) metadata ``data`` is by a key ``root`` does not know
    at all: not a wrong or missing signature of a known key, but another repository's keys."""
    if data is None:
        return False
    try:
        keyids = {str(sig["keyid"]) for sig in json.loads(data)["signatures"]}
    except (ValueError, KeyError, TypeError):
        return False
    return bool(keyids) and not keyids & set(root.keys)


_ORDER = ("root", "timestamp", "snapshot", "targets")


def _failed_role(
    e: tuf_exc.RepositoryError, trusted: TrustedMetadataSet | None, fetcher: Fetcher
) -> str:
    """The role ``e`` is about: the one whose file was fetched last, except for an expiry,
    which is checked for the final root before the new timestamp is looked at (spec 5.3.10):
    then the first verified role (in workflow order) that is expired."""
    if isinstance(e, tuf_exc.ExpiredMetadataError) and trusted is not None:
        for role in _ORDER:
            md = trusted.get(role)
            if md is not None and md.is_expired(trusted.reference_time):
                return role
    return _last_role(fetcher)


def _listed(snapshot: Snapshot) -> dict[str, int]:
    return {name: info.version for name, info in snapshot.meta.items()}


def _listed_in(data: bytes) -> dict[str, int] | None:
    """The file versions a snapshot's bytes list (unverified: only to choose the message)."""
    try:
        meta = json.loads(data)["signed"]["meta"]
        return {str(name): int(info["version"]) for name, info in meta.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _last_fetched(fetcher: Fetcher, role: str) -> bytes | None:
    for url, data in reversed(fetcher.last_metadata.items()):
        if _role_of(url) == role:
            return data
    return None


def _role_of(url: str) -> str:
    name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    m = re.fullmatch(r"(?:\d+\.)?(root|timestamp|snapshot|targets)\.json", name)
    return m.group(1) if m else ""


def _last_role(fetcher: Fetcher) -> str:
    for url in reversed(fetcher.fetched_urls):
        role = _role_of(url)
        if role:
            return role
    return ""


def _expiry(client: UpdateClient, trusted: TrustedMetadataSet | None, role: str) -> str:
    """The expiry date of ``role`` for the message: from the trusted set when the role was
    loaded, else from the last fetched (unverified, only quoted) copy."""
    md = trusted.get(role) if trusted is not None else None
    if md is not None:
        return str(md.expires.strftime("%Y-%m-%d"))
    data = _last_fetched(client.fetcher, role)
    if data is not None:
        try:
            return str(json.loads(data)["signed"]["expires"])[:10]
        except (ValueError, KeyError, TypeError):
            return ""
    return ""


def _check_trusted_root(data: bytes) -> None:
    try:
        md = Metadata[Root].from_bytes(data)
        if not isinstance(md.signed, Root):
            raise ValueError("not root metadata")
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except (tuf_exc.RepositoryError, ValueError, TypeError, KeyError) as e:
        raise errors.ConfigError(
            "the embedded trusted root is not valid, self-signed TUF root metadata "
            f"({_short(str(e))}): rebuild the program with the repository's root.json "
            "(./build.sh --trusted-root)"
        ) from e


def _tell(fileobj: BinaryIO) -> int | None:
    try:
        return fileobj.tell() if fileobj.seekable() else None
    except (OSError, ValueError):
        return None


def _rewind(fileobj: BinaryIO, start: int | None) -> None:
    if start is None:
        return
    try:
        fileobj.seek(start)
        fileobj.truncate()
        fileobj.flush()
        if hasattr(fileobj, "fileno"):
            os.fsync(fileobj.fileno())
    except (OSError, ValueError):
        logger.warning("could not truncate the partial download")
