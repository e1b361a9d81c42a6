"""``nsapp run`` and ``nsapp shell``: a command, or ``/bin/sh``, in new Linux namespaces.

``nsapp run [--ns LIST] [--map-root | --map-current] [--subids] [--hostname NAME]
[--bind SRC:DST] [--ro-bind SRC:DST] [--tmpfs DST] [--root DIR] [SANDBOX FLAGS] -- CMD
[ARG...]`` runs CMD
inside (all the namespaces the caller can create by default, root inside mapped onto the
caller) and exits with its status; stdio and the terminal pass through. A refusal by the
kernel is one sentence on stderr and exit status 125 (126: CMD not executable, 127: not found),
as with ``docker run``/``podman run``. The sandbox flags are docker's names (``--memory``,
``--pids-limit``, ``--cpus``, ``--ulimit``, ``--seccomp``, ``--cap-drop``, ``--cap-add``,
``--no-new-privileges``), plus ``--landlock-ro``/``--landlock-rw``, ``--sandbox strict`` and
``--limits-best-effort``; a limit the command hit is one line on stderr.

Cheap to import (every start of the app imports it): ``reexec_core.namespaces`` loads nothing
heavy until it runs, and ``fast_main`` parses the common ``run`` line without argparse.
"""

from __future__ import annotations

import os
import sys

# Registers the entry point a threaded caller's setup process starts under; loads nothing
# heavy (the Linux calls load on first use).
from reexec_core import namespaces

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

PROMPT = "-[ns-process]- # "
SHELL = "/bin/sh"
#: Exit statuses of the runner itself (the workload's own status passes through otherwise).
EXIT_REFUSED, EXIT_NOEXEC, EXIT_NOTFOUND, EXIT_USAGE = 125, 126, 127, 2

_VALUE_OPTIONS = {"--ns", "--hostname", "--bind", "--ro-bind", "--tmpfs", "--root"}
_FLAG_OPTIONS = {"--map-root", "--map-current", "--subids"}
#: The sandbox flags (docker/podman's names) -> the option of namespaces.run they set; the
#: repeatable ones collect a list.
_SANDBOX_VALUES = {
    "--memory": "memory",
    "--pids-limit": "pids_limit",
    "--cpus": "cpus",
    "--seccomp": "seccomp",
    "--sandbox": "sandbox",
}
_SANDBOX_LISTS = {
    "--ulimit": "ulimits",
    "--cap-drop": "cap_drop",
    "--cap-add": "cap_add",
    "--landlock-ro": "landlock_ro",
    "--landlock-rw": "landlock_rw",
}
_SANDBOX_FLAGS = {
    "--no-new-privileges": "no_new_privileges",
    "--limits-best-effort": "limits_best_effort",
}


def _mount(kind: str) -> Any:
    def parse(value: str) -> tuple[str, str, str]:
        if kind == "tmpfs":
            if not value.startswith("/"):
                raise ValueError(value)
            return (kind, "", value)
        src, sep, dst = value.partition(":")
        if not sep:
            dst = src
        if not src or not dst.startswith("/"):
            raise ValueError(value)
        return (kind, os.path.abspath(src), dst)

    # argparse names the type in its error: "invalid <__name__> value: 'x'".
    form = "an absolute DST" if kind == "tmpfs" else "SRC:DST with an absolute DST"
    parse.__name__ = f"{kind} mount ({form})"
    return parse


def _options(
    ns: str | None,
    map_root: bool,
    map_current: bool,
    subids: bool,
    hostname: str | None,
    mounts: list[tuple[str, str, str]],
    root: str | None,
) -> dict[str, Any]:
    opts: dict[str, Any] = {"namespaces": ns, "hostname": hostname, "mounts": mounts}
    if map_current:
        opts["map_current"] = True
    elif map_root:
        opts["map_root"] = True
    if subids:
        opts["subids"] = True
    if root is not None:
        opts["root"] = root
    return opts


def _sandbox_options(values: dict[str, Any]) -> dict[str, Any]:
    """The sandbox flags given (by flag name) -> options of ``namespaces.run``.

    Raises:
        ValueError: ``--pids-limit``/``--cpus`` is not a number.
    """
    opts: dict[str, Any] = {}
    for flag, key in _SANDBOX_VALUES.items():
        value = values.get(flag)
        if value is None:
            continue
        if key == "pids_limit":
            if not value.isdigit():
                raise ValueError(f"--pids-limit needs a whole number, not {value!r}")
            value = int(value)
        elif key == "cpus":
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"--cpus needs a number such as 0.5, not {value!r}") from None
        opts[key] = value
    for flag, key in _SANDBOX_LISTS.items():
        if values.get(flag):
            opts[key] = list(values[flag])
    for flag, key in _SANDBOX_FLAGS.items():
        if values.get(flag):
            opts[key] = True
    return opts


