"""``selfupdate``: the publisher's command line (also ``python -m selfupdate``).

::

    selfupdate init    --keys KEYS_DIR --repo REPO_DIR --app NAME [--expires ROLE=DAYS ...]
    selfupdate publish --keys KEYS_DIR --repo REPO_DIR FILE --version V [--channel CHANNEL]
    selfupdate refresh --keys KEYS_DIR --repo REPO_DIR
    selfupdate rotate  --keys KEYS_DIR --repo REPO_DIR --role ROLE
    selfupdate status  --repo REPO_DIR [--check]
    selfupdate build   [PROJECT_DIR] [--entry-point MOD:FN] [--version V] [--out PATH]
                       [--trusted-root FILE] [--repo-url URL] [--channel NAME]

Errors print one sentence on stderr and exit 1 (2 for usage errors and for a build that cannot
be made as asked), never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "selfupdate"
ROLES = ("root", "targets", "snapshot", "timestamp")


def _expiry(text: str) -> tuple[str, int]:
    role, sep, days = text.partition("=")
    if not sep or role not in ROLES or not days.isdigit() or int(days) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected ROLE=DAYS with ROLE one of {', '.join(ROLES)} and DAYS > 0, got {text!r}"
        )
    return role, int(days)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Publish signed releases (TUF metadata) as a static repository.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {_own_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, keys: bool = True) -> None:
        if keys:
            sp.add_argument(
                "--keys", type=Path, required=True, metavar="KEYS_DIR", help="signing keys"
            )
        sp.add_argument(
            "--repo", type=Path, required=True, metavar="REPO_DIR", help="repository directory"
        )

    def expires(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--expires",
            type=_expiry,
            action="append",
            default=[],
            metavar="ROLE=DAYS",
            help="expiry period of a role's metadata, in days (repeatable)",
        )

    sp = sub.add_parser("init", help="create keys and an empty repository")
    common(sp)
    sp.add_argument(
        "--app", required=True, help="application name, as the app's update client asks for it"
    )
    expires(sp)

    sp = sub.add_parser("publish", help="add a build as a new release")
    common(sp)
    sp.add_argument("file", type=Path, metavar="FILE", help="the build to publish (e.g. a .pyz)")
    sp.add_argument("--version", required=True, help="PEP 440 version of the build")
    sp.add_argument("--channel", default="stable", help="release channel (default: stable)")
    sp.add_argument("--app", default=None, help="application name (default: the one of init)")
    expires(sp)

    sp = sub.add_parser("refresh", help="re-sign snapshot and timestamp (run from cron)")
    common(sp)
    expires(sp)

    sp = sub.add_parser("rotate", help="replace a role's signing key")
    common(sp)
    sp.add_argument("--role", required=True, choices=ROLES, help="role whose key to replace")
    expires(sp)

    sp = sub.add_parser("status", help="roles, versions, expiry dates, releases")
    common(sp, keys=False)
    sp.add_argument(
        "--check", action="store_true", help="exit 1 if anything needs attention (for cron)"
    )
    from selfupdate.build import _cli as build_cli

    sp = sub.add_parser(
        "build",
        help="pack an app's pyproject.toml into one reproducible .pyz",
        description="Pack an app (its pyproject.toml) and its dependencies into one "
        "reproducible shiv .pyz, with the release configuration embedded.",
        epilog=build_cli.EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build_cli.add_arguments(sp)
    return p


def _own_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("reexec-selfupdate")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _build(ns: argparse.Namespace) -> int:
    from selfupdate.build import BuildError, run
    from selfupdate.build._cli import options_from

    try:
        opts = options_from(ns)
    except BuildError as e:
        print(f"{PROG} build: {e}", file=sys.stderr)
        return 2
    return run(opts)


def _run(ns: argparse.Namespace) -> int:
    if ns.command == "build":
        return _build(ns)
    from selfupdate.releases import publish

    days = dict(getattr(ns, "expires", []) or [])
    if ns.command == "init":
        root = publish.init(ns.keys, ns.repo, ns.app, expiry_days=days)
        print(f"created repository {ns.repo} and keys in {ns.keys}")
        print(f"trusted root to embed in builds: {root}")
    elif ns.command == "publish":
        result = publish.publish(
            ns.keys,
            ns.repo,
            ns.file,
            ns.version,
            channel=ns.channel,
            app=ns.app,
            expiry_days=days,
        )
        for w in result.warnings:
            print(f"{PROG}: warning: {w}; published it anyway", file=sys.stderr)
        r = result.release
        print(f"published {r.app} {r.version} on channel {r.channel} as {r.target_path}")
    elif ns.command == "refresh":
        publish.refresh(ns.keys, ns.repo, expiry_days=days)
        print(f"re-signed snapshot and timestamp of {ns.repo}")
    elif ns.command == "rotate":
        keyid = publish.rotate(ns.keys, ns.repo, ns.role, expiry_days=days)
        print(f"replaced the {ns.role} key; new key id {keyid}")
    elif ns.command == "status":
        st = publish.status(ns.repo)
        for role in st.roles:
            print(
                f"{role.role:<10} v{role.version:<5} expires {role.expires:%Y-%m-%d %H:%M}Z  "
                f"keys {len(role.keyids)} threshold {role.threshold}"
            )
        if not st.releases:
            print("no releases")
        for (app, channel), rels in sorted(st.releases.items()):
            versions = ", ".join(x.version for x in rels)
            print(f"{app} {channel}: {versions} (newest {rels[-1].version})")
        for w in st.warnings:
            print(f"{PROG}: warning: {w}", file=sys.stderr)
        if ns.check and st.warnings:
            return 1
    return 0


def _os_error_sentence(e: OSError) -> str:
    """One sentence for an error of the file system: where, what, and a fix that fits it
    (a full disk is not fixed by checking permissions)."""
    where = f"{e.filename}: " if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space and run the command again (nothing was half-written)"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "check the permissions of the paths you passed"
    else:
        fix = "check the paths you passed"
    return f"{where}{e.strerror or e}: {fix}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``selfupdate`` console script. Returns the exit status."""
    ns = _parser().parse_args(argv)
    from selfupdate.errors import SelfUpdateError

    try:
        return _run(ns)
    except SelfUpdateError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{PROG}: error: {_os_error_sentence(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
