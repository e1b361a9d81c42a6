"""``nsapp reexec-demo``: start a registered child that reports its PID and argv."""

from __future__ import annotations

import sys

import reexec_core

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

CHILD = "reexec-demo-child"


def demo_child(*args: str) -> int:
    """The registered child: print this process's PID and argv, then return 0."""
    import os

    print(f"pid={os.getpid()} argv={sys.argv!r}")
    return 0


def true_child(*args: str) -> int:
    """A registered child that does nothing: the reexec ``true(1)`` (start-up cost, health)."""
    return 0


reexec_core.register(CHILD, demo_child)
reexec_core.register("reexec-true", true_child)


def run_demo(ns: argparse.Namespace) -> int:
    """Start the child, wait for it, print both PIDs and the child's output."""
    import os

    args = list(ns.args) if ns.args else ["hello", "wörld with spaces"]
    proc = reexec_core.command(CHILD, *args).popen(stdout=-1, text=True)
    out, _ = proc.communicate()
    print(f"parent pid={os.getpid()}")
    print(f"child  pid={proc.pid} name={CHILD!r} status={proc.returncode}")
    print("child output:")
    sys.stdout.write(out)
    return proc.returncode


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``reexec-demo`` to the app's parser."""
    p = subparsers.add_parser(
        "reexec-demo",
        help="start this program again as a registered child",
        description="Start this program again under the registered name "
        f"{CHILD!r}; the child prints its PID and argv, the parent both PIDs.",
        epilog="example:\n  nsapp reexec-demo one 'two words'   # the child's argv keeps them",
    )
    p.add_argument("args", nargs="*", help="arguments passed to the child")
    p.set_defaults(func=run_demo)