def _report(command: str) -> Any:
    def say(sentence: str) -> None:
        sys.stderr.write(f"nsapp {command}: {sentence}\n")

    return say


def _run(command: str, argv: list[str], opts: dict[str, Any], env: dict[str, str] | None) -> int:
    """Run argv with the options; turn every refusal into one sentence and a status."""
    try:
        return namespaces.run(argv, env=env, report=_report(command), **opts)
    except namespaces.CommandError as e:
        sys.stderr.write(f"nsapp {command}: {e}\n")
        return EXIT_NOTFOUND if e.errno == 2 else EXIT_NOEXEC
    except namespaces.NamespaceError as e:
        sys.stderr.write(f"nsapp {command}: {e}\n")
        return EXIT_REFUSED
    except (ValueError, TypeError) as e:
        sys.stderr.write(f"nsapp {command}: error: {e}\n")
        return EXIT_USAGE


def run_command(ns: argparse.Namespace) -> int:
    """``nsapp run``: the command after ``--`` in new namespaces; its status is ours."""
    argv = list(ns.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        sys.stderr.write("nsapp run: error: give the command to run after --\n")
        return EXIT_USAGE
    opts = _options(
        ns.ns, ns.map_root, ns.map_current, ns.subids, ns.hostname, ns.mounts or [], ns.root
    )
    try:
        opts.update(_sandbox_options(_sandbox_values(ns)))
    except ValueError as e:
        sys.stderr.write(f"nsapp run: error: {e}\n")
        return EXIT_USAGE
    return _run("run", argv, opts, None)


def _sandbox_values(ns: argparse.Namespace) -> dict[str, Any]:
    """argparse's values of the sandbox flags, by flag name (as fast_main collects them)."""
    flags = {**_SANDBOX_VALUES, **_SANDBOX_LISTS, **_SANDBOX_FLAGS}
    return {flag: getattr(ns, key) for flag, key in flags.items()}


def shell_command(ns: argparse.Namespace) -> int:
    """``nsapp shell``: /bin/sh in all namespaces the caller can create, root inside."""
    opts = _options(
        ns.ns, ns.map_root, ns.map_current, ns.subids, ns.hostname, ns.mounts or [], ns.root
    )
    env = dict(os.environ, PS1=PROMPT)
    return _run("shell", [SHELL, "-i"], opts, env)


def fast_main(args: list[str]) -> int | None:
    """Run ``nsapp run ...`` without building the argparse parser (it costs ~10 ms to import).

    Handles exactly the documented grammar; anything else (``--help``, an unknown or
    incomplete option) returns None so that argparse parses it and reports errors.

    Args:
        args: the command line after the program name.

    Returns:
        The exit status, or None when argparse should handle ``args``.
    """
    if not args or args[0] != "run":
        return None
    values: dict[str, Any] = {"mounts": []}
    for flag in _SANDBOX_LISTS:
        values[flag] = []
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-"):
            break
        name, eq, value = arg.partition("=")
        if (name in _FLAG_OPTIONS or name in _SANDBOX_FLAGS) and not eq:
            values[name] = True
            i += 1
            continue
        if (
            name not in _VALUE_OPTIONS
            and name not in _SANDBOX_VALUES
            and name not in _SANDBOX_LISTS
        ):
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 1
        i += 1
        if name in ("--bind", "--ro-bind", "--tmpfs"):
            try:
                values["mounts"].append(_mount(name[2:])(value))
            except ValueError:
                return None
        elif name in _SANDBOX_LISTS:
            values[name].append(value)
        elif name in values:
            return None  # repeated: let argparse decide
        else:
            values[name] = value
    argv = args[i:]
    if not argv or (values.get("--map-root") and values.get("--map-current")):
        return None
    opts = _options(
        values.get("--ns"),
        bool(values.get("--map-root")),
        bool(values.get("--map-current")),
        bool(values.get("--subids")),
        values.get("--hostname"),
        values["mounts"],
        values.get("--root"),
    )
    try:
        opts.update(_sandbox_options(values))
    except ValueError:
        return None  # argparse's parse says what is wrong, as for any other bad value
    return _run("run", argv, opts, None)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ns",
        metavar="LIST",
        help="comma-separated namespaces to create: user,pid,mount,net,uts,ipc,cgroup,time "
        "(default: all the caller can create); one named that cannot be created is an error",
    )
    maps = p.add_mutually_exclusive_group()
    maps.add_argument(
        "--map-root", action="store_true", help="root inside, mapped onto you (default)"
    )
    maps.add_argument(
        "--map-current", action="store_true", help="your own uid/gid inside, mapped onto you"
    )
    p.add_argument(
        "--subids",
        action="store_true",
        help="also map your /etc/subuid and /etc/subgid ranges (newuidmap/newgidmap)",
    )
    p.add_argument("--hostname", metavar="NAME", help="hostname inside the UTS namespace")
    # One list for all three kinds: mounts are applied in command-line order.
    for kind, metavar, text in (
        ("bind", "SRC:DST", "bind-mount SRC on DST inside (repeatable; applied in order)"),
        ("ro-bind", "SRC:DST", "bind-mount SRC on DST read-only (recursively)"),
        ("tmpfs", "DST", "mount an empty tmpfs on DST inside"),
    ):
        p.add_argument(
            f"--{kind}",
            metavar=metavar,
            dest="mounts",
            action="append",
            type=_mount(kind),
            help=text,
        )
    p.add_argument(
        "--root",
        metavar="DIR",
        help="make DIR the root inside (pivot_root); mount targets lie under it",
    )


