"""``selfupdate build``: any app's ``pyproject.toml`` -> one reproducible shiv ``.pyz``.

::

    selfupdate build [PROJECT_DIR] [--entry-point MOD:FN] [--version V] [--out PATH]
                     [--trusted-root FILE] [--repo-url URL] [--channel NAME] [--cache DIR]

The steps, in :class:`Build`:

1. read the app's ``pyproject.toml`` (PEP 621): name, version, dependencies, its one console
   script as the entry point (:mod:`selfupdate.build._project`);
2. install the dependencies once per requirement list and interpreter into a cached
   ``site-packages`` (``pip --target --no-compile``; console-script wrappers dropped);
3. install the app itself from a clean copy of its project (``pip --no-deps``), so what goes
   in is what its wheel holds, and no path of the checkout is recorded;
4. put in the framework's own packages from the installation that runs this build (an app
   depends on ``reexec-selfupdate``; no package index has to serve it), and the release
   configuration (app, version, channel, repository URL, trusted root) where
   ``selfupdate.app`` finds it;
5. pack it with ``shiv --reproducible`` (fixed modes and timestamps): no pip, setuptools or
   shiv inside, and two builds of the same source and version are byte-identical, from any
   checkout path;
6. put the fast start in front of shiv's bootstrap (:func:`_add_fast_start`): the archive's
   ``__main__.py`` becomes :mod:`selfupdate._shiv._main` with this build's record (and its
   bytecode), beside the slow gate (:mod:`selfupdate._shiv._boot`) and the trust check it
   uses; the shebang starts the interpreter isolated (``#!/usr/bin/env -S python3 -I -S``;
   coreutils >= 8.30).

The path of the ``.pyz`` is printed last (default ``PROJECT_DIR/dist/NAME-VERSION.pyz``).
shiv is needed only here (``pip install 'reexec-selfupdate[build]'``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from selfupdate import _release
from selfupdate.build._project import (
    FRAMEWORK,
    FRAMEWORK_PACKAGES,
    BuildError,
    Project,
    check_trusted_root,
    check_version,
    read_project,
)

__all__ = ["Build", "BuildError", "BuildOptions", "run"]

PROG = "selfupdate build"
#: Where the dependency installs are kept (one directory per requirement list + interpreter).
CACHE_ENV = "SELFUPDATE_BUILD_CACHE"
#: The interpreter line: ``env -S`` splits it, so python3 starts isolated (-I: no PYTHON*
#: variables, no user site, no script directory on sys.path) and without the host's ``site``
#: (-S: no .pth file of the host runs).
SHEBANG = "/usr/bin/env -S python3 -I -S"
# What never goes into an archive from a project copy or the framework's installation.
_SKIP_NAMES = {"__pycache__", ".git", ".venv", "build", "dist", ".pytest_cache",
               ".mypy_cache", ".ruff_cache", ".tox", ".nox"}


@dataclass(frozen=True)
class BuildOptions:
    """What ``selfupdate build`` was asked for (None: the project's own or the default)."""

    project_dir: Path = Path(".")
    entry_point: str | None = None
    version: str | None = None
    out: Path | None = None
    trusted_root: Path | None = None
    repo_url: str | None = None
    channel: str = "stable"
    cache_dir: Path | None = None


class Build:
    """One build of one app: :meth:`run` makes the ``.pyz`` and returns its path."""

    def __init__(self, options: BuildOptions, *, say: Callable[[str], None] | None = None) -> None:
        self.options = options
        self.project: Project = read_project(options.project_dir.resolve())
        self._say = say or _to_stderr

    def run(self) -> Path:
        opts, project = self.options, self.project
        entry = project.entry_point(opts.entry_point)
        version = check_version(opts.version or project.version or _no_version(project))
        root = self._trusted_root()
        if (root is not None or opts.repo_url) and not project.uses_framework:
            raise BuildError(
                f"{project.name} does not depend on {FRAMEWORK}, so a build of it cannot "
                f"update itself: add {FRAMEWORK!r} to its [project] dependencies"
            )
        out = (opts.out or project.dir / "dist" / f"{project.name}-{version}.pyz").absolute()
        _check_shiv()
        deps = self._dependencies()
        old_umask = os.umask(0o022)  # files in the archive keep their mode bits: fix them
        try:
            with tempfile.TemporaryDirectory(prefix="selfupdate-build-") as tmp:
                stage = Path(tmp) / "app"
                self._install_app(Path(tmp), stage, version)
                if project.uses_framework:
                    _copy_framework(stage)
                    _write_release(stage, project.name, version, opts, root)
                _normalize_modes(stage)
                packed = Path(tmp) / "out.pyz"
                self._pack(entry, deps, stage, packed)
                _add_fast_start(packed, entry)
                out.parent.mkdir(parents=True, exist_ok=True)
                # Beside the target, then rename: a running copy is never half-written.
                partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")
                shutil.copyfile(packed, partial)
                os.chmod(partial, 0o755)
                os.replace(partial, out)
        finally:
            os.umask(old_umask)
        return out

    # -- steps ----------------------------------------------------------------------------

    def _trusted_root(self) -> bytes | None:
        path = self.options.trusted_root
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BuildError(f"--trusted-root {path}: {e.strerror or e}") from None
        check_trusted_root(data, path)
        return data

    def _dependencies(self) -> Path:
        """The cached site-packages with every dependency installed (made once)."""
        requirements = self.project.requirements(_framework_requirements())
        tag = f"{sys.implementation.cache_tag} {os.uname().machine}"
        key = hashlib.sha256("\n".join(sorted(requirements) + [tag]).encode()).hexdigest()[:16]
        cache = self._cache_dir()
        deps = cache / f"deps-{key}"
        if (deps / ".complete").is_file():
            self._say(f"dependencies from {deps / 'site-packages'}")
            return deps / "site-packages"
        self._say(f"installing dependencies into {deps} (once)")
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".deps-{key}.", dir=cache))
        try:
            (tmp / "site-packages").mkdir()
            if requirements:
                (tmp / "requirements.txt").write_text("\n".join(requirements) + "\n")
                _pip(["--target", str(tmp / "site-packages"), "-r",
                      str(tmp / "requirements.txt")], "the dependencies")
            # Console-script wrappers carry this machine's interpreter path.
            shutil.rmtree(tmp / "site-packages" / "bin", ignore_errors=True)
            _normalize_modes(tmp)
            (tmp / ".complete").touch()
            try:
                os.rename(tmp, deps)
            except OSError:
                if not (deps / ".complete").is_file():
                    raise
                # Another build won the race; its copy is as good.
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._say(f"dependencies from {deps / 'site-packages'}")
        return deps / "site-packages"

    def _cache_dir(self) -> Path:
        if self.options.cache_dir is not None:
            return self.options.cache_dir.absolute()
        if os.environ.get(CACHE_ENV):
            return Path(os.environ[CACHE_ENV]).absolute()
        return self.project.dir / "build" / "selfupdate-cache"

    def _install_app(self, tmp: Path, stage: Path, version: str) -> None:
        """pip-install the app alone from a clean copy of its project into ``stage``."""
        copy = tmp / "project"
        shutil.copytree(
            self.project.dir,
            copy,
            symlinks=True,
            ignore=lambda _d, names: [
                n for n in names if n in _SKIP_NAMES or n.endswith((".egg-info", ".pyc"))
            ],
        )
        _pip(["--no-deps", "--target", str(stage), str(copy)], f"{self.project.name} itself")
        shutil.rmtree(stage / "bin", ignore_errors=True)
        for info in stage.glob("*.dist-info"):
            # Install records (paths, hashes for uninstall, the installer) have no use in an
            # archive and would differ between checkouts.
            for name in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                (info / name).unlink(missing_ok=True)
            if version != self.project.version:
                _set_dist_version(info, version)

    def _pack(self, entry: str, deps: Path, stage: Path, out: Path) -> None:
        cmd = [
            sys.executable, "-m", "shiv", "--reproducible", "--compressed",
            "--python", SHEBANG,
            "--entry-point", entry,
            "--site-packages", str(deps),
            "--site-packages", str(stage),
            "--output-file", str(out),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"shiv could not pack the archive: {_last_line(proc)}")


