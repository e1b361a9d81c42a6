"""One exception tree for everything ``selfupdate`` can fail at.

Every error derives from :class:`SelfUpdateError`; ``str(e)`` is one plain sentence that says
what went wrong and what to do about it, so a CLI can print it as is. Leaves carry the data a
caller needs (a URL, a role, a version) as attributes.

Programming mistakes (wrong argument types, calls in the wrong order) are *not* in this tree:
they stay ``TypeError`` / ``ValueError`` / ``RuntimeError``.

This module imports nothing heavy (no ``tuf``, ``requests``, ``cryptography``): the install
side and the app's start-up path import it. Transport errors that python-tuf's ``ngclient``
must recognise (``DownloadError`` and its subclasses) are private subclasses of these leaves,
defined next to the fetcher in :mod:`selfupdate.releases._fetch`.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "ConfigError",
    "DownMigrationError",
    "ExpiredMetadataError",
    "InstallError",
    "FetchError",
    "HTTPStatusError",
    "HeldReleaseError",
    "InconsistentMetadataError",
    "KnownBadError",
    "KeysError",
    "LengthExceededError",
    "MalformedMetadataError",
    "MetadataError",
    "MirrorsFailedError",
    "MissingFileError",
    "NoPreviousBuildError",
    "PublishError",
    "RedirectError",
    "ReleaseNotFoundError",
    "RepositoryStateError",
    "RollbackError",
    "SelfUpdateError",
    "ServiceError",
    "SignatureError",
    "SlowRetrievalError",
    "TargetError",
    "TargetMismatchError",
    "TrialFailedError",
    "TrialIncompleteError",
    "TrialTimeoutError",
    "TruncatedError",
    "UnreachableError",
    "UpdateInProgressError",
    "UpdateInterrupted",
    "VersionNotNewerError",
    "WrongReleaseError",
]


class SelfUpdateError(Exception):
    """Base of every failure of the environment ``selfupdate`` reports.

    Args:
        message: one sentence: what was wrong, and what to do.
    """

    def __init__(self, message: str) -> None:
        # Exception.__init__ rather than super(): the fetcher's private leaves also derive
        # from tuf's DownloadError, whose __init__ takes other arguments (cooperative MRO).
        Exception.__init__(self, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# ---------------------------------------------------------------------------------------------
# Configuration given by the caller or found on disk


class ConfigError(SelfUpdateError):
    """The client was given something unusable (a bad trusted root, an unsupported URL)."""


# ---------------------------------------------------------------------------------------------
# Transport


class FetchError(SelfUpdateError):
    """A file of the release repository could not be fetched.

    Attributes:
        url: what was being fetched.
    """

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class HTTPStatusError(FetchError):
    """The server answered with an HTTP error status (404, 500, ...)."""

    def __init__(self, url: str, status_code: int) -> None:
        if status_code in (403, 404, 410):
            todo = "check the repository URL and that the publisher uploaded the whole repository"
        elif status_code >= 500:
            todo = "the release server has a problem, try again later"
        else:
            todo = "check the repository URL and the server's configuration"
        super().__init__(f"the release server answered HTTP {status_code} for {url}: {todo}", url)
        self.status_code = status_code


class MirrorsFailedError(FetchError):
    """Every mirror of the repository failed for one file (each tried once, in order).

    Attributes:
        failures: ``(mirror base URL, what went wrong)`` for each, in the order tried.
    """

    def __init__(self, what: str, failures: list[tuple[str, str]]) -> None:
        tried = "; ".join(f"{base} ({why})" for base, why in failures)
        super().__init__(
            f"no mirror of the release repository could serve {what}: {tried}: check the "
            "network and the repository URLs, or try again later",
            failures[0][0] if failures else "",
        )
        self.failures = failures


class MissingFileError(FetchError):
    """A file of a local (``file://`` or directory) repository does not exist."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"the local release repository has no file {url}: "
            "check the repository path and that it was copied completely",
            url,
        )


