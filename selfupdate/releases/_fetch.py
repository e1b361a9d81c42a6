"""Transport: a ``requests``-based fetcher for python-tuf's ``ngclient``.

:class:`Fetcher` implements :class:`tuf.ngclient.FetcherInterface` (python-tuf's own
``RequestsFetcher`` is deprecated). What it adds, each for an attack or failure TUF names:

- **slow retrieval**: connect and read timeouts, a total deadline per file and a minimum
  speed averaged over a window. Reads use ``read1`` (whatever one ``recv`` returns), so a
  server trickling one byte per second is measured after every byte and cut off within
  ``deadline`` (or ``speed_window``) plus one ``read_timeout`` at worst; while the status
  line and headers arrive, a timer enforces the deadline (urllib3 has only per-read timeouts);
- **endless data**: a hard cap; the stream stops at the signed length, never reads past it;
- constant memory: data is streamed in chunks of at most ``chunk_size`` bytes;
- no redirect to another host (or scheme), no transparent decompression;
- proxies and CA bundle the usual ``requests`` way (``HTTPS_PROXY``, ``NO_PROXY``,
  ``REQUESTS_CA_BUNDLE``: ``Session.trust_env``);
- ``file://`` URLs for a local repository (air-gapped machines), with the same caps;
- a ``tqdm`` progress bar for release files, only when stderr is a terminal.

Errors are converted in exactly one place (:func:`_converted`) into :mod:`selfupdate.errors`
leaves. The classes raised are private subclasses that *also* derive from python-tuf's
``DownloadError`` family, because ``ngclient`` relies on it: ``Updater._load_root`` ends the
root-rotation walk only on ``DownloadHTTPError`` with status 403/404, and
``FetcherInterface.fetch`` wraps anything else that is not a ``DownloadError``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.util
from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from selfupdate import errors

__all__ = ["FetchConfig", "Fetcher"]


@dataclass(frozen=True)
class FetchConfig:
    """Limits of one :class:`Fetcher`. Every limit applies to each file separately."""

    connect_timeout: float = 10.0  # seconds to open the TCP (and TLS) connection
    read_timeout: float = 30.0  # seconds one socket read may wait for any data
    deadline: float = 3600.0  # seconds for a whole file, request to last byte
    min_speed: int = 1024  # bytes/second, averaged over speed_window; 0 disables
    speed_window: float = 30.0  # seconds over which min_speed is measured
    chunk_size: int = 1 << 20  # bytes: largest single read; bounds memory per download
    max_redirects: int = 5  # same-origin redirects followed per file
    user_agent: str = "selfupdate"

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "deadline", "speed_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"FetchConfig.{name} must be > 0")
        if self.min_speed < 0 or self.chunk_size <= 0 or self.max_redirects < 0:
            raise ValueError("FetchConfig: min_speed, chunk_size, max_redirects out of range")


# ---------------------------------------------------------------------------------------------
# Our error leaves, made recognisable to ngclient (see the module docstring).


class _HTTPStatusError(errors.HTTPStatusError, tuf_exc.DownloadHTTPError):
    pass


class _MissingFileError(errors.MissingFileError, tuf_exc.DownloadHTTPError):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        # A missing local file means to ngclient what an HTTP 404 means (end of root chain).
        self.status_code = 404


class _UnreachableError(errors.UnreachableError, tuf_exc.DownloadError):
    pass


class _SlowRetrievalError(errors.SlowRetrievalError, tuf_exc.SlowRetrievalError):
    pass


class _LengthExceededError(errors.LengthExceededError, tuf_exc.DownloadLengthMismatchError):
    pass


class _TruncatedError(errors.TruncatedError, tuf_exc.DownloadError):
    pass


class _RedirectError(errors.RedirectError, tuf_exc.DownloadError):
    pass


class _OtherFetchError(errors.FetchError, tuf_exc.DownloadError):
    pass


def _converted(e: BaseException, url: str, cfg: FetchConfig) -> errors.FetchError:
    """The one place where transport exceptions become ours."""
    if isinstance(e, errors.FetchError):
        return e
    if isinstance(e, requests.exceptions.ConnectTimeout | urllib3.exceptions.ConnectTimeoutError):
        return _UnreachableError(url, f"no connection within {cfg.connect_timeout:g} s")
    if isinstance(
        e, requests.exceptions.ReadTimeout | urllib3.exceptions.ReadTimeoutError | TimeoutError
    ):
        return _SlowRetrievalError(url, f"no data arrived for {cfg.read_timeout:g} s", 0, 0.0)
    if isinstance(e, requests.exceptions.SSLError):
        return _tls_error(e, url)
    if isinstance(e, requests.exceptions.ProxyError):
        return _UnreachableError(url, "the proxy refused or failed")
    if isinstance(e, requests.exceptions.ConnectionError):
        return _UnreachableError(url, _root_reason(e))
    if isinstance(e, urllib3.exceptions.ProtocolError | requests.exceptions.ChunkedEncodingError):
        return _TruncatedError(url, _received(e), None)
    if isinstance(e, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return _OtherFetchError(f"the repository URL {url} is not valid: fix it", url)
    if isinstance(e, requests.exceptions.RequestException | urllib3.exceptions.HTTPError):
        return _OtherFetchError(f"the download of {url} failed ({_root_reason(e)}): try again", url)
    if isinstance(e, OSError):
        reason = e.strerror or type(e).__name__
        return _OtherFetchError(f"could not read {url} ({reason}): check the repository", url)
    raise TypeError(f"not a transport error: {e!r}")


# OpenSSL's words for a peer that answered a TLS hello with something that is not TLS (a
# plain-HTTP server: "HTTP/1.0 400" read as a TLS record). OpenSSL 1.1 and 3.0 say "wrong version
# number", 3.2 and later "record layer failure"; "http request" is the server-side twin.
_NOT_TLS = ("wrong version number", "record layer failure", "http request", "unknown protocol",
            "packet length too long")  # fmt: skip


def _tls_error(e: BaseException, url: str) -> _UnreachableError:
    """A TLS failure, with the fix that fits it: a certificate that does not verify, or a
    server that does not speak TLS on that port at all (``https://`` to a plain-HTTP port)."""
    import ssl

    cause: BaseException | None = e
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return _UnreachableError(url, "TLS certificate verification failed")
        text = str(cause).lower()
        if isinstance(cause, ssl.SSLError) and any(w in text for w in _NOT_TLS):
            parts = urllib.parse.urlsplit(url)
            return _UnreachableError(
                url,
                "the server does not speak TLS on that port",
                f"is the repository URL meant to be http://{parts.netloc}?",
            )
        nxt = cause.__cause__ or cause.__context__
        if nxt is None and cause.args and isinstance(cause.args[0], BaseException):
            nxt = cause.args[0]  # requests keeps urllib3's error in args, not as a cause
        if nxt is None:
            nxt = getattr(cause, "reason", None)  # MaxRetryError.reason
            nxt = nxt if isinstance(nxt, BaseException) else None
        cause = nxt
    return _UnreachableError(url, f"the TLS handshake failed: {_root_reason(e)}")


def _root_reason(e: BaseException) -> str:
    """The innermost cause's short text, e.g. ``Connection refused``."""
    while True:
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            break
        e = nxt
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if e.args and isinstance(e.args[0], urllib3.exceptions.HTTPError):
        return _root_reason(e.args[0])
    text = str(e).rstrip(".")
    if "Connection refused" in text:
        return "Connection refused"
    if "Name or service not known" in text or "NameResolutionError" in text:
        return "host name not found"
    return text.split(": ")[-1][:120] or type(e).__name__


def _received(e: BaseException) -> int:
    for arg in (e, *e.args):
        partial = getattr(arg, "partial", None)
        if isinstance(partial, int):
            return partial
    return 0


# ---------------------------------------------------------------------------------------------
# The deadline while the status line and headers arrive. urllib3 only applies a per-read
# timeout there, which a server sending one header byte per second never trips. A timer shuts
# the connection's socket down when the file's deadline passes, so the blocked read returns.

_deadline = threading.local()  # .until: time.monotonic() value for the current request


def _shut(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        # The plain socket's method, also for TLS: SSLSocket.shutdown would drop its SSL
        # object under the thread that is reading.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedMixin:
    sock: socket.socket | None

    def getresponse(self) -> Any:
        until = getattr(_deadline, "until", None)
        if until is None:
            return super().getresponse()  # type: ignore[misc]
        timer = threading.Timer(max(until - time.monotonic(), 0.0), _shut, (self.sock,))
        timer.daemon = True
        timer.start()
        try:
            return super().getresponse()  # type: ignore[misc]
        finally:
            timer.cancel()
            timer.join()  # leave no thread behind (a caller may unshare() or fork next)


class _WatchedHTTPConnection(_WatchedMixin, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter with watched connections (also through an HTTP(S) proxy)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager


class _StaleRetry(urllib3.util.Retry):
    """urllib3's retry of a read error, except a read timeout (raised as it is)."""

    def increment(self, *args: Any, **kwargs: Any) -> Any:  # urllib3's signature, passed on
        error = kwargs.get("error")
        if isinstance(error, urllib3.exceptions.ReadTimeoutError):
            raise error
        return super().increment(*args, **kwargs)


class Fetcher(FetcherInterface):
    """Fetch files of a release repository over HTTP(S) or from ``file://`` URLs.

    Args:
        config: limits; the defaults suit a public static host.
        session: a ``requests.Session`` to use (its ``trust_env`` decides whether proxy and
            CA-bundle environment variables apply); a new one by default.
        progress: show a progress bar for release files (:meth:`stream` with
            ``progress=True``); ``None`` means only when stderr is a terminal.
    """

    def __init__(
        self,
        config: FetchConfig | None = None,
        *,
        session: requests.Session | None = None,
        progress: bool | None = None,
    ) -> None:
        self.config = config or FetchConfig()
        if session is None:
            session = requests.Session()
            # Retry once, only a kept-alive connection the server closed just as it was reused
            # (a "read" error before any response). Not refused connects (pointless, and
            # noisy), statuses or redirects; body reads are outside urllib3's retries anyway.
            # Nor a read timeout: a server that does not answer costs one timeout (a dead
            # mirror, issue 15), not two.
            retry = _StaleRetry(total=1, connect=0, read=1, status=0, redirect=0)
            adapter = _Adapter(max_retries=retry)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session
        self._session.headers["User-Agent"] = self.config.user_agent
        # The bytes verified are the bytes on the wire: no transparent decompression (and so
        # no decompression bomb behind a small Content-Length).
        self._session.headers["Accept-Encoding"] = "identity"
        self._progress = progress
        self.fetched_urls: list[str] = []  # for tests and diagnostics
        self.last_metadata: dict[str, bytes] = {}  # URL -> bytes of the latest metadata fetch

    # -- FetcherInterface -------------------------------------------------------------------

    def _fetch(self, url: str) -> Iterator[bytes]:
        """Uncapped stream of ``url`` (ngclient applies its own cap in ``download_file``)."""
        return self.stream(url, max_length=None)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """Like ngclient's, but the cap stops reading at ``max_length`` bytes exactly."""
        with tempfile.TemporaryFile() as f:
            for chunk in self.stream(url, max_length=max_length):
                f.write(chunk)
            f.seek(0)
            yield f

    def download_bytes(self, url: str, max_length: int) -> bytes:
        with self.download_file(url, max_length) as f:
            data = f.read()
        self.last_metadata.pop(url, None)  # keep insertion order = fetch order
        self.last_metadata[url] = data
        while len(self.last_metadata) > 32:
            del self.last_metadata[next(iter(self.last_metadata))]
        return data

    # -- ours ---------------------------------------------------------------------------------

    def stream(
        self,
        url: str,
        max_length: int | None,
        *,
        expected_length: int | None = None,
        progress: bool = False,
        label: str = "",
    ) -> Iterator[bytes]:
        """Yield the bytes of ``url`` in chunks of at most ``config.chunk_size``.

        Args:
            url: ``http://``, ``https://`` or ``file://`` URL.
            max_length: hard cap in bytes; more data raises :class:`LengthExceededError`
                without being read. ``None``: no cap.
            expected_length: exact length when known; fewer bytes raise
                :class:`TruncatedError`.
            progress: show a progress bar (subject to the ``progress`` constructor argument).
            label: text for the progress bar.

        Raises:
            selfupdate.errors.FetchError: every failure, converted here. The classes raised
                also derive from ``tuf.api.exceptions.DownloadError``.
        """
        self.fetched_urls.append(url)
        del self.fetched_urls[:-64]
        cfg = self.config
        start = time.monotonic()  # the deadline covers the request and headers too
        resp: requests.Response | None = None
        try:
            if urllib.parse.urlsplit(url).scheme == "file":
                chunks = self._file_chunks(url)
                total = _file_size(url)
            else:
                _deadline.until = start + cfg.deadline
                try:
                    resp = self._open_http(url)
                finally:
                    _deadline.until = None
                chunks = self._http_chunks(resp)
                cl = resp.headers.get("Content-Length")
                total = int(cl) if cl and cl.isdigit() else None
            if max_length is not None and total is not None and total > max_length:
                raise _LengthExceededError(url, max_length)
            bar = self._bar(total or expected_length, label or url) if progress else None
            received = 0
            window_start = time.monotonic()
            window_bytes = 0
            try:
                for chunk in chunks:
                    received += len(chunk)
                    window_bytes += len(chunk)
                    if max_length is not None and received > max_length:
                        raise _LengthExceededError(url, max_length)
                    now = time.monotonic()
                    if now - start > cfg.deadline:
                        raise _SlowRetrievalError(
                            url,
                            f"it took longer than the {cfg.deadline:g} s deadline",
                            received,
                            now - start,
                        )
                    if now - window_start >= cfg.speed_window:
                        if window_bytes < cfg.min_speed * (now - window_start):
                            raise _SlowRetrievalError(
                                url,
                                f"it was slower than {cfg.min_speed} bytes/s for "
                                f"{cfg.speed_window:g} s",
                                received,
                                now - start,
                            )
                        window_start, window_bytes = now, 0
                    if bar is not None:
                        bar.update(len(chunk))
                    yield chunk
            finally:
                if bar is not None:
                    bar.close()
            if expected_length is not None and received < expected_length:
                raise _TruncatedError(url, received, expected_length)
            if total is not None and received < total:
                raise _TruncatedError(url, received, total)
        except Exception as e:
            if isinstance(e, errors.FetchError):
                raise
            elapsed = time.monotonic() - start
            if elapsed >= cfg.deadline:  # the watchdog cut the connection (headers phase)
                raise _SlowRetrievalError(
                    url, f"it took longer than the {cfg.deadline:g} s deadline", 0, elapsed
                ) from e
            raise _converted(e, url, cfg) from e
        finally:
            if resp is not None:
                resp.close()  # also when we stop before reading (length cap, early close)

    def _open_http(self, url: str) -> requests.Response:
        cfg = self.config
        origin = _origin(url)
        for _ in range(cfg.max_redirects + 1):
            resp = self._session.get(
                url,
                stream=True,
                allow_redirects=False,
                timeout=(cfg.connect_timeout, cfg.read_timeout),
            )
            if resp.is_redirect:
                location = urllib.parse.urljoin(url, resp.headers["Location"])
                resp.close()
                if _origin(location) != origin:
                    raise _RedirectError(url, location)
                url = location
                continue
            if resp.status_code != 200:
                resp.close()
                raise _HTTPStatusError(url, resp.status_code)
            return resp
        raise _OtherFetchError(
            f"the release server redirected {url} more than {cfg.max_redirects} times: "
            "fix the server's configuration",
            url,
        )

    def _http_chunks(self, resp: requests.Response) -> Iterator[bytes]:
        # read1: return what one recv() gives (up to chunk_size), so deadline and speed are
        # checked after every arrival instead of after a full chunk a trickler never sends.
        raw = resp.raw
        try:
            while True:
                data = raw.read1(self.config.chunk_size, decode_content=False)
                if not data:
                    return
                yield data
        finally:
            resp.close()

    def _file_chunks(self, url: str) -> Iterator[bytes]:
        # Opened without blocking and checked by descriptor: a FIFO (or a device) in a local
        # repository would otherwise block the updater forever, with its lock held (issue 9).
        path = _file_path(url)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except (FileNotFoundError, NotADirectoryError):
            raise _MissingFileError(url) from None
        with open(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise _MissingFileError(url)
            if not stat.S_ISREG(mode):
                raise _OtherFetchError(
                    f"{path} in the local repository is not a regular file (a FIFO, socket or "
                    "device), so it is not read: replace it with the file the repository "
                    "should hold",
                    url,
                )
            os.set_blocking(fd, True)
            while data := f.read(self.config.chunk_size):
                yield data

    def _bar(self, total: int | None, label: str) -> Any:
        show = self._progress if self._progress is not None else sys.stderr.isatty()
        if not show:
            return None
        from tqdm import tqdm  # type: ignore[import-untyped]

        return tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=label,
            file=sys.stderr,
            leave=False,
        )

    def copy_to(
        self,
        url: str,
        fileobj: BinaryIO,
        length: int,
        *,
        label: str = "",
        hashers: list[Any] | None = None,
    ) -> int:
        """Stream exactly ``length`` bytes of ``url`` into ``fileobj``, feeding ``hashers``.

        Returns the number of bytes written. Raises like :meth:`stream`.
        """
        n = 0
        for chunk in self.stream(
            url, max_length=length, expected_length=length, progress=True, label=label
        ):
            for h in hashers or ():
                h.update(chunk)
            fileobj.write(chunk)
            n += len(chunk)
        return n


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _file_path(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _OtherFetchError(f"the file URL {url} names a remote host: use a local path", url)
    path = urllib.request.url2pathname(parts.path)
    if "\0" in path:
        # A signed target path may hold any character; no file name holds a NUL.
        raise _OtherFetchError(
            f"the file URL {url!r} holds a NUL byte, which no local file name can: the "
            "repository lists a name that cannot exist, ask its publisher to fix it",
            url,
        )
    return path


def _file_size(url: str) -> int | None:
    try:
        st = os.stat(_file_path(url))
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None
