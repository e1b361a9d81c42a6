"""Landlock: the workload may touch only the paths it was given (landlock(7), Linux 5.13+).

A ruleset *handles* every filesystem access right this kernel's Landlock ABI knows; what no
rule allows is then denied (EACCES) to the workload and every descendant. Rules:

* ``landlock_rw`` paths: every right (read, write, create, remove, rename, truncate, ioctl);
* ``landlock_ro`` paths: read files, list directories, execute;
* implicitly read-only (what starting a program needs): ``/usr``, ``/bin``, ``/sbin``,
  ``/lib``, ``/lib32``, ``/lib64``, ``/libx32``, ``/etc`` (the dynamic loader's cache, nsswitch,
  passwd), ``/proc``, the command itself, and for an entry point the interpreter, its prefix
  and ``sys.path`` (the program's own files);
* implicitly read-write: ``/dev/null``, ``/dev/zero``, ``/dev/full``, ``/dev/random``,
  ``/dev/urandom``, ``/dev/tty``; the terminal its stdin is, readable, the one its stdout or
  stderr is, writable (not the rest of ``/dev/pts``: the caller's other terminals);
* derived from the run's mounts: a ``bind`` or ``tmpfs`` target read-write, a ``ro-bind``
  target read-only (what the caller mounted in is the workload's to use);
* ABI 6+: scoped, so that it can neither connect to an abstract unix socket nor send a
  signal to a process outside its domain (without a network or PID namespace of its own it
  would share the host's D-Bus and X11 sockets, and see the caller's processes).

Paths are opened in the workload's process after every mount and a new root, so they mean
what the workload will see; an implicit one that does not exist there is left out, one given
explicitly that does not exist is an error. Descriptors the workload already holds (its stdio)
are not checked: Landlock checks opens, not reads and writes on open files.
"""

from __future__ import annotations

import os
import stat
import struct
import sys

from reexec_core import _libc
from reexec_core.namespaces._wire import Failure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# linux/landlock.h: the filesystem access rights, by ABI version.
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ABI1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
#: Rights that apply to a file (not only to a directory's entries): a file's rule takes only these.
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV
_READ = _EXECUTE | _READ_FILE | _READ_DIR
_CREATE_RULESET_VERSION = 1
# ABI 6 (Linux 6.12): what a domain may not reach outside itself.
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_RULE_PATH_BENEATH = 1
# The syscalls have the same numbers on every architecture (asm-generic/unistd.h).
_NR_CREATE, _NR_ADD_RULE, _NR_RESTRICT = 444, 445, 446
_O_PATH = 0o10000000

#: Where the kernel has no Landlock and paths were asked for.
UNAVAILABLE = (
    "cannot restrict the workload with Landlock: this kernel has no Landlock (it needs Linux "
    "5.13+ built with CONFIG_SECURITY_LANDLOCK, 'landlock' in the lsm= boot parameter and no "
    "seccomp filter hiding it); drop the landlock_ro/landlock_rw paths"
)

IMPLICIT_RO = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc")
IMPLICIT_RW = (
    "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
)  # fmt: skip


def own_terminals() -> dict[str, int]:
    """The terminals the workload's stdin, stdout and stderr are (its pty, or the caller's) ->
    the rights to reopen each by path: read for stdin's, write for stdout's and stderr's, as
    the descriptors were given (a terminal given as stdout only is no keyboard to read), and
    its ioctls. All of ``/dev/pts`` would give it every other terminal of the same owner."""
    paths: dict[str, int] = {}
    for fd, right in ((0, _READ_FILE), (1, _WRITE_FILE), (2, _WRITE_FILE)):
        try:
            path = os.ttyname(fd)
        except OSError:
            continue
        paths[path] = paths.get(path, _IOCTL_DEV) | right
    return paths


def _syscall(nr: int, *args: Any) -> int:
    lib = _libc.libc()
    cargs = [lib.c_long(a) if isinstance(a, int) else a for a in args]
    return _libc.check(lib.func("syscall", "long")(lib.c_long(nr), *cargs))


