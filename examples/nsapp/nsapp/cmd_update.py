"""``nsapp update``, ``nsapp rollback``, ``nsapp serve`` and ``nsapp history``.

The self-update side of the example app: it declares itself to :mod:`selfupdate.app` (its state
directory, its migrations and health check from :mod:`nsapp.state`, how to make an update
client from the release configuration embedded in the build), which registers the reexec entry
points ``post-update`` and ``update-finish``. Cheap to import: ``tuf``, ``requests`` and
``cryptography`` load only inside ``update``.
"""

from __future__ import annotations

import os
import sys

from nsapp import state
from nsapp._version import VERSION
from selfupdate import app as su

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

PROG = "nsapp"


def _client(repo_url: str | None, channel: str | None = None) -> Any:
    """An UpdateClient for this build's embedded trusted root, repository URL and channel
    (``channel``, from ``update --channel`` or the one it remembered, instead when given)."""
    from selfupdate import build_info
    from selfupdate.errors import InstallError

    info = build_info()
    root = info.trusted_root if info is not None else None
    if root is None:
        raise InstallError(
            "this build has no embedded trusted root, so it cannot verify updates; build it "
            "with selfupdate build --trusted-root ROOT.json --repo-url URL"
        )
    assert info is not None  # it had a root
    url = repo_url or info.repo_url
    if not url:
        raise InstallError(
            "this build has no release repository URL; pass --repo URL or build it with "
            "selfupdate build --repo-url URL"
        )
    from selfupdate.releases.client import UpdateClient

    return UpdateClient(PROG, url, root, channel=channel or info.channel,
                        cache_dir=state.state_dir() / "tuf-cache", state_dir=state.state_dir())


su.configure(PROG, VERSION, state_dir=state.state_dir, client=_client)
su.migration("2.0.0")(state.migrate_to_2)
su.migration("3.0.0")(state.migrate_to_3)
su.down_migration("2.0.0")(state.downgrade_from_2)  # `update --to 1.x` from 2.x or later
su.health_check(state.check)
# The app-start hook (finish or undo an interrupted update; mark this build's extraction in
# use). nsapp's main imports its command modules first thing, before reexec_core.init(); the
# hook itself returns at once in a registered child.
su.at_start()


def _fail(what: str, e: BaseException | str) -> int:
    """Report the failure of the command ``what`` in one sentence; with ``-v``, the causes
    chained to ``e`` underneath (e.g. why TUF refused), one line each. Returns 1."""
    from nsapp import cli

    print(f"{PROG} {what}: {e}", file=sys.stderr)
    if cli.VERBOSE and isinstance(e, BaseException):
        for line in cli.causes(e):
            print(line, file=sys.stderr)
    return 1


def run_update(ns: argparse.Namespace) -> int:
    """``nsapp update [--check [--json]] [--force] [--to VERSION] [--channel NAME] [--repo URL]``.

    Exit status: 0 done (with ``--check``: nothing to install), 100 with ``--check``: an
    update is available, 1 an error or a refusal (one sentence on stderr), 130 Ctrl-C.
    """
    from selfupdate.errors import SelfUpdateError, UpdateInterrupted

    quiet = getattr(ns, "quiet", False)
    if ns.json and not ns.check:
        print(f"{PROG} update: --json goes with --check", file=sys.stderr)
        return 2
    choice = {"to": ns.to, "channel": ns.channel}
    repo = " ".join(ns.repo) if ns.repo else None  # mirrors, in order (selfupdate._mirrors)
    try:
        if ns.check:
            return _report_check(su.update(repo, check_only=True, **choice), ns.json)
        # -q: the new build is not exec'd to say what changed (it runs from the next start).
        out = su.update(repo, say=None if quiet else lambda msg: print(msg, flush=True),
                        handover="none" if quiet else "finish", force=ns.force, **choice)
    except UpdateInterrupted as e:  # Ctrl-C: left clean, the shell's status for SIGINT
        print(f"{PROG}: {e}", file=sys.stderr)
        return 130
    except SelfUpdateError as e:
        return _fail("update", e)
    except OSError as e:
        return _fail("update", f"{e.strerror or e} ({e.filename or 'no file'})")
    _served(out.extra.get("served"))
    if quiet:
        return 0
    if out.status == "up-to-date":
        print(_rollout(out.extra.get("rollout"))
              or f"{PROG} {VERSION} is up to date{_withdrawn(out.extra.get('withdrawn'))}")
    else:
        print(f"{PROG} updated {out.old} -> {out.new}; it runs from the next start")
    return 0


