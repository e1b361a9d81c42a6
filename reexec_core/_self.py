"""How was this program started? -> the argv that starts it again, and how a fast child runs main.

In Go, "self" is ``/proc/self/exe``. In Python that is the interpreter, not the program, so
"self" is the interpreter plus what it was asked to run, recovered from ``__main__``:

=============  ======================================  ==================================
kind           started as                              fast child re-runs main with
=============  ======================================  ==================================
``script``     ``python app.py``, a venv console       the file, executed as ``__main__``
               script (``.venv/bin/app``)
``module``     ``python -m pkg``                       ``runpy.run_module("pkg.__main__")``
``path``       ``python dir_or.zip`` (zipapp with      ``runpy.run_path(path)``
               ``__main__.py``), shiv console script
``entry``      shiv ``.pyz`` (``-e mod:fn``)           ``mod.fn()``, skipping shiv's
                                                       bootstrap
``argv``       anything else that can be started       no fast path: start ``self_argv()``
               again (a frozen binary, a shiv pyz       normally
               in interpreter mode)
=============  ======================================  ==================================

Paths are made absolute from what the interpreter recorded at start-up (``__main__.__file__``,
the zip importer's archive path), so a later ``os.chdir`` does not change "self".
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # mypy treats this name as True; importing typing would cost ~25 ms here
if TYPE_CHECKING:
    # kind, target, self argv, sys.path entry not to hand to a fast child, start directory
    OriginSpec = tuple[str, str, list[str], str | None, str | None]

# Set by a fast child (see _child.boot): it has no __main__ of its own to inspect and takes the
# parent's description of "self" instead.
_adopted: Origin | None = None
_detected: Origin | None = None


class Origin:
    """How this program was started: enough to start it again, normally or as a fast child."""

    __slots__ = ("kind", "target", "argv", "drop", "start_dir")

    def __init__(
        self,
        kind: str,
        target: str,
        argv: list[str],
        drop: str | None = None,
        start_dir: str | None = None,
    ) -> None:
        self.kind = kind
        self.target = target
        self.argv = argv
        # A sys.path entry a fast child must not get: the shiv archive itself (it only holds
        # shiv's bootstrap; leaving it on sys.path would make the child read the archive's
        # whole zip directory on its first import).
        self.drop = drop
        # python -m found the module through sys.path[0], the directory it was started in.
        self.start_dir = start_dir

    def spec(self) -> OriginSpec:
        """Return the origin as plain data for the fast child's bootstrap code."""
        return (self.kind, self.target, list(self.argv), self.drop, self.start_dir)

    def __repr__(self) -> str:
        return f"Origin(kind={self.kind!r}, target={self.target!r}, argv={self.argv!r})"


def adopt(spec: OriginSpec) -> None:
    """Take the parent's description of "self" (called by a fast child before main runs)."""
    global _adopted
    kind, target, argv, drop, start_dir = spec
    _adopted = Origin(kind, target, list(argv), drop, start_dir)


def origin() -> Origin:
    """Return how this program was started (computed once, then cached).

    Raises:
        RuntimeError: the program cannot be started again (``python -c``, an interactive
            interpreter, an empty ``sys.executable``).
    """
    global _detected
    if _adopted is not None:
        return _adopted
    if _detected is None:
        _detected = _detect()
    return _detected


def _detect() -> Origin:
    # os is imported here, not at module level: a fast child adopts its parent's origin and
    # never needs it (importing os costs ~2 ms of a child started with -S; see _libc).
    import os

    exe = sys.executable
    if not exe:
        raise RuntimeError(
            "cannot start this program again: sys.executable is empty (the interpreter could "
            "not tell where it lives)"
        )
    if getattr(sys, "frozen", False):
        return Origin("argv", exe, [exe])
    shiv = _detect_shiv(exe)
    if shiv is not None:
        return shiv
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name != "__main__":
        # python -m pkg: spec.name is "pkg.__main__"; python -m mod: "mod".
        name: str = spec.name
        runname = name[: -len(".__main__")] if name.endswith(".__main__") else name
        start_dir = _module_start_dir(spec)
        return Origin("module", name, [exe, *_flags(), "-m", runname], start_dir=start_dir)
    if spec is not None and spec.origin:
        # python DIR or python ARCHIVE.zip: runpy ran DIR/__main__.py as __main__.
        path = os.path.dirname(os.path.abspath(spec.origin))
        return Origin("path", path, [exe, *_flags(), path])
    file = getattr(main, "__file__", None)
    if isinstance(file, str) and file:
        # Absolute since Python 3.9 even when started by a relative path; abspath guards
        # against a __main__ that set its own.
        path = os.path.abspath(file)
        return Origin("script", path, [exe, *_flags(), path])
    raise RuntimeError(
        "cannot start this program again: it was started with 'python -c' or interactively, "
        "so there is no script, module or archive to re-run"
    )


