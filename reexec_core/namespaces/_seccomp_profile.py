"""Seccomp policies: our default deny-list, and Docker/OCI profile JSON, as a :class:`Policy`.

Pure logic: the caller reads the file and names the machine, the running kernel and the
capabilities; this module returns the policy for ``_seccomp_bpf.compile_policy`` or raises
:class:`SeccompProfileError` with one sentence.

The profile format is Docker's (moby/profiles ``seccomp/default.json``), as runc applies it:

- ``defaultAction`` (+ ``defaultErrnoRet``), ``architectures`` or ``archMap``, ``syscalls[]``
  with ``names`` (or the old ``name``), ``action`` (+ ``errnoRet``), ``args[]``, ``includes`` /
  ``excludes`` (``caps``: all listed must be held to include, any held excludes; ``arches``:
  Go's names, ``amd64``/``arm64``; ``minKernel``: against the running kernel).
- A rule's ``args`` must all hold; if one ``index`` appears twice, each comparison becomes a
  rule of its own instead (runc's rule: "revert to old behavior"), so that ``index 0 == 1`` and
  ``index 0 == 2`` mean "either", not "never".
- Several rules for one syscall: the first that matches, in the profile's order, decides;
  none matching: ``defaultAction``.
- Names no table of this architecture has (``_llseek`` on x86_64, a typo) are skipped, as
  Docker does: profiles are shared across architectures and kernel versions.
- ``SCMP_ACT_TRACE`` without a tracer attached makes the call fail with ENOSYS (seccomp(2));
  ``SCMP_ACT_NOTIFY`` needs a supervisor on the listener fd, which the runner does not run, so
  it is refused.
- The native architecture is always judged (as libseccomp does); its 32-bit compat ABI
  (``SCMP_ARCH_X86`` on x86_64, ``SCMP_ARCH_ARM`` on aarch64) only if the profile lists it,
  with that ABI's numbers; any other ABI — x32 too, listed or not: a deviation from Docker,
  for a kernel option (CONFIG_X86_X32_ABI) distributions leave off — kills the process.
"""

from __future__ import annotations

import errno as _errno

from reexec_core.namespaces._seccomp_bpf import OPS, Cmp, Policy, Rule
from reexec_core.namespaces._seccomp_tables import AARCH64, ARM, I386, X86_64
from reexec_core.namespaces.errors import SeccompProfileError

__all__ = ["DEFAULT_DENIED", "MACHINES", "default_policy", "profile_policy"]

# linux/seccomp.h return values.
RET_KILL_PROCESS = 0x80000000
RET_KILL_THREAD = 0x00000000
RET_TRAP = 0x00030000
RET_ERRNO = 0x00050000
RET_TRACE = 0x7FF00000
RET_LOG = 0x7FFC0000
RET_ALLOW = 0x7FFF0000
_MAX_ERRNO = 4095  # the kernel clamps a larger SECCOMP_RET_ERRNO value to this

# machine (uname -m) -> (AUDIT_ARCH_*, libseccomp name, Go's name in includes.arches, table)
MACHINES: dict[str, tuple[int, str, str, dict[str, int]]] = {
    "x86_64": (0xC000003E, "SCMP_ARCH_X86_64", "amd64", X86_64),
    "aarch64": (0xC00000B7, "SCMP_ARCH_AARCH64", "arm64", AARCH64),
}
# machine -> (libseccomp name, AUDIT_ARCH_*, table) of its compat ABI, judged when listed
_COMPAT: dict[str, tuple[str, int, dict[str, int]]] = {
    "x86_64": ("SCMP_ARCH_X86", 0x40000003, I386),
    "aarch64": ("SCMP_ARCH_ARM", 0x40000028, ARM),
}
_ARCH_NAMES = frozenset(
    "SCMP_ARCH_" + a
    for a in (
        "X86 X86_64 X32 ARM AARCH64 LOONGARCH64 M68K MIPS MIPS64 MIPS64N32 MIPSEL MIPSEL64 "
        "MIPSEL64N32 PPC PPC64 PPC64LE S390 S390X PARISC PARISC64 RISCV64 SH SHEB"
    ).split()
)