class UnreachableError(FetchError):
    """No connection to the release server (refused, DNS, TLS, proxy).

    Attributes:
        reason: what failed, e.g. ``Connection refused``.
    """

    def __init__(self, url: str, reason: str, todo: str = "") -> None:
        # todo: what to do, when the reason points at one fix (the default names them all).
        super().__init__(
            f"could not reach the release server for {url} ({reason}): "
            + (todo or "check the network, the proxy settings and the repository URL"),
            url,
        )
        self.reason = reason


class SlowRetrievalError(FetchError):
    """The download was cut off because it was too slow (TUF's slow retrieval attack).

    Attributes:
        received: bytes received before the cut-off.
        seconds: how long the download ran.
    """

    def __init__(self, url: str, why: str, received: int, seconds: float) -> None:
        super().__init__(
            f"the download of {url} was stopped after {seconds:.0f} s and {received} bytes "
            f"because {why}: try again later or from another mirror",
            url,
        )
        self.received = received
        self.seconds = seconds


class LengthExceededError(FetchError):
    """The server sent more bytes than the signed length allows (endless data attack)."""

    def __init__(self, url: str, limit: int) -> None:
        super().__init__(
            f"the release repository sent more than the {limit} bytes allowed for {url}, so the "
            "download was cut off: the server or a mirror is broken or malicious, report it to the "
            "publisher",
            url,
        )
        self.limit = limit


class TruncatedError(FetchError):
    """The connection ended before the whole file arrived."""

    def __init__(self, url: str, received: int, expected: int | None) -> None:
        of = f" of {expected}" if expected is not None else ""
        super().__init__(
            f"the download of {url} ended after {received}{of} bytes: try again",
            url,
        )
        self.received = received
        self.expected = expected


class RedirectError(FetchError):
    """The server redirected to another host, which the client does not follow."""

    def __init__(self, url: str, location: str) -> None:
        super().__init__(
            f"the release server redirected {url} to another host ({location}), which is not "
            "followed: configure the final repository URL instead",
            url,
        )
        self.location = location


# ---------------------------------------------------------------------------------------------
# Trust (TUF metadata)


class MetadataError(SelfUpdateError):
    """The repository's signed metadata cannot be trusted.

    Attributes:
        role: the TUF role concerned (``root``, ``timestamp``, ``snapshot``, ``targets``), or
            ``""`` when unknown.
    """

    def __init__(self, message: str, role: str = "") -> None:
        super().__init__(message)
        self.role = role


class ExpiredMetadataError(MetadataError):
    """Signed metadata is past its expiry date (TUF's freeze attack, or a lazy publisher).

    Attributes:
        expires: the expiry date (ISO 8601, UTC), or ``""`` when unknown.
    """

    def __init__(self, role: str, expires: str = "") -> None:
        when = f" on {expires}" if expires else ""
        fix = (
            "`selfupdate rotate --role root`"
            if role == "root"
            else "`selfupdate refresh`"
            if role in ("timestamp", "snapshot")
            else "`selfupdate publish` or `selfupdate rotate --role targets`"
        )
        super().__init__(
            f"release metadata expired{when} ({role}.json): the publisher must run {fix}", role
        )
        self.expires = expires


class RollbackError(MetadataError):
    """The repository offers older metadata than this client already trusts."""

    def __init__(self, role: str, detail: str) -> None:
        super().__init__(
            f"the release server offers an older {role}.json than this client already trusted "
            f"({detail}), a rollback attack or a restored backup: report it to the publisher",
            role,
        )