def _withdrawn(w: Any) -> str:
    """The end of a sentence saying the installed version was withdrawn (or "")."""
    if w is None:
        return ""
    why = f" ({w.reason})" if w.reason else ""
    return (f", but its publisher withdrew {w.version} on {w.withdrawn[:10]}{why}: wait for a "
            f"newer release or install another with `{PROG} update --to VERSION`")


def _rollout(w: Any) -> str:
    """The sentence for a newer release this machine is not offered yet (or "")."""
    if w is None:
        return ""
    if w.paused:
        return (f"{PROG} {w.version} is not offered: its publisher paused its rollout (at "
                f"{w.percent}%), so this machine stays on {VERSION} until it resumes")
    return (f"{PROG} {w.version} is rolling out ({w.percent}%); this machine is not in it yet "
            f"(running {VERSION})")


def _served(served: Any) -> None:
    """With -v and several mirrors: which one served what (stderr)."""
    from nsapp import cli

    if cli.VERBOSE and served:
        print(f"{PROG}: " + ", ".join(f"{k} from {v}" for k, v in sorted(served.items())),
              file=sys.stderr)


def _report_check(out: Any, as_json: bool) -> int:
    """``update --check``: one line (or JSON object); 0 nothing to install, 100 an update."""
    import json

    verdict, w = out.extra.get("verdict"), out.extra.get("withdrawn")
    if out.status == "up-to-date":
        status = "withdrawn" if w is not None else "up-to-date"
    elif verdict is not None:
        status = "failed" if verdict.reason == "failed" else "held"
    else:
        status = "available"
    notes, ro = out.extra.get("notes"), out.extra.get("rollout")
    download = out.extra.get("download")
    _served(out.extra.get("served"))
    if as_json:
        print(json.dumps({
            "app": PROG, "installed": VERSION, "available": out.new, "status": status,
            "channel": out.extra.get("channel"), "notes": notes,
            "download": None if download is None else {
                k: download[k] for k in ("bytes", "full", "delta")},
            "detail": verdict.detail if verdict is not None else None,
            "withdrawn": None if w is None else {"when": w.withdrawn, "reason": w.reason},
            "rollout": None if ro is None else {"version": ro.version, "percent": ro.percent,
                                                "paused": ro.paused},
        }))
    elif out.status == "up-to-date":
        print(_rollout(ro) or f"{PROG} {VERSION} is up to date{_withdrawn(w)}")
    else:
        line = f"{PROG} {out.new} is available (running {VERSION})"
        if status == "held":
            line += f", but you rolled back from it: `{PROG} update --force` installs it"
        elif status == "failed":
            when = f" on {verdict.when[:10]}" if verdict.when else ""
            what = f" ({verdict.detail})" if verdict.detail else ""
            line += (f", but it failed its trial run{when}{what} and is not tried again: "
                     f"`{PROG} update --force` tries it again")
        if w is not None:
            line += f"; the running {VERSION} was withdrawn by its publisher"
        if download is not None and status == "available":
            line += f"; the update downloads {download['said']}"
        print(line)
        for text in (notes or "").splitlines():
            print(f"  {text}")
    return 100 if status == "available" else 0


def run_rollback(ns: argparse.Namespace) -> int:
    """``nsapp rollback``."""
    from selfupdate.errors import SelfUpdateError

    try:
        version = su.rollback()
    except SelfUpdateError as e:
        return _fail("rollback", e)
    if not getattr(ns, "quiet", False):
        print(f"{PROG} rolled back {VERSION} -> {version}; state restored to what {version} "
              f"had; {VERSION} is held (`{PROG} update --force` installs it again)")
    return 0


