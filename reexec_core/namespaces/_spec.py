"""What a namespaced run asks for, checked once, as plain data a child can be handed.

``Spec`` is built in the caller from the keyword options of ``run``/``run_entry``/``join``
(named like the CLI flags), validated there (``ValueError``/``TypeError`` for misuse), and then
handed unchanged to the process that sets the namespaces up: by ``fork`` on the fast path, or
as JSON, on a memfd, to a re-executed child (see ``_runner`` and ``_wire``).
"""

from __future__ import annotations

import os
import sys

from reexec_core.namespaces import _linux
from reexec_core.namespaces.errors import IdMapError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

    IdMap = list[tuple[int, int, int]]

#: Signals the runner, the relay and PID 1 pass on to the workload (as tini does).
FORWARDED = (1, 2, 3, 10, 12, 15, 28)  # HUP INT QUIT USR1 USR2 TERM WINCH
SIGCHLD = 17
#: The overflow id (nobody/nogroup): what a root caller's strict-preset workload is on the host.
NOBODY = 65534

_FIELDS = (
    "flags",
    "auto",
    "argv",
    "entry",
    "uid_map",
    "gid_map",
    "parent_maps",
    "deny_setgroups",
    "use_newidmap",
    "hostname",
    "mounts",
    "root",
    "proc",
    "cwd",
    "env",
    "sigmask",
    "join",
    "join_flags",
    "name",
    "pty",
    "sandbox",
)


class Spec:
    """A checked, serialisable description of one namespaced run (see ``_FIELDS``)."""

    __slots__ = _FIELDS

    flags: int  # clone flags of the namespaces to create (0 for join)
    auto: bool  # namespaces were not named: "all the caller can create"
    argv: list[str] | None  # the external command, or None for an entry point
    entry: list[str] | None  # [name, *args] of a registered entry point
    uid_map: IdMap
    gid_map: IdMap
    parent_maps: bool  # the runner writes the maps (ranges, or a root caller)
    deny_setgroups: bool  # the child writes its own single-line maps
    use_newidmap: bool  # the runner writes them through newuidmap/newgidmap (setuid helpers)
    hostname: str | None
    mounts: list[tuple[str, str, str]]  # (kind, source, target): bind | ro-bind | tmpfs
    root: str | None  # new root (pivot_root)
    proc: bool  # mount a fresh /proc inside
    cwd: str | None
    env: dict[str, str] | None
    sigmask: list[int]  # the signal mask the workload starts with
    join: int  # pid to join (0: create new namespaces)
    join_flags: int
    name: str  # a short description for messages
    pty: bool  # stdin is a pty of the workload's own (the runner relays it): its ctty
    sandbox: dict[str, Any] | None  # limits, capabilities, Landlock, seccomp (see _sandbox)

    def to_json(self) -> str:
        import json

        return json.dumps({f: getattr(self, f) for f in _FIELDS})

    @classmethod
    def from_json(cls, text: str) -> Spec:
        import json

        spec = cls.__new__(cls)
        data = json.loads(text)
        for f in _FIELDS:
            value = data[f]
            if f in ("uid_map", "gid_map", "mounts"):
                value = [tuple(v) for v in value]
            setattr(spec, f, value)
        return spec

    @property
    def needs_fork(self) -> bool:
        """PID and time namespaces apply to children only: the setup process must fork."""
        return bool(self.flags & (_linux.CLONE_NEWPID | _linux.CLONE_NEWTIME))


def parse_names(namespaces: Iterable[str] | str | None) -> tuple[int, bool]:
    """Return (clone flags, auto) for a namespace list ("user,pid" or ["user", "pid"]).

    None means "all this kernel has" (auto: the runner may drop ``user`` for a root caller
    whose user namespaces are blocked, never a namespace the caller named).
    """
    if namespaces is None or namespaces == "all":
        return _linux.flags_for(_linux.kernel_namespaces()), True
    if isinstance(namespaces, str):
        names = [n.strip() for n in namespaces.split(",") if n.strip()]
    else:
        names = list(namespaces)
    aliases = {"mnt": "mount", "ns": "mount", "network": "net"}
    names = [aliases.get(n, n) for n in names]
    if not names:
        raise ValueError("the namespace list is empty; name at least one (e.g. user,pid)")
    return _linux.flags_for(names), False


def _id_map(value: Sequence[Sequence[int]] | None, what: str) -> IdMap | None:
    if value is None:
        return None
    out: IdMap = []
    for entry in value:
        if len(entry) != 3 or not all(isinstance(x, int) and x >= 0 for x in entry):
            raise ValueError(f"{what} entries must be (inside, outside, count), not {entry!r}")
        out.append((int(entry[0]), int(entry[1]), int(entry[2])))
    if not out:
        raise ValueError(f"{what} must not be empty")
    return out


