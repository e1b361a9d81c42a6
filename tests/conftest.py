"""Shared fixtures: real .pyz builds (cached per session) and a writable shiv root.

``build_pyz(version="1.0.0", trusted_root=None, repo_url=None, out=None) -> Path`` builds the
example app with ``./build.sh`` once per distinct set of arguments and session. Without ``out``
the returned path is shared by every test asking for the same build: copy it (or pass ``out``)
before changing, installing or replacing it. With ``out`` you get your own copy at that path
(builds are byte-identical, so a copy is the same build).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

BuildPyz = Callable[..., Path]


def _deps_cache(tmp_root: Path) -> Path:
    """Where build.sh keeps its installed dependencies for this session."""
    if os.environ.get("NSAPP_BUILD_CACHE"):
        return Path(os.environ["NSAPP_BUILD_CACHE"])
    default = REPO / "build" / "cache"
    # The unprivileged test pass runs in a copy whose cache root filled in beforehand and that
    # this user cannot write to: reuse it when it holds a finished install.
    if any(default.glob("deps-*/.complete")) or os.access(REPO, os.W_OK):
        return default
    return tmp_root / "build-cache"


@pytest.fixture(scope="session", autouse=True)
def _shiv_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Give every .pyz started by the tests a writable place to extract into (HOME may not be)."""
    if os.environ.get("SHIV_ROOT"):
        yield
        return
    os.environ["SHIV_ROOT"] = str(tmp_path_factory.mktemp("shiv-root"))
    try:
        yield
    finally:
        os.environ.pop("SHIV_ROOT", None)


@pytest.fixture(scope="session")
def build_pyz(tmp_path_factory: pytest.TempPathFactory) -> BuildPyz:
    """Return ``build(version="1.0.0", trusted_root=None, repo_url=None, out=None) -> Path``.

    ``trusted_root`` is a path to a file or its bytes. Builds are cached by their arguments for
    the session; see the module docstring for sharing rules.
    """
    root = tmp_path_factory.mktemp("pyz-builds")
    cache_dir = _deps_cache(root)
    built: dict[tuple[str, str, str], Path] = {}
    lock = threading.Lock()

    def build(
        version: str = "1.0.0",
        trusted_root: str | os.PathLike[str] | bytes | None = None,
        repo_url: str | None = None,
        out: str | os.PathLike[str] | None = None,
    ) -> Path:
        root_bytes = (
            trusted_root
            if isinstance(trusted_root, bytes) or trusted_root is None
            else Path(trusted_root).read_bytes()
        )
        root_hash = hashlib.sha256(root_bytes).hexdigest()[:16] if root_bytes is not None else ""
        key = (version, root_hash, repo_url or "")
        with lock:
            path = built.get(key)
            if path is None:
                n = len(built)
                path = root / f"b{n}" / "nsapp.pyz"
                cmd = ["bash", str(REPO / "build.sh"), "--version", version, "--out", str(path)]
                if root_bytes is not None:
                    root_file = root / f"b{n}-root.json"
                    root_file.write_bytes(root_bytes)
                    cmd += ["--trusted-root", str(root_file)]
                if repo_url:
                    cmd += ["--repo-url", repo_url]
                env = dict(os.environ, PYTHON=sys.executable, NSAPP_BUILD_CACHE=str(cache_dir))
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"build.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                    )
                assert proc.stdout.strip().splitlines()[-1] == str(path)
                built[key] = path
        if out is None:
            return path
        dest = Path(out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
        return dest

    return build


@pytest.fixture(scope="session")
def framework_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the framework's own project (what a user's checkout of it holds), owned by
    whoever runs the suite: pip writes build metadata into a project it installs from, and the
    unprivileged pass reads this repository without being able to write to it."""
    dest = tmp_path_factory.mktemp("framework") / "reexec-selfupdate"
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, dest / name)
    for package in ("reexec_core", "selfupdate"):
        shutil.copytree(
            REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return dest
