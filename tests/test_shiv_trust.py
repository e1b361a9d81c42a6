"""Issue 9, findings 3 and 6 and the seeding part of 7: shiv's extraction root and what runs,
opens, locks or is hard-linked from it.

Two users where the finding is about users: in the root pass the second user is ``nobody``,
acting through ``setpriv`` in a directory it may write (a world-writable one under ``/tmp``); in
the unprivileged pass those variants are skipped ("needs root to act as a second user"), and
where the finding can be shown by one user (a directory ``nobody`` itself made world-writable,
a lock its own other process holds, a link in its own directory) that variant runs as
``nobody``.
"""

from __future__ import annotations

import fcntl
import marshal
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from importlib.util import MAGIC_NUMBER
from pathlib import Path

import pytest
import test_update_e2e as e2e
from _support_client import assert_sentence
from _support_users import AS_NOBODY, NOBODY, NOBODY_PY, ROOT, second_user, tmp_dir

# The end-to-end fixtures "server", "world", "inst": a signed repository served on 127.0.0.1,
# v1 installed with some state.
from test_update_e2e import inst_fixture, server_fixture, world_fixture  # noqa: F401

from selfupdate import _shiv
from selfupdate._names import INUSE_LOCK
from selfupdate._shiv._clean import clean_shiv_dirs
from selfupdate._shiv._seed import seed_extraction
from selfupdate._shiv._trust import UntrustedDirectoryError, private_dir


def as_second_user(*cmd: str) -> None:
    """Run ``cmd`` as the second user in the root pass, as ourselves in the unprivileged one
    (where the directory it writes is one this user made world-writable)."""
    subprocess.run([*AS_NOBODY, *cmd] if ROOT else list(cmd), check=True, timeout=60,
                   capture_output=True)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory under /tmp that every user may write (mode 0777), made by this user."""
    with tmp_dir("shiv-shared-", 0o777) as d:
        yield d


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory of this user under /tmp, mode 0755: private, but others can look in."""
    with tmp_dir("shiv-root-", 0o755) as d:
        yield d


def plant(extraction: Path, marker: Path) -> None:
    """As the second user: an extraction whose site-packages runs code at shiv's bootstrap
    (``site.addsitedir`` executes ``.pth`` lines), which would create ``marker``."""
    pth = f"import os; open({str(marker)!r}, 'w').close()\n"
    as_second_user("sh", "-c", 'mkdir -p "$1/site-packages" && printf "%s" "$2" > '
                   '"$1/site-packages/planted.pth"', "sh", str(extraction), pth)


def refusal(stderr: str) -> str:
    """The updater's one-line refusal (the last line; the start hook may warn before it)."""
    lines = stderr.strip().splitlines()
    assert lines, stderr
    for ln in lines:
        prefix, _, message = ln.partition(": ")
        assert prefix in ("nsapp", "nsapp update", "nsapp rollback"), stderr
        assert_sentence(message)
    return lines[-1]


# --------------------------------------------------------------------------------------------
# The trust check itself


def test_a_private_directory_is_trusted_and_its_real_path_returned(tmp_path: Path) -> None:
    d = tmp_path / "root"
    d.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(d)
    assert private_dir(tmp_path / "link") == str(d)
    made = private_dir(tmp_path / "new" / "root", create=True)
    assert made == str(tmp_path / "new" / "root")
    assert {os.stat(p).st_mode & 0o777 for p in (made, tmp_path / "new")} == {0o700}