def _add_fast_start(packed: Path, entry: str) -> None:
    """Rewrite shiv's archive in place: ``__main__.py`` (first in the archive) becomes the fast
    start (:mod:`selfupdate._shiv._main`) with this build's record, and the slow gate and the
    trust check it imports go beside shiv's ``_bootstrap``. Every entry keeps shiv's fixed
    timestamp and mode, so the result is as reproducible as shiv's."""
    import json
    import zipfile

    from selfupdate._names import EXTRACTION_DONE
    from selfupdate._shiv import _boot, _main, _trust

    data = packed.read_bytes()
    with zipfile.ZipFile(packed) as zf:
        infos = zf.infolist()
        contents = {i.filename: zf.read(i) for i in infos}
    env = json.loads(contents["environment.json"])
    # Only a plain entry point goes the fast way; shiv's other options go through its bootstrap,
    # and so does a site-packages with .pth files (shiv's site.addsitedir runs them; the fast
    # path only puts the directory on sys.path).
    pth = any(n.startswith("site-packages/") and n.endswith(".pth") and n.count("/") == 1
              for n in contents)  # fmt: skip
    plain = ":" in entry and not (pth or env.get("preamble") or env.get("script")
                                  or env.get("extend_pythonpath") or env.get("prepend_pythonpath")
                                  or env.get("no_modify"))
    record = (env["build_id"], entry if plain else None, env.get("root"), EXTRACTION_DONE)
    source = Path(_main.__file__).read_text(encoding="utf-8")
    marker = " = None  # the record"
    if source.count(marker) != 1:
        raise BuildError(f"{_main.__file__} has no single record line to fill in")
    main = source.replace(marker, f" = {record!r}  # the record").encode()
    # Every start runs __main__: its bytecode beside it, and neither compressed, so a start
    # neither compiles it nor imports zlib (~2 ms of a warm start together).
    added = {
        "__main__.py": (main, zipfile.ZIP_STORED),
        "__main__.pyc": (_main_bytecode(main, packed.parent), zipfile.ZIP_STORED),
        "_selfupdate_boot.py": (Path(_boot.__file__).read_bytes(), zipfile.ZIP_DEFLATED),
        "_selfupdate_trust.py": (Path(_trust.__file__).read_bytes(), zipfile.ZIP_DEFLATED),
    }
    template = next(i for i in infos if i.filename == "__main__.py")
    shebang = data[: data.index(b"\n") + 1] if data.startswith(b"#!") else b""
    with open(packed, "wb") as f:
        f.write(shebang)
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as out:
            for name, (body, compression) in added.items():
                info = zipfile.ZipInfo(name, template.date_time)
                info.external_attr = template.external_attr
                info.compress_type = compression
                out.writestr(info, body)
            for info in infos:
                if info.filename not in added:
                    out.writestr(info, contents[info.filename])