def _subid_range(path: str, uid: int) -> tuple[int, int] | None:
    """Return the first (start, count) for this user in /etc/subuid or /etc/subgid."""
    import pwd

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (user, str(uid)):
                    return int(parts[1]), int(parts[2])
    except (OSError, ValueError):
        return None
    return None


def _pair(value: str | Sequence[str], flag: str) -> tuple[str, str]:
    if isinstance(value, str):
        src, sep, dst = value.partition(":")
        if not sep:
            dst = src
    else:
        src, dst = value
    if not src or not dst:
        raise ValueError(f"{flag} needs SRC:DST, not {value!r}")
    return os.path.abspath(src), dst


def make_spec(
    *,
    argv: Sequence[str] | None = None,
    entry: Sequence[str] | None = None,
    namespaces: Iterable[str] | str | None = None,
    map_root: bool | None = None,
    map_current: bool = False,
    subids: bool = False,
    uid_map: Sequence[Sequence[int]] | None = None,
    gid_map: Sequence[Sequence[int]] | None = None,
    hostname: str | None = None,
    bind: Iterable[str | Sequence[str]] = (),
    ro_bind: Iterable[str | Sequence[str]] = (),
    tmpfs: Iterable[str] = (),
    mounts: Iterable[tuple[str, str, str]] = (),
    root: str | os.PathLike[str] | None = None,
    proc: bool | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    memory: int | str | None = None,
    pids_limit: int | None = None,
    cpus: float | None = None,
    ulimits: Iterable[str] | Mapping[str, object] | None = None,
    limits_best_effort: bool | None = None,
    cap_drop: str | Iterable[str] | None = None,
    cap_add: str | Iterable[str] | None = None,
    no_new_privileges: bool | None = None,
    landlock_ro: Iterable[str] | None = None,
    landlock_rw: Iterable[str] | None = None,
    seccomp: str | os.PathLike[str] | None = None,
    sandbox: str | None = None,
    **unknown: Any,
) -> Spec:
    """Check the options of a namespaced run and return its :class:`Spec`.

    The sandbox options (``memory`` ... ``sandbox``) are checked by ``_sandbox.make``, which
    is imported only when one of them is given.

    Raises:
        TypeError: an unknown option.
        ValueError: options that contradict each other or the namespace list.
    """
    if unknown:
        raise TypeError(f"unknown namespace option(s): {', '.join(sorted(unknown))}")
    spec = Spec.__new__(Spec)
    spec.flags, spec.auto = parse_names(namespaces)
    user = bool(spec.flags & _linux.CLONE_NEWUSER)
    mnt = bool(spec.flags & _linux.CLONE_NEWNS)
    spec.argv = [os.fspath(a) for a in argv] if argv is not None else None
    spec.entry = list(entry) if entry is not None else None
    if spec.argv is not None and not spec.argv:
        raise ValueError("argv must name a command")
    if map_root and map_current:
        raise ValueError("map_root and map_current exclude each other")
    uid, gid = os.geteuid(), os.getegid()
    umap, gmap = _id_map(uid_map, "uid_map"), _id_map(gid_map, "gid_map")
    asked_map = bool(map_root or map_current or subids or umap or gmap)
    if asked_map and not user:
        raise ValueError("uid/gid mapping options need the user namespace in the list")
    spec.use_newidmap = False
    # The strict preset run by root: the workload must not be the host's root (it would pass
    # every DAC check on the host files it sees, /etc/shadow included), so root inside is
    # mapped onto nobody instead; the set-up processes keep the caller's ids (bind sources
    # under root-only directories stay reachable) and the workload's own process takes the
    # mapped ids just before its exec (_sandbox.enter). A map asked for explicitly wins.
    unprivileged = sandbox == "strict" and uid == 0 and not asked_map
    if user:
        inside_uid, inside_gid = (uid, gid) if map_current else (0, 0)
        if umap is None:
            umap = [(inside_uid, NOBODY if unprivileged else uid, 1)]
        if gmap is None:
            gmap = [(inside_gid, NOBODY if unprivileged else gid, 1)]
        if subids:
            if map_current:
                raise ValueError("subids maps the ranges above root inside: use it with map_root")
            for path, idmap, own in (("/etc/subuid", umap, uid), ("/etc/subgid", gmap, gid)):
                found = _subid_range(path, own)
                if found is None and own == 0:
                    found = (1, 4294967294)  # root may map every id onto itself
                if found is None:
                    raise IdMapError(
                        f"cannot map a full id range: {path} has no range for uid {own}; add "
                        f"one (e.g. `usermod --add-subuids 100000-165535 USER`) or drop subids",
                        0,
                        "subids",
                    )
                start, count = found
                idmap.append((1, start, count))
        self_only = umap == [(umap[0][0], uid, 1)] and gmap == [(gmap[0][0], gid, 1)]
        # One line mapping our own ids: the child writes it itself (after "deny" in
        # setgroups, as unshare -r does, root included: setgroups(2) could only pick
        # unmapped groups anyway). Anything more is written from outside: by root directly,
        # by others through the setuid newuidmap/newgidmap.
        spec.parent_maps = not self_only
        spec.use_newidmap = spec.parent_maps and uid != 0
        spec.deny_setgroups = not spec.parent_maps
    else:
        umap, gmap = [], []
        spec.parent_maps = spec.deny_setgroups = False
    spec.uid_map, spec.gid_map = umap, gmap
    if hostname is not None:
        if not spec.flags & _linux.CLONE_NEWUTS:
            raise ValueError("hostname needs the uts namespace in the list")
        if not hostname or len(hostname.encode()) > 64 or "\0" in hostname:
            raise ValueError(f"hostname must be 1..64 bytes without NUL, not {hostname!r}")
    spec.hostname = hostname
    mount_list: list[tuple[str, str, str]] = []
    for kind, src, dst in mounts:
        if kind not in ("bind", "ro-bind", "tmpfs"):
            raise ValueError(f"mount kind must be bind, ro-bind or tmpfs, not {kind!r}")
        mount_list.append((kind, os.path.abspath(src) if src else "", dst))
    mount_list += [("bind", *_pair(b, "bind")) for b in bind]
    mount_list += [("ro-bind", *_pair(b, "ro_bind")) for b in ro_bind]
    mount_list += [("tmpfs", "", t) for t in tmpfs]
    for _, _, dst in mount_list:
        if not dst.startswith("/"):
            raise ValueError(f"mount target {dst!r} must be an absolute path")
    if (mount_list or root is not None) and not mnt:
        raise ValueError("bind, ro_bind, tmpfs and root need the mount namespace in the list")
    spec.mounts = mount_list
    spec.root = os.path.abspath(root) if root is not None else None
    pid = bool(spec.flags & _linux.CLONE_NEWPID)
    if proc is None:
        proc = pid and mnt
    if proc and not mnt:
        raise ValueError("a fresh /proc needs the mount namespace in the list")
    spec.proc = bool(proc)
    spec.cwd = os.fspath(cwd) if cwd is not None else None
    spec.env = dict(env) if env is not None else None
    spec.sigmask = []
    spec.join = 0
    spec.join_flags = 0
    spec.pty = False
    boxed = {
        "memory": memory,
        "pids_limit": pids_limit,
        "cpus": cpus,
        "ulimits": ulimits,
        "limits_best_effort": limits_best_effort,
        "cap_drop": cap_drop,
        "cap_add": cap_add,
        "no_new_privileges": no_new_privileges,
        "landlock_ro": landlock_ro,
        "landlock_rw": landlock_rw,
        "seccomp": seccomp,
        "sandbox": sandbox,
    }
    spec.sandbox = None
    if any(v is not None for v in boxed.values()):
        from reexec_core.namespaces import _sandbox

        root_inside = umap[0][0] == 0 if user else uid == 0 and not unprivileged
        spec.sandbox = _sandbox.make(root_inside, user, spec.entry is not None, **boxed)
        if spec.sandbox is not None:
            # [uid, gid] the workload's process switches to (inside its user namespace, or
            # on the host without one), or None: it keeps the set-up's.
            spec.sandbox["setid"] = None
            if unprivileged:
                spec.sandbox["setid"] = [0, 0] if user else [NOBODY, NOBODY]
        if spec.sandbox and spec.sandbox["landlock"] is not None:
            # What the caller mounted in is the workload's to use: bind and tmpfs targets
            # read-write, ro-bind targets read-only (the hiding tmpfs below is not).
            spec.sandbox["landlock"]["mounts"] = [[kind, dst] for kind, _, dst in spec.mounts]
        if spec.sandbox and spec.sandbox["cgroup"] and mnt and spec.root is None:
            # The workload may own the cgroup files it sees (root mapped onto root, or the
            # delegate's uid): an empty tmpfs over them keeps it from moving itself out of
            # its limits (one it cannot unmount without CAP_SYS_ADMIN: --cap-drop).
            if os.path.isdir("/sys/fs/cgroup"):
                spec.mounts.append(("tmpfs", "", "/sys/fs/cgroup"))
        if spec.sandbox and sandbox == "strict" and mnt and spec.root is None:
            # Named unix sockets of the caller's session out of sight (see SOCKET_DIRS).
            keep = [dst for _, _, dst in spec.mounts] + [spec.cwd or ""]
            if spec.argv is not None and "/" in spec.argv[0]:
                keep.append(spec.argv[0])
            elif spec.argv is not None:  # found on PATH later: none of its directories hidden
                keep += (env or os.environ).get("PATH", os.defpath).split(os.pathsep)
            else:
                keep += [sys.executable, *sys.path]
            for hidden in _sandbox.socket_dirs_to_hide(keep):
                spec.mounts.append(("tmpfs", "", hidden))
    if spec.argv is not None:
        spec.name = spec.argv[0]
    elif spec.entry:
        spec.name = f"entry point {spec.entry[0]!r}"
    else:
        spec.name = "the workload"
    return spec