def abi() -> int:
    """This kernel's Landlock ABI version; 0 where it has none (or it is disabled)."""
    try:
        return _syscall(_NR_CREATE, 0, 0, _CREATE_RULESET_VERSION)
    except OSError:
        return 0


def handled(version: int) -> int:
    """Every filesystem right Landlock ABI ``version`` knows."""
    rights = _ABI1
    if version >= 2:
        rights |= _REFER
    if version >= 3:
        rights |= _TRUNCATE
    if version >= 5:
        rights |= _IOCTL_DEV
    return rights


def implicit_ro(entry: bool) -> list[str]:
    """The implicitly read-only paths; for an entry point also the interpreter's files."""
    paths = list(IMPLICIT_RO)
    if entry:
        paths += [sys.executable, sys.prefix, sys.base_prefix, sys.exec_prefix]
        paths += [p for p in sys.path if p]
    return paths


def build(rules: dict[str, Any], program: str | None) -> int:
    """In the workload's process: a ruleset fd with every rule added (not yet enforced).

    Raises:
        Failure: the kernel has no Landlock (when paths were asked for) or refused a rule.
    """
    version = abi()
    if version == 0:
        if not rules["required"]:
            return -1  # the preset asks for it only where the kernel has it
        raise Failure("sandbox", 0, 0, UNAVAILABLE)
    rights = handled(version)
    if version >= 6:
        # struct landlock_ruleset_attr {handled_access_fs, handled_access_net, scoped}: no
        # connecting to an abstract unix socket, no signal, to anything outside the domain.
        fields = struct.pack("=QQQ", rights, 0, _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    else:
        fields = struct.pack("=Q", rights)
    attr = _libc.libc().buffer(fields)
    try:
        ruleset = _syscall(_NR_CREATE, attr, len(fields), 0)
    except OSError as e:
        raise Failure("sandbox", e.errno or 0, 0, f"cannot create a Landlock ruleset: {e}") from e
    ro = implicit_ro(rules.get("entry", False)) + ([program] if program else [])
    mounted = rules.get("mounts", [])
    for paths, allowed, explicit in (
        (ro, _READ, False),
        (IMPLICIT_RW, rights, False),
        ([dst for kind, dst in mounted if kind == "ro-bind"], _READ, False),
        ([dst for kind, dst in mounted if kind != "ro-bind"], rights, False),
        (rules["ro"], _READ, True),
        (rules["rw"], rights, True),
    ):
        for path in paths:
            _add(ruleset, path, allowed & rights, explicit)
    for path, allowed in own_terminals().items():
        _add(ruleset, path, allowed & rights, False)
    return ruleset


def _add(ruleset: int, path: str, allowed: int, explicit: bool) -> None:
    try:
        fd = os.open(path, _O_PATH | os.O_CLOEXEC)
    except OSError as e:
        if not explicit:
            return
        raise Failure(
            "sandbox",
            e.errno or 0,
            0,
            f"cannot allow {path} in Landlock: {os.strerror(e.errno or 0)}",
        ) from e
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):  # O_PATH descriptors can be fstat'ed
            allowed &= _FILE_RIGHTS
        attr = _libc.libc().buffer(
            struct.pack("=Qi", allowed, fd)
        )  # struct landlock_path_beneath_attr, packed
        _syscall(_NR_ADD_RULE, ruleset, _RULE_PATH_BENEATH, attr, 0)
    except OSError as e:
        raise Failure(
            "sandbox",
            e.errno or 0,
            0,
            f"cannot allow {path} in Landlock: {os.strerror(e.errno or 0)}",
        ) from e
    finally:
        os.close(fd)


def restrict(ruleset: int) -> None:
    """Enforce the ruleset on this process (after no_new_privs) and close it.

    Raises:
        Failure: the kernel refused.
    """
    if ruleset < 0:
        return
    try:
        _syscall(_NR_RESTRICT, ruleset, 0)
    except OSError as e:
        raise Failure(
            "sandbox",
            e.errno or 0,
            0,
            f"cannot enforce the Landlock ruleset: {os.strerror(e.errno or 0)} (it needs "
            "no_new_privileges, or CAP_SYS_ADMIN)",
        ) from e
    finally:
        os.close(ruleset)
