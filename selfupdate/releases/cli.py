"""``selfupdate``: the publisher's command line (also ``python -m selfupdate``).

::

    selfupdate init    --keys KEYS_DIR --repo REPO_DIR --app NAME [--expires ROLE=DAYS ...]
    selfupdate publish --keys KEYS_DIR --repo REPO_DIR FILE [--version V] [--channel CHANNEL]
                       [--app NAME] [--notes FILE|TEXT] [--allow-downgrade] [--deltas N]
                       [--rollout PERCENT [--rollout-step P --rollout-every DURATION]]
                       [--critical]
    selfupdate rollout --keys KEYS_DIR --repo REPO_DIR APP VERSION --percent P|--pause|--resume
                       [--rollout-step P --rollout-every DURATION] [--channel C]
    selfupdate yank    --keys KEYS_DIR --repo REPO_DIR APP VERSION [--channel C] [--reason TEXT]
    selfupdate prune   --keys KEYS_DIR --repo REPO_DIR --keep N [--dry-run]
    selfupdate refresh --keys KEYS_DIR --repo REPO_DIR
    selfupdate rotate  --keys KEYS_DIR --repo REPO_DIR --role ROLE
    selfupdate status  --repo REPO_DIR [--check] [--json]
    selfupdate build   [PROJECT_DIR] [--entry-point MOD:FN] [--version V] [--out PATH]
                       [--trusted-root FILE] [--repo-url URL] [--channel NAME]

``--keys`` and ``--repo`` default to ``$SELFUPDATE_KEYS`` and ``$SELFUPDATE_REPO``; ``-q``
prints nothing on success, ``-v`` also says what was checked and, on an error, its causes.

Exit status: 0 done; 1 an error (one sentence on stderr, never a traceback; ``status --check``:
something needs attention); 2 a usage error, or a refusal (the build, version or release is
not what the command was asked for: nothing was written); 130 interrupted. A closed standard
output (``selfupdate status | head -1``) ends the output quietly and keeps the exit status.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from datetime import datetime

    from selfupdate.releases.publish import Status

from selfupdate.releases import _rollout_cli as _rc

PROG = "selfupdate"
ROLES = ("root", "targets", "snapshot", "timestamp")
KEYS_ENV, REPO_ENV = "SELFUPDATE_KEYS", "SELFUPDATE_REPO"
_NOTES_SUFFIXES = (".md", ".txt", ".rst")

EPILOG = f"""examples:
  selfupdate init --keys ~/hello-keys --repo ./repo --app hello
  selfupdate publish --keys ~/hello-keys --repo ./repo dist/hello-2.0.0.pyz