# Run in a fresh interpreter: marshal's output depends on the reference counts of what it
# writes, which this build process's own imports would change (and with them the bytes).
_COMPILE = (
    "import py_compile, sys; py_compile.compile(sys.argv[1], sys.argv[2], dfile='__main__.py', "
    "doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)"
)


def _main_bytecode(source: bytes, tmp: Path) -> bytes:
    """``__main__.py``'s bytecode for the archive: what zipimport takes before the source.

    A *checked* hash-based pyc: zipimport compares it with the source's hash at each start, so
    what runs is always the ``__main__.py`` beside it. Written by this build's interpreter:
    another Python version finds a different magic number in it and compiles the source."""
    src, pyc = tmp / "__main__.py", tmp / "__main__.pyc"
    src.write_bytes(source)
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _COMPILE, str(src), str(pyc)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise BuildError(f"cannot compile the archive's __main__.py: {_last_line(proc)}")
    return pyc.read_bytes()


def _to_stderr(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _no_version(project: Project) -> str:
    raise BuildError(
        f"{project.dir / 'pyproject.toml'} has no static [project] version: add one or pass "
        "--version V"
    )


def _check_shiv() -> None:
    import importlib.util

    if importlib.util.find_spec("shiv") is None:
        raise BuildError(
            f"shiv is not installed for {sys.executable}: pip install '{FRAMEWORK}[build]'"
        )


def _pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-compile", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"pip could not install {what}: {_last_line(proc)}")


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [x.strip() for x in (proc.stderr + "\n" + proc.stdout).splitlines()]
    useful = [x for x in lines if x and not x.startswith(("WARNING:", "[notice]"))]
    return useful[-1] if useful else f"exit status {proc.returncode}"


def _framework_requirements() -> list[str]:
    from importlib import metadata

    try:
        return list(metadata.requires(FRAMEWORK) or [])
    except metadata.PackageNotFoundError:
        raise BuildError(
            f"{FRAMEWORK} is not installed as a distribution for {sys.executable}: "
            f"pip install '{FRAMEWORK}[build]' (or pip install -e its checkout)"
        ) from None


def _framework_version() -> str:
    from importlib import metadata

    return metadata.version(FRAMEWORK)


def _copy_framework(stage: Path) -> None:
    """The framework's packages as this build runs them, and a minimal dist-info so that
    ``importlib.metadata.version("reexec-selfupdate")`` answers inside the archive."""
    import importlib

    for name in FRAMEWORK_PACKAGES:
        src = Path(importlib.import_module(name).__file__ or "").parent
        shutil.copytree(
            src,
            stage / name,
            ignore=lambda d, names: [
                n for n in names
                if n == "__pycache__" or n.endswith(".pyc")
                or (n == "build" and Path(d).name == "selfupdate")
                or n in (f"{_release.CONFIG_MODULE}.py", _release.ROOT_NAME)
            ],
        )
    version = _framework_version()
    info = stage / f"{FRAMEWORK.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {FRAMEWORK}\nVersion: {version}\n"
    )
    (info / "top_level.txt").write_text("\n".join(FRAMEWORK_PACKAGES) + "\n")