class SignatureError(MetadataError):
    """Metadata is not signed by enough trusted keys (unknown key, or below threshold).

    Attributes:
        foreign: on the first fetch (nothing trusted yet beyond the embedded root), every
            signature is by a key that root does not know: the likely cause is a repository
            URL that points to another app's (or another publisher's) repository.
    """

    def __init__(self, role: str, *, foreign: bool = False, url: str = "") -> None:
        if foreign:
            where = f" {url}" if url else ""
            message = (
                f"the repository URL{where} probably points to another app's or another "
                f"publisher's repository ({role}.json is signed only by keys this program's "
                "trusted root does not know, so it was rejected): check the URL, and if it is "
                "right, the repository was tampered with, report it to the publisher"
            )
        else:
            message = (
                f"{role}.json is not signed by enough trusted keys, so it was rejected: the "
                "repository was tampered with or the publisher signed it with the wrong keys"
            )
        super().__init__(message, role)
        self.foreign = foreign


class MalformedMetadataError(MetadataError):
    """Metadata could not be parsed (not JSON, missing fields, wrong type)."""

    def __init__(self, role: str, detail: str) -> None:
        name = f"{role}.json" if role else "release metadata"
        super().__init__(
            f"{name} from the release server is malformed ({detail}): report it to the publisher",
            role,
        )


class InconsistentMetadataError(MetadataError):
    """Metadata files do not belong together (mix-and-match), or a file does not match the
    length or hash that other signed metadata records for it."""

    def __init__(self, role: str, detail: str) -> None:
        super().__init__(
            f"{role}.json does not match the rest of the signed release metadata ({detail}), "
            "a mix-and-match attack or a half-uploaded repository: try again later and "
            "report it to the publisher if it persists",
            role,
        )


# ---------------------------------------------------------------------------------------------
# Targets (release files)


class TargetError(SelfUpdateError):
    """A release file failed verification.

    Attributes:
        target_path: the TUF target path of the release.
    """

    def __init__(self, message: str, target_path: str) -> None:
        super().__init__(message)
        self.target_path = target_path


class TargetMismatchError(TargetError):
    """The downloaded release does not match its signed length or hash (tampering)."""

    def __init__(self, target_path: str, detail: str) -> None:
        super().__init__(
            f"the downloaded release {target_path} does not match its signed metadata "
            f"({detail}), so it was discarded: the server or a mirror is serving a tampered "
            "file, report it to the publisher",
            target_path,
        )


class WrongReleaseError(TargetError):
    """The caller asked for a release this client must not install (not in the signed
    metadata, another app or channel, or not newer than the running version)."""

    def __init__(self, target_path: str, why: str) -> None:
        super().__init__(
            f"refusing to download {target_path} because {why}: "
            "run the update check again and use the release it returns",
            target_path,
        )
        self.why = why


