"""Cleaning shiv extraction directories of builds no longer installed, never one in use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from selfupdate import _shiv
from selfupdate._names import INUSE_LOCK
from selfupdate._shiv._clean import clean_shiv_dirs
from selfupdate._shiv._seed import seed_extraction


def fake_pyz(path: Path, build_id: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("environment.json", json.dumps({"build_id": build_id}))
    return path


def extraction(root: Path, name: str, build_id: str) -> Path:
    d = root / f"{name}_{build_id}"
    (d / "site-packages" / "pkg").mkdir(parents=True)
    (d / "site-packages" / "pkg" / "mod.py").write_text("x = 1\n")
    (d / "site-packages" / "pkg" / "blob.bin").write_bytes(b"\0" * 4096)
    (root / f".{name}_{build_id}_lock").write_bytes(b"")
    return d


ID = {k: (c * 64) for k, c in {"installed": "a", "previous": "b", "free": "c", "locked": "d",
                                "mapped": "e", "named": "f", "cwd": "1"}.items()}


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def start(procs: list[subprocess.Popen[str]], code: str, *args: str, cwd: str | None = None
          ) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True,
                         cwd=cwd)
    procs.append(p)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def test_removes_only_unused_builds_that_are_not_kept(
    tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    root = tmp_path / "shiv"
    root.mkdir()
    installed = fake_pyz(tmp_path / "nsapp.pyz", ID["installed"])
    previous = fake_pyz(tmp_path / "prev.pyz", ID["previous"])
    dirs = {k: extraction(root, "nsapp.pyz", v) for k, v in ID.items()}
    other = extraction(root, "other.pyz", ID["free"])  # another program's: never touched

    # A running build holds the in-use lock (what selfupdate._shiv.hold_extraction takes at start).
    start(procs, "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDONLY|os.O_CREAT);"
          "fcntl.flock(fd,fcntl.LOCK_SH);print('ready',flush=True);time.sleep(60)",
          str(dirs["locked"] / INUSE_LOCK))
    # A process that maps a file of the extraction (an extension module, say) and no lock.
    start(procs, "import mmap,sys,time;f=open(sys.argv[1],'rb');"
          "m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ);f.close();"
          "print('ready',flush=True);time.sleep(60)",
          str(dirs["mapped"] / "site-packages" / "pkg" / "blob.bin"))
    # A reexec fast child names its parent's extraction in its sys.path literal.
    start(procs, "import sys,time;print('ready',flush=True);time.sleep(60)",
          f"sys.path[:]=['{dirs['named'] / 'site-packages'}']")
    # A process running inside it.
    start(procs, "import time;print('ready',flush=True);time.sleep(60)",
          cwd=str(dirs["cwd"] / "site-packages"))

    removed = clean_shiv_dirs([installed, previous], "nsapp.pyz", root)

    assert removed == [dirs["free"]]
    assert not dirs["free"].exists() and not (root / f".nsapp.pyz_{ID['free']}_lock").exists()
    for k in ("installed", "previous", "locked", "mapped", "named", "cwd"):
        assert (dirs[k] / "site-packages" / "pkg" / "mod.py").exists(), k
    assert other.exists()
    assert not [p for p in root.iterdir() if ".removing-" in p.name]

    # Once those processes are gone, their directories go too.
    for p in procs:
        p.kill()
        p.wait()
    procs.clear()
    time.sleep(0.05)
    removed = clean_shiv_dirs([installed, previous], "nsapp.pyz", root)
    assert sorted(removed) == sorted(dirs[k] for k in ("locked", "mapped", "named", "cwd"))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(
        [dirs["installed"].name, dirs["previous"].name, other.name]
    )


def test_missing_root_is_nothing_to_do(tmp_path: Path) -> None:
    assert clean_shiv_dirs([], "nsapp.pyz", tmp_path / "nope") == []


def test_in_use_lock_blocks_removal_even_across_fork(tmp_path: Path) -> None:
    """The shared lock is held by the open file description: a child that inherits it keeps it."""
    root = tmp_path / "shiv"
    root.mkdir()
    d = extraction(root, "nsapp.pyz", ID["free"])
    import fcntl

    fd = os.open(d / INUSE_LOCK, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        assert clean_shiv_dirs([], "nsapp.pyz", root) == []
    finally:
        os.close(fd)
    assert clean_shiv_dirs([], "nsapp.pyz", root) == [d]


def test_a_running_build_keeps_its_extraction(
    build_pyz: Callable[..., Path], tmp_path: Path
) -> None:
    """A real .pyz marks its extraction in use at start (selfupdate.app.at_start)."""
    pyz = build_pyz("1.0.0", out=tmp_path / "old" / "nsapp.pyz")
    root = tmp_path / "shiv"
    env = dict(os.environ, SHIV_ROOT=str(root), NSAPP_STATE_DIR=str(tmp_path / "state"))
    p = subprocess.Popen([sys.executable, str(pyz), "serve"], env=env, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().startswith(f"pid={p.pid} ")
        (d,) = [x for x in root.iterdir() if x.is_dir()]
        assert (d / INUSE_LOCK).exists()
        # Not installed any more (nothing to keep), but running: kept.
        assert clean_shiv_dirs([], "nsapp.pyz", root) == []
    finally:
        p.kill()
        p.wait()
    assert clean_shiv_dirs([], "nsapp.pyz", root) == [d]
    assert not d.exists()
    # The build starts again afterwards (shiv extracts it afresh).
    r = subprocess.run([sys.executable, str(pyz), "history"], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.startswith("nsapp 1.0.0"), r.stderr


def test_seeded_extraction_links_unchanged_files_and_runs(
    build_pyz: Callable[..., Path], tmp_path: Path
) -> None:
    """The new build's extraction, prepared from the old one's, is exactly what shiv makes."""
    old = build_pyz("1.0.0", out=tmp_path / "opt" / "nsapp.pyz")
    new = build_pyz("2.0.0", out=tmp_path / "staged" / "nsapp.pyz")
    root = tmp_path / "shiv"
    env = dict(os.environ, SHIV_ROOT=str(root), NSAPP_STATE_DIR=str(tmp_path / "state"))
    subprocess.run([sys.executable, str(old), "history"], env=env, check=True,
                   capture_output=True)
    d = seed_extraction(old, new, root)
    assert d is not None and d.name == f"nsapp.pyz_{_shiv.build_id(new)}"
    files = [p for p in (d / "site-packages").rglob("*") if p.is_file()]
    linked = [p for p in files if p.stat().st_nlink > 1]
    assert len(linked) > len(files) // 2  # the dependencies did not change
    with zipfile.ZipFile(new) as zf:
        names = {i.filename for i in zf.infolist()
                 if i.filename.startswith("site-packages/") and not i.is_dir()}
        seeded = {str(p.relative_to(d)): p for p in files}
        # Exactly the archive's content: no bytecode the old build wrote is carried over.
        assert set(seeded) == names
        for n in names:
            assert seeded[n].read_bytes() == zf.read(n), n
    # Already there, ours and exactly the release: used as it is.
    ino = d.stat().st_ino
    assert seed_extraction(old, new, root) is None
    r = subprocess.run([sys.executable, str(new), "history"], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.startswith("nsapp 2.0.0"), r.stderr
    assert d.stat().st_ino == ino  # shiv used it as it was
    assert not [p for p in root.iterdir() if ".seed-" in p.name]


def test_leftovers_of_killed_seeds_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "shiv"
    root.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = root / f".nsapp.pyz_{ID['free']}.seed-{dead}"
    (stale / "site-packages").mkdir(parents=True)
    live = root / f".nsapp.pyz_{ID['free']}.seed-{os.getpid()}"
    live.mkdir()
    assert clean_shiv_dirs([], "nsapp.pyz", root) == [stale]
    assert live.exists()