{KEYS_ENV} and {REPO_ENV} are the defaults of --keys and --repo.
exit status: 0 done, 1 error, 2 usage error or refusal (nothing written), 130 interrupted
"""
EXAMPLES = {
    "init": "selfupdate init --keys ~/hello-keys --repo ./repo --app hello\n"
    "  -> prints ./repo/metadata/root.json: pass it to `selfupdate build --trusted-root`",
    "publish": "selfupdate publish --keys ~/hello-keys --repo ./repo dist/hello-2.0.0.pyz \\\n"
    "      --notes 'Fixes the greeting.'\n"
    "  -> app, version and trusted root are read from the build itself and checked",
    "yank": "selfupdate yank --keys ~/hello-keys --repo ./repo hello 2.1.0 "
    "--reason 'corrupts the cache'\n"
    "  -> no client is offered 2.1.0 any more; clients already on it keep it",
    "rollout": "selfupdate rollout --keys ~/hello-keys --repo ./repo hello 2.1.0 --percent 50\n"
    "  selfupdate rollout --keys ~/hello-keys --repo ./repo hello 2.1.0 --pause\n"
    "  -> clients see it at their next check; machines already on 2.1.0 keep it",
    "prune": "selfupdate prune --keys ~/hello-keys --repo ./repo --keep 3 --dry-run\n"
    "  -> lists what `--keep 3` would remove (the 3 newest per app and channel stay)",
    "refresh": "selfupdate refresh --keys ~/hello-keys --repo ./repo     # daily, from cron",
    "rotate": "selfupdate rotate --keys ~/hello-keys --repo ./repo --role timestamp",
    "status": "selfupdate status --repo ./repo --check || mail -s 'release repo' me < /dev/null\n"
    "  selfupdate status --repo ./repo --json | jq -r '.channels[].newest'",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (with where to find the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _expiry(text: str) -> tuple[str, int]:
    role, sep, days = text.partition("=")
    if not sep or role not in ROLES or not days.isdigit() or int(days) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected ROLE=DAYS with ROLE one of {', '.join(ROLES)} and DAYS > 0, got {text!r}"
        )
    return role, int(days)


def _at_least_one(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _whole_number(text: str) -> int:
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number (0 or more), got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Publish signed releases (TUF metadata) as a static repository.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"{PROG} {_own_version()}")
    _verbosity(p, suppress=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name,
            help=help_,
            description=help_[0].upper() + help_[1:] + ".",
            epilog="example:\n  " + EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _verbosity(sp, suppress=True)  # before or after the command name
        return sp

    def common(sp: argparse.ArgumentParser, keys: bool = True) -> None:
        for flag, env, meta, what in (
            ("--keys", KEYS_ENV, "KEYS_DIR", "signing keys"),
            ("--repo", REPO_ENV, "REPO_DIR", "repository directory"),
        ):
            if flag == "--keys" and not keys:
                continue
            default = os.environ.get(env) or None
            sp.add_argument(
                flag, type=Path, required=default is None, default=default, metavar=meta,
                help=f"{what} (default: ${env}" + (f", now {default})" if default else ")"),
            )  # fmt: skip

    def expires(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--expires",
            type=_expiry,
            action="append",
            default=[],
            metavar="ROLE=DAYS",
            help="expiry period of a role's metadata, in days (repeatable)",
        )

    def phases(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--rollout-step", type=_rc.percent, metavar="P",
                        help="with a rollout: add P percentage points every --rollout-every")
        sp.add_argument("--rollout-every", type=_rc.duration, metavar="DURATION",
                        help="the interval of --rollout-step: 30m, 12h, 2d (the clients' "
                        "clocks tell how far it has grown)")

    sp = command("init", "create keys and an empty repository")
    common(sp)
    sp.add_argument(
        "--app", required=True, help="application name, as the app's update client asks for it"
    )
    expires(sp)

    sp = command("publish", "check a build and add it as a new release")
    common(sp)
    sp.add_argument("file", type=Path, metavar="FILE", help="the build (made by selfupdate build)")
    sp.add_argument(
        "--version", help="PEP 440 version, if given must be the build's own (default: it)"
    )
    sp.add_argument("--channel", help="release channel (default: the one the build follows)")
    sp.add_argument("--app", default=None, help="application name (default: the one of init)")
    sp.add_argument(
        "--notes", metavar="FILE|TEXT",
        help="release notes shown by clients: a file (.md, .txt, .rst or a path) or the text",
    )  # fmt: skip
    sp.add_argument(
        "--allow-downgrade", action="store_true",
        help="publish a version older than the newest on the channel (clients on a newer one "
        "are not offered it)",
    )  # fmt: skip
    phases(sp)
    sp.add_argument(
        "--rollout", type=_rc.percent, metavar="PERCENT",
        help="offer it to this share of the machines first (1-100; `selfupdate rollout` "
        "raises it, pauses or resumes)",
    )  # fmt: skip
    sp.add_argument("--critical", action="store_true",
                    help="offer it to every machine at once (no phases)")
    sp.add_argument(
        "--deltas", type=_whole_number, default=3, metavar="N",
        help="also publish deltas to this build from the N newest releases before it on the "
        "channel, so clients on them download only what changed (default 3; 0: none)",
    )  # fmt: skip
    expires(sp)

    sp = command("rollout", "change the share of machines a release is offered to")
    common(sp)
    sp.add_argument("app", metavar="APP", help="application name")
    sp.add_argument("release_version", metavar="VERSION", help="the release")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--percent", type=_rc.percent, metavar="P",
                   help="offer it to P %% of the machines (100: to all)")
    g.add_argument("--pause", action="store_true",
                   help="offer it to no machine that has not installed it")
    g.add_argument("--resume", action="store_true", help="continue a paused rollout")
    phases(sp)
    sp.add_argument("--channel", help="only on this channel (default: every channel with it)")
    expires(sp)

    sp = command("yank", "withdraw a release: no client is offered it any more")
    common(sp)
    sp.add_argument("app", metavar="APP", help="application name")
    sp.add_argument("release_version", metavar="VERSION", help="the version to withdraw")
    sp.add_argument("--channel", help="only on this channel (default: every channel with it)")
    sp.add_argument("--reason", help="one line, signed with the withdrawal, shown to clients")
    expires(sp)

    sp = command("prune", "remove old releases no client can be offered")
    common(sp)
    sp.add_argument(
        "--keep", type=_at_least_one, required=True, metavar="N",
        help="releases to keep per app and channel, newest first (at least 1)",
    )  # fmt: skip
    sp.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    expires(sp)

    sp = command("refresh", "re-sign snapshot and timestamp (run from cron)")
    common(sp)
    expires(sp)

    sp = command("rotate", "replace a role's signing key")
    common(sp)
    sp.add_argument("--role", required=True, choices=ROLES, help="role whose key to replace")
    expires(sp)

    sp = command("status", "roles, versions, expiry dates, releases")
    common(sp, keys=False)
    sp.add_argument(
        "--check", action="store_true", help="exit 1 if anything needs attention (for cron)"
    )
    sp.add_argument(
        "--json", action="store_true", help="one JSON object on stdout (docs/releases.md)"
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


def _verbosity(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    # A command's own -q/-v must not reset what was given before the command name.
    default: Any = argparse.SUPPRESS if suppress else False
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="print nothing on success (warnings and errors still go to stderr)")
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="say what was checked, and the causes of an error")  # fmt: skip


def _own_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("reexec-selfupdate")
    except metadata.PackageNotFoundError:
        return "(not installed)"


class _Out:
    """Standard output, line by line, for a reader that may go away (``| head -1``): once
    the pipe is closed the rest is dropped and the command finishes as it would have."""

    def __init__(self, quiet: bool, stream: IO[str] | None = None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.closed = False

    def data(self, text: str) -> None:
        """What the command was asked for (``--json``): printed even with ``-q``."""
        if self.closed:
            return
        try:
            print(text, file=self.stream, flush=True)
        except BrokenPipeError:
            self.closed = True
            _stdout_to_devnull()

    def info(self, text: str) -> None:
        if not self.quiet:
            self.data(text)


def _stdout_to_devnull() -> None:
    # The interpreter flushes stdout again at exit: point it at /dev/null so that flush
    # cannot fail with a second "Broken pipe" (Python docs, "Note on SIGPIPE").
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _warn(text: str) -> None:
    print(f"{PROG}: warning: {text}", file=sys.stderr)


def _build(ns: argparse.Namespace) -> int:
    from selfupdate.build import BuildError, run
    from selfupdate.build._cli import options_from

    try:
        opts = options_from(ns)
    except BuildError as e:
        print(f"{PROG} build: {e}", file=sys.stderr)
        return 2
    return run(opts)


def _notes(arg: str | None) -> str | None:
    """``--notes FILE|TEXT``: the contents of an existing file, else the text itself (a
    missing file that looks like one, ``notes.md`` or ``a/b``, is an error, not the text)."""
    from selfupdate.errors import PublishError
    from selfupdate.releases._trust import MAX_NOTES_BYTES

    if arg is None:
        return None
    path = Path(arg)
    try:
        is_file = "\n" not in arg and path.is_file()
    except OSError:  # ENAMETOOLONG, ...: not a file name, so the text itself
        is_file = False
    if not is_file:
        if "\n" not in arg and (os.sep in arg or path.suffix.lower() in _NOTES_SUFFIXES):
            raise PublishError(f"the notes file {arg} does not exist: pass a file or the text")
        return arg
    with open(path, "rb") as f:
        data = f.read(MAX_NOTES_BYTES + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PublishError(f"the notes file {arg} is not UTF-8 text: convert it") from None


def _run(ns: argparse.Namespace, out: _Out) -> int:
    if ns.command == "build":
        return _build(ns)
    from selfupdate.releases import publish

    days = dict(getattr(ns, "expires", []) or [])
    if ns.command == "init":
        root = publish.init(ns.keys, ns.repo, ns.app, expiry_days=days)
        out.info(f"created repository {ns.repo} and keys in {ns.keys}")
        out.info(f"trusted root to embed in builds: {root}")
    elif ns.command == "publish":
        result = publish.publish_build(
            ns.keys,
            ns.repo,
            ns.file,
            version=ns.version,
            channel=ns.channel,
            app=ns.app,
            notes=_notes(ns.notes),
            allow_downgrade=ns.allow_downgrade,
            expiry_days=days,
            rollout=ns.rollout,
            schedule=_rc.schedule(ns),
            critical=ns.critical,
            deltas=ns.deltas,
        )
        for w in result.warnings:
            _warn(f"{w}; published it anyway")
        r = result.release
        if ns.verbose and result.build is not None:
            out.info(
                f"checked {ns.file}: a build of {result.build.app} {result.build.version} "
                f"(channel {result.build.channel}) embedding a root of {ns.repo}"
            )
        phase = " to every machine at once (critical)" if ns.critical else (
            f" to {ns.rollout}% of the machines first" if ns.rollout not in (None, 100) else "")
        out.info(f"published {r.app} {r.version} on channel {r.channel} as {r.target_path}"
                 f"{phase}")
        for path, length in result.deltas:
            out.info(f"published the delta {path}: {length} bytes instead of {r.length}")
    elif ns.command == "rollout":
        for change in publish.set_rollout(
            ns.keys, ns.repo, ns.app, ns.release_version, percent=ns.percent, pause=ns.pause,
            resume=ns.resume, step=ns.rollout_step, every=ns.rollout_every, channel=ns.channel,
            expiry_days=days,
        ):  # fmt: skip
            if change.warning:
                _warn(change.warning)
            out.info(_rc.rollout_line(change))
    elif ns.command == "yank":
        done = publish.yank(
            ns.keys, ns.repo, ns.app, ns.release_version, channel=ns.channel, reason=ns.reason,
            expiry_days=days,
        )  # fmt: skip
        if not done:
            out.info(f"{ns.app} {ns.release_version} was already withdrawn: nothing changed")
        for gone in done:
            out.info(
                f"withdrew {gone.app} {gone.version} on channel {gone.channel} "
                f"({gone.target_path})"
            )
    elif ns.command == "prune":
        removed = publish.prune(ns.keys, ns.repo, ns.keep, dry_run=ns.dry_run, expiry_days=days)
        verb = "would remove" if ns.dry_run else "removed"
        for path in removed:
            out.info(f"{verb} {path}")
        if not removed:
            out.info(f"nothing to remove: no channel has more than {ns.keep} releases")
    elif ns.command == "refresh":
        publish.refresh(ns.keys, ns.repo, expiry_days=days)
        out.info(f"re-signed snapshot and timestamp of {ns.repo}")
    elif ns.command == "rotate":
        keyid = publish.rotate(ns.keys, ns.repo, ns.role, expiry_days=days)
        out.info(f"replaced the {ns.role} key; new key id {keyid}")
    elif ns.command == "status":
        st = publish.status(ns.repo)
        if ns.json:
            out.data(json.dumps(_status_json(ns.repo, st), indent=2))
        else:
            _print_status(st, out)
        if ns.check and st.warnings:
            return 1
    return 0


def _print_status(st: Status, out: _Out) -> None:
    for role in st.roles:
        out.info(
            f"{role.role:<10} v{role.version:<5} expires {role.expires:%Y-%m-%d %H:%M}Z  "
            f"keys {len(role.keyids)} threshold {role.threshold}"
        )
    if not st.releases and not st.withdrawn:
        out.info("no releases")
    for app, channel in sorted({*st.releases, *st.withdrawn}):
        rels = st.releases.get((app, channel), [])
        line = f"{app} {channel}: "
        line += (
            f"{', '.join(x.version + _rc.phase(st, x) for x in rels)} (newest {rels[-1].version})"
            if rels else "-"
        )  # fmt: skip
        gone = st.withdrawn.get((app, channel), [])
        if gone:
            line += "; withdrawn: " + ", ".join(w.version for w in gone)
        out.info(line)
    for w in st.warnings:
        _warn(w)


def _status_json(repo: Path, st: Status) -> dict[str, Any]:
    """The ``status --json`` document (its shape is documented in docs/releases.md)."""

    def when(dt: datetime) -> str:
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ")

    channels: list[dict[str, Any]] = []
    for app, channel in sorted({*st.releases, *st.withdrawn}):
        rels = st.releases.get((app, channel), [])
        channels.append({
            "app": app,
            "channel": channel,
            "newest": rels[-1].version if rels else None,
            "releases": [
                {"version": r.version, "target_path": r.target_path, "length": r.length,
                 "sha256": r.sha256, "notes": r.notes, "rollout": _rc.rollout_json(st, r)}
                for r in rels
            ],
            "withdrawn": [
                {"version": w.version, "target_path": w.target_path,
                 "withdrawn": w.withdrawn, "reason": w.reason}
                for w in st.withdrawn.get((app, channel), [])
            ],
        })  # fmt: skip
    return {
        "format": 1,
        "repository": str(repo),
        "app": st.app,
        "roles": [
            {"role": r.role, "version": r.version, "expires": when(r.expires),
             "keyids": r.keyids, "threshold": r.threshold}
            for r in st.roles
        ],  # fmt: skip
        "channels": channels,
        "warnings": st.warnings,
    }


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


def _causes(e: BaseException) -> list[str]:
    """With ``-v``: what led to ``e``, one line each, without a traceback."""
    lines, seen = [], {id(e)}
    cause = e.__cause__ or e.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = " ".join(str(cause).split()) or "(no message)"
        lines.append(f"{PROG}: cause: {type(cause).__name__}: {text}")
        cause = cause.__cause__ or cause.__context__
    return lines


def _older(version: str, newest: str) -> bool:
    from selfupdate.releases._trust import parse_version

    return parse_version(version) < parse_version(newest)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``selfupdate`` console script. Returns the exit status."""
    parser = _parser()
    ns = parser.parse_args(argv)
    if getattr(ns, "quiet", False) and getattr(ns, "verbose", False):
        # The exclusive group sees one half of the line; `-q status -v` is both halves.
        parser.error("argument -v/--verbose: not allowed with argument -q/--quiet")
    from selfupdate.errors import SelfUpdateError, VersionNotNewerError
    from selfupdate.releases._archive import RefusedError

    verbose = bool(getattr(ns, "verbose", False))
    out = _Out(quiet=bool(getattr(ns, "quiet", False)))
    try:
        return _run(ns, out)
    except BrokenPipeError:  # output outside _Out (the build's): the reader went away
        _stdout_to_devnull()
        return 0
    except (SelfUpdateError, OSError) as e:
        if isinstance(e, SelfUpdateError):
            text = str(e)
            if isinstance(e, VersionNotNewerError) and _older(e.version, e.newest):
                text += " (or pass --allow-downgrade to publish an older one on purpose)"
        else:
            text = _os_error_sentence(e)
        print(f"{PROG}: error: {text}", file=sys.stderr)
        if verbose:
            for line in _causes(e):
                print(line, file=sys.stderr)
        return 2 if isinstance(e, RefusedError | VersionNotNewerError) else 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