class CacheError(SelfUpdateError):
    """The local metadata cache cannot be written (permissions, full disk)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"could not write the update metadata cache in {path} ({reason}): "
            "check its permissions and free disk space",
        )
        self.path = path


# ---------------------------------------------------------------------------------------------
# Publisher


class PublishError(SelfUpdateError):
    """The publisher could not do what was asked; the repository is unchanged."""


class KeysError(PublishError):
    """The signing keys directory is missing, unsafe or incomplete."""


class RepositoryStateError(PublishError):
    """The repository directory is missing, incomplete or not what the command expects."""


class VersionNotNewerError(PublishError):
    """``publish`` was given a version that is not newer than the newest on its channel."""

    def __init__(self, app: str, channel: str, version: str, newest: str) -> None:
        super().__init__(
            f"{app} {version} is not newer than {newest}, the newest release on channel "
            f"{channel!r}: publish a higher version"
        )
        self.app = app
        self.channel = channel
        self.version = version
        self.newest = newest


# ---------------------------------------------------------------------------------------------
# Install side (selfupdate.install, selfupdate.app)

TYPE_CHECKING = False  # no typing import at run time: this module is on the start-up path
if TYPE_CHECKING:
    from pathlib import Path


class InstallError(SelfUpdateError):
    """The installed program could not be updated or rolled back; nothing was changed
    (directory not writable, no space left, ...). Raised by :mod:`selfupdate.install`."""


class UpdateInProgressError(InstallError):
    """Another process holds the update lock of this installed file."""


class KnownBadError(InstallError):
    """The release offered failed its trial before (or was rolled back from: then it is a
    :class:`HeldReleaseError`); it is not tried again until a newer one is published or
    ``update --force`` asks for it.

    Attributes:
        version: the release's version.
        reason: ``"failed"``, ``"held"`` or ``"unknown"`` (recorded by an older updater).
    """

    def __init__(self, message: str, version: str, reason: str = "failed") -> None:
        super().__init__(message)
        self.version = version
        self.reason = reason


class TrialFailedError(InstallError):
    """The new build failed its trial run (``post-update``): the old build stays installed and
    the state was restored. Raised as such when the build's own migration or health check
    failed (the release is remembered as bad); as :class:`TrialIncompleteError` otherwise.

    Attributes:
        version: the build's version.
        log_path: the trial's output.
    """

    def __init__(self, message: str, version: str, log_path: Path) -> None:
        super().__init__(message)
        self.version = version
        self.log_path = log_path


class DownMigrationError(InstallError):
    """A down-migration of the running build raised during ``update --to OLDER``: the state was
    restored from its snapshot and nothing was installed. The older release is not to blame
    (it was never tried), so nothing is recorded about it.

    Attributes:
        version: the version whose down-migration failed.
        log_path: its output (the update's log).
    """

    def __init__(self, message: str, version: str, log_path: Path) -> None:
        super().__init__(message)
        self.version = version
        self.log_path = log_path


class TrialIncompleteError(TrialFailedError):
    """The trial could not finish for reasons that say nothing about the release (it could not
    be extracted or started, was killed, ran out of space, timed out): nothing was changed and
    the release is tried again at the next update."""


class NoPreviousBuildError(InstallError):
    """``rollback`` was asked for, but no previous build is kept."""


class UpdateInterrupted(InstallError):
    """Ctrl-C (SIGINT) arrived during an update; everything was left clean.

    An app turns it into the shell's status for SIGINT::

        except selfupdate.UpdateInterrupted as e:
            print(f"myapp: {e}", file=sys.stderr)
            return 130

    Attributes:
        done: the new build was already installed when it arrived (it runs from the next
            start); False: nothing was changed.
    """

    def __init__(self, message: str, *, done: bool) -> None:
        super().__init__(message)
        self.done = done


class HeldReleaseError(KnownBadError):
    """The release offered is one the operator rolled back from: it is *held*, no verdict on
    it. ``update --force`` tries it again; a newer release is offered as usual."""


class TrialTimeoutError(TrialIncompleteError):
    """The trial did not finish within its time limit (a slow disk, a slow migration): no
    verdict on the release, it is tried again at the next update.

    Attributes:
        timeout: the limit, in seconds.
    """

    def __init__(self, message: str, version: str, log_path: Path, timeout: float) -> None:
        super().__init__(message, version, log_path)
        self.timeout = timeout


class ReleaseNotFoundError(SelfUpdateError):
    """The version or channel asked for is not published for this app (``update --to``,
    ``update --channel``): nothing was changed.

    Attributes:
        app, channel: what the client follows.
        version: the version asked for, or None (the channel has no release at all).
        available: the versions published on the channel (``--to``), or the channels that
            have releases of the app (``--channel``).
    """

    def __init__(
        self, message: str, app: str, channel: str, version: str | None, available: list[str]
    ) -> None:
        super().__init__(message)
        self.app, self.channel, self.version, self.available = app, channel, version, available


class ServiceError(SelfUpdateError):
    """A service could not get its listening sockets (:mod:`selfupdate.service`): an address
    that is not ``HOST:PORT``, one that cannot be bound, or a socket handed over (systemd
    socket activation, the previous build) that matches none of the requested addresses.

    Attributes:
        address: the address concerned (as given, or the inherited socket's), or "".
    """

    def __init__(self, message: str, address: str = "") -> None:
        super().__init__(message)
        self.address = address