#: Syscalls the default profile always refuses with EPERM. On top of these it refuses
#: ``clone`` with any CLONE_NEW* flag (EPERM), ``clone3`` (ENOSYS, so that libc falls back to
#: ``clone``, whose flags a filter can read: clone3's are behind a pointer), ``ioctl``
#: TIOCSTI, TIOCLINUX and USERFAULTFD_IOC_NEW (EPERM), and ``personality`` other than
#: Docker's five values (EPERM).
DEFAULT_DENIED: tuple[str, ...] = tuple(
    sorted(
        # keys, BPF, perf, userfaultfd, io_uring: kernel attack surface a workload rarely needs
        "keyctl add_key request_key bpf perf_event_open userfaultfd "
        "io_uring_setup io_uring_enter io_uring_register "
        # kernel modules and kexec
        "kexec_load kexec_file_load init_module finit_module delete_module create_module "
        "query_module get_kernel_syms "
        # the mount table and namespaces, after the runner's own set-up
        "mount umount2 pivot_root unshare setns open_tree open_tree_attr move_mount fsopen "
        "fsconfig fsmount fspick mount_setattr "
        # whole-system state: accounting, swap, reboot, clocks, I/O ports, quotas, the log
        "acct swapon swapoff reboot settimeofday clock_settime clock_adjtime adjtimex "
        "iopl ioperm lookup_dcookie quotactl quotactl_fd nfsservctl syslog vhangup uselib "
        "_sysctl sysfs ustat fanotify_init "
        # the host's names when there is no UTS namespace (the runner sets hostname= before)
        "sethostname setdomainname "
        # other processes: without a PID namespace of its own the workload could reach the
        # caller's processes, and the filter cannot tell; so no ptrace at all (tracers need
        # a profile of their own)
        "ptrace process_vm_readv process_vm_writev process_madvise kcmp pidfd_getfd "
        # file handles bypass the path checks of a bind-mounted root (the "shocker" escape)
        "name_to_handle_at open_by_handle_at".split()
    )
)

_EPERM = RET_ERRNO | _errno.EPERM
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
# CLONE_NEWNET: Docker's mask. (CLONE_NEWTIME shares its bit with CSIGNAL in clone(2)'s flags
# and is only reachable through clone3 and unshare, both refused.)
_CLONE_NEW_MASK = 0x7E020000
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C
# /dev/userfaultfd's ioctl (Linux 6.1+): the same userfaultfd, by another door
_USERFAULTFD_IOC_NEW = 0xAA00
# personality(2) values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
# and 0xffffffff, which only queries.
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def default_policy(machine: str) -> Policy:
    """The ``default`` profile for ``machine`` (a key of :data:`MACHINES`)."""
    audit_arch, _, _, table = MACHINES[machine]
    rules: dict[int, tuple[Rule, ...]] = {}
    for name in DEFAULT_DENIED:
        if name in table:
            rules[table[name]] = (Rule((), _EPERM),)
    rules[table["clone"]] = (
        Rule((Cmp(0, "SCMP_CMP_MASKED_EQ", _CLONE_NEW_MASK, 0, width=32),), RET_ALLOW),
        Rule((), _EPERM),
    )
    rules[table["clone3"]] = (Rule((), RET_ERRNO | _errno.ENOSYS),)
    rules[table["ioctl"]] = tuple(
        Rule((Cmp(1, "SCMP_CMP_EQ", request, width=32),), _EPERM)
        for request in (_TIOCSTI, _TIOCLINUX, _USERFAULTFD_IOC_NEW)
    )
    rules[table["personality"]] = (
        *(Rule((Cmp(0, "SCMP_CMP_EQ", v, width=32),), RET_ALLOW) for v in _PERSONALITIES),
        Rule((), _EPERM),
    )
    # Other architectures (i386 by int 0x80, x32): the numbers above are x86_64's, so a call
    # through another ABI cannot be judged; it kills the process rather than failing with
    # EPERM, so that a workload probing the other ABI stops there, and a 32-bit program shows
    # "Bad system call" at once instead of failing obscurely later.
    return Policy(audit_arch, machine == "x86_64", rules, RET_ALLOW, RET_KILL_PROCESS)


def _fail(source: str, what: str) -> SeccompProfileError:
    return SeccompProfileError(f"the seccomp profile {source} {what}", 0, "seccomp")


def _int(value: object, low: int, high: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _action(source: str, where: str, name: object, errno_ret: object) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise _fail(
            source,
            f"asks for SCMP_ACT_NOTIFY {where}, which needs a supervisor process this runner "
            "does not provide; use SCMP_ACT_ERRNO or SCMP_ACT_KILL_PROCESS instead",
        )
    simple = {
        "SCMP_ACT_ALLOW": RET_ALLOW,
        "SCMP_ACT_KILL": RET_KILL_THREAD,
        "SCMP_ACT_KILL_THREAD": RET_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS": RET_KILL_PROCESS,
        "SCMP_ACT_TRAP": RET_TRAP,
        "SCMP_ACT_LOG": RET_LOG,
    }
    if name in simple:
        return simple[str(name)]
    if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
        # runc: errnoRet, else EPERM; for TRACE it is the value the tracer is handed.
        value = _errno.EPERM if errno_ret is None else _int(errno_ret, 0, _MAX_ERRNO)
        if value is None:
            raise _fail(source, f"has errnoRet {errno_ret!r} {where}; use 0 to {_MAX_ERRNO}")
        return (RET_ERRNO if name == "SCMP_ACT_ERRNO" else RET_TRACE) | value
    raise _fail(
        source,
        f"has the unknown action {name!r} {where}; use one of SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, "
        "SCMP_ACT_KILL, SCMP_ACT_KILL_THREAD, SCMP_ACT_KILL_PROCESS, SCMP_ACT_TRAP, "
        "SCMP_ACT_TRACE, SCMP_ACT_LOG",
    )


def _version(source: str, where: str, text: object) -> tuple[int, ...]:
    parts = text.split(".") if isinstance(text, str) else []
    if not 2 <= len(parts) <= 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise _fail(
            source, f'has minKernel {text!r} {where}; write it as MAJOR.MINOR, e.g. "4.8"'
        )
    return tuple(int(p) for p in parts)


def _applies(
    source: str,
    where: str,
    entry: dict[str, object],
    caps: frozenset[str],
    go_arch: str,
    kernel: tuple[int, ...],
) -> bool:
    """moby's includes/excludes test, for the native architecture."""
    for key, include in (("includes", True), ("excludes", False)):
        cond = entry.get(key) or {}
        if not isinstance(cond, dict):
            raise _fail(source, f"has {key} {where} that is not an object")
        listed = {}
        for field in ("caps", "arches"):
            value = cond.get(field) or []
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise _fail(source, f"has {key}.{field} {where} that is not a list of names")
            listed[field] = value
        if include:
            if not all(c in caps for c in listed["caps"]):
                return False
            if listed["arches"] and go_arch not in listed["arches"]:
                return False
        else:
            if any(c in caps for c in listed["caps"]) or go_arch in listed["arches"]:
                return False
        if cond.get("minKernel"):
            if (kernel >= _version(source, where, cond["minKernel"])) != include:
                return False
    return True


def _cmps(source: str, where: str, args: object) -> list[tuple[Cmp, ...]]:
    """The rule's comparisons: one AND-ed tuple, or one tuple each when an index repeats."""
    if args is None:
        return [()]
    if not isinstance(args, list):
        raise _fail(source, f"has args {where} that are not a list")
    cmps = []
    for arg in args:
        if not isinstance(arg, dict):
            raise _fail(source, f"has an args entry {where} that is not an object")
        index = _int(arg.get("index"), 0, 5)
        if index is None:
            raise _fail(
                source, f"has args index {arg.get('index')!r} {where}; a syscall has args 0 to 5"
            )
        value = _int(arg.get("value", 0), 0, 2**64 - 1)
        value_two = _int(arg.get("valueTwo", 0), 0, 2**64 - 1)
        if value is None or value_two is None:
            raise _fail(source, f"has an args value {where} that is not an unsigned 64-bit number")
        op = arg.get("op")
        if op not in OPS:
            raise _fail(
                source, f"has the unknown args op {op!r} {where}; use one of {', '.join(OPS)}"
            )
        cmps.append(Cmp(index, str(op), value, value_two))
    indexes = [c.arg for c in cmps]
    if len(set(indexes)) < len(indexes):
        return [(c,) for c in cmps]
    return [tuple(cmps)]


def profile_policy(
    data: object, source: str, machine: str, caps: frozenset[str], kernel: tuple[int, ...]
) -> Policy:
    """The policy of a parsed Docker/OCI seccomp profile, for ``machine``.

    Args:
        data: the profile's parsed JSON.
        source: how to name the profile in messages (its path).
        machine: a key of :data:`MACHINES`.
        caps: the capabilities the workload holds (for ``includes``/``excludes``).
        kernel: the running kernel's version, ``(major, minor, ...)``.

    Raises:
        SeccompProfileError: the profile is malformed or asks for what cannot be done.
    """
    audit_arch, scmp_arch, go_arch, table = MACHINES[machine]
    if not isinstance(data, dict):
        raise _fail(source, "is not a JSON object with defaultAction and syscalls")
    if "defaultAction" not in data:
        raise _fail(source, 'has no defaultAction; add e.g. "defaultAction": "SCMP_ACT_ERRNO"')
    default = _action(
        source, "as defaultAction", data["defaultAction"], data.get("defaultErrnoRet")
    )
    arches = data.get("architectures") or []
    arch_map = data.get("archMap") or []
    if not isinstance(arches, list) or not isinstance(arch_map, list):
        raise _fail(source, "has architectures or archMap that is not a list")
    for entry in arch_map:
        if not isinstance(entry, dict):
            raise _fail(source, "has an archMap entry that is not an object")
        arches = [*arches, entry.get("architecture"), *(entry.get("subArchitectures") or [])]
    for name in arches:
        if name not in _ARCH_NAMES:
            raise _fail(
                source,
                f"names the unknown architecture {name!r}; use libseccomp's names, "
                f"e.g. {scmp_arch}",
            )
    syscalls = data.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise _fail(source, "has syscalls that is not a list")
    applied: list[tuple[list[str], list[Rule]]] = []
    for number, entry in enumerate(syscalls, 1):
        where = f"in syscalls entry {number}"
        if not isinstance(entry, dict):
            raise _fail(source, f"has syscalls entry {number} that is not an object")
        names = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
        if (
            not names
            or not isinstance(names, list)
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise _fail(source, f'has no syscall names {where}; give "names": [...]')
        action = _action(source, where, entry.get("action"), entry.get("errnoRet"))
        cmp_sets = _cmps(source, where, entry.get("args"))
        # moby tests includes.arches against the daemon's architecture, for every ABI alike.
        if _applies(source, where, entry, caps, go_arch, kernel):
            applied.append((names, [Rule(c, action) for c in cmp_sets]))

    def numbered(table: dict[str, int]) -> dict[int, tuple[Rule, ...]]:
        rules: dict[int, list[Rule]] = {}
        for names, entry_rules in applied:
            for name in names:
                if name in table:
                    rules.setdefault(table[name], []).extend(entry_rules)
        return {nr: tuple(r) for nr, r in rules.items()}

    compat_name, compat_arch, compat_table = _COMPAT[machine]
    return Policy(
        audit_arch,
        machine == "x86_64",
        numbered(table),
        default,
        # An ABI whose numbers the filter does not know cannot be judged (libseccomp's
        # default bad-arch action is a kill too).
        RET_KILL_PROCESS,
        ((compat_arch, numbered(compat_table)),) if compat_name in arches else (),
    )
