"""The sandbox half of a run: what a workload may *do* and *consume*, not only what it sees.

Options of ``run``/``run_entry`` (named after docker/podman's flags), checked here in the
caller by :func:`make` into one plain dict, ``Spec.sandbox``, that a forked or re-executed
set-up process can be handed unchanged; :func:`enter` applies it in the workload's own process,
after its fork and before its ``execve``, in runc's order (``no_new_privs``, then the seccomp
filter last):

1. join the workload's own cgroup (descriptors the runner opened, see ``_cgroup``);
2. build the Landlock ruleset (its paths are opened as the workload will see them);
3. resource limits (``setrlimit``; before CAP_SYS_RESOURCE can be dropped);
4. capabilities: the bounding set (``_caps.drop_bounding``); for a root caller's strict
   preset the unprivileged ids (``setid``: root of its user namespace mapped onto nobody, or
   nobody itself without one); then effective/permitted/inheritable, ambient (``_caps.apply``);
5. ``PR_SET_NO_NEW_PRIVS``;
6. ``landlock_restrict_self``;
7. the seccomp filter (compiled in the caller by ``_seccomp.load``), last.

Nothing here is imported by a run without sandbox options.
"""

from __future__ import annotations

import os
from errno import ENOSYS

from reexec_core.namespaces import _caps
from reexec_core.namespaces._wire import Failure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

#: ``--ulimit`` names -> resource numbers (asm-generic/resource.h).
RLIMITS = {"cpu": 0, "fsize": 1, "core": 4, "nproc": 6, "nofile": 7, "as": 9}
RLIM_INFINITY = -1
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

#: ``sandbox="strict"``: the preset for running untrusted code. Every line is documented in
#: docs/namespaces.md ("The strict preset"); an option given explicitly overrides its line.
STRICT: dict[str, Any] = {
    "cap_drop": "ALL",  # no capability, not even those of its own user namespace
    "no_new_privileges": True,  # setuid bits and file capabilities give nothing at execve
    "landlock": True,  # the implicit read-only set only, where the kernel has Landlock
    "seccomp": "default",  # kernel-attack syscalls (keyctl, bpf, unshare, mount...) fail EPERM
    "ulimits": ["core=0"],  # no core dumps of the workload's memory
}

OPTIONS = (
    "memory",
    "pids_limit",
    "cpus",
    "ulimits",
    "limits_best_effort",
    "cap_drop",
    "cap_add",
    "no_new_privileges",
    "landlock_ro",
    "landlock_rw",
    "seccomp",
    "sandbox",
)


