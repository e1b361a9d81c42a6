"""The namespace errors: one tree, and the diagnosis that picks the leaf and writes its sentence.

Every kernel refusal becomes a :class:`NamespaceError` leaf by :func:`error_for`, whose message
says in one sentence what the cause is and which knob (sysctl, kernel option, privilege)
changes it. The same function serves errors raised in the caller and errors a forked or
re-executed setup process reports back to the runner as ``(operation, errno, flags, detail)``
(see ``_wire``). Re-exported by ``reexec_core.namespaces``.
"""

from __future__ import annotations

import os
import sys
from errno import EACCES, EINVAL, ENOENT, ENOSPC, ENOSYS, EPERM, EUSERS

from reexec_core.namespaces._linux import CLONE_NEWNS, CLONE_NEWUSER, kernel_namespaces, names_for

__all__ = [
    "CommandError",
    "IdMapError",
    "JoinError",
    "MountError",
    "NamespaceError",
    "NamespaceLimitError",
    "NamespacePermissionError",
    "NamespaceSetupError",
    "NamespaceUnsupportedError",
    "SandboxError",
    "SeccompProfileError",
    "ThreadedCallerError",
    "error_for",
    "require_linux",
]


class NamespaceError(Exception):
    """Base of every namespace failure: the kernel or the system refused, not a caller bug.

    ``str(error)`` is one sentence that says what went wrong and what to change.

    Attributes:
        errno: the kernel's errno, or 0 when the failure was not a system call.
        operation: what was being done (``"unshare"``, ``"mount"``, ``"uid_map"``, ...).
    """

    def __init__(self, message: str, errno: int = 0, operation: str = "") -> None:
        super().__init__(message)
        self.errno = errno
        self.operation = operation


class NamespaceLimitError(NamespaceError):
    """ENOSPC/EUSERS: a ``user.max_*_namespaces`` limit (or the nesting depth) is reached."""


class NamespacePermissionError(NamespaceError):
    """EPERM: a policy (seccomp, AppArmor, a sysctl) or a missing privilege forbids it."""


class NamespaceUnsupportedError(NamespaceError):
    """The kernel has no such namespace type (built without its CONFIG_*_NS), or not Linux."""


class ThreadedCallerError(NamespaceError):
    """EINVAL: user/mount namespaces cannot be entered by a process with several threads."""


class MountError(NamespaceError):
    """A mount, bind, tmpfs or ``pivot_root`` inside the new mount namespace failed."""


class IdMapError(NamespaceError):
    """Writing the uid/gid map failed (newuidmap missing, no /etc/subuid range, refused)."""


class JoinError(NamespaceError):
    """Joining a running process's namespaces failed (gone, not permitted, unsupported)."""


class NamespaceSetupError(NamespaceError):
    """Another step of setting up the namespaces failed (hostname, loopback, exec)."""


class CommandError(NamespaceError):
    """The command could not be started inside (not found: errno ENOENT; not executable)."""


class SandboxError(NamespaceError):
    """A sandbox option could not be had: a cgroup limit, a resource limit, capabilities,
    no_new_privs or Landlock (the message says which, and how to get it)."""


# --------------------------------------------------------------------------------------------
# errno -> typed error, with the knob that changes the answer


def require_linux() -> None:
    """Refuse, with the typed error, to create or join namespaces where there are none.

    Raises:
        NamespaceUnsupportedError: not Linux.
    """
    if sys.platform != "linux":
        raise NamespaceUnsupportedError(
            f"Linux namespaces are not available on {sys.platform}; run this on Linux",
            ENOSYS,
            "load",
        )


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode().strip()
    except OSError:
        return None


def _userns_policy() -> str:
    """Name the policy that most likely refused an unprivileged user namespace, and its knob."""
    if _read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (
            "AppArmor restricts unprivileged user namespaces "
            "(sysctl kernel.apparmor_restrict_unprivileged_userns=1; set it to 0 or give this "
            "program an AppArmor profile with the 'userns' permission)"
        )
    if _read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return (
            "unprivileged user namespaces are disabled "
            "(sysctl kernel.unprivileged_userns_clone=0; set it to 1)"
        )
    seccomp = "0"
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Seccomp:"):
                    seccomp = line.split()[1].decode()
    except OSError:
        pass
    if seccomp != "0":
        return (
            "a seccomp filter forbids it (containers' default profiles do: run the container "
            "with a profile that allows unshare/clone with CLONE_NEWUSER, e.g. "
            "--security-opt seccomp=unconfined)"
        )
    return (
        "a security policy forbids it (a seccomp filter, AppArmor's "
        "kernel.apparmor_restrict_unprivileged_userns, kernel.unprivileged_userns_clone=0, "
        "or a chroot, in which the kernel refuses user namespaces)"
    )