def run_serve(ns: argparse.Namespace) -> int:
    """``nsapp serve --listen HOST:PORT [--auto-update SECONDS]``: a small HTTP service that
    updates itself without dropping a request; without ``--listen``, log ``pid=N version=V``
    every second."""
    try:
        state.record("serve")
    except OSError as e:
        return _fail("serve", f"cannot write the history in {state.state_dir()} ({e.strerror})")
    if ns.listen:
        from selfupdate import service
        from selfupdate.errors import SelfUpdateError

        try:
            return service.serve_http(_handler(), ns.listen, auto_update=ns.auto_update,
                                      repo_url=ns.repo, drain_timeout=ns.drain_timeout)
        except SelfUpdateError as e:
            return _fail("serve", e)
    import time

    if ns.auto_update is not None:
        su.start_auto_update(ns.auto_update, ns.repo)
    n = 0
    while ns.count is None or n < ns.count:
        print(f"pid={os.getpid()} version={VERSION}", flush=True)
        n += 1
        time.sleep(ns.interval)
    return 0


def _handler() -> type:
    """The HTTP handler of ``serve --listen``: what a user's own service looks like."""
    import json
    import time
    from urllib.parse import parse_qs, urlsplit

    from selfupdate import service

    class Handler(service.RequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            url = urlsplit(self.path)
            if url.path == "/":
                self._json(200, {"app": PROG, "version": VERSION, "pid": os.getpid()})
            elif url.path == "/history":
                self._json(200, {"version": VERSION, "entries": state.read()})
            elif url.path == "/healthz":
                self._json(200, {"ok": True})
            elif url.path == "/sleep":  # a slow request: shows one in flight surviving an update
                seconds = parse_qs(url.query).get("seconds", ["1"])[0]
                try:
                    time.sleep(min(max(float(seconds), 0.0), 30.0))
                except ValueError:
                    self._json(400, {"error": f"seconds={seconds!r} is not a number"})
                    return
                self._json(200, {"app": PROG, "version": VERSION, "pid": os.getpid()})
            else:
                self._json(404, {"error": f"no such path: {url.path}"})

        def _json(self, status: int, doc: object) -> None:
            body = json.dumps(doc, default=str).encode() + b"\n"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def run_history(ns: argparse.Namespace) -> int:
    """``nsapp history [--add EVENT] [--json]``: show (or extend) the state the migrations
    convert. With ``-q`` and ``--add``, nothing is shown; ``--json`` is shown even with ``-q``."""
    try:
        if ns.add:
            state.record(ns.add)
        if ns.add and getattr(ns, "quiet", False) and not ns.json:
            return 0
        d = state.state_dir()
        files = sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        entries = state.read(d)
    except BrokenPipeError:
        raise  # the reader went away: main ends quietly
    except (OSError, ValueError) as e:
        return _fail("history", e)
    if ns.json:
        import json

        # The shape is documented in docs/update.md ("nsapp history --json").
        doc = {"app": PROG, "version": VERSION, "state_dir": str(d),
               "format": state.format_of(VERSION), "files": files, "entries": entries}  # fmt: skip
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print(f"{PROG} {VERSION}: state dir {d}, format {state.format_of(VERSION)}: "
          f"{', '.join(files) or 'empty'}")
    for entry in entries:
        print("  " + " ".join(f"{k}={v}" for k, v in entry.items()))
    return 0


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0 (0 would spin, a negative one crash)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _url(text: str) -> str:
    """argparse type of --repo: one URL (repeated --repo lists mirrors; they are joined
    with spaces, the framework's list separator: no URL holds a raw space)."""
    import argparse

    if not text.strip() or len(text.split()) != 1:
        raise argparse.ArgumentTypeError(f"expected one URL or directory, got {text!r}")
    return text.strip()


def _count(text: str) -> int:
    import argparse

    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``update``, ``rollback``, ``serve`` and ``history`` to the app's parser."""
    p = subparsers.add_parser(
        "update",
        help="update this program in place to the newest verified release",
        description="Download the newest signed release, try it (migrations and health check) "
        "before installing it, switch atomically and continue in the new build (same PID).",
        epilog="examples:\n"
        "  nsapp update --check --json   # is there one? exit 0: no, 100: yes\n"
        "  nsapp update                  # install the newest\n"
        "  nsapp update --to 2.0.0       # this published version (also an older one)\n"
        "  nsapp update --channel beta   # follow beta from now on\n"
        "  nsapp update --force          # try a held or failed release again\n"
        "exit status: 0 done (--check: nothing to install), 100 (--check) an update is "
        "available, 1 error or refusal, 130 interrupted\n",
    )
    p.add_argument("--check", action="store_true",
                   help="only say whether an update exists (and show its release notes); exit "
                   "status 0: nothing to install, 100: an update is available, 1: error")
    p.add_argument("--json", action="store_true",
                   help="with --check: print one JSON object (app, installed, available, "
                   "status, channel, notes, download, detail, withdrawn)")
    p.add_argument("--force", action="store_true",
                   help="try a release you rolled back from, or that failed its trial, again")
    p.add_argument("--to", metavar="VERSION",
                   help="install this published version, also an older one (only this build's "
                   "down-migrations run)")
    p.add_argument("--channel", metavar="NAME",
                   help="follow this release channel, from now on (remembered)")
    p.add_argument("--repo", metavar="URL", action="append", type=_url,
                   help="release repository (default: built in); repeat it for mirrors, "
                   "tried in order")
    p.set_defaults(func=run_update)

    p = subparsers.add_parser(
        "rollback",
        help="put the previous build back, with its state",
        description="Put the build that ran before the last update back in place (after its "
        "health check), with the state it had; the build rolled back from is held: not "
        "reinstalled until a newer release or `update --force`.",
        epilog="example:\n  nsapp rollback                # then `nsapp update --force` "
        "tries the release again\n",
    )
    p.set_defaults(func=run_rollback)

    p = subparsers.add_parser(
        "serve",
        help="an HTTP service (--listen) that updates itself without dropping a request",
        description="With --listen: answer GET / with {app, version, pid} (also /history, "
        "/healthz, /sleep?seconds=N); SIGHUP checks for an update now, SIGTERM drains and "
        "exits; an update hands the listening sockets to the new build (same PID), no "
        "connection refused, no request cut. Without --listen: log 'pid=N version=V' every "
        "second. With --auto-update, move to new releases in place without changing PID.",
        epilog="examples:\n  nsapp serve --listen 127.0.0.1:8080 --auto-update 3600\n"
        "  -> checks about hourly (each wait within 10 % of it, so a fleet does not check\n"
        "     in lockstep); an update continues in the new build with the same PID\n"
        "  kill -HUP PID                 # check now (also after `nsapp rollback`: hand over)\n",
    )
    p.add_argument("--listen", action="append", metavar="HOST:PORT",
                   help="serve HTTP on this address (repeatable; sockets handed over by "
                   "systemd are used first)")
    p.add_argument("--drain-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                   help="at most this long to finish requests in flight before a handover "
                   "or exit (default 30)")
    p.add_argument("--auto-update", type=_seconds, metavar="SECONDS",
                   help="check for updates about every SECONDS seconds (> 0)")
    p.add_argument("--repo", metavar="URL", help="release repository (default: built in)")
    p.add_argument("--interval", type=_seconds, default=1.0, help=argparse_suppress())
    p.add_argument("--count", type=_count, default=None, help=argparse_suppress())
    p.set_defaults(func=run_serve)

    p = subparsers.add_parser(
        "history",
        help="show the app's state (a history whose format changes between versions)",
        description="Show the history file in the state directory ($NSAPP_STATE_DIR).",
        epilog="examples:\n  nsapp history --add deployed\n"
        "  nsapp history --json | jq -r '.entries[-1].event'",
    )
    p.add_argument("--add", metavar="EVENT", help="append an event first")
    p.add_argument(
        "--json", action="store_true", help="one JSON object on stdout (docs/update.md)"
    )
    p.set_defaults(func=run_history)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS
