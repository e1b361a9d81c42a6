"""Mirrors: one repository served from several URLs, tried in order, file by file.

A client is given one or more repository URLs (whitespace-separated in one string: a URL
never holds a raw space, so the list needs no quoting; ``selfupdate build --repo-url`` and
``APP update --repo`` take them repeated). Every file is fetched from the first mirror that
serves it, and verified exactly as from a single repository (the same TUF rules, the same
signed lengths and hashes):

- a mirror that cannot be reached, answers an HTTP error, trickles or sends too much is left
  for the next one, and moved to the end of the order for the rest of this client's life, so
  a dead mirror costs one timeout, not one per file;
- a mirror that serves a tampered file is found out by the verification: a release file whose
  hash differs is fetched again from the next mirror; metadata that fails verification makes
  the client refresh again with that mirror last (:func:`refresh_with_failover`). Nothing a
  mirror serves is trusted before it verified, so a lying mirror costs a retry, never a wrong
  install;
- ``N.root.json`` answered with 404 (or 403) is the normal end of the root chain (TUF spec
  5.3.3), not a failure: it is not asked of the other mirrors;
- when every mirror failed for one file: :class:`selfupdate.errors.MirrorsFailedError`, one
  sentence naming each and why.

:attr:`MirrorFetcher.served` says which mirror served what (the ``-v`` line and the update
summary). Nothing here changes a URL beyond its base: the paths (consistent-snapshot names,
no query string) are what a CDN caches.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tuf.api import exceptions as tuf_exc

from selfupdate import errors
from selfupdate.releases._fetch import FetchConfig, Fetcher

__all__ = ["MirrorFetcher", "base_urls", "refresh_with_failover"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
_ROOT_CHAIN = re.compile(r"/metadata/[0-9]+\.root\.json$")


class _MirrorsFailedError(errors.MirrorsFailedError, tuf_exc.DownloadError):
    """Recognisable to ngclient as a download failure (see :mod:`selfupdate.releases._fetch`)."""


def base_urls(repo_url: str) -> list[str]:
    """The mirror bases of ``repo_url`` (one URL or directory, or several separated by
    whitespace), without a trailing ``/``; a directory becomes a ``file://`` URL.

    Raises:
        selfupdate.errors.ConfigError: none given, or an unsupported scheme.
    """
    if not isinstance(repo_url, str) or not repo_url.strip():
        raise errors.ConfigError(
            "no release repository URL was given: pass an http(s):// or file:// URL or a directory"
        )
    out: list[str] = []
    for url in repo_url.split():
        if "://" in url:
            scheme = urllib.parse.urlsplit(url).scheme.lower()
            if scheme not in ("http", "https", "file"):
                raise errors.ConfigError(
                    f"the release repository URL {url} uses an unsupported scheme: "
                    "use http://, https://, file:// or a directory path"
                )
            base = url.rstrip("/")
        else:
            base = Path(url).expanduser().absolute().as_uri()
        if base not in out:
            out.append(base)
    return out


class MirrorFetcher(Fetcher):
    """A :class:`Fetcher` that serves URLs under the first base from the mirrors in order.

    Args:
        bases: the mirrors' base URLs (:func:`base_urls`), the first one the URL prefix the
            updater is configured with.
    """

    def __init__(
        self, bases: list[str], config: FetchConfig | None = None, *, progress: bool | None = None
    ) -> None:
        super().__init__(config, progress=progress)
        self.bases = list(bases)
        self.order = list(bases)  # healthy first; a mirror that failed goes last
        self.served: dict[str, str] = {}  # "metadata" / "release" -> base that served it
        self.failures: list[tuple[str, str]] = []  # (base, why), for the -v lines
        self.revalidate = False  # ask caches for a fresh timestamp.json (see revalidating)

    def _rest(self, url: str) -> str | None:
        primary = self.bases[0]
        return url[len(primary):] if url.startswith(primary + "/") else None

    def demote(self, base: str, why: str) -> None:
        """``base`` failed (``why``): try it last from now on."""
        self.failures.append((base, why))
        logger.info("mirror %s failed (%s); trying the next one", base, why)
        if base in self.order and len(self.order) > 1:
            self.order.remove(base)
            self.order.append(base)

    def download_bytes(self, url: str, max_length: int) -> bytes:
        if self.revalidate and url.endswith("/metadata/timestamp.json"):
            # The one request a client ever sends with Cache-Control: a cache that served a
            # stale timestamp.json is asked for a fresh one (RFC 9111 5.2.1.4).
            self._session.headers["Cache-Control"] = "no-cache"
            try:
                return self._download_bytes(url, max_length)
            finally:
                del self._session.headers["Cache-Control"]
        return self._download_bytes(url, max_length)

    def _download_bytes(self, url: str, max_length: int) -> bytes:
        rest = self._rest(url)
        if rest is None or len(self.bases) == 1:
            data = super().download_bytes(url, max_length)
            self.served["metadata"] = self.bases[0]
            return data
        failed: list[tuple[str, str]] = []
        for base in list(self.order):
            try:
                data = super().download_bytes(base + rest, max_length)
            except errors.FetchError as e:
                if _ROOT_CHAIN.search(rest) and getattr(e, "status_code", None) in (403, 404):
                    raise  # the end of the root chain (spec 5.3.3), not a broken mirror
                failed.append((base, short_reason(e)))
                self.demote(base, short_reason(e))
                continue
            self.served["metadata"] = base
            return data
        raise _MirrorsFailedError(rest.rsplit("/", 1)[-1], failed)

    def each_mirror(self, what: str, fetch: Callable[[str], _T]) -> _T:
        """``fetch(base)`` from each mirror in order until one succeeds: a transport failure
        or a file that does not verify (``TargetMismatchError``) goes on to the next.
        ``fetch`` must leave nothing behind when it raises (``download_verified`` truncates).

        Raises:
            selfupdate.errors.MirrorsFailedError: every mirror failed (a single mirror's own
                error is raised as it is).
        """
        if len(self.bases) == 1:
            result = fetch(self.bases[0])
            self.served["release"] = self.bases[0]
            return result
        failed: list[tuple[str, str]] = []
        for base in list(self.order):
            try:
                result = fetch(base)
            except (errors.FetchError, errors.TargetMismatchError) as e:
                failed.append((base, short_reason(e)))
                self.demote(base, short_reason(e))
                continue
            self.served["release"] = base
            return result
        raise _MirrorsFailedError(what, failed)


def refresh_with_failover(fetcher: Fetcher, refresh: Callable[[], _T]) -> _T:
    """``refresh()`` (a whole TUF refresh, each call with a new updater), again with the
    mirror that served the failing metadata last, while verification fails and another
    mirror is left to try. What verified before the failure stays trusted (ngclient keeps
    only verified metadata), so a later mirror cannot roll it back.

    A ``timestamp.json`` older than one already trusted, or expired, is what a cache in front
    of the repository serves when it kept the file too long (two CDN nodes out of step): the
    next attempt asks for it with ``Cache-Control: no-cache`` (once, also with one URL), and
    only if that is refused too is it reported (as the rollback or expiry it then is).
    """
    if not isinstance(fetcher, MirrorFetcher):
        return refresh()
    for _attempt in range(len(fetcher.bases) - 1):
        try:
            return refresh()
        except errors.MetadataError as e:
            base = _base_of_last(fetcher)
            if base is None:
                raise
            fetcher.demote(base, short_reason(e))
            fetcher.revalidate = fetcher.revalidate or _stale_timestamp(e)
    try:
        return refresh()
    except errors.MetadataError as e:
        if fetcher.revalidate or not _stale_timestamp(e):
            raise
        fetcher.revalidate = True
        return refresh()


def _stale_timestamp(e: errors.MetadataError) -> bool:
    return e.role == "timestamp" and isinstance(
        e, errors.RollbackError | errors.ExpiredMetadataError
    )


def _base_of_last(fetcher: MirrorFetcher) -> str | None:
    for url in reversed(fetcher.fetched_urls):
        for base in fetcher.bases:
            if url.startswith(base + "/"):
                return base
    return None


def short_reason(e: BaseException) -> str:
    """A few words for what a mirror did wrong (for the lists of mirrors tried)."""
    if isinstance(e, errors.HTTPStatusError):
        return f"HTTP {e.status_code}"
    if isinstance(e, errors.UnreachableError):
        return e.reason
    if isinstance(e, errors.MissingFileError):
        return "no such file"
    if isinstance(e, errors.SlowRetrievalError):
        return "too slow"
    if isinstance(e, errors.LengthExceededError):
        return "sent more than the signed length"
    if isinstance(e, errors.TruncatedError):
        return "the download was cut short"
    if isinstance(e, errors.TargetMismatchError):
        return "served a file that does not match its signed hash"
    if isinstance(e, errors.MetadataError):
        return f"served {e.role or 'metadata'} that failed verification ({type(e).__name__})"
    return type(e).__name__
