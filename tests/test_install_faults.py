"""Issue 9, findings 7 and 8: faults that must not blame a good release or break starts, and
interpreter isolation carried into the trial and the new build.

Real ``.pyz`` builds and a real repository (``test_update_e2e``'s fixtures, imported); full
disks are small tmpfs mounts in a private mount namespace (skipped where one cannot be made),
filled at a failpoint of the real updater (``SELFUPDATE_TEST_STOP_AT``), so no test depends
on timing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _support_client import assert_sentence
from _support_install import FakeClient, env_fixture, run_app, script, tree  # noqa: F401
from _support_users import AS_NOBODY, as_nobody, second_user
from test_update_e2e import (  # noqa: F401 - *_fixture: the fixtures, by name
    PY,
    V1,
    V2,
    Install,
    World,
    _in_mount_ns,
    _unshare_or_skip,
    inst_fixture,
    server_fixture,
    sha,
    world_fixture,
)

from selfupdate import install
from selfupdate.install import FAILPOINT_ENV

# Wait (bounded) until process $pid stopped itself at its failpoint, fill the tmpfs $1, go on.
_FILL_AT_FAILPOINT = '''
n=0; while [ "$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -d' ' -f1)" != T ]; do
  [ -d /proc/$pid ] || { echo "exited before the failpoint"; break; }
  n=$((n+1)); [ $n -lt 3000 ] || { echo "never stopped"; kill -9 $pid; exit 98; }; sleep 0.02
done
dd if=/dev/zero of="$1/fill" bs=64k 2>/dev/null || true
kill -CONT $pid; wait $pid && echo "status 0" || echo "status $?"
'''


def test_an_isolated_update_keeps_pythonpath_out_of_the_trial_and_the_new_build(
    world: World, inst: Install, tmp_path: Path
) -> None:
    url, repo = world.repo("isolated")
    world.publish(repo, world.v2, V2)
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "sitecustomize-ran"
    (site / "sitecustomize.py").write_text(
        f"import sys\nopen({str(marker)!r}, 'a').write(' '.join(sys.argv) + '\\n')\n"
    )
    isolated_env = dict(inst.env, PYTHONPATH=str(site))
    r = subprocess.run([PY, "-I", str(inst.pyz), "update", "--repo", url], env=isolated_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"updated {V1} -> {V2}" in r.stdout
    assert not marker.exists(), f"PYTHONPATH's sitecustomize ran in: {marker.read_text()}"


def test_no_space_in_shiv_root_during_the_trial_is_no_verdict(
    world: World, inst: Install, tmp_path: Path
) -> None:
    _unshare_or_skip()
    url, repo = world.repo("trial-enospc")
    world.publish(repo, world.v2, V2)
    shiv = tmp_path / "shiv"
    shiv.mkdir()
    before_state = tree(inst.state)
    stop = f"{FAILPOINT_ENV}=snapshot"
    r = _in_mount_ns(
        f'set -- "{shiv}"; mount -t tmpfs -o size=64m,mode=0700 tmpfs "$1"\n'
        'export SHIV_ROOT="$1"\n'
        f'"{PY}" "{inst.pyz}" --version\n'
        f'env {stop} "{PY}" "{inst.pyz}" update --repo {url} & pid=$!\n'
        + _FILL_AT_FAILPOINT +
        f'rm -f "$1/fill"; "{PY}" "{inst.pyz}" update --repo {url} && echo "again 0"\n'
        f'"{PY}" "{inst.pyz}" --version',
        inst.env,
    )
    assert "status 1" in r.stdout, (r.stdout, r.stderr)
    first = [ln for ln in r.stderr.splitlines() if "nsapp update" in ln]
    assert len(first) == 1 and "No space left on device" in first[0], r.stderr
    assert "Traceback" not in first[0] and "tries it again" in first[0], first
    assert "not tried again" not in r.stderr
    assert "again 0" in r.stdout and f"nsapp {V2}" in r.stdout, (r.stdout, r.stderr)
    assert before_state != tree(inst.state)  # migrated by the retried update


def test_no_space_after_the_commit_point_is_an_update_finished_at_the_next_start(
    world: World, inst: Install, tmp_path: Path
) -> None:
    _unshare_or_skip()
    url, repo = world.repo("commit-enospc")
    world.publish(repo, world.v2, V2)
    size = world.v1.stat().st_size + world.v2.stat().st_size
    small = tmp_path / "small"
    small.mkdir()
    pyz = small / "nsapp.pyz"
    r = _in_mount_ns(
        f'set -- "{small}"; mount -t tmpfs -o size={size + 1024 * 1024},mode=0700 tmpfs "$1"\n'
        f'cp "{world.v1}" "{pyz}"\n'
        f'env {FAILPOINT_ENV}=replaced "{PY}" "{pyz}" update --repo {url} & pid=$!\n'
        + _FILL_AT_FAILPOINT +
        f'"{PY}" "{pyz}" history && echo "full start 0"\n'
        f'rm -f "$1/fill"\n'
        f'"{PY}" "{pyz}" history 2>&1 && echo "freed start 0"\n'
        f'sha256sum "{pyz}"; ls -A "$1"',
        inst.env,
    )
    out, err = r.stdout, r.stderr
    assert "status 0" in out, (out, err)
    assert f"nsapp: updated to {V2}; finishing at the next start" in err, err
    assert f"updated {V1} -> {V2} in place" in out
    # With the disk still full, the start hook says so in one line and the new build runs.
    hook = [ln for ln in err.splitlines() if "could not finish the interrupted update" in ln]
    assert len(hook) == 1 and "full start 0" in out, (out, err)
    assert "Traceback" not in err
    assert "freed start 0" in out and sha(world.v2) in out
    listing = out.rsplit(sha(world.v2), 1)[1].split()
    assert ".nsapp.pyz.journal" not in listing and ".nsapp.pyz.previous" in listing, listing


def test_a_symlinked_state_directory_stays_a_symlink_after_a_failed_update(
    env: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, state = env
    real = tmp_path / "real-state"
    state.rename(real)
    state.symlink_to(real)
    before = tree(real)
    with pytest.raises(install.TrialFailedError):
        install.update(app, FakeClient("2.0", script("2.0", "refuse")), "1.0", state)
    assert state.is_symlink() and os.readlink(state) == str(real)
    assert tree(real) == before
    install.update(app, FakeClient("2.1", script("2.1")), "1.0", state)
    assert state.is_symlink() and (real / "data").read_text().endswith("migrated 1.0->2.1\n")


def test_an_install_path_with_a_non_utf8_byte_updates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = Path(os.fsdecode(os.fsencode(tmp_path) + b"/bin-\xff"))
    d.mkdir()
    app = d / "app.py"
    app.write_bytes(script("1.0"))
    state = tmp_path / "state"
    monkeypatch.setenv("TEST_STATE_DIR", str(state))
    out = install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    assert out.status == "updated" and run_app(app) == "2.0"
    with pytest.raises(install.TrialFailedError) as ei:
        install.update(app, FakeClient("2.1", script("2.1", "refuse")), "2.0", state)
    assert_sentence(str(ei.value))


def _rollback_as(user: list[str], app: Path, state: Path) -> subprocess.CompletedProcess[str]:
    code = ("import sys; from pathlib import Path; from selfupdate import install, errors\n"
            "try: install.rollback(Path(sys.argv[1]), '2.0', Path(sys.argv[2]))\n"
            "except errors.SelfUpdateError as e: print(e, file=sys.stderr); sys.exit(1)\n")
    repo = Path(__file__).resolve().parent.parent
    # Another user cannot run an interpreter under root's home (pyenv's 3.12 fails to load
    # its libpython there): as that user, the system's Python runs the code, from the repo.
    python = "/usr/bin/python3" if user and os.path.exists("/usr/bin/python3") else sys.executable
    return subprocess.run([*user, python, "-c", code, str(app), str(state)],
                          capture_output=True, text=True, timeout=60, cwd=repo,
                          env=dict(os.environ, PYTHONPATH=str(repo)))


def _updated(env: tuple[Path, Path]) -> tuple[Path, Path]:
    app, state = env
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    return app, state


def test_rollback_by_a_user_who_cannot_read_the_previous_build_is_a_sentence(
    env: tuple[Path, Path],
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a mode-0000 directory anyway (the second-user variant runs)")
    app, state = _updated(env)
    prev = install.Layout(app).previous_dir
    prev.chmod(0)
    try:
        r = _rollback_as([], app, state)
    finally:
        prev.chmod(0o700)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert_sentence(r.stderr.strip())
    assert "cannot be read by this user" in r.stderr


@second_user
def test_rollback_by_another_user_who_cannot_read_the_previous_build_is_a_sentence(
    env: tuple[Path, Path],
) -> None:
    app, state = _updated(env)
    for d in (app.parent, app.parent.parent, state.parent):
        d.chmod(0o755)  # the other user may look, not write
    as_nobody("true")
    r = _rollback_as(AS_NOBODY, app, state)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert_sentence(r.stderr.strip())
    assert run_app(app) == "2.0"
    shutil.rmtree(install.Layout(app).staging, ignore_errors=True)
