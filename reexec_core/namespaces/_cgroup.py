"""The workload's own cgroup (memory, pids, CPU), and what a limit that was hit says.

Created by the runner before the set-up process starts, with the limits written; the
workload's process joins it itself just before its ``execve`` by writing ``0`` into a
``cgroup.procs`` descriptor the runner opened (so the permission checks are the runner's: the
kernel checks the opener's credentials and cgroup namespace, cgroups(7)), and nothing of the
workload ever runs outside it. Removed after the run, also when the workload was killed: what
is left in it is SIGKILLed first.

* **cgroup v2** (preferred where the controllers are available): under the runner's own
  cgroup, which must be writable: root, or a subtree delegated to the user, e.g. a
  ``systemd-run --user --scope -p Delegate=yes`` scope. The no-internal-process rule of v2
  means a cgroup that enables controllers for its children holds no process itself: the
  runner first moves itself into a leaf of its own there, ``reexec-PID-caller``.
* **cgroup v1** (what this project's VM has for memory/pids/cpu): one directory per
  hierarchy, under the runner's own cgroup there; root only, in practice.

Where neither can be had, :func:`create` raises one sentence saying so and how to get one
(or, with ``limits_best_effort``, puts ``pids`` and ``memory`` into RLIMIT_NPROC and RLIMIT_AS
and says so in one line).
"""

from __future__ import annotations

import os
from errno import EBUSY, ENOENT

from reexec_core.namespaces._sandbox import RLIMITS, format_size
from reexec_core.namespaces.errors import SandboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_CFS_PERIOD = 100_000  # microseconds: the kernel's default CFS period
_SIGKILL, _SIGXCPU, _SIGXFSZ = 9, 24, 25
_counter = 0


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, super options) of every cgroup mount."""
    out = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, tail = left.split(), right.split()
                if len(fields) >= 5 and tail and tail[0] in ("cgroup", "cgroup2"):
                    opts = set(tail[2].split(",")) if len(tail) > 2 else set()
                    out.append((tail[0], fields[3], _unescape(fields[4]), opts))
    except OSError:
        pass
    return out


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")


def _own_cgroups() -> dict[str, str]:
    """Controller (``""`` for v2) -> this process's cgroup path (``/proc/self/cgroup``)."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                out[c] = path
    return out


