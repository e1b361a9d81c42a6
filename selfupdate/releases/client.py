"""The update client: find, download and verify the newest release of an app on its channel.

Built on python-tuf's ``ngclient.Updater`` (the TUF client workflow: root chain, timestamp,
snapshot, targets, with every signature, threshold, version and expiry check) and on our
:class:`selfupdate._fetch.Fetcher` (timeouts, deadline, minimum speed, length caps). Which
release to take is decided by the pure functions of :mod:`selfupdate._trust`.

Usage::

    client = UpdateClient("nsapp", "https://example.org/nsapp", trusted_root_bytes)
    release = client.check("1.0.0")           # None: up to date
    if release is not None:
        with open(tmp_path, "xb") as f:
            client.download_to(release, f)    # verified, or raised and f left empty

The metadata cache (TUF's trusted local copies, which give rollback protection across runs)
lives under the app's state directory. The embedded ``trusted_root`` is always the starting
point (ngclient's ``bootstrap``): cached metadata is only ever used after it verified against
that root's chain, never trusted blindly, and a cache that cannot even be read or written is
wiped and rebuilt from the embedded root.

Every failure is a :class:`selfupdate.errors.SelfUpdateError`; python-tuf's exceptions are
converted in one place, :func:`_converted`.
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
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.ngclient import Updater

from selfupdate import errors
from selfupdate._fetch import FetchConfig, Fetcher
from selfupdate._trust import (
    Release,
    check_name,
    check_release,
    newest_release,
    parse_version,
    release_from_target,
    releases,
)

__all__ = [
    "FetchConfig",
    "Release",
    "UpdateClient",
    "default_cache_dir",
    "download_verified",
    "target_url",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_ROLES = ("root", "timestamp", "snapshot", "targets")


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
    ) -> None:
        self.app = check_name("app", app)
        self.channel = check_name("channel", channel)
        if not isinstance(trusted_root, bytes):
            raise TypeError("trusted_root must be the bytes of root.json")
        _check_trusted_root(trusted_root)
        self.repo_url = repo_url
        self._base = _base_url(repo_url)
        self._root = trusted_root
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(app)
        self.fetcher = Fetcher(config, progress=progress)
        self._updater: Updater | None = None  # refreshed successfully
        self._active: Updater | None = None  # being refreshed (for error messages)
        self._current: str | None = None

    # -- public -----------------------------------------------------------------------------

    def check(self, current_version: str) -> Release | None:
        """Refresh the signed metadata; return the newest release newer than
        ``current_version`` on this client's app and channel, or ``None`` (up to date).

        Only reports: nothing is downloaded but metadata.

        Raises:
            ValueError: ``current_version`` is not a PEP 440 version.
            selfupdate.errors.SelfUpdateError: the metadata could not be fetched or verified.
        """
        parse_version(current_version)
        updater = self._refresh()
        # ngclient has no public "list all targets" call; the verified top-level targets
        # metadata lives in its trusted set (the only place it is known to be verified).
        targets = updater._trusted_set.targets.targets
        skipped: list[str] = []
        found = releases(targets, skipped)
        for line in skipped:
            logger.warning("ignoring a malformed release entry: %s", line)
        self._current = current_version
        return newest_release(found, self.app, self.channel, current_version)

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

        download_verified(
            self.fetcher,
            info,
            fileobj,
            base_url=f"{self._base}/targets/",
            consistent_snapshot=bool(updater._trusted_set.root.consistent_snapshot),
            label=f"{release.app} {release.version}",
        )

    # -- internals ----------------------------------------------------------------------------

    def _refresh(self) -> Updater:
        """A fresh Updater (ngclient refreshes once per instance) with refreshed metadata."""
        self._updater = None
        for attempt in (1, 2):
            try:
                updater = self._active = self._new_updater()
                self._call(updater.refresh)
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


def _converted(e: tuf_exc.RepositoryError, client: UpdateClient) -> errors.MetadataError:
    """The one place where python-tuf's verification errors become ours."""
    text = str(e)
    role = _role_in(text) or _last_role(client.fetcher)
    if isinstance(e, tuf_exc.ExpiredMetadataError):
        return errors.ExpiredMetadataError(role, _expiry(client, role))
    if isinstance(e, tuf_exc.UnsignedMetadataError):
        return errors.SignatureError(role)
    if isinstance(e, tuf_exc.BadVersionNumberError):
        # "must be >=": a new file is older than the trusted one (rollback). "Expected X
        # version N, got M": files that do not belong together (mix-and-match), except in a
        # new snapshot, where a lower listed version is a rollback of that file.
        if ">=" in text or text.startswith("Expected targets.json version"):
            return errors.RollbackError(role, text.rstrip("."))
        return errors.InconsistentMetadataError(role, text.rstrip("."))
    if isinstance(e, tuf_exc.LengthOrHashMismatchError):
        return errors.InconsistentMetadataError(role, text.rstrip("."))
    if "missing info for" in text:
        return errors.RollbackError(role, text.rstrip("."))
    if "does not contain information" in text or "not part of snapshot" in text:
        return errors.InconsistentMetadataError(role, text.rstrip("."))
    return errors.MalformedMetadataError(role, _short(text))


def _role_in(text: str) -> str:
    m = re.match(r"^(?:Final |New |Expected )?'?(root|timestamp|snapshot|targets)\b", text)
    return m.group(1) if m else ""


def _last_role(fetcher: Fetcher) -> str:
    for url in reversed(fetcher.fetched_urls):
        name = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
        m = re.fullmatch(r"(?:\d+\.)?(root|timestamp|snapshot|targets)\.json", name)
        if m:
            return m.group(1)
    return ""


def _expiry(client: UpdateClient, role: str) -> str:
    """The expiry date of ``role`` for the message: from the trusted set when the role was
    loaded, else from the last fetched (unverified, only quoted) copy."""
    updater = client._active
    if updater is not None and role in updater._trusted_set._trusted_set:
        return updater._trusted_set[role].expires.strftime("%Y-%m-%d")
    for url, data in reversed(client.fetcher.last_metadata.items()):
        if url.endswith(f"{role}.json"):
            try:
                return str(json.loads(data)["signed"]["expires"])[:10]
            except (ValueError, KeyError, TypeError):
                return ""
    return ""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


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


def _base_url(repo_url: str) -> str:
    if not isinstance(repo_url, str) or not repo_url:
        raise errors.ConfigError(
            "no release repository URL was given: pass an http(s):// or file:// URL or a directory"
        )
    if "://" in repo_url:
        scheme = urllib.parse.urlsplit(repo_url).scheme.lower()
        if scheme not in ("http", "https", "file"):
            raise errors.ConfigError(
                f"the release repository URL {repo_url} uses an unsupported scheme: "
                "use http://, https://, file:// or a directory path"
            )
        return repo_url.rstrip("/")
    return Path(repo_url).expanduser().absolute().as_uri()


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
