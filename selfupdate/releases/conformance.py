"""Client-under-test for the public TUF conformance suite.

Implements the CLI protocol of theupdateframework/tuf-conformance (``CLIENT-CLI.md``)
on top of python-tuf's ``ngclient`` and *our* transport, so that the suite checks
the same metadata workflow and the same fetcher that ``selfupdate`` ships::

    python -m selfupdate.conformance --metadata-dir DIR init TRUSTED_ROOT
    python -m selfupdate.conformance --metadata-dir DIR --metadata-url URL refresh
    python -m selfupdate.conformance --metadata-dir DIR --metadata-url URL \\
        --target-name PATH [--target-name PATH ...] \\
        --target-base-url URL --target-dir DIR download

Exit status (``CLIENT-CLI.md``): 0 when the command succeeded fully, 1 when any part
of it failed (2 for a usage error, from argparse). Tests the suite expects this client
to fail are listed in ``selfupdate/conformance.xfails``; see docs/conformance.md.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from selfupdate._durable import write_atomic, write_atomic_from

if TYPE_CHECKING:
    from tuf.ngclient.updater import Updater

    from selfupdate.releases._fetch import Fetcher

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1

log = logging.getLogger("selfupdate.conformance")


# init's copy of TRUSTED_ROOT, kept as the "embedded" root that every later run starts
# from (ngclient's bootstrap), as UpdateClient does with the root built into the program.
# Not a *.json name: the suite reads every *.json in METADATA_DIR as a trusted role.
BOOTSTRAP_ROOT = "bootstrap-root.json.orig"


class ConformanceError(Exception):
    """A command could not be completed; str() is one sentence for stderr."""


def init(metadata_dir: Path, trusted_root: Path) -> None:
    """Install ``trusted_root`` as the client's trusted root, with no network access.

    CLIENT-CLI.md expects no checks here: ngclient verifies the root (self-signed,
    threshold) when a later command loads it. Files are written atomically.

    Raises:
        OSError: the root cannot be read or ``metadata_dir`` cannot be written.
    """
    data = trusted_root.read_bytes()
    metadata_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(metadata_dir / BOOTSTRAP_ROOT, data)
    write_atomic(metadata_dir / "root.json", data)
    print(f"selfupdate conformance client: initialized {metadata_dir}")


def refresh(metadata_dir: Path, metadata_url: str) -> None:
    """Update the top-level metadata in ``metadata_dir`` by the TUF client workflow.

    Raises:
        ConformanceError: ``init`` was not run for ``metadata_dir``.
        tuf.api.exceptions.RepositoryError: metadata failed verification.
        tuf.api.exceptions.DownloadError: metadata could not be downloaded (our
            fetcher's errors are also ``selfupdate.errors.FetchError``).
        OSError: the local metadata cannot be read or written.
    """
    from selfupdate.releases._fetch import Fetcher

    _updater(metadata_dir, metadata_url, Fetcher()).refresh()
    print(f"selfupdate conformance client: refreshed metadata in {metadata_dir}")


def download(
    metadata_dir: Path,
    metadata_url: str,
    target_names: Sequence[str],
    target_dir: Path,
    target_base_url: str,
) -> None:
    """Download and verify each target in order with one updater; skip cached ones.

    Each target is fetched and verified by ``selfupdate.releases.client.download_verified`` (the
    code ``UpdateClient.download_to`` runs) into a temporary file, which is moved into
    place as ``target_dir/<URL-quoted target path>`` (ngclient's naming) once verified.

    Raises:
        ConformanceError: ``init`` was not run, or a target is not in the signed metadata.
        selfupdate.errors.SelfUpdateError: a target could not be fetched or failed
            verification.
        tuf.api.exceptions.RepositoryError: metadata failed verification.
        tuf.api.exceptions.DownloadError: metadata could not be downloaded.
        OSError: local files cannot be read or written.
    """
    from selfupdate.releases._fetch import Fetcher
    from selfupdate.releases.client import download_verified, trusted_set

    fetcher = Fetcher()
    updater = _updater(metadata_dir, metadata_url, fetcher)
    for name in target_names:
        info = updater.get_targetinfo(name)
        if info is None:
            raise ConformanceError(
                f"target {name!r} is not listed in the repository's signed metadata"
            )
        dest = target_dir / urllib.parse.quote(info.path, safe="")
        if updater.find_cached_target(info, str(dest)):
            print(f"selfupdate conformance client: {name} is already cached as {dest}")
            continue
        write = functools.partial(
            download_verified,
            fetcher,
            info,
            base_url=target_base_url.rstrip("/") + "/",
            # ngclient exposes the trusted root only through its trusted set, as in
            # UpdateClient.download_to.
            consistent_snapshot=bool(trusted_set(updater).root.consistent_snapshot),
        )
        write_atomic_from(dest, write)
        print(f"selfupdate conformance client: downloaded {name} as {dest}")


def _updater(metadata_dir: Path, metadata_url: str, fetcher: Fetcher) -> Updater:
    """Build an ngclient ``Updater`` on our fetcher, the way ``UpdateClient`` does.

    The root given to ``init`` is the bootstrap (the trust anchor, like the root built
    into the program); metadata cached in ``metadata_dir`` is used only after it
    verified against that root's chain.

    Raises:
        ConformanceError: ``init`` was not run for ``metadata_dir``.
    """
    from tuf.ngclient.updater import Updater

    try:
        bootstrap = (metadata_dir / BOOTSTRAP_ROOT).read_bytes()
    except FileNotFoundError:
        raise ConformanceError(
            f"{metadata_dir} holds no trusted root: run the init command first"
        ) from None
    return Updater(str(metadata_dir), metadata_url, fetcher=fetcher, bootstrap=bootstrap)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m selfupdate.conformance",
        description="Client-under-test for the TUF conformance suite (CLIENT-CLI.md).",
    )
    p.add_argument("--metadata-dir", type=Path, required=True, help="trusted local metadata")
    p.add_argument("--metadata-url", help="base URL of the repository's metadata")
    p.add_argument(
        "--target-name",
        action="append",
        default=[],
        help="TUF target path to download (repeatable; processed in order)",
    )
    p.add_argument("--target-base-url", help="base URL of the repository's targets")
    p.add_argument("--target-dir", type=Path, help="where downloaded targets are stored")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="{init,refresh,download}")
    p_init = sub.add_parser("init", help="trust TRUSTED_ROOT (no network access)")
    p_init.add_argument("trusted_root", type=Path, help="file holding the initial root.json")
    sub.add_parser("refresh", help="update top-level metadata from --metadata-url")
    sub.add_parser("download", help="download and verify every --target-name")
    return p


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Dispatch one parsed command; usage errors exit 2 through ``parser.error``."""
    if args.command == "init":
        init(args.metadata_dir, args.trusted_root)
        return
    if not args.metadata_url:
        parser.error(f"{args.command} needs --metadata-url")
    if args.command == "refresh":
        refresh(args.metadata_dir, args.metadata_url)
        return
    missing = [
        flag
        for flag, value in (
            ("--target-name", args.target_name),
            ("--target-base-url", args.target_base_url),
            ("--target-dir", args.target_dir),
        )
        if not value
    ]
    if missing:
        parser.error(f"download needs {', '.join(missing)}")
    download(
        args.metadata_dir,
        args.metadata_url,
        args.target_name,
        args.target_dir,
        args.target_base_url,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client-under-test CLI and return its exit status (0 ok, 1 failed)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level={0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG),
        format="%(name)s: %(levelname)s: %(message)s",
    )
    from tuf.api.exceptions import DownloadError, RepositoryError

    from selfupdate.errors import SelfUpdateError

    try:
        _run(args, parser)
    except (ConformanceError, SelfUpdateError, RepositoryError, DownloadError, OSError) as e:
        # One sentence on stderr; tracebacks are kept for bugs (STYLE.md §4).
        log.debug("%s failed", args.command, exc_info=True)
        why = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.strerror else e
        print(f"selfupdate conformance client: {args.command} failed: {why}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
