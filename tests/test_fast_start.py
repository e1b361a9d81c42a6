"""Issue 12: the fast start in front of shiv's bootstrap, the isolation from the host's
interpreter set-up, and every extraction the fast path must never run from.

Each test starts a real build (the example app) the way a user does. Whether the fast path was
taken is read from ``-X importtime``: shiv's ``_bootstrap`` is imported by every other start.
Cases about another user plant files as ``nobody`` through ``setpriv`` (root pass only).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _support_client import assert_sentence
from _support_users import AS_NOBODY, NOBODY, NOBODY_PY, ROOT, as_nobody, second_user, tmp_dir

from selfupdate import _shiv
from selfupdate._names import EXTRACTION_DONE

PY = sys.executable
HEADER = "import time: self [us] | cumulative | imported package"


@pytest.fixture(name="pyz")
def pyz_fixture(build_pyz, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """Our own copy of the 1.0.0 build, in a directory every user may read."""
    with tmp_dir("fast-start-", 0o755) as d:
        out = d / "nsapp.pyz"
        shutil.copyfile(build_pyz("1.0.0"), out)
        out.chmod(0o755)
        yield out


@pytest.fixture(name="root")
def root_fixture() -> Iterator[Path]:
    """A fresh private SHIV_ROOT (0700, this user's) under /tmp."""
    with tmp_dir("fast-root-") as d:
        yield d


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory under /tmp every user may write (0777)."""
    with tmp_dir("fast-shared-", 0o777) as d:
        yield d


def extraction(pyz: Path, root: Path) -> Path:
    return root / f"{pyz.name}_{_shiv.build_id(pyz)}"


def start(pyz: Path, root: Path | None, *args: str, py: list[str] | None = None,
          env: dict[str, str] | None = None,
          umask: int | None = None) -> subprocess.CompletedProcess[str]:
    """Start the build as its shebang does (``python3 -I -S``), with ``-X importtime``."""
    e = dict(os.environ if env is None else env)
    if root is not None:
        e["SHIV_ROOT"] = str(root)
    cmd = [*(py or [PY, "-I", "-S"]), "-X", "importtime", str(pyz), *(args or ("--version",))]
    return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=120,
                          umask=-1 if umask is None else umask)  # fmt: skip


def program_imports(r: subprocess.CompletedProcess[str]) -> list[str]:
    """The modules the process that ran the program imported (the last ``-X importtime``
    section: a start that re-executed itself isolated prints two)."""
    section = r.stderr.rpartition(HEADER)[2]
    return [ln.rpartition("|")[2].strip() for ln in section.splitlines()
            if ln.startswith("import time:")]


def other_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")]


def fast(r: subprocess.CompletedProcess[str]) -> bool:
    return "_bootstrap" not in program_imports(r)


def refused(r: subprocess.CompletedProcess[str]) -> str:
    """The one sentence a refused start prints (and nothing of the program ran)."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = other_lines(r)
    assert len(lines) == 1, lines
    prog, _, message = lines[0].partition(": ")
    assert prog == "nsapp", lines
    assert_sentence(message)
    assert "Traceback" not in r.stderr
    return message


def plant(ext: Path, ran: Path, build_id: str) -> None:
    """As nobody: a complete-looking extraction (marker and all) whose code would create
    ``ran`` (a ``.pth`` for shiv's bootstrap, a fake ``nsapp`` for the fast path)."""
    script = (
        'mkdir -p "$1/site-packages/nsapp" && printf "%s\\n" "$3" > "$1/$4" && '
        'printf "%s" "$2" > "$1/site-packages/planted.pth" && '
        'printf "%s" "$2" > "$1/site-packages/nsapp/__init__.py"'
    )
    code = f"import os; open({str(ran)!r}, 'w').close()\n"
    as_nobody("sh", "-c", script, "sh", str(ext), code, build_id, EXTRACTION_DONE)


# --------------------------------------------------------------------------------------------
# The fast path is taken, and only with a complete extraction


def test_a_warm_start_takes_the_fast_path(pyz: Path, root: Path) -> None:
    first = start(pyz, root)
    assert first.stdout == "nsapp 1.0.0\n", first.stderr
    assert not fast(first), "the first start found an extraction"
    ext = extraction(pyz, root)
    assert (ext / EXTRACTION_DONE).read_text() == f"{_shiv.build_id(pyz)}\n"
    warm = start(pyz, root)
    assert warm.stdout == "nsapp 1.0.0\n", warm.stderr
    assert fast(warm), "a warm start went through shiv's bootstrap"
    imported = program_imports(warm)
    # zlib: __main__.py and its bytecode are stored uncompressed, the rest comes from the
    # extraction.
    for heavy in ("zipfile", "pathlib", "shutil", "compileall", "tempfile", "site", "zlib"):
        assert heavy not in imported, f"a warm start imported {heavy}"


def test_main_comes_with_its_checked_bytecode(pyz: Path, root: Path, tmp_path: Path) -> None:
    """zipimport takes __main__.pyc before __main__.py: it is checked against the source's
    hash at each start, and one of another Python version (another magic number) is passed
    over for the source."""
    import importlib.util

    with zipfile.ZipFile(pyz) as zf:
        source, pyc = zf.read("__main__.py"), zf.read("__main__.pyc")
        infos = {i.filename: i for i in zf.infolist()}
    assert infos["__main__.py"].compress_type == infos["__main__.pyc"].compress_type == 0
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(pyc[4:8], "little") == 0b11  # hash-based, checked
    assert pyc[8:16] == importlib.util.source_hash(source)
    other = tmp_path / pyz.name  # the same build otherwise: it shares the extraction
    with zipfile.ZipFile(pyz) as zf, zipfile.ZipFile(other, "w") as out:
        for info in zf.infolist():
            body = zf.read(info)
            out.writestr(info, b"\0\0\r\n" + body[4:] if info.filename == "__main__.pyc"
                         else body)  # fmt: skip
    start(pyz, root)
    r = start(other, root, py=[PY, "-I", "-S", "-v"])
    assert r.stdout == "nsapp 1.0.0\n" and "bad magic number in '__main__'" in r.stderr
    assert fast(r)


def test_the_shebang_start_is_the_fast_one(pyz: Path, root: Path) -> None:
    """``./APP.pyz`` as a user types it (python3 from PATH, through the shebang)."""
    env = dict(os.environ, SHIV_ROOT=str(root), PATH=f"{Path(PY).parent}:{os.environ['PATH']}")
    for _ in range(2):
        r = subprocess.run([str(pyz), "--version"], env=env, capture_output=True, text=True,
                           timeout=120)
        assert (r.returncode, r.stdout, r.stderr) == (0, "nsapp 1.0.0\n", "")
    assert (extraction(pyz, root) / EXTRACTION_DONE).is_file()


def test_a_shiv_option_goes_through_shivs_bootstrap(pyz: Path, root: Path) -> None:
    start(pyz, root)
    r = start(pyz, root, env=dict(os.environ, SHIV_FORCE_EXTRACT="1"))
    assert r.stdout == "nsapp 1.0.0\n", r.stderr
    assert not fast(r)
    again = start(pyz, root)  # the marker shiv removed with its extraction is written again
    assert again.stdout == "nsapp 1.0.0\n" and not fast(again)
    assert fast(start(pyz, root))


def test_a_symlinked_root_of_ours_takes_the_fast_path(pyz: Path, root: Path) -> None:
    (root / "real").mkdir(mode=0o700)
    (root / "link").symlink_to(root / "real")
    start(pyz, root / "link")
    assert (extraction(pyz, root / "real") / EXTRACTION_DONE).is_file()
    r = start(pyz, root / "link")
    assert r.stdout == "nsapp 1.0.0\n" and fast(r), r.stderr


# --------------------------------------------------------------------------------------------
# Isolation from the host's interpreter set-up


def test_python3_app_pyz_starts_itself_again_isolated(
    pyz: Path, root: Path, tmp_path: Path
) -> None:
    """``python3 APP.pyz`` without -I -S: PYTHONPATH (a package shadowing the app's), a user
    site, PYTHONSTARTUP and the host's .pth files reach neither the program nor its imports."""
    ran = tmp_path / "planted-ran"
    code = f"open({str(ran)!r}, 'a').write('x')\n"
    shadow = tmp_path / "pythonpath"
    (shadow / "nsapp").mkdir(parents=True)
    (shadow / "nsapp" / "__init__.py").write_text(code)
    (shadow / "reexec_core.py").write_text(code)
    home = tmp_path / "home"
    user_site = home / ".local" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (user_site / "site-packages" / "nsapp").mkdir(parents=True)
    (user_site / "site-packages" / "nsapp" / "__init__.py").write_text(code)
    (tmp_path / "startup.py").write_text(code)
    env = dict(os.environ, PYTHONPATH=str(shadow), HOME=str(home),
               PYTHONSTARTUP=str(tmp_path / "startup.py"))
    start(pyz, root)
    # /usr/bin/python3's site runs the host's .pth files (one imports certifi on this image).
    host = NOBODY_PY if os.path.exists(NOBODY_PY) else PY
    for _ in range(2):
        r = start(pyz, root, py=[host], env=env)
        assert r.returncode == 0 and r.stdout == "nsapp 1.0.0\n", r.stderr
        assert r.stderr.count(HEADER) == 2, "it did not start itself again"
        imported = program_imports(r)
        assert "site" not in imported and "certifi" not in imported, imported
        assert fast(r)
    assert not ran.exists(), "PYTHONPATH, the user site or PYTHONSTARTUP reached the program"


def test_the_shebang_start_imports_no_host_site_and_ignores_pythonhome(
    pyz: Path, root: Path
) -> None:
    start(pyz, root)
    r = start(pyz, root)
    assert "site" not in program_imports(r) and "certifi" not in program_imports(r)
    env = dict(os.environ, SHIV_ROOT=str(root), PYTHONHOME="/nonexistent",
               PATH=f"{Path(PY).parent}:{os.environ['PATH']}")
    r2 = subprocess.run([str(pyz), "--version"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert (r2.returncode, r2.stdout, r2.stderr) == (0, "nsapp 1.0.0\n", "")


# --------------------------------------------------------------------------------------------
# Extractions the fast path must never run from


@second_user
def test_another_users_extraction_is_refused(pyz: Path, shared: Path, tmp_path: Path) -> None:
    """The root was shared once (the plant is from then); it is this user's and 0755 now."""
    ran = tmp_path / "planted-ran"
    ext = extraction(pyz, shared)
    plant(ext, ran, _shiv.build_id(pyz) or "")
    shared.chmod(0o755)
    message = refused(start(pyz, shared))
    assert str(ext) in message and "belongs to another user (uid 65534)" in message, message
    assert not ran.exists(), "the planted extraction ran"


@second_user
def test_an_extraction_in_a_root_others_may_write_is_refused(
    pyz: Path, shared: Path, tmp_path: Path
) -> None:
    ran = tmp_path / "planted-ran"
    plant(extraction(pyz, shared), ran, _shiv.build_id(pyz) or "")
    message = refused(start(pyz, shared))
    assert f"SHIV_ROOT {shared} is writable by other users (mode 0777)" in message, message
    assert not ran.exists(), "the planted extraction ran"


@second_user
def test_a_root_linked_by_another_user_to_their_extraction_is_refused(
    pyz: Path, shared: Path, tmp_path: Path
) -> None:
    """SHIV_ROOT names a link in a sticky directory: the link is nobody's, and so is where it
    goes (a directory of theirs, 0755, with a complete-looking extraction)."""
    ran = tmp_path / "planted-ran"
    theirs = shared / "theirs"
    as_nobody("mkdir", "-m", "755", str(theirs))
    plant(extraction(pyz, theirs), ran, _shiv.build_id(pyz) or "")
    sticky = Path(tempfile.mkdtemp(prefix="fast-sticky-", dir="/tmp"))
    try:
        sticky.chmod(0o1777)
        link = sticky / "shiv"
        as_nobody("ln", "-s", str(theirs), str(link))
        message = refused(start(pyz, link))
        assert "symbolic link owned by another user (uid 65534)" in message, message
    finally:
        shutil.rmtree(sticky, ignore_errors=True)
    assert not ran.exists(), "the planted extraction ran"


@second_user
def test_a_file_of_another_user_inside_our_extraction_is_refused(
    pyz: Path, root: Path
) -> None:
    start(pyz, root)
    ext = extraction(pyz, root)
    (ext / EXTRACTION_DONE).unlink()
    os.chown(ext / "site-packages" / "nsapp" / "cli.py", NOBODY, NOBODY)
    message = refused(start(pyz, root))
    assert "cli.py, which belongs to another user (uid 65534)" in message, message


def test_a_site_packages_others_may_write_is_never_run_from(pyz: Path, root: Path) -> None:
    """The fast path checks every directory down to site-packages; the gate then refuses
    while the root lets others in (0755: they could have reached it)."""
    start(pyz, root)
    site = extraction(pyz, root) / "site-packages"
    site.chmod(0o777)
    root.chmod(0o755)
    message = refused(start(pyz, root))
    assert "is writable by other users (mode 0777)" in message, message
    assert root.stat().st_mode & 0o777 == 0o755  # refused: not closed over what is inside


def test_a_root_others_may_enter_is_closed_once_what_is_inside_passed(
    pyz: Path, root: Path
) -> None:
    """Plain shiv's ~/.shiv is 0755: the gate checks this build's extraction strictly, then
    makes the root 0700, and from then on a loose mode below it (a __pycache__ made 0775 under
    umask 002) reaches nobody: the start runs, never refused."""
    root.chmod(0o755)
    first = start(pyz, root)
    assert first.returncode == 0, first.stderr
    assert root.stat().st_mode & 0o777 == 0o700
    (extraction(pyz, root) / "site-packages").chmod(0o775)
    again = start(pyz, root)
    assert again.returncode == 0 and again.stdout.strip() == "nsapp 1.0.0", again.stderr


@pytest.mark.parametrize("umask", [0o002, 0o000])
def test_a_loose_umask_makes_a_private_extraction_and_every_start_runs(
    pyz: Path, root: Path, umask: int
) -> None:
    """shiv extracts under the user's umask; the gate extracts under 077, so nothing in it is
    another user's to change, and the second and third start do not refuse what the first
    made (Ubuntu's umask 002)."""
    for _ in range(3):
        r = start(pyz, root, umask=umask)
        assert r.returncode == 0 and r.stdout.strip() == "nsapp 1.0.0", r.stderr
    assert root.stat().st_mode & 0o777 == 0o700
    writable = [p for p in root.rglob("*") if p.name != "__pycache__"
                and p.parent.name != "__pycache__" and not p.is_symlink()
                and p.stat().st_mode & 0o022]  # fmt: skip
    assert not writable, writable[:5]


def test_an_inherited_isolation_guard_does_not_turn_isolation_off(
    pyz: Path, root: Path, tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow" / "nsapp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise SystemExit('SHADOW from PYTHONPATH')\n")
    env = dict(os.environ, SHIV_ROOT=str(root), PYTHONPATH=str(shadow.parent),
               _SELFUPDATE_ISOLATED="1")  # fmt: skip
    r = subprocess.run([PY, str(pyz), "--version"], capture_output=True, text=True, env=env,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "nsapp 1.0.0", r.stderr


def test_an_extraction_without_its_marker_is_checked_and_a_tampered_one_extracted_again(
    pyz: Path, root: Path, tmp_path: Path
) -> None:
    start(pyz, root)
    ext = extraction(pyz, root)
    ran = tmp_path / "tampered-ran"
    init = ext / "site-packages" / "nsapp" / "__init__.py"
    original = init.read_bytes()
    init.write_bytes(original + f"open({str(ran)!r}, 'w').close()\n".encode())
    (ext / EXTRACTION_DONE).unlink()
    r = start(pyz, root)
    assert r.stdout == "nsapp 1.0.0\n" and not fast(r), r.stderr
    assert not ran.exists(), "the tampered file ran"
    assert init.read_bytes() == original
    assert (ext / EXTRACTION_DONE).is_file()
    assert fast(start(pyz, root))


def test_a_marker_of_another_build_is_not_taken(pyz: Path, root: Path) -> None:
    start(pyz, root)
    ext = extraction(pyz, root)
    (ext / EXTRACTION_DONE).write_text("0" * 64 + "\n")
    r = start(pyz, root)
    assert r.stdout == "nsapp 1.0.0\n" and not fast(r), r.stderr
    assert (ext / EXTRACTION_DONE).read_text() == f"{_shiv.build_id(pyz)}\n"


def test_a_first_start_killed_half_way_is_finished_by_the_next(pyz: Path, root: Path) -> None:
    ext = extraction(pyz, root)
    proc = subprocess.Popen([PY, "-I", "-S", str(pyz), "--version"],
                            env=dict(os.environ, SHIV_ROOT=str(root)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = ext.with_name(ext.name + ".tmp")
    deadline = time.monotonic() + 60
    while not tmp.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the first start finished before it could be killed")
    assert not (ext / EXTRACTION_DONE).exists()
    r = start(pyz, root)
    assert r.stdout == "nsapp 1.0.0\n" and not fast(r), r.stderr
    with zipfile.ZipFile(pyz) as zf:
        want = {i.filename for i in zf.infolist()
                if i.filename.startswith("site-packages/") and not i.is_dir()}
    have = {str(p.relative_to(ext)) for p in ext.rglob("*")
            if p.is_file() and "site-packages" in p.parts and "__pycache__" not in p.parts}
    assert have == want
    assert fast(start(pyz, root))


def test_the_marker_is_written_last_and_private(pyz: Path, root: Path) -> None:
    start(pyz, root)
    ext = extraction(pyz, root)
    st = os.lstat(ext / EXTRACTION_DONE)
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
    assert not [p for p in ext.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------
# No writable HOME; seeding


def test_no_writable_home_is_one_sentence_naming_shiv_root(pyz: Path) -> None:
    if not ROOT:
        env = dict(os.environ, HOME="/nonexistent")
        env.pop("SHIV_ROOT", None)
        cmd = [PY, "-I", "-S", str(pyz), "--version"]
    else:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
        cmd = [*AS_NOBODY, NOBODY_PY, str(pyz), "--version"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("nsapp: ") and "SHIV_ROOT" in lines[0], lines
    assert "/nonexistent" in lines[0]
    assert_sentence(lines[0].partition(": ")[2])


def test_a_seeded_extraction_is_marked_so_the_trial_starts_fast(
    build_pyz, root: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from selfupdate._shiv._seed import seed_extraction

    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = tmp_path / "old" / "nsapp.pyz"
    new = tmp_path / "new" / "nsapp.pyz"
    shutil.copyfile(build_pyz("1.0.0"), old)
    shutil.copyfile(build_pyz("2.0.0"), new)
    start(old, root)
    made = seed_extraction(old, new, root)
    assert made == extraction(new, root)
    assert (made / EXTRACTION_DONE).read_text() == f"{_shiv.build_id(new)}\n"
    r = start(new, root)
    assert r.stdout == "nsapp 2.0.0\n" and fast(r), r.stderr
