"""The command line of nsapp: argparse, one module per command (see ``COMMAND_MODULES``).

Each command module exposes ``add_parser(subparsers) -> None`` and registers its reexec entry
points at import time. It may also expose ``fast_main(args) -> int | None``: a parser for its
commonest command line that skips argparse (~10 ms to import here); None hands ``args`` on to
argparse. Command modules must be cheap to import (a registered child imports them, in order,
up to the one that registers its name, before ``reexec_core.init()`` dispatches): heavy
imports go inside handlers.

The conventions are those of the publisher's ``selfupdate`` (docs/update.md): ``-q``/``-v``
before or after the command name (``ns.quiet``, ``ns.verbose``; ``-v`` adds an error's causes,
:func:`causes`), a usage error in one line (exit 2), an example in every ``--help``, and a
closed standard output that ends the command quietly.
"""

from __future__ import annotations

import sys

import reexec_core
from nsapp._version import VERSION

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, NoReturn

PROG = "nsapp"

#: Command modules, imported in this order; each adds its subcommands to the parser.
COMMAND_MODULES: tuple[str, ...] = ("nsapp.cmd_reexec", "nsapp.cmd_ns", "nsapp.cmd_update")

#: ``-q`` / ``-v`` of the command line being run (also on the namespace as ``quiet`` and
#: ``verbose``), for code that is not handed the namespace, e.g. an error reporter.
QUIET = False
VERBOSE = False

EPILOG = """examples:
  nsapp run -- id                     # a command in new namespaces, root inside
  nsapp shell                         # an interactive shell in them
  nsapp reexec-demo hello             # this program started again as a registered child
  nsapp update --check                # is there a newer signed release?
  nsapp update                        # install it in place (same PID)
  nsapp rollback                      # put the previous build back, with its state
  nsapp serve --auto-update 3600      # a service that updates itself about hourly
  nsapp history --json                # the app's state, as one JSON object

-q prints nothing on success, -v also prints the causes of an error (before or after the
command name). Each command's --help shows an example.
exit status: 0 done, 1 error (one sentence on stderr), 2 usage error, 130 interrupted;
update --check: 0 nothing to install, 100 an update is available; run and shell: the
command's own, 125-127 when it could not be started (docs/update.md)
"""


def _classes() -> tuple[type[argparse.ArgumentParser], type[argparse.HelpFormatter]]:
    """The parser and help formatter of nsapp (argparse is imported only when parsing)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        """argparse that reports a usage error in one line (with where to find the usage),
        as the publisher's ``selfupdate`` does."""

        def error(self, message: str) -> NoReturn:
            self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    class Formatter(argparse.HelpFormatter):
        """Wraps a one-line text (a description); keeps a text with line breaks (an epilog's
        examples) as written, as RawDescriptionHelpFormatter does."""

        def _fill_text(self, text: str, width: int, indent: str) -> str:
            if "\n" in text:
                return "".join(indent + line for line in text.splitlines(keepends=True))
            return super()._fill_text(text, width, indent)

    return Parser, Formatter


def add_verbosity(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Add ``-q/--quiet`` and ``-v/--verbose`` to ``p`` (exclusive; attributes ``quiet`` and
    ``verbose``). ``suppress``: a command's own copy, which must not reset what was given
    before the command name."""
    import argparse

    default: Any = argparse.SUPPRESS if suppress else False
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="print nothing on success (errors still go to stderr)")
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="on an error, also print its causes (such as why TUF refused)")  # fmt: skip


def _load_commands(until: str | None = None) -> list[object]:
    """Import the command modules (which registers their entry points), in order.

    Args:
        until: stop as soon as an entry point of this name is registered. A registered child
            then imports only the modules up to the one that registers its entry point,
            not every command's imports (they dominate a child's start-up).

    Returns:
        The imported modules.
    """
    modules: list[object] = []
    for name in COMMAND_MODULES:
        __import__(name)
        modules.append(sys.modules[name])
        if until is not None and reexec_core.is_registered(until):
            break
    return modules


def build_parser(modules: list[object] | None = None) -> argparse.ArgumentParser:
    """Return the argument parser with every command module's subcommands.

    Args:
        modules: the imported command modules (default: import ``COMMAND_MODULES``).

    Returns:
        The parser; each subcommand sets ``func`` (called with the parsed namespace).
    """
    import argparse

    parser_class, formatter_class = _classes()
    parser = parser_class(
        prog=PROG,
        description="Example app of the reexec / namespaces / self-update framework.",
        epilog=EPILOG,
        formatter_class=formatter_class,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {VERSION}")
    add_verbosity(parser, suppress=False)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in modules if modules is not None else _load_commands():
        module.add_parser(subparsers)  # type: ignore[attr-defined]
    for sub in subparsers.choices.values():
        # Every command takes -q/-v after its name too (unless it defines them itself), and
        # shows its epilog (its example) as written.
        sub.formatter_class = formatter_class
        try:
            add_verbosity(sub, suppress=True)
        except argparse.ArgumentError:
            pass
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run nsapp: dispatch a registered child, or parse ``argv`` and run the command.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    args = sys.argv[1:] if argv is None else argv
    started_as = reexec_core.current_name()
    status = 0
    try:
        if started_as is None and args == ["--version"]:
            # The commonest scripted call: an ordinary start (nothing to dispatch) answered
            # without importing the commands or building the parser.
            print(f"{PROG} {VERSION}")
        else:
            # Register the commands' entry points, then dispatch if started under a name (as
            # in Go). init() ends a registered child itself, also on Ctrl-C (status 130).
            modules = _load_commands(until=started_as)
            if reexec_core.init():
                return 0
            status = _run_command(modules, args)
        # Flushed here, not at exit: a reader that went away (`nsapp history | head -1`)
        # then shows up as BrokenPipeError below, not as an "Exception ignored" and status 120.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # The reader of stdout went away: end quietly, as `selfupdate` does (status of the
        # command when it had finished, else 0).
        _stdout_to_devnull()
        return status
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not a bug: no traceback, the shell's status for SIGINT.
        # Commands that must undo something on Ctrl-C (update) do so before this point.
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def causes(e: BaseException) -> list[str]:
    """With ``-v``: what led to ``e`` (its chained causes, e.g. the reason TUF refused), one
    line each, never a traceback."""
    lines, seen = [], {id(e)}
    cause = e.__cause__ or e.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        text = " ".join(str(cause).split()) or "(no message)"
        lines.append(f"{PROG}: cause: {type(cause).__name__}: {text}")
        cause = cause.__cause__ or cause.__context__
    return lines


def _stdout_to_devnull() -> None:
    # The interpreter flushes stdout again at exit: point it at /dev/null so that flush cannot
    # fail with a second "Broken pipe" (Python docs, signal module, "Note on SIGPIPE").
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _run_command(modules: list[object], args: list[str]) -> int:
    for module in modules:
        fast_main = getattr(module, "fast_main", None)
        if fast_main is not None:
            status = fast_main(args)
            if status is not None:
                return int(status)
    global QUIET, VERBOSE
    parser = build_parser(modules)
    ns = parser.parse_args(args)
    QUIET, VERBOSE = bool(getattr(ns, "quiet", False)), bool(getattr(ns, "verbose", False))
    if QUIET and VERBOSE:
        # argparse's exclusive group sees one half of the line (`-q -v update`, `update -q
        # -v`); `-q update -v` sets one before the command name and the other after it.
        parser.error("argument -v/--verbose: not allowed with argument -q/--quiet")
    func = getattr(ns, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(ns) or 0)


if __name__ == "__main__":
    sys.exit(main())
