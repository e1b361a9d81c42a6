"""The command line of nsapp: argparse, one module per command (see ``COMMAND_MODULES``).

Each command module exposes ``add_parser(subparsers) -> None`` and registers its reexec entry
points at import time. It may also expose ``fast_main(args) -> int | None``: a parser for its
commonest command line that skips argparse (~10 ms to import here); None hands ``args`` on to
argparse. Command modules must be cheap to import (a registered child imports them, in order,
up to the one that registers its name, before ``reexec_core.init()`` dispatches): heavy
imports go inside handlers.
"""

from __future__ import annotations

import sys

import reexec_core
from nsapp._version import VERSION

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

PROG = "nsapp"

#: Command modules, imported in this order; each adds its subcommands to the parser.
COMMAND_MODULES: tuple[str, ...] = ("nsapp.cmd_reexec", "nsapp.cmd_ns", "nsapp.cmd_update")


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

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Example app of the reexec / namespaces / self-update framework.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {VERSION}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in modules if modules is not None else _load_commands():
        module.add_parser(subparsers)  # type: ignore[attr-defined]
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
    if started_as is None and args == ["--version"]:
        # The commonest scripted call: an ordinary start (nothing to dispatch) answered
        # without importing the commands or building the parser.
        print(f"{PROG} {VERSION}")
        return 0
    try:
        # Register the commands' entry points, then dispatch if started under a name (as in
        # Go). init() ends a registered child itself, also on Ctrl-C (status 130).
        modules = _load_commands(until=started_as)
        if reexec_core.init():
            return 0
        return _run_command(modules, args)
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not a bug: no traceback, the shell's status for SIGINT.
        # Commands that must undo something on Ctrl-C (update) do so before this point.
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _run_command(modules: list[object], args: list[str]) -> int:
    for module in modules:
        fast_main = getattr(module, "fast_main", None)
        if fast_main is not None:
            status = fast_main(args)
            if status is not None:
                return int(status)
    parser = build_parser(modules)
    ns = parser.parse_args(args)
    func = getattr(ns, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(ns) or 0)


if __name__ == "__main__":
    sys.exit(main())