def _write_release(
    stage: Path, app: str, version: str, opts: BuildOptions, root: bytes | None
) -> None:
    """The release configuration, as literals in a module (see :mod:`selfupdate._release`)."""
    target = stage / "selfupdate"
    (target / f"{_release.CONFIG_MODULE}.py").write_text(
        '"""Written by selfupdate build: this single file\'s release configuration."""\n\n'
        f"APP = {app!r}\nVERSION = {version!r}\nCHANNEL = {opts.channel!r}\n"
        f"REPO_URL = {opts.repo_url!r}\nTRUSTED_ROOT = {root is not None!r}\n"
    )
    if root is not None:
        (target / _release.ROOT_NAME).write_bytes(root)


def _set_dist_version(info: Path, version: str) -> None:
    """Give the app's dist-info the version of this build (``--version`` overrides)."""
    meta = info / "METADATA"
    lines = meta.read_text(encoding="utf-8").split("\n")
    meta.write_text(
        "\n".join(f"Version: {version}" if x.startswith("Version: ") else x for x in lines),
        encoding="utf-8",
    )
    name = info.name[: -len(".dist-info")].rpartition("-")[0]
    info.rename(info.with_name(f"{name}-{version}.dist-info"))


def _normalize_modes(top: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for n in filenames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.chmod(p, 0o644)


def run(opts: BuildOptions) -> int:
    """Build as asked, print the path last; returns the exit status (2: cannot be built)."""
    try:
        out = Build(opts).run()
    except BuildError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{PROG}: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    print(out)
    return 0