def _module_start_dir(spec: object) -> str | None:
    """The directory ``python -m`` found the module in, if that was its start directory."""
    import os

    first = sys.path[0] if sys.path else ""
    found = getattr(spec, "origin", None) or ""
    if first and os.path.isabs(first) and found.startswith(os.path.join(first, "")):
        return first
    return None


def _detect_shiv(exe: str) -> Origin | None:
    """Recognise a shiv ``.pyz``: its ``__main__`` imported ``_bootstrap`` from the archive, or
    is the fast start of a ``selfupdate build`` archive."""
    import os

    boot = sys.modules.get("_bootstrap")
    if not hasattr(boot, "bootstrap"):
        # A selfupdate build's fast start (its __main__ carries a RECORD) skips _bootstrap.
        boot = sys.modules.get("__main__")
        boot = boot if getattr(boot, "RECORD", None) else None
    archive = getattr(getattr(boot, "__loader__", None), "archive", None)
    if not isinstance(archive, str):
        return None
    # The zip importer records the archive path as given on the command line, made absolute at
    # start-up: a relative path or a symlink stays valid after a chdir.
    archive = os.path.abspath(archive)
    argv = [exe, *_flags(), archive]
    entry, script = _shiv_environment(archive)
    if entry:
        return Origin("entry", entry, argv, drop=archive)
    if script:
        for entry_dir in sys.path:
            candidate = os.path.join(entry_dir, "bin", script)
            if entry_dir != archive and os.path.isfile(candidate):
                return Origin("path", candidate, argv, drop=archive)
    return Origin("argv", archive, argv)


def _shiv_environment(archive: str) -> tuple[str | None, str | None]:
    """Read the entry point and console script shiv recorded in the archive's environment.json."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(archive) as zf:
            env = json.loads(zf.read("environment.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None, None
    entry, script = env.get("entry_point"), env.get("script")
    return (entry if isinstance(entry, str) else None, script if isinstance(script, str) else None)


def _flags() -> list[str]:
    """Interpreter options this process runs with (-X, -W, -B, ...), to pass on to a child."""
    try:
        import subprocess

        flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return []
    return flags


def isolation_flags() -> list[str]:
    """The isolation options this interpreter runs with (``-I``, with ``-S`` if it skipped
    ``site``, or ``-E``, ``-s``, ``-P``), to
    start another program with: a program started with ``python -I`` must not have a child
    that reads ``PYTHONPATH`` (and runs the ``sitecustomize`` found there) or the user's site.
    """
    f = sys.flags
    if f.isolated:
        # -S too when this one skipped site: a built .pyz insists on both (and would start
        # itself again to get them).
        return ["-I", "-S"] if f.no_site else ["-I"]
    flags = [opt for opt, on in (("-E", f.ignore_environment), ("-s", f.no_user_site)) if on]
    if getattr(f, "safe_path", False):  # 3.11+
        flags.append("-P")
    return flags


def self_argv() -> list[str]:
    """Return the argv that starts this program again, as the user started it.

    ``[sys.executable, ...interpreter options, /abs/script.py]``, ``[sys.executable, "-m",
    "pkg"]`` or ``[sys.executable, /abs/app.pyz]``; a new list each call.

    Returns:
        The argv (run it with ``subprocess`` to get the program's ordinary ``main``).

    Raises:
        RuntimeError: the program cannot be started again (``python -c``, interactive).
    """
    import os

    o = origin()
    if o.kind == "module" and o.start_dir and os.getcwd() != o.start_dir:
        # "python -m pkg" found pkg in the directory it was started in, and this process has
        # left that directory: "-m pkg" would no longer find it, so name the directory.
        code = (
            f"import runpy,sys;sys.path.insert(0,{ascii(o.start_dir)});"
            f"runpy.run_module({ascii(o.target)},run_name='__main__',alter_sys=True)"
        )
        return [o.argv[0], *o.argv[1:-2], "-c", code]
    return list(o.argv)