def parse_size(value: object, option: str = "memory") -> int:
    """``64m``, ``1g``, ``512k``, ``1048576`` (bytes; docker's units, binary) -> bytes.

    Raises:
        ValueError: not such a size, or zero.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{option} must be a size such as '64m' or a number of bytes")
    if isinstance(value, int):
        size = value
    else:
        text = value.strip().lower()
        for suffix in ("ib", "b"):
            if len(text) > 1 and text.endswith(suffix) and text[-len(suffix) - 1].isalpha():
                text = text[: -len(suffix)]
                break
        unit = text[-1:] if text[-1:].isalpha() else ""
        digits = text[: len(text) - len(unit)]
        if unit not in _UNITS or not digits.isdigit():
            raise ValueError(
                f"{option} must be a size such as 64m or 1g (a whole number with the unit b, k, "
                f"m, g or t), not {value!r}"
            )
        size = int(digits) * _UNITS[unit]
    if size <= 0:
        raise ValueError(f"{option} must be more than 0 bytes, not {value!r}")
    return size


def format_size(size: int) -> str:
    """64 MiB, 1 GiB, 1536 KiB: the largest binary unit that divides ``size``."""
    for name, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor} {name}"
    return f"{size} bytes"


def _limit_value(text: str, spec: str) -> int:
    if text in ("unlimited", "-1"):
        return RLIM_INFINITY
    if not text.isdigit():
        raise ValueError(
            f"ulimit {spec!r}: a limit is a whole number or 'unlimited', not {text!r}"
        )
    return int(text)


def parse_ulimits(value: Iterable[str] | Mapping[str, object]) -> list[list[int]]:
    """``["nofile=16", "core=0:0"]`` or ``{"nofile": 16, "cpu": (1, 2)}`` -> [[res, soft, hard]].

    ``NAME=SOFT`` sets the hard limit to SOFT too, as docker does.

    Raises:
        ValueError: an unknown name, a bad number, SOFT above HARD, a name given twice.
    """
    if isinstance(value, str):
        raise TypeError("ulimits must be a list of 'NAME=SOFT[:HARD]' or a mapping")
    items: list[tuple[str, str]] = []
    if hasattr(value, "items"):
        for name, limit in value.items():
            if isinstance(limit, (tuple, list)):
                limit = ":".join(str(x) for x in limit)
            items.append((str(name), str(limit)))
    else:
        for entry in value:
            name, sep, limit = str(entry).partition("=")
            if not sep:
                raise ValueError(f"a ulimit needs NAME=SOFT[:HARD], not {entry!r}")
            items.append((name, limit))
    out: list[list[int]] = []
    seen: set[str] = set()
    for name, limit in items:
        spec = f"{name}={limit}"
        key = name.strip().lower()
        if key not in RLIMITS:
            raise ValueError(
                f"ulimit {spec!r}: unknown limit {name!r} (known: {', '.join(RLIMITS)})"
            )
        if key in seen:
            raise ValueError(f"the ulimit {key} is given twice")
        seen.add(key)
        soft_text, sep, hard_text = limit.strip().partition(":")
        soft = _limit_value(soft_text, spec)
        hard = _limit_value(hard_text, spec) if sep else soft
        if key == "cpu" and not sep and soft != RLIM_INFINITY:
            # At the soft limit the kernel sends SIGXCPU, at the hard one SIGKILL, and at
            # soft == hard only SIGKILL: one second more makes the kill say what it was.
            hard = soft + 1
        if hard != RLIM_INFINITY and (soft == RLIM_INFINITY or soft > hard):
            raise ValueError(f"ulimit {spec!r}: the soft limit is above the hard limit")
        out.append([RLIMITS[key], soft, hard])
    return out


def _paths(value: Iterable[str | os.PathLike[str]] | str | None, option: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    out = []
    for p in value:
        path = os.fspath(p)
        if not path or "\0" in path:
            raise ValueError(f"{option} needs a path, not {path!r}")
        out.append(os.path.abspath(path))
    return out


def make(root_inside: bool, user_ns: bool, entry: bool, **options: Any) -> dict[str, Any] | None:
    """Check the sandbox options of a run; return its ``Spec.sandbox`` (None: none given).

    Args:
        root_inside: the workload runs as uid 0 (inside its user namespace, or outside
            without one): it would hold every capability of its namespace.
        user_ns: the workload has a user namespace of its own (whose root holds every
            capability; without one, root holds what our bounding set allows).
        entry: the workload is a registered entry point (this interpreter started again).
        **options: the names of :data:`OPTIONS` (None: not given).

    Raises:
        TypeError, ValueError: misuse (an unknown preset, a bad size, limit or name).
    """
    given = {k: v for k, v in options.items() if v is not None}
    if not given:
        return None
    preset = given.pop("sandbox", None)
    landlock = False
    if preset is not None:
        if preset != "strict":
            raise ValueError(f"sandbox must be 'strict' (the only preset), not {preset!r}")
        merged = dict(STRICT)
        merged.update(given)
        landlock = merged.pop("landlock")
        given = merged
    box: dict[str, Any] = {"cgroup": None, "best_effort": bool(given.get("limits_best_effort"))}
    memory = given.get("memory")
    pids = given.get("pids_limit")
    cpus = given.get("cpus")
    if pids is not None and (isinstance(pids, bool) or not isinstance(pids, int) or pids < 1):
        raise ValueError(f"pids_limit must be a whole number of at least 1, not {pids!r}")
    if cpus is not None:
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)):
            raise TypeError(f"cpus must be a number such as 0.5, not {cpus!r}")
        if not 0.01 <= cpus <= (os.cpu_count() or 1):
            raise ValueError(
                f"cpus must be between 0.01 and {os.cpu_count() or 1} (the CPUs here), "
                f"not {cpus!r}"
            )
    if memory is not None or pids is not None or cpus is not None:
        box["cgroup"] = {
            "memory": parse_size(memory) if memory is not None else None,
            "pids": pids,
            "cpus": float(cpus) if cpus is not None else None,
        }
    box["rlimits"] = parse_ulimits(given.get("ulimits") or [])
    base = 0
    if root_inside:
        base = _caps.all_caps() if user_ns else _caps.bounding_set()
    drop = _caps.parse(given["cap_drop"], "cap_drop") if "cap_drop" in given else 0
    add = _caps.parse(given["cap_add"], "cap_add") if "cap_add" in given else 0
    changed = "cap_drop" in given or "cap_add" in given
    box["caps"] = (base & ~drop) | add if changed else None
    #: What the workload holds after its execve: the seccomp profile's conditions test it.
    box["effective"] = box["caps"] if changed else base
    nnp = given.get("no_new_privileges")
    box["nnp"] = True if nnp is None else bool(nnp)
    ro = _paths(given.get("landlock_ro"), "landlock_ro")
    rw = _paths(given.get("landlock_rw"), "landlock_rw")
    box["landlock"] = None
    #: One-line notes the runner reports at the start of the run.
    box["notes"] = []
    if ro or rw or landlock:
        from reexec_core.namespaces import _landlock

        if _landlock.abi() == 0:  # asked of the kernel here, before anything starts
            if ro or rw:
                from reexec_core.namespaces.errors import SandboxError

                raise SandboxError(_landlock.UNAVAILABLE, ENOSYS, "landlock")
            box["notes"].append(
                "this kernel has no Landlock: the strict preset runs without its file rules"
            )
        else:
            box["landlock"] = {"ro": ro, "rw": rw, "required": bool(ro or rw), "entry": entry}
    box["seccomp"] = ""
    if "seccomp" in given:
        value = given["seccomp"]
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError("seccomp must be 'default', 'unconfined' or a profile's path")
        from reexec_core.namespaces import _seccomp

        # Compiled here, in the caller; a profile's caps conditions see what the workload
        # will really hold (all of its namespace's, unless dropped).
        program = _seccomp.load(os.fspath(value), caps=_caps.names(box["effective"]))
        box["seccomp"] = program.hex()
    # What the workload's process will import, imported now: every process forked from here
    # finds it loaded instead of importing it again at each run.
    if box["rlimits"]:
        import resource  # noqa: F401
    box["cgroup_fds"] = []
    box["setid"] = None  # [uid, gid] for the workload's process to take (set by _spec)
    return box


#: Where the sockets of the caller's session live (D-Bus and systemd --user in /run/user,
#: ssh-agent and X11 in /tmp, ...): the strict preset covers each with an empty tmpfs.
#: Landlock (ABI <= 7) does not judge connect(2) to a named unix socket, and the session bus
#: alone runs any command outside the sandbox (systemd-run --user).
SOCKET_DIRS = ("/run", "/tmp", "/var/tmp", "/dev/shm", "/home")


def socket_dirs_to_hide(keep: Iterable[str]) -> list[str]:
    """The :data:`SOCKET_DIRS` there are, but those a path of ``keep`` (a mount target, the
    command, the working directory, an entry point's files) lies in, at or above."""
    kept = [os.path.abspath(p) for p in keep if p]
    out = []
    for d in SOCKET_DIRS:
        real = os.path.realpath(d)
        inside = (d + "/", real + "/")
        clash = any(
            p in (d, real) or p.startswith(inside) or d.startswith(p.rstrip("/") + "/")
            for p in kept
        )
        if not clash and os.path.isdir(d) and not os.path.islink(d):
            out.append(d)
    return out


def preload(box: dict[str, Any]) -> None:
    """Import what :func:`enter` will need, in a fresh interpreter's set-up before its mounts:
    those may cover the directory this package lies in (the strict preset's socket dirs)."""
    if box["landlock"] is not None:
        from reexec_core.namespaces import _landlock  # noqa: F401
    if box["seccomp"]:
        from reexec_core.namespaces import _seccomp  # noqa: F401
    if box["rlimits"]:
        import resource  # noqa: F401


def uses_fds(box: dict[str, Any] | None) -> list[int]:
    """The descriptors the workload's process needs from the set-up (its cgroup's)."""
    return list(box["cgroup_fds"]) if box else []


def enter(box: dict[str, Any], program: str | None) -> None:
    """In the workload's process, before its exec: apply ``box`` (see the module's order).

    Args:
        program: the resolved path of the command (read and executed, so Landlock allows it).

    Raises:
        Failure: a step was refused; its detail is the one sentence for the user.
    """
    # Imported now, before Landlock holds: a fresh interpreter's set-up (a threaded caller)
    # has not imported them yet, and the package may lie outside what the workload may read
    # (or what the ids it takes may read, see _setid).
    if box["landlock"] is not None:
        from reexec_core.namespaces import _landlock
    if box["seccomp"]:
        from reexec_core.namespaces import _seccomp
    for fd in box["cgroup_fds"]:
        try:
            os.write(fd, b"0")  # "0": the writing process itself (cgroups(7))
        except OSError as e:
            raise _failure(e, "cannot move the workload into its cgroup") from e
        os.close(fd)
    if box["cgroup_fds"]:
        # A cgroup namespace rooted at the cgroup just joined: a hierarchy the workload mounts
        # itself shows that cgroup as its root, not the runner's (whose cgroup.procs would
        # take it out of its limits), and cgroup v2 refuses any move above it.
        from reexec_core.namespaces import _linux

        try:
            _linux.unshare_raw(_linux.CLONE_NEWCGROUP)
        except OSError as e:
            raise _failure(e, "cannot give the workload a cgroup namespace of its own") from e
    ruleset = None
    if box["landlock"] is not None:
        ruleset = _landlock.build(box["landlock"], program)
    if box["rlimits"]:
        import resource

        for res, soft, hard in box["rlimits"]:
            try:
                resource.setrlimit(res, (soft, hard))
            except (OSError, ValueError) as e:
                name = next(k for k, v in RLIMITS.items() if v == res)
                old = resource.getrlimit(res)[1]
                cap = "unlimited" if old == resource.RLIM_INFINITY else str(old)
                raise Failure(
                    "sandbox",
                    getattr(e, "errno", 0) or 0,
                    0,
                    f"cannot set the {name} limit: a hard limit above {cap} needs "
                    "CAP_SYS_RESOURCE outside the namespaces; give one at most that high",
                ) from e
    try:
        if box["caps"] is not None:
            _caps.drop_bounding(box["caps"])  # needs CAP_SETPCAP: before the ids change
        if box["setid"] is not None:
            _setid(*box["setid"])
        if box["caps"] is not None:
            _caps.apply(box["caps"])
    except OSError as e:
        raise _failure(
            e,
            f"cannot set the workload's capabilities ({e.filename})",
            "a capability can be added only where the set-up holds it: inside a user "
            "namespace, or as root",
        ) from e
    if box["nnp"]:
        try:
            _caps.set_no_new_privs()
        except OSError as e:
            raise _failure(e, "cannot set no_new_privs") from e
    if ruleset is not None:
        _landlock.restrict(ruleset)
    if box["seccomp"]:
        try:
            _seccomp.install(bytes.fromhex(box["seccomp"]))  # last: runc's order (PR #789)
        except OSError as e:
            raise _failure(e, "cannot install the seccomp filter") from e


def _setid(uid: int, gid: int) -> None:
    """Take the workload's ids (a root caller's strict preset), and no supplementary group of
    the caller: an unmapped group still passes the host's DAC checks. After the cgroup join (the
    runner's descriptor, written with the set-up's ids), the rlimits and the bounding set (which
    need the set-up's capabilities without a user namespace), before capset.

    Raises:
        OSError: the kernel refused (``filename`` names the call).
    """
    for name, call, args in (
        ("setgroups", os.setgroups, ([],)),
        ("setresgid", os.setresgid, (gid, gid, gid)),
        ("setresuid", os.setresuid, (uid, uid, uid)),
    ):
        try:
            call(*args)
        except OSError as e:
            raise OSError(e.errno, e.strerror, f"{name} to uid {uid}, gid {gid}") from e


def _failure(e: OSError, what: str, hint: str = "") -> Failure:
    reason = os.strerror(e.errno) if e.errno else str(e)
    return Failure("sandbox", e.errno or 0, 0, f"{what}: {reason}" + (f"; {hint}" if hint else ""))
