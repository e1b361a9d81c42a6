"""Issue 12: the first start of a build (the slow gate's extraction), made deterministic.

- the "unpacking ..." note a slow first start shows on a terminal: the extraction is held up
  by holding shiv's own extraction lock (what another start extracting the same build does),
  and the note is read from a real pty;
- a ``kill -9`` in the middle of shiv's in-place removal under ``SHIV_FORCE_EXTRACT``, and two
  first starts racing to create ``SHIV_ROOT``: the kill and the slow ``mkdir`` are put at an
  exact system call with strace's fault injection (``-e inject=``), not left to timing.

Each start is a real build of the example app, started as its shebang does.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

# The fixtures pyz (a copy of the 1.0.0 build) and root (a fresh private SHIV_ROOT).
from test_fast_start import PY, extraction, fast, pyz_fixture, root_fixture, start  # noqa: F401

from selfupdate._names import EXTRACTION_DONE

STRACE = "/usr/bin/strace"


def _strace_works() -> str | None:
    """Why strace cannot trace a child here (None: it can)."""
    if not os.path.exists(STRACE):
        return "needs strace to act at an exact system call"
    r = subprocess.run([STRACE, "-f", "-qq", "-o", "/dev/null", "true"], capture_output=True)
    if r.returncode != 0:
        return f"strace cannot trace here (ptrace refused): {r.stderr.decode().strip()}"
    return None


needs_strace = pytest.mark.skipif(_strace_works() is not None, reason=str(_strace_works()))


def site_files(pyz: Path) -> set[str]:
    with zipfile.ZipFile(pyz) as zf:
        return {i.filename for i in zf.infolist()
                if i.filename.startswith("site-packages/") and not i.is_dir()}


def extracted(ext: Path) -> set[str]:
    return {str(p.relative_to(ext)) for p in ext.rglob("*")
            if p.is_file() and "site-packages" in p.parts and "__pycache__" not in p.parts}


def hold_shiv_lock(pyz: Path, root: Path) -> int:
    """Take shiv's extraction lock of this build (private, as the gate wants it): a first
    start then waits for it, as it does while another start extracts the same build."""
    fd = os.open(root / f".{extraction(pyz, root).name}_lock",
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_slow_first_start_says_it_is_unpacking_on_a_terminal(pyz: Path, root: Path) -> None:
    lock = hold_shiv_lock(pyz, root)
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([PY, "-I", "-S", str(pyz), "--version"],
                                env=dict(os.environ, SHIV_ROOT=str(root)),
                                stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 60  # a guard against hanging, not a measurement
        while b"\n" not in seen and time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 1024)
        # The note came while the extraction was held up: nothing is marked yet.
        assert not (extraction(pyz, root) / EXTRACTION_DONE).exists()
        assert proc.poll() is None, "the start did not wait for the extraction"
    finally:
        os.close(lock)  # the extraction goes on
    out, _ = proc.communicate(timeout=120)
    try:
        while select.select([master], [], [], 0)[0]:
            seen += os.read(master, 1024)
    except OSError:
        pass  # EIO: the pty's other end is closed
    os.close(master)
    assert proc.returncode == 0 and out == "nsapp 1.0.0\n"
    assert seen.decode().splitlines() == [
        f"nsapp: first start of this build: unpacking it into {root} ..."
    ]
    assert (extraction(pyz, root) / EXTRACTION_DONE).is_file()


@needs_strace
def test_a_kill_during_shivs_forced_removal_leaves_an_extraction_that_is_made_again(
    pyz: Path, root: Path
) -> None:
    """SHIV_FORCE_EXTRACT: shiv extracts into NAME.tmp, then removes the old extraction in
    place (shutil.rmtree: one unlinkat per entry) before moving the new one there. A kill at
    the 60th unlinkat leaves a half-removed tree; the gate removed its marker first, so the
    next start checks it, finds it incomplete and extracts again."""
    assert start(pyz, root).returncode == 0
    ext = extraction(pyz, root)
    want = site_files(pyz)
    r = subprocess.run(
        [STRACE, "-f", "-qq", "-o", "/dev/null", "-e", "trace=unlinkat",
         "-e", "inject=unlinkat:signal=SIGKILL:when=60", PY, "-I", "-S", str(pyz), "--version"],
        env=dict(os.environ, SHIV_ROOT=str(root), SHIV_FORCE_EXTRACT="1"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), (r.returncode, r.stderr)
    assert r.stdout == ""
    left = extracted(ext)
    assert left and left < want, "the kill did not land inside the removal"
    assert not (ext / EXTRACTION_DONE).exists()
    again = start(pyz, root)
    assert (again.returncode, again.stdout) == (0, "nsapp 1.0.0\n"), again.stderr
    assert not fast(again), "the half-removed tree was run from"
    assert extracted(ext) == want
    assert (ext / EXTRACTION_DONE).read_text().strip() in ext.name
    assert fast(start(pyz, root))


@needs_strace
def test_two_first_starts_racing_to_create_the_root_both_run_from_one_extraction(
    pyz: Path, root: Path
) -> None:
    """Neither SHIV_ROOT nor its parent exists; both starts find the first missing level
    missing, and their first mkdir is held up half a second (a slow filesystem), so both
    create it and one of them finds it made meanwhile (EEXIST, shown in its trace)."""
    shiv_root = root / "a" / "b" / "shiv"
    procs, traces = [], []
    for i in range(2):
        trace = root.parent / f"{root.name}.trace{i}"
        traces.append(trace)
        procs.append(subprocess.Popen(
            [STRACE, "-f", "-qq", "-o", str(trace), "-e", "trace=mkdir,mkdirat",
             "-e", "inject=mkdir,mkdirat:delay_enter=500000:when=1",
             PY, "-I", "-S", str(pyz), "--version"],
            env=dict(os.environ, SHIV_ROOT=str(shiv_root)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    results = [p.communicate(timeout=120) for p in procs]
    try:
        logs = [t.read_text() for t in traces]
    finally:
        for t in traces:
            t.unlink(missing_ok=True)
    for p, (out, err) in zip(procs, results, strict=True):
        assert (p.returncode, out) == (0, "nsapp 1.0.0\n"), err
        assert "Traceback" not in err
    raced = [log for log in logs if f'"{root}/a", 0700) = -1 EEXIST' in log]
    if not raced:
        pytest.skip("the two starts did not meet at the first mkdir (one started >0.5 s late)")
    ext = extraction(pyz, shiv_root)
    # One extraction, and nothing half-made beside it (no NAME.tmp): only shiv's lock file.
    assert sorted(p.name for p in shiv_root.iterdir()) == [f".{ext.name}_lock", ext.name]
    ext = extraction(pyz, shiv_root)
    assert extracted(ext) == site_files(pyz)
    assert (ext / EXTRACTION_DONE).is_file()
    assert fast(start(pyz, shiv_root))


@needs_strace
def test_a_fresh_extraction_is_on_disk_before_its_marker(pyz: Path, root: Path) -> None:
    """One syncfs(2) of the extraction's filesystem where that is as durable as fsyncing each
    file (ext4, XFS, Btrfs, ...), each file's fsync elsewhere; the marker's rename comes after
    either, then the fsync of its directory."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", str(root)], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    trace = root.parent / f"{root.name}.trace"
    try:
        r = subprocess.run(
            [STRACE, "-f", "-qq", "-o", str(trace), "-e", "trace=syncfs,fsync,rename",
             PY, "-I", "-S", str(pyz), "--version"],
            env=dict(os.environ, SHIV_ROOT=str(root)), capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        lines = [ln.split(None, 1)[1] for ln in trace.read_text().splitlines() if "(" in ln]
    finally:
        trace.unlink(missing_ok=True)
    assert r.returncode == 0, r.stderr
    calls = [ln.partition("(")[0] for ln in lines]
    marked = [i for i, ln in enumerate(lines)
              if ln.startswith("rename(") and f'/{EXTRACTION_DONE}"' in ln]  # fmt: skip
    assert len(marked) == 1, lines
    i = marked[0]
    # The temporary marker fsynced, renamed into place, its directory fsynced.
    assert calls[i - 1] == "fsync" and calls[i + 1] == "fsync", calls
    before = calls[: i - 1]
    if kind in ("ext2/ext3", "xfs", "btrfs", "tmpfs", "overlayfs", "f2fs"):
        assert before.count("syncfs") == 1 and before.count("fsync") == 0, calls
    else:
        assert before.count("fsync") > len(site_files(pyz)), (kind, calls)


def test_without_a_sync_point_each_file_is_fsynced(tmp_path: Path) -> None:
    """The fallback (a tree an earlier start wrote, or no syncfs): every file and directory
    fsynced, then the marker."""
    if _strace_works() is not None:
        pytest.skip(str(_strace_works()))
    tree = tmp_path / "ext"
    (tree / "site-packages" / "pkg").mkdir(parents=True)
    for i in range(5):
        (tree / "site-packages" / "pkg" / f"m{i}.py").write_text("")
    code = ("import sys; from selfupdate._shiv._boot import mark_complete; "
            "mark_complete(sys.argv[1], '.done', 'id')")  # fmt: skip
    trace = tmp_path / "trace"
    subprocess.run([STRACE, "-f", "-qq", "-o", str(trace), "-e", "trace=syncfs,fsync",
                    PY, "-c", code, str(tree)], check=True, timeout=60)  # fmt: skip
    calls = [ln.split(None, 1)[1].partition("(")[0] for ln in trace.read_text().splitlines()]
    assert calls.count("syncfs") == 0 and calls.count("fsync") == 5 + 3 + 2, calls
    assert (tree / ".done").read_text() == "id\n"
