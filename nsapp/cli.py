"""The command line of nsapp: argparse, one module per command (see ``COMMAND_MODULES``).

Each command module exposes ``add_parser(subparsers) -> None`` and registers its reexec entry
points at import time. Command modules must be cheap to import (every registered child imports
them all before ``reexec_core.init()`` dispatches): heavy imports go inside handlers.
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


def _load_commands() -> list[object]:
    modules: list[object] = []
    for name in COMMAND_MODULES:
        __import__(name)
        modules.append(sys.modules[name])
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
    # Register every command's entry points, then dispatch if started under a name (as in Go).
    modules = _load_commands()
    if reexec_core.init():
        return 0
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        # The commonest scripted call: answer it without building the whole parser.
        print(f"{PROG} {VERSION}")
        return 0
    parser = build_parser(modules)
    ns = parser.parse_args(args)
    func = getattr(ns, "func", None)
    if func is None:
        parser.print_help()
        return 2
    status = func(ns)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