def _under(mount_root: str, mount_point: str, path: str) -> str:
    if mount_root != "/" and (path + "/").startswith(mount_root + "/"):
        path = path[len(mount_root) :]
    return os.path.join(mount_point, path.lstrip("/"))


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def _field(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _name(kind: str = "") -> str:
    global _counter
    _counter += 1
    return f"reexec-{os.getpid()}-{kind or _counter}"


class Cgroup:
    """The created cgroup: its directories, the open ``cgroup.procs`` descriptors, its limits."""

    def __init__(self, version: int, limits: dict[str, Any]) -> None:
        self.version = version
        self.limits = limits
        self.dirs: list[str] = []
        self.fds: list[int] = []
        self._by_controller: dict[str, str] = {}

    def _make(self, parent: str, controllers: list[str]) -> str:
        path = os.path.join(parent, _name())
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            # Left by a runner that was kill -9'ed and whose pid is ours now (the sweep spares
            # a live pid's): an empty cgroup goes (rmdir refuses one with processes or
            # children), then it is made anew, its limits and files ours.
            os.rmdir(path)
            os.mkdir(path, 0o755)
        self.dirs.append(path)  # removed by remove(), also when what follows fails
        for c in controllers:
            self._by_controller[c] = path
        self.fds.append(os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
        return path

    def write_limits(self) -> None:
        memory, pids, cpus = (self.limits[k] for k in ("memory", "pids", "cpus"))
        quota = int(cpus * _CFS_PERIOD) if cpus is not None else 0
        if self.version == 2:
            path = self.dirs[0]
            if memory is not None:
                _write(f"{path}/memory.max", str(memory))
                if os.path.exists(f"{path}/memory.swap.max"):
                    _write(f"{path}/memory.swap.max", "0")  # no way around the limit by swap
            if pids is not None:
                _write(f"{path}/pids.max", str(pids))
            if cpus is not None:
                _write(f"{path}/cpu.max", f"{quota} {_CFS_PERIOD}")
            return
        if memory is not None:
            path = self._by_controller["memory"]
            _write(f"{path}/memory.limit_in_bytes", str(memory))
            try:
                _write(f"{path}/memory.memsw.limit_in_bytes", str(memory))
            except OSError:
                pass  # no swap accounting in this kernel: nothing to close
        if pids is not None:
            _write(f"{self._by_controller['pids']}/pids.max", str(pids))
        if cpus is not None:
            path = self._by_controller["cpu"]
            _write(f"{path}/cpu.cfs_period_us", str(_CFS_PERIOD))
            _write(f"{path}/cpu.cfs_quota_us", str(quota))

    def verdict(self, status: int) -> str | None:
        """The sentence for a limit the workload hit (its status stays as it is), or None."""
        memory, pids = self.limits["memory"], self.limits["pids"]
        if memory is not None and status == 128 + _SIGKILL:
            path = self._by_controller["memory"]
            if self.version == 2:
                hit = _field(_read(f"{path}/memory.events"), "oom_kill")
            else:
                hit = _field(_read(f"{path}/memory.oom_control"), "oom_kill") or int(
                    _read(f"{path}/memory.failcnt").strip() or 0
                )
            if hit:
                return f"killed: memory limit {format_size(memory)} reached"
        if pids is not None:
            forks = _field(_read(f"{self._by_controller['pids']}/pids.events"), "max")
            if forks:
                return f"pids limit {pids} reached: {forks} fork(s) refused"
        return None

    def remove(self) -> None:
        """Kill what is left in the cgroup and remove it (the runner's wait is over)."""
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        for path in reversed(self.dirs):
            _remove(path)
        self.dirs = []


def _remove(path: str) -> None:
    import time

    for _ in range(200):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != EBUSY:
                return
        if os.path.exists(f"{path}/cgroup.kill"):
            try:
                _write(f"{path}/cgroup.kill", "1")
            except OSError:
                pass
        for pid in _read(f"{path}/cgroup.procs").split():
            try:
                os.kill(int(pid), _SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)  # the killed are exiting; their cgroup empties when they are gone


def _v2(limits: dict[str, Any], needed: list[str]) -> Cgroup | str:
    """A v2 cgroup, or why there is none."""
    v2 = [(root, point) for kind, root, point, _ in _mounts() if kind == "cgroup2"]
    if not v2:
        return "there is no cgroup v2 hierarchy"
    own = _own_cgroups().get("")
    if own is None:
        return "this process is in no cgroup v2"
    base = _under(v2[0][0], v2[0][1], own)
    available = _read(f"{base}/cgroup.controllers").split()
    missing = [c for c in needed if c not in available]
    if missing:
        return f"cgroup v2 has no {', '.join(missing)} controller for this process's cgroup"
    if not os.access(base, os.W_OK) or not os.access(f"{base}/cgroup.subtree_control", os.W_OK):
        return f"this user may not create cgroups in {base} (it is not delegated)"
    _sweep(base)
    enabled = _read(f"{base}/cgroup.subtree_control").split()
    want = " ".join(f"+{c}" for c in needed if c not in enabled)
    if want:
        if own != "/" and _read(f"{base}/cgroup.procs").split():
            # No internal processes (cgroup v2): the caller moves into a leaf of its own first.
            leaf = os.path.join(base, _name("caller"))
            try:
                try:
                    os.mkdir(leaf, 0o755)
                except FileExistsError:
                    pass
                _write(f"{leaf}/cgroup.procs", "0")
            except OSError as e:
                return f"cannot move this process into {leaf} ({os.strerror(e.errno or 0)})"
        try:
            _write(f"{base}/cgroup.subtree_control", want)
        except OSError as e:
            if e.errno == EBUSY:
                return (
                    f"{base} holds other processes, and cgroup v2 gives controllers only to "
                    "the children of a cgroup without processes of its own"
                )
            return f"cannot enable {want} in {base} ({os.strerror(e.errno or 0)})"
    cg = Cgroup(2, limits)
    try:
        cg._make(base, needed)
    except OSError as e:
        cg.remove()
        return f"cannot create a cgroup in {base} ({os.strerror(e.errno or 0)})"
    return cg


def _v1(limits: dict[str, Any], needed: list[str]) -> Cgroup | str:
    """A v1 cgroup (a directory in each hierarchy), or why there is none."""
    own = _own_cgroups()
    cg = Cgroup(1, limits)
    try:
        for c in needed:
            found = [(r, p) for kind, r, p, opts in _mounts() if kind == "cgroup" and c in opts]
            if not found or c not in own:
                return f"there is no cgroup v1 {c} hierarchy"
            base = _under(found[0][0], found[0][1], own[c])
            _sweep(base)
            cg._make(base, [c])
    except OSError as e:
        cg.remove()
        if isinstance(e, PermissionError):
            return "cgroup v1 needs root"
        return f"cgroup v1 refused: {os.strerror(e.errno or 0)} ({e.filename or 'mkdir'})"
    return cg


def _sweep(base: str) -> None:
    """Remove empty cgroups left in ``base`` by runners that died (``kill -9``)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == "reexec" and parts[1].isdigit():
            if not os.path.exists(f"/proc/{parts[1]}"):
                try:
                    os.rmdir(os.path.join(base, name))
                except OSError:
                    pass


def create(box: dict[str, Any], report: Callable[[str], object] | None) -> Cgroup | None:
    """The workload's cgroup with ``box["cgroup"]``'s limits; None when best effort put them
    into resource limits instead (``box["rlimits"]`` then has them).

    Raises:
        SandboxError: no cgroup can be had here (and no best effort was asked for, or
            ``cpus``, which has no rlimit, was), or writing a limit failed.
    """
    limits = box["cgroup"]
    pairs = (("memory", "memory"), ("pids", "pids"), ("cpu", "cpus"))
    needed = [c for c, k in pairs if limits[k] is not None]
    why = []
    for make in (_v2, _v1):
        try:
            got = make(limits, needed)
        except OSError as e:  # /proc/self/cgroup unreadable: no /proc here
            got = f"cannot read this process's cgroups ({os.strerror(e.errno or 0)})"
        if isinstance(got, Cgroup):
            try:
                got.write_limits()
            except OSError as e:
                got.remove()
                raise SandboxError(
                    f"cannot set the workload's cgroup limits: {os.strerror(e.errno or 0)} "
                    f"({e.filename or 'a limit file'})",
                    e.errno or 0,
                    "cgroup",
                ) from e
            return got
        why.append(got)
    flags = ", ".join(
        f
        for f, k in (("memory", "memory"), ("pids_limit", "pids"), ("cpus", "cpus"))
        if limits[k] is not None
    )
    if box["best_effort"] and limits["cpus"] is None:
        _best_effort(box, report, "; ".join(why))
        return None
    hint = "" if limits["cpus"] is not None else ", or ask for best effort (limits_best_effort)"
    raise SandboxError(
        f"cannot apply {flags}: {'they need' if ',' in flags else 'it needs'} a cgroup of the "
        "workload's own and none can be made "
        f"here ({'; '.join(why)}); run under `systemd-run --user --scope -p Delegate=yes` "
        f"(cgroup v2) or as root{hint}",
        ENOENT,
        "cgroup",
    )


def _best_effort(box: dict[str, Any], report: Callable[[str], object] | None, why: str) -> None:
    limits = box["cgroup"]
    taken = {res for res, _, _ in box["rlimits"]}
    said = []
    for key, res, text in (
        ("pids", RLIMITS["nproc"], "pids_limit {} is RLIMIT_NPROC (this uid's processes)"),
        ("memory", RLIMITS["as"], "memory {} is RLIMIT_AS (address space)"),
    ):
        value = limits[key]
        if value is None:
            continue
        if res not in taken:
            box["rlimits"].append([res, value, value])
        said.append(text.format(format_size(value) if key == "memory" else value))
    if report is not None:
        report(f"no cgroup here ({why}): best effort, {' and '.join(said)}")


def run_limited(
    box: dict[str, Any], go: Callable[[], int], report: Callable[[str], object] | None
) -> int:
    """Run ``go`` (the whole run) inside the workload's cgroup, when it has limits; report a
    limit it hit in one sentence; return its exit status unchanged (128+N for signal N)."""
    if report is not None:
        for note in box["notes"]:
            report(note)
    cg = create(box, report) if box["cgroup"] is not None else None
    try:
        if cg is not None:
            box["cgroup_fds"] = list(cg.fds)
        status = go()
        said = cg.verdict(status) if cg is not None else None
        said = said or _rlimit_verdict(box, status)
        if said is not None and report is not None:
            report(said)
        return status
    finally:
        box["cgroup_fds"] = []
        if cg is not None:
            cg.remove()


def _rlimit_verdict(box: dict[str, Any], status: int) -> str | None:
    limits = {res: soft for res, soft, _ in box["rlimits"]}
    if status == 128 + _SIGXCPU and RLIMITS["cpu"] in limits:
        return f"killed: CPU time limit {limits[RLIMITS['cpu']]} s reached (RLIMIT_CPU)"
    if status == 128 + _SIGXFSZ and RLIMITS["fsize"] in limits:
        return f"killed: file size limit {limits[RLIMITS['fsize']]} bytes reached (RLIMIT_FSIZE)"
    return None