def error_for(
    operation: str, errno: int, flags: int = 0, detail: str = "", threads: int = 1
) -> NamespaceError:
    """Turn a refused call into the typed error whose message names the cause and the knob.

    Args:
        operation: ``"unshare"``, ``"setns"``, ``"mount"``, ``"pivot_root"``, ``"uid_map"``,
            ``"gid_map"``, ``"sethostname"``, ``"loopback"``, ``"exec"``, ...
        errno: the errno the kernel returned.
        flags: for unshare/setns, the clone flags that were asked for.
        detail: what the operation was applied to (a path, a command, a namespace list).
        threads: how many threads the calling process had.

    Returns:
        The error to raise (never raises itself).
    """
    what = ", ".join(names_for(flags)) or "no"
    reason = os.strerror(errno) if errno else ""
    if operation in ("unshare", "setns"):
        verb = "create" if operation == "unshare" else "join"
        subject = f"the {what} namespace{'s' if len(names_for(flags)) != 1 else ''}"
        if operation == "setns" and detail:
            subject += f" of {detail}"
        missing = [n for n in names_for(flags) if n not in kernel_namespaces()]
        if missing or errno == ENOSYS:
            kinds = ", ".join(missing) or what
            cls: type[NamespaceError] = (
                JoinError if operation == "setns" else NamespaceUnsupportedError
            )
            return cls(
                f"cannot {verb} {subject}: this kernel has no {kinds} namespaces (it was built "
                f"without CONFIG_{(missing or ['USER'])[0].upper()}_NS, or is too old); "
                f"leave {kinds} out of the namespace list",
                errno,
                operation,
            )
        if errno == EINVAL and threads > 1 and flags & (CLONE_NEWUSER | CLONE_NEWNS):
            return ThreadedCallerError(
                f"cannot {verb} {subject}: the kernel refuses user and mount namespaces to a "
                f"process with more than one thread (this one has {threads}); call it before "
                "starting threads, or use namespaces.run()/run_entry(), which enter them in a "
                "fresh single-threaded process",
                errno,
                operation,
            )
        if errno in (ENOSPC, EUSERS):
            limits = []
            for name in names_for(flags) or ["user"]:
                knob = f"user.max_{name}_namespaces"
                value = _read_sysctl(f"/proc/sys/user/max_{name}_namespaces")
                if value is not None:
                    limits.append((value == "0", knob, value))
            zero = [(knob, value) for is_zero, knob, value in limits if is_zero]
            if zero:
                knob, value = zero[0]
                why = f"the sysctl {knob} is {value} here"
            else:
                knobs = " or ".join(sorted({knob for _, knob, _ in limits})) or (
                    "user.max_user_namespaces"
                )
                why = f"the limit {knobs} is reached (or namespaces are nested 32 deep)"
            return NamespaceLimitError(
                f"cannot {verb} {subject}: {why}; raise it with "
                f"`sysctl -w {zero[0][0] if zero else 'user.max_user_namespaces'}=15000` "
                "(as root, in the namespace that sets the limit)",
                errno,
                operation,
            )
        if errno == EPERM:
            if operation == "unshare" and flags & CLONE_NEWUSER:
                return NamespacePermissionError(
                    f"cannot create {subject}: the kernel refused the user namespace (EPERM): "
                    f"{_userns_policy()}",
                    errno,
                    operation,
                )
            if operation == "unshare":
                return NamespacePermissionError(
                    f"cannot create {subject}: without a user namespace this needs "
                    "CAP_SYS_ADMIN; run as root or add 'user' to the namespace list",
                    errno,
                    operation,
                )
            return JoinError(
                f"cannot join {subject}: not permitted (EPERM); join as the user that created "
                "them or as root",
                errno,
                operation,
            )
        if operation == "setns":
            return JoinError(f"cannot join {subject}: {reason}", errno, operation)
        return NamespaceError(f"cannot {verb} {subject}: {reason}", errno, operation)
    if operation in ("mount", "bind", "ro-bind", "tmpfs", "proc", "pivot_root", "private"):
        hint = {
            ENOENT: "the source or mount point does not exist",
            EPERM: "not permitted (a locked mount, or no mount namespace of our own)",
        }.get(errno, reason)
        verb = {
            "private": "make the mounts below",
            "bind": "bind-mount",
            "ro-bind": "bind-mount",
            "tmpfs": "mount a tmpfs on",
            "proc": "mount a fresh proc on",
            "pivot_root": "pivot_root into",
        }.get(operation, operation)
        text = f"cannot {verb} {detail}"
        return MountError(f"{text}: {hint}" if errno else text, errno, operation)
    if operation in ("uid_map", "gid_map", "setgroups"):
        return IdMapError(f"cannot write the {operation} {detail}: {reason}", errno, operation)
    if operation == "exec":
        if errno == ENOENT:
            reason = "command not found (not on PATH, or no such file inside the namespaces)"
        elif errno == EACCES:
            reason = "permission denied (not executable, or on a noexec mount)"
        return CommandError(f"cannot run {detail}: {reason}", errno, operation)
    if operation == "sandbox":
        return SandboxError(detail, errno, operation)  # the set-up wrote the whole sentence
    if operation in ("join", "pidfd_open"):
        return JoinError(f"cannot join {detail}: {reason}", errno, operation)
    text = " ".join(x for x in (f"cannot {operation}", detail) if x)
    return NamespaceSetupError(f"{text}: {reason}" if reason else text, errno, operation)


class SeccompProfileError(NamespaceError):
    """A seccomp profile cannot be used: unreadable, malformed, or asking what we cannot do."""