def _sandbox_flags(p: argparse.ArgumentParser) -> None:
    """The sandbox flags of ``run``, named after docker/podman's (docs/namespaces.md)."""
    g = p.add_argument_group("sandbox (what the command may do and consume)")
    for flag, metavar, text in (
        ("--memory", "SIZE", "memory limit of the command's own cgroup (64m, 1g)"),
        ("--pids-limit", "N", "at most N processes and threads (cgroup)"),
        ("--cpus", "FRACTION", "CPU time, in CPUs (0.5: half of one; cgroup)"),
        ("--seccomp", "PROFILE", "default | unconfined | PROFILE.json (Docker's format)"),
        ("--sandbox", "PRESET", "strict: the set for untrusted code (docs/namespaces.md)"),
    ):
        g.add_argument(flag, metavar=metavar, dest=_SANDBOX_VALUES[flag], help=text)
    for flag, metavar, text in (
        ("--ulimit", "NAME=SOFT[:HARD]", "nofile, nproc, as, cpu, fsize, core (repeatable)"),
        ("--cap-drop", "ALL|CAP,...", "capabilities the command does not get (repeatable)"),
        ("--cap-add", "CAP", "a capability it keeps or gets (repeatable)"),
        ("--landlock-ro", "PATH", "with Landlock: PATH may be read (repeatable)"),
        ("--landlock-rw", "PATH", "with Landlock: PATH may be read and written (repeatable)"),
    ):
        g.add_argument(flag, metavar=metavar, dest=_SANDBOX_LISTS[flag], action="append", help=text)
    g.add_argument(
        "--no-new-privileges",
        dest="no_new_privileges",
        action="store_true",
        default=None,
        help="setuid and file capabilities give nothing (on with any sandbox flag)",
    )
    g.add_argument(
        "--limits-best-effort",
        dest="limits_best_effort",
        action="store_true",
        default=None,
        help="no cgroup to be had: --pids-limit as RLIMIT_NPROC, --memory as RLIMIT_AS",
    )


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run`` and ``shell`` to the app's parser."""
    import argparse

    # Shown as written: cli.py's help formatter keeps a text with line breaks as is.
    status = (
        "exit status: the command's own (128+N if signal N killed it); 125 when the kernel\n"
        "refused the namespaces, 126 if the command is not executable, 127 if not found"
    )
    p = subparsers.add_parser(
        "run",
        help="run a command in new Linux namespaces (rootless)",
        description="Run CMD in new Linux namespaces with a real PID 1, root inside mapped "
        "onto you; stdin, stdout, stderr and the terminal pass through.",
        epilog="examples:\n  nsapp run -- id -u                  # 0: root inside, you outside\n"
        "  nsapp run --ns user,pid,mount --tmpfs /tmp -- sh -c 'echo $$; ls /tmp'\n"
        "  nsapp run --sandbox strict --ro-bind .:/mnt -- /usr/bin/python3 /mnt/untrusted.py\n\n"
        + status,
    )
    _common(p)
    _sandbox_flags(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(func=run_command)
    s = subparsers.add_parser(
        "shell",
        help="an interactive /bin/sh in new namespaces, root inside",
        description=f"Start {SHELL} in all the namespaces you can create, root inside, "
        f"with the prompt {PROMPT!r}.",
        epilog="example:\n  nsapp shell --hostname sandbox --ro-bind /usr:/usr\n\n" + status,
    )
    _common(s)
    s.set_defaults(func=shell_command)
