"""The ``__main__.py`` of a built ``.pyz``: a fast path in front of shiv's bootstrap.

``selfupdate build`` packs this file as the archive's ``__main__.py``, with ``RECORD`` replaced
by what the build knew (the build id, the entry point, the root shiv would use, the name of the
completion marker). A start then does, with only ``sys`` and ``os`` (already imported by the
interpreter itself):

1. **isolation**: unless the interpreter runs with ``-I -S`` (the shebang the build writes),
   start it again that way, once (``_SELFUPDATE_ISOLATED`` guards the loop), keeping ``-X``,
   ``-W``, ``-O`` and ``-B``. A host ``.pth``, ``PYTHONPATH``, ``PYTHONSTARTUP``,
   ``PYTHONHOME`` or a user site-packages then neither slows nor changes the program;
2. **the fast path**: when this build's extraction ``ROOT/NAME_BUILDID`` is complete and
   trusted, put its ``site-packages`` on ``sys.path`` and call the entry point. Trusted means:
   the extraction's real path (links resolved) is, from ``/`` down to ``site-packages``,
   directories only (the resolved path is what is used, so a link cannot be swapped in after
   the check), each owned by this user or root, none writable by group or others (an ancestor
   of ``ROOT`` may be, if sticky); and its marker (written by :mod:`._boot` after every file
   was written and fsynced) is a regular file of this user or root, writable by nobody else,
   that holds this build's id;
3. everything else (the first start of a build, a ``SHIV_*`` variable other than
   ``SHIV_ROOT``, a root inside a user namespace, anything unusual) goes to :mod:`._boot`, the
   slow gate, which checks ``ROOT`` and any extraction there with :mod:`._trust`, finishes or
   repairs the extraction, writes the marker, and hands over to shiv's own bootstrap.

What the fast path does *not* look at: the files below ``site-packages``. Only this user or
root can have written them (every directory on the way is theirs and closed to others, and
every file was checked by the slow gate before the marker was written), and both are trusted
(docs/security.md). Standard library only, no import beyond ``sys`` and ``os``.
"""

import os
import sys

# (build id, entry point or None, root or None, marker name): filled in by the build.
RECORD: "tuple[str, str | None, str | None, str] | None" = None  # the record

_AGAIN = "_SELFUPDATE_ISOLATED"
_FMT, _DIR, _REG = 0o170000, 0o040000, 0o100000


def _isolate() -> None:
    """Start this archive again with ``-I -S`` (returns only if that is impossible)."""
    exe = sys.executable
    if not exe or not sys.argv or not sys.argv[0]:
        return
    argv = [exe, "-I", "-S"]
    argv += ["-W" + w for w in sys.warnoptions]
    for key, value in sys._xoptions.items():
        argv += ["-X", key if value is True else f"{key}={value}"]
    if sys.flags.optimize:
        argv.append("-" + "O" * sys.flags.optimize)
    if sys.flags.dont_write_bytecode:
        argv.append("-B")
    # The guard names this process (exec keeps the PID): a value inherited from elsewhere
    # does not turn the isolation off.
    os.environ[_AGAIN] = str(os.getpid())
    try:
        os.execv(exe, [*argv, *sys.argv])
    except OSError:
        del os.environ[_AGAIN]


def _trusted(st: os.stat_result, kind: int, mine: tuple[int, int], sticky_ok: bool) -> bool:
    if st.st_mode & _FMT != kind or st.st_uid not in mine:
        return False
    return not st.st_mode & 0o022 or (sticky_ok and bool(st.st_mode & 0o1000))


def _site_packages(record: tuple[str, str | None, str | None, str]) -> str | None:
    """This build's trusted, complete ``site-packages``, or None (let the slow gate decide)."""
    build_id, entry, recorded_root, marker = record
    environ = os.environ
    if entry is None:
        return None
    for key in environ:
        if key.startswith("SHIV_") and key != "SHIV_ROOT":
            return None  # shiv's own options (SHIV_FORCE_EXTRACT, ...): shiv handles them
    root = environ.get("SHIV_ROOT", recorded_root)  # as shiv's Environment.root
    if root and root.startswith("$"):
        root = environ.get(root[1:], root[1:])
    root = root or "~/.shiv"
    if root.startswith("~"):
        root = os.path.expanduser(root)  # without HOME, from the password database
    if not root.startswith("/"):
        return None
    # shiv names the extraction after the archive's real file name (cache_path()).
    name = os.path.basename(os.path.realpath(sys.argv[0]))
    ext = os.path.realpath(f"{root}/{name}_{build_id}")
    mine = (os.geteuid(), 0)
    try:
        parts = ext.split("/")
        path = ""
        for i, part in enumerate(parts[1:], 1):
            path = f"{path}/{part}"
            # ROOT and the extraction itself: closed to others even if sticky.
            st = os.lstat(path)
            if not _trusted(st, _DIR, mine, i < len(parts) - 2):
                return None
            if i == len(parts) - 2 and st.st_mode & 0o077:
                return None  # a ROOT others may enter: the slow gate checks, then closes it
        if not _trusted(os.lstat("/"), _DIR, mine, True):
            return None
        site = f"{ext}/site-packages"
        if not _trusted(os.lstat(site), _DIR, mine, False):
            return None
        fd = os.open(f"{ext}/{marker}", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC)
        try:
            if not _trusted(os.fstat(fd), _REG, mine, False):
                return None
            if os.read(fd, 200) != f"{build_id}\n".encode():
                return None
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None
    return site


def _start() -> None:
    again = os.environ.pop(_AGAIN, None) == str(os.getpid())
    if not again and not (sys.flags.isolated and sys.flags.no_site):
        _isolate()
    site = _site_packages(RECORD) if RECORD is not None else None
    if site is None or RECORD is None or RECORD[1] is None:
        import _selfupdate_boot  # type: ignore[import-not-found]  # the slow gate, beside this

        _selfupdate_boot.start(RECORD)
        return
    sys.path.append(site)  # where shiv's bootstrap puts it under -S
    module, _, attr = RECORD[1].partition(":")
    __import__(module)
    target: object = sys.modules[module]
    for part in attr.split("."):
        target = getattr(target, part)
    sys.exit(target())  # type: ignore[operator]


if __name__ == "__main__":
    _start()