def test_a_directory_others_can_write_is_refused_in_one_sentence(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(UntrustedDirectoryError) as ei:
        private_dir(d)
    assert str(ei.value) == (
        f"SHIV_ROOT {d} is writable by other users (mode 0777): extraction there could run "
        "another user's code; set SHIV_ROOT to a directory only you can write"
    )
    assert_sentence(str(ei.value))
    d.chmod(0o1777)  # sticky protects entries from each other, not the directory itself
    with pytest.raises(UntrustedDirectoryError, match="mode 1777"):
        private_dir(d)


def test_a_sticky_ancestor_is_fine_a_plain_one_others_can_write_is_not(tmp_path: Path) -> None:
    parent = tmp_path / "p"
    (parent / "root").mkdir(parents=True)
    parent.chmod(0o1777)  # as /tmp
    assert private_dir(parent / "root") == str(parent / "root")
    parent.chmod(0o777)
    with pytest.raises(UntrustedDirectoryError) as ei:
        private_dir(parent / "root")
    assert f"is inside {parent}, which is writable by other users (mode 0777, not sticky)" in str(
        ei.value)


def test_a_missing_directory_is_file_not_found_unless_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        private_dir(tmp_path / "nope")


@second_user
def test_a_directory_or_a_link_of_another_user_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "theirs"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(UntrustedDirectoryError, match=r"belongs to another user \(uid 65534\)"):
        private_dir(d)
    mine = tmp_path / "mine"
    mine.mkdir()
    link = tmp_path / "link"
    link.symlink_to(mine)
    os.lchown(link, NOBODY, NOBODY)  # whoever owns a link decides where it points
    with pytest.raises(UntrustedDirectoryError, match="symbolic link owned by another user"):
        private_dir(link)


def test_the_test_suites_shiv_root_is_trusted() -> None:
    """conftest.py's per-session SHIV_ROOT (pytest makes it 0700), in both passes."""
    private_dir(os.environ["SHIV_ROOT"])


# --------------------------------------------------------------------------------------------
# Finding 3: a planted extraction of the next build


def test_a_planted_extraction_in_a_shared_root_never_runs(
    world: e2e.World, inst: e2e.Install, shared: Path, tmp_path: Path
) -> None:
    """The next build's id is public; another user plants its extraction in a SHIV_ROOT
    everyone may write. The update refuses before the trial: not the release's fault."""
    url, repo = world.repo("planted-shared")
    world.publish(repo, world.v2, e2e.V2)
    marker = tmp_path / "planted-code-ran"
    plant(shared / f"nsapp.pyz_{_shiv.build_id(world.v2)}", marker)
    r = inst.run("update", "--repo", url, env=dict(inst.env, SHIV_ROOT=str(shared)))
    assert not marker.exists(), "the planted extraction ran"
    assert r.returncode != 0
    line = refusal(r.stderr)
    assert f"SHIV_ROOT {shared} is writable by other users (mode 0777)" in line, line
    assert inst.pyz.read_bytes() == world.v1.read_bytes()
    assert not (inst.pyz.parent / ".nsapp.pyz.bad").exists(), "the release was blamed"


def test_the_extraction_root_is_checked_before_any_download(
    world: e2e.World, shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service's root opened to others after it started (its own start checked it then):
    the update refuses before it downloads anything; a private or missing root passes."""
    from selfupdate._shiv._seed import check_extraction_root

    monkeypatch.setenv("SHIV_ROOT", str(shared))
    with pytest.raises(UntrustedDirectoryError) as e:
        check_extraction_root(world.v1)
    assert f"SHIV_ROOT {shared} is writable by other users (mode 0777)" in str(e.value)
    private = tmp_path / "shiv"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("SHIV_ROOT", str(private))
    check_extraction_root(world.v1)
    monkeypatch.setenv("SHIV_ROOT", str(tmp_path / "not-yet"))
    check_extraction_root(world.v1)
    assert not (tmp_path / "not-yet").exists()  # made when the trial needs it, not here


@second_user
def test_an_extraction_another_user_planted_is_refused_in_a_root_now_private(
    world: e2e.World, inst: e2e.Install, shared: Path, tmp_path: Path
) -> None:
    """The root was shared once (the plant is from then); it is root's and 0755 now."""
    url, repo = world.repo("planted-private")
    world.publish(repo, world.v2, e2e.V2)
    marker = tmp_path / "planted-code-ran"
    planted = shared / f"nsapp.pyz_{_shiv.build_id(world.v2)}"
    plant(planted, marker)
    shared.chmod(0o755)
    r = inst.run("update", "--repo", url, env=dict(inst.env, SHIV_ROOT=str(shared)))
    assert not marker.exists(), "the planted extraction ran"
    assert r.returncode != 0
    line = refusal(r.stderr)
    assert str(planted) in line and "belongs to another user (uid 65534)" in line, line
    assert inst.pyz.read_bytes() == world.v1.read_bytes()
    assert not (inst.pyz.parent / ".nsapp.pyz.bad").exists(), "the release was blamed"
    assert (planted / "site-packages" / "planted.pth").exists()  # not ours to remove


def test_an_extraction_of_ours_found_before_the_trial_is_made_again(
    world: e2e.World, inst: e2e.Install, tmp_path: Path
) -> None:
    """Ours, in our root, but not made by this update (a leftover, changed since): removed and
    extracted again from the verified download, so the trial runs only the release."""
    url, repo = world.repo("stale-own")
    world.publish(repo, world.v2, e2e.V2)
    root = tmp_path / "shiv"
    root.mkdir(mode=0o700)
    marker = tmp_path / "stale-code-ran"
    stale = root / f"nsapp.pyz_{_shiv.build_id(world.v2)}" / "site-packages"
    stale.mkdir(parents=True)
    (stale / "planted.pth").write_text(f"import os; open({str(marker)!r}, 'w').close()\n")
    r = inst.run("update", "--repo", url, env=dict(inst.env, SHIV_ROOT=str(root)))
    assert not marker.exists(), "the stale extraction ran"
    assert r.returncode == 0, r.stderr
    assert not (stale / "planted.pth").exists()
    assert inst.pyz.read_bytes() == world.v2.read_bytes()


def test_a_rollback_runs_the_previous_build_only_from_an_extraction_it_verified(
    world: e2e.World, inst: e2e.Install, tmp_path: Path
) -> None:
    """The previous build's extraction, changed while the new build ran (a .pth added): the
    rollback's trial must not run it; it is made again from the previous build itself."""
    url, repo = world.repo("rollback-stale")
    world.publish(repo, world.v2, e2e.V2)
    root = tmp_path / "shiv"
    root.mkdir(mode=0o700)
    env = dict(inst.env, SHIV_ROOT=str(root))
    assert inst.run("update", "--repo", url, env=env).returncode == 0
    marker = tmp_path / "stale-code-ran"
    old = root / f"nsapp.pyz_{_shiv.build_id(world.v1)}" / "site-packages"
    old.mkdir(parents=True, exist_ok=True)
    (old / "planted.pth").write_text(f"import os; open({str(marker)!r}, 'w').close()\n")
    r = inst.run("rollback", env=env)
    assert not marker.exists(), "the changed extraction ran in the rollback's trial"
    assert r.returncode == 0, r.stderr
    assert inst.pyz.read_bytes() == world.v1.read_bytes()


@second_user
def test_a_rollback_refuses_an_extraction_another_user_planted(
    world: e2e.World, inst: e2e.Install, reachable: Path, tmp_path: Path
) -> None:
    url, repo = world.repo("rollback-planted")
    world.publish(repo, world.v2, e2e.V2)
    root = reachable
    env = dict(inst.env, SHIV_ROOT=str(root))
    assert inst.run("update", "--repo", url, env=env).returncode == 0
    marker = tmp_path / "planted-code-ran"
    planted = root / f"nsapp.pyz_{_shiv.build_id(world.v1)}"
    shutil.rmtree(planted, ignore_errors=True)
    root.chmod(0o777)  # shared for a while: the second user plants the previous build's
    plant(planted, marker)
    root.chmod(0o755)
    r = inst.run("rollback", env=env)
    assert not marker.exists(), "the planted extraction ran"
    assert r.returncode != 0
    assert "belongs to another user" in refusal(r.stderr)
    assert inst.pyz.read_bytes() == world.v2.read_bytes()


# --------------------------------------------------------------------------------------------
# Finding 3: side files opened through planted links


@second_user
def test_the_cleaner_creates_nothing_through_a_link_planted_in_a_shared_root(
    shared: Path, reachable: Path
) -> None:
    victim = reachable / "created-by-root"  # where nobody may not create a file, root may
    d = shared / f"nsapp.pyz_{'c' * 64}"
    as_second_user("sh", "-c", 'mkdir "$1" && ln -s "$2" "$1/$3"', "sh", str(d), str(victim),
                   INUSE_LOCK)
    with pytest.raises(UntrustedDirectoryError, match="writable by other users"):
        clean_shiv_dirs([], "nsapp.pyz", shared)
    assert not victim.exists()
    assert d.exists()


def test_the_cleaner_never_opens_the_in_use_lock_through_a_link(tmp_path: Path) -> None:
    root = tmp_path / "shiv"
    d = root / f"nsapp.pyz_{'c' * 64}"
    d.mkdir(parents=True)
    victim = tmp_path / "victim"
    (d / INUSE_LOCK).symlink_to(victim)
    clean_shiv_dirs([], "nsapp.pyz", root)
    assert not victim.exists()


def _env(root: Path, tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, SHIV_ROOT=str(root), NSAPP_STATE_DIR=str(tmp_path / "state"))


def test_the_start_hook_never_opens_the_in_use_lock_through_a_link(
    build_pyz: Callable[..., Path], tmp_path: Path
) -> None:
    pyz = build_pyz("1.0.0", out=tmp_path / "opt" / "nsapp.pyz")
    root = tmp_path / "shiv"
    env = _env(root, tmp_path)
    subprocess.run([sys.executable, str(pyz), "history"], env=env, check=True, timeout=120,
                   capture_output=True)
    (lock,) = root.glob(f"*/{INUSE_LOCK}")
    lock.unlink()
    victim = tmp_path / "victim"
    lock.symlink_to(victim)
    r = subprocess.run([sys.executable, str(pyz), "history"], env=env, timeout=120,
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert not victim.exists()
    assert not lock.is_symlink() and lock.stat().st_mode & 0o777 == 0o600


def test_seeding_never_opens_shivs_lock_through_a_link(
    build_pyz: Callable[..., Path], tmp_path: Path
) -> None:
    old = build_pyz("1.0.0", out=tmp_path / "opt" / "nsapp.pyz")
    new = build_pyz("2.0.0", out=tmp_path / "staged" / "nsapp.pyz")
    root = tmp_path / "shiv"
    subprocess.run([sys.executable, str(old), "history"], env=_env(root, tmp_path), check=True,
                   timeout=120, capture_output=True)
    victim = tmp_path / "victim"
    (root / f".nsapp.pyz_{_shiv.build_id(new)}_lock").symlink_to(victim)
    assert seed_extraction(old, new, root) is not None
    assert not victim.exists()


# --------------------------------------------------------------------------------------------
# Finding 6: nobody else's lock makes a start wait


HOLD = ("import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n")


@pytest.mark.parametrize("holder", ["another user", "this user"])
def test_a_start_never_waits_for_a_lock_someone_holds(
    build_pyz: Callable[..., Path], tmp_path: Path, reachable: Path, holder: str
) -> None:
    if holder == "another user" and (not ROOT or shutil.which("setpriv") is None):
        pytest.skip("needs root to act as a second user")
    pyz = build_pyz("1.0.0", out=tmp_path / "opt" / "nsapp.pyz")
    env = _env(reachable, tmp_path)
    subprocess.run([sys.executable, str(pyz), "history"], env=env, check=True, timeout=120,
                   capture_output=True)
    (lock,) = reachable.glob(f"*/{INUSE_LOCK}")
    cmd = [sys.executable, "-c", HOLD, str(lock)]
    if holder == "another user":
        # As the versions before this fix left them: the lock 0644, in an extraction and a
        # root others could enter (both private since, 0700).
        lock.chmod(0o644)
        lock.parent.chmod(0o755)
        reachable.chmod(0o755)
        cmd = [*AS_NOBODY, NOBODY_PY, "-c", HOLD, str(lock)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        try:
            r = subprocess.run([sys.executable, str(pyz), "history"], env=env, timeout=60,
                               capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the start waited for the in-use lock {holder} holds")
        assert r.returncode == 0 and r.stderr == "", r.stderr
    finally:
        p.kill()
        p.wait()
    assert lock.stat().st_mode & 0o777 == 0o600
    if holder == "another user":
        r = subprocess.run([*AS_NOBODY, NOBODY_PY, "-c", HOLD, str(lock)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode != 0 and "PermissionError" in r.stderr, "they can open it still"


# --------------------------------------------------------------------------------------------
# Finding 7 (seeding): only what the archive holds is hard-linked


@pytest.fixture
def extracted(build_pyz: Callable[..., Path], tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(old build, new build, shiv root, old build's site-packages), the old build run once."""
    old = build_pyz("1.0.0", out=tmp_path / "opt" / "nsapp.pyz")
    new = build_pyz("2.0.0", out=tmp_path / "staged" / "nsapp.pyz")
    root = tmp_path / "shiv"
    subprocess.run([sys.executable, str(old), "history"], env=_env(root, tmp_path), check=True,
                   timeout=120, capture_output=True)
    return old, new, root, root / f"nsapp.pyz_{_shiv.build_id(old)}" / "site-packages"


def test_a_same_size_change_in_the_old_extraction_is_not_carried(
    extracted: tuple[Path, Path, Path, Path],
) -> None:
    old, new, root, old_sp = extracted
    name = "site-packages/selfupdate/_names.py"  # the same in both builds
    with zipfile.ZipFile(old) as zo, zipfile.ZipFile(new) as zn:
        assert zo.getinfo(name).CRC == zn.getinfo(name).CRC
        content = zn.read(name)
    changed = old_sp.parent / name
    data = bytearray(changed.read_bytes())
    data[data.index(b"post-update")] = ord("P")  # same size, other bytes
    changed.write_bytes(bytes(data))
    d = seed_extraction(old, new, root)
    assert d is not None
    assert (d / name).read_bytes() == content
    assert (d / name).stat().st_ino != changed.stat().st_ino


def test_bytecode_that_is_not_its_sources_compilation_is_not_carried(
    extracted: tuple[Path, Path, Path, Path],
) -> None:
    """A .pyc whose header matches the source's mtime and size, which Python would load."""
    old, new, root, old_sp = extracted
    source = old_sp / "selfupdate" / "_names.py"
    st = source.stat()
    pyc = old_sp / "selfupdate" / "__pycache__" / f"_names.{sys.implementation.cache_tag}.pyc"
    pyc.parent.mkdir(exist_ok=True)
    code = compile("FORGED = True\n", str(source), "exec")
    pyc.write_bytes(MAGIC_NUMBER + (0).to_bytes(4, "little")
                    + (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
                    + (st.st_size & 0xFFFFFFFF).to_bytes(4, "little") + marshal.dumps(code))
    d = seed_extraction(old, new, root)
    assert d is not None
    assert (d / "site-packages" / "selfupdate" / "_names.py").stat().st_ino == st.st_ino
    assert not list((d / "site-packages").rglob("*.pyc")), "bytecode was carried over"


def test_a_lock_held_by_the_same_user_does_not_stop_the_lock_being_private(
    tmp_path: Path,
) -> None:
    """open_private_lock replaces a lock file others could open, and never follows a link."""
    d = tmp_path / "x"
    d.mkdir()
    (d / "l").write_bytes(b"")
    (d / "l").chmod(0o644)
    old_fd = os.open(d / "l", os.O_RDONLY)
    fcntl.flock(old_fd, fcntl.LOCK_EX)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _shiv.open_private_lock(dfd, "l")
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the old holder holds nothing now
        assert os.fstat(fd).st_mode & 0o777 == 0o600
        os.close(fd)
    finally:
        os.close(dfd)
        os.close(old_fd)
    assert sorted(p.name for p in d.iterdir()) == ["l"]


def test_dot_dot_after_a_link_is_resolved_as_the_kernel_does(tmp_path: Path) -> None:
    # a/l -> b/c; "a/l/.." is b (physically), not a: b is what shiv would use, and b is not
    # private, so it is refused (a text-only normalisation would have checked a instead).
    (tmp_path / "a").mkdir(mode=0o700)
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "b").chmod(0o777)
    (tmp_path / "a" / "l").symlink_to(tmp_path / "b" / "c")
    with pytest.raises(UntrustedDirectoryError) as e:
        private_dir(tmp_path / "a" / "l" / "..")
    assert "writable by other users" in str(e.value)
    assert private_dir(tmp_path / "a" / ".") == str(tmp_path / "a")


def test_a_bad_trial_timeout_in_the_environment_stops_no_start() -> None:
    env = dict(os.environ, SELFUPDATE_TRIAL_TIMEOUT="abc")
    proc = subprocess.run([sys.executable, "-m", "nsapp", "history"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and proc.returncode == 0, proc.stderr


@second_user
def test_another_users_command_line_does_not_keep_our_extraction_from_being_removed(
    tmp_path: Path,
) -> None:
    """A command line is text its process chose: another user naming our old extraction in
    theirs (`sleep PATH`) must not keep the cleaner from removing it; ours still does."""
    from selfupdate._shiv._clean import remove_unused

    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    for name in ("app.pyz_theirs", "app.pyz_ours"):
        (root / name / "site-packages").mkdir(parents=True)
    theirs = subprocess.Popen([*AS_NOBODY, NOBODY_PY, "-c", "import time; time.sleep(60)",
                               str(root / "app.pyz_theirs")])  # fmt: skip
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             str(root / "app.pyz_ours")])  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            os.stat(f"/proc/{theirs.pid}").st_uid == NOBODY  # past setpriv, as nobody
            and all(str(root / n).encode() in Path(f"/proc/{p.pid}/cmdline").read_bytes()
                    for n, p in (("app.pyz_theirs", theirs), ("app.pyz_ours", ours)))
        ):
            time.sleep(0.05)
        assert remove_unused(root, "app.pyz_theirs")
        assert not (root / "app.pyz_theirs").exists()
        assert not remove_unused(root, "app.pyz_ours")  # our own process names it: kept
        assert (root / "app.pyz_ours").exists()
    finally:
        for p in (theirs, ours):
            p.kill()
            p.wait()
