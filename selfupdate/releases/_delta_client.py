"""The client side of delta updates: download a delta instead of the whole build when one is
published from the installed file's exact bytes, rebuild the new build from the installed one,
and fall back to the full download, once, when anything about it goes wrong.

Used by the install flow (:mod:`selfupdate.install._staging`) for an
:class:`~selfupdate.releases.client.UpdateClient`; any other client downloads the whole build.

1. :func:`plan_download`: the sha256 of the installed file (read once, in chunks) is looked up
   among the signed deltas to the chosen release (:func:`selfupdate.releases._deltas.delta_for`:
   base length and hash, full target path and hash). No delta: the whole build.
2. :func:`download`: the delta is downloaded like any target (capped at its signed length,
   every signed hash checked) into the staging directory, then applied
   (:func:`selfupdate.releases._delta.apply_delta`) with the installed file as the base, into
   the staged file; the result must have the full target's signed length and every signed
   hash. Any failure (a download or verification error, a delta that does not apply, a full
   disk, ...) truncates the staged file and downloads the whole build instead, with one line
   saying why; that download is the last word (never a second delta, never a loop).

The staging directory is the install flow's: a crash while rebuilding leaves only staging
leftovers, which the journal's recovery removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from selfupdate import errors
from selfupdate.releases._delta import DeltaHeader, apply_delta, file_digest
from selfupdate.releases._deltas import Delta, delta_for
from selfupdate.releases._trust import Release, check_release, release_from_target
from selfupdate.releases.client import UpdateClient, download_verified, trusted_set

__all__ = ["DownloadPlan", "download", "human_size", "plan_download"]


@dataclass(frozen=True)
class DownloadPlan:
    """What an update of one installed file to ``release`` will download."""

    release: Release
    delta: Delta | None  # None: the whole build
    why_full: str = ""  # why there is no delta to use (for the message)

    @property
    def size(self) -> int:
        """Bytes that will really be downloaded (if nothing goes wrong)."""
        return self.delta.length if self.delta is not None else self.release.length

    def summary(self) -> dict[str, Any]:
        """For ``update --check``: bytes to download, the whole build's, delta or not, and
        :meth:`said`."""
        return {"bytes": self.size, "full": self.release.length,
                "delta": self.delta is not None, "said": self.said()}

    def said(self) -> str:
        """The size part of the "downloading ..." line."""
        full = human_size(self.release.length)
        if self.delta is not None:
            return f"{human_size(self.delta.length)} (a delta; the whole build is {full})"
        return f"{full} (the whole build: {self.why_full})" if self.why_full else full


def human_size(n: int) -> str:
    """``n`` bytes in a few digits: 812 B, 19.4 kB, 7.2 MB (SI units, as download tools)."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def plan_download(client: Any, release: Any, installed: Path) -> DownloadPlan | None:
    """The download plan for ``release`` over the file ``installed``, or None when ``client``
    is not an :class:`UpdateClient` (then the caller downloads the whole build as it always
    did). Never raises: a delta is only an optimisation.

    The installed file's sha256 is computed here, once; the delta must be published from
    exactly these bytes (a locally modified install gets the whole build).
    """
    if not isinstance(client, UpdateClient) or not isinstance(release, Release):
        return None
    try:
        updater = client._updater or client._refresh()
        targets = trusted_set(updater).targets.targets
        length, sha256 = file_digest(installed)
    except (OSError, errors.SelfUpdateError):
        return DownloadPlan(release, None, "the installed build could not be read")
    delta = delta_for(targets, release, length, sha256)
    if delta is not None:
        return DownloadPlan(release, delta)
    return DownloadPlan(release, None, "no delta from the installed build is published")


def download(
    client: Any,
    plan: DownloadPlan,
    fileobj: BinaryIO,
    installed: Path,
    scratch: Path,
    say: Callable[[str], None],
) -> None:
    """Write the release of ``plan`` into ``fileobj`` (empty, at its start): rebuilt from the
    delta and ``installed`` when the plan has a delta, else (or when that fails, after one
    line to ``say``) downloaded whole with :meth:`UpdateClient.download_to`.

    ``scratch`` is a private directory (the flow's staging directory) for the delta file,
    which is removed again.

    Raises:
        As :meth:`UpdateClient.download_to` (only the full download's errors reach the caller).
    """
    release = plan.release
    if plan.delta is not None and isinstance(client, UpdateClient):
        try:
            _rebuild(client, release, plan.delta, fileobj, installed, scratch)
            return
        except Exception as e:  # noqa: BLE001 - whatever went wrong, the full download decides
            reason = _reason(e)
        fileobj.seek(0)
        fileobj.truncate()
        say(f"the delta to {release.version} could not be used ({reason}): downloading the "
            f"whole build ({human_size(release.length)}) instead")
    client.download_to(release, fileobj)


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    text = str(e) or type(e).__name__
    return text.split(": ", 1)[0] if isinstance(e, errors.SelfUpdateError) else text


def _rebuild(
    client: UpdateClient,
    release: Release,
    delta: Delta,
    fileobj: BinaryIO,
    installed: Path,
    scratch: Path,
) -> None:
    updater = client._updater or client._refresh()
    ts = trusted_set(updater)
    info = ts.targets.targets.get(release.target_path)
    dinfo = ts.targets.targets.get(delta.target_path)
    # The same refusals as download_to's: only a listed release of this app and channel.
    why = check_release(release, _as_release(info), client.app, client.channel, client._current)
    if why is not None or info is None or dinfo is None:
        raise errors.WrongReleaseError(release.target_path, why or "it is not listed")

    path = scratch / "delta"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(path, flags, 0o600), "w+b") as df:
        try:
            label = f"{release.app} {release.version} (delta)"

            def fetch(base: str) -> None:
                download_verified(client.fetcher, dinfo, df, base_url=f"{base}/targets/",
                                  consistent_snapshot=bool(ts.root.consistent_snapshot),
                                  label=label)

            client.fetcher.each_mirror(label, fetch)  # each mirror in turn, as for the build
            df.seek(0)
            out = _Verifying(fileobj, info.hashes, info.path)
            with open(installed, "rb") as base:
                expect = DeltaHeader(delta.base_length, delta.base_sha256, info.length,
                                     release.sha256)
                apply_delta(df, base, out, expect)
            out.check(info.length)
        finally:
            path.unlink(missing_ok=True)
    fileobj.flush()


def _as_release(info: Any) -> Release | None:
    if info is None:
        return None
    with contextlib.suppress(ValueError):
        return release_from_target(info.path, info.length, info.hashes, info.custom)
    return None


class _Verifying:
    """Passes writes on to ``f`` while computing every signed hash of the full target."""

    def __init__(self, f: BinaryIO, hashes: dict[str, str], target_path: str) -> None:
        self.f, self.n, self.target_path, self.hashes = f, 0, target_path, hashes
        try:
            self.hashers = {alg: hashlib.new(alg) for alg in hashes}
        except ValueError:
            raise errors.TargetMismatchError(target_path, "an unsupported hash algorithm") from None

    def write(self, data: bytes) -> int:
        for h in self.hashers.values():
            h.update(data)
        self.n += len(data)
        return self.f.write(data)

    def check(self, length: int) -> None:
        """Raises TargetMismatchError unless what went through is the signed target."""
        if self.n != length:
            raise errors.TargetMismatchError(self.target_path, "the rebuilt file's length differs")
        for alg, h in self.hashers.items():
            if h.hexdigest() != self.hashes[alg]:
                raise errors.TargetMismatchError(
                    self.target_path, f"the rebuilt file's {alg} hash differs"
                )
