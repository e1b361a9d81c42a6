"""reexec for Python: start this program again under a registered name (Go's ``pkg/reexec``).

A program registers entry points by name at import time and calls :func:`init` first thing in
its main. :func:`command` starts the program again as a child that runs one of those entry
points instead of main; :func:`exec_into` does the same in place (same PID). "This program" is
found the way the user started it: a script, ``python -m``, a venv console script or a shiv
``.pyz`` (see ``reexec_core._self``), never ``/proc/self/exe``, which is only the interpreter.

Example::

    import sys
    import reexec_core

    def hello(who: str) -> int:
        print("hello", who)
        return 0

    reexec_core.register("hello", hello)

    def main() -> int:
        if reexec_core.init():   # runs "hello" and exits when started under that name
            return 0
        return reexec_core.command("hello", "world").run().returncode
"""

from reexec_core._child import Command, command, exec_into
from reexec_core._registry import current_name, init, is_registered, register
from reexec_core._self import self_argv

__all__ = [
    "Command",
    "command",
    "current_name",
    "exec_into",
    "init",
    "is_registered",
    "register",
    "self_argv",
]
