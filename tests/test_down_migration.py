"""Down-migrations (issue 11): "an explicit downgrade says so and runs no down-migration unless
the app registered one".

``@su.down_migration(V)`` undoes what the migration of ``V`` did. On ``update --to OLDER`` the
running, newer build (the one that knows them) runs those crossed (``OLDER < V <= running``),
newest first, on the live state after its snapshot and before the older build's trial; one that
raises restores the state, installs nothing and blames nothing on the older release. End to end
with nsapp's real builds (its down-migration ``2.0.0``: ``history.jsonl`` back to
``history.txt``, without which 1.x's health check refuses a 2.x state), a real signed repository
and HTTP server (``test_update_e2e``'s fixtures).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _support_client import assert_sentence
from _support_install import FakeClient, Rel, env_fixture, script  # noqa: F401
from _support_install import tree as files
from test_update_e2e import (  # noqa: F401 - the fixtures, by their names
    V1,
    V2,
    Install,
    World,
    inst_fixture,
    server_fixture,
    sha,
    tree,
    world_fixture,
)

from selfupdate import app as su
from selfupdate import install
from selfupdate._migrations import down_migrations_between


def test_the_versions_crossed_downward_newest_first() -> None:
    versions = ["2.0.0", "3.0.0", "1.0.0", "3.1"]
    assert down_migrations_between("3.1.0", "1.0.0", versions) == ["3.1", "3.0.0", "2.0.0"]
    assert down_migrations_between("3.0.0", "2.0.0", versions) == ["3.0.0"]  # 2.0.0 stays
    assert down_migrations_between("2.0.0+local", "1.5", versions) == ["2.0.0"]
    assert down_migrations_between("1.0.0", "3.0.0", versions) == []  # an update: none
    assert down_migrations_between("not a version", "1.0", versions) == []
    # the upward order is unchanged
    assert su.migrations_between("1.0.0", "3.1.0", versions) == ["2.0.0", "3.0.0", "3.1"]


def test_a_second_down_migration_for_a_version_is_refused() -> None:
    def undo(state: object) -> None:
        return None

    su.down_migration("99.0.0")(undo)
    try:
        with pytest.raises(ValueError, match="down-migration for version 99.0.0"):
            su.down_migration("99.0.0")(undo)
        assert "99.0.0" not in su._cfg.migrations  # a down-migration is no migration
    finally:
        del su._cfg.down_migrations["99.0.0"]


class FindingClient(FakeClient):
    """FakeClient with ``find``: the one version it holds, also an older one."""

    def find(self, version: str, current_version: str | None = None) -> Rel:
        assert version == self.version
        return Rel(self.version, len(self.payload))


def test_the_hook_runs_on_the_snapshotted_state_before_the_trial(env: tuple[Path, Path]) -> None:
    app, state = env  # script build 1.0, state/data
    seen: list[Path] = []

    def hook(log: Path) -> list[str]:
        seen.append(log)
        (state / "data").write_text("undone by 1.0\n")
        return ["down-migration 1.0: undone"]

    out = install.update(app, FindingClient("0.9", script("0.9")), "1.0", state, to="0.9",
                         downgrade=True, before_trial=hook)
    assert out.status == "updated" and seen == [install.Layout(app).log]
    assert (state / "data").read_text() == "undone by 1.0\n"  # what the trial accepted
    log = install.Layout(app).log.read_text().splitlines()
    assert log[0].startswith("# ") and log[1] == "down-migration 1.0: undone", log


@pytest.mark.parametrize("fault", [RuntimeError, KeyboardInterrupt])
def test_a_hook_that_raises_restores_the_state_and_records_nothing(
    env: tuple[Path, Path], fault: type[BaseException]
) -> None:
    app, state = env
    (state / "more").write_text("kept\n")
    before = (app.read_bytes(), files(state))

    def hook(log: Path) -> list[str]:
        (state / "data").write_text("half undone\n")
        (state / "more").unlink()
        raise fault("down-migration failed on purpose")

    with pytest.raises(fault):
        install.update(app, FindingClient("0.9", script("0.9")), "1.0", state, to="0.9",
                       downgrade=True, before_trial=hook)
    assert (app.read_bytes(), files(state)) == before
    layout = install.Layout(app)
    assert not layout.bad.exists() and not layout.journal.exists()
    # and the lock is free: the same downgrade goes through without the fault
    out = install.update(app, FindingClient("0.9", script("0.9")), "1.0", state, to="0.9",
                         downgrade=True)
    assert out.status == "updated"


def _on_v2(world: World, inst: Install, name: str) -> str:
    """Publish 1.0.0 and 2.0.0, update the installed 1.0.0 to 2.0.0 (its history migrated to
    JSON lines) and add an event as 2.0.0."""
    url, repo = world.repo(name)
    world.publish(repo, world.v1, V1)
    world.publish(repo, world.v2, V2)
    r = inst.run("update", "--repo", url)
    assert r.returncode == 0, r.stderr
    assert inst.pyz.read_bytes() == world.v2.read_bytes()
    assert inst.run("history", "--add", "as 2.0.0").returncode == 0
    assert (inst.state / "history.jsonl").exists()
    return url


def test_a_downgrade_runs_the_newer_builds_down_migration(world: World, inst: Install) -> None:
    url = _on_v2(world, inst, "down-ok")
    r = inst.run("update", "--to", V1, "--repo", url)
    assert r.returncode == 0, r.stderr + r.stdout
    out = r.stdout
    assert f"downgrading {V2} -> {V1} as asked: {V2}'s down-migrations run first" in out, out
    assert "down-migration 2.0.0: history.jsonl (3 entries) -> history.txt" in out, out
    assert f"nsapp downgraded {V2} -> {V1} in place" in out, out
    assert f"{V2}'s down-migrations were run" in out and "no migration" not in out, out
    assert inst.pyz.read_bytes() == world.v1.read_bytes()
    # 1.0.0's health check accepted the state the down-migration left: plain lines again
    assert not (inst.state / "history.jsonl").exists()
    lines = (inst.state / "history.txt").read_text().splitlines()
    assert [ln.split(" ", 1)[1] for ln in lines] == ["first run", "second run", "as 2.0.0"]
    r = inst.run("history")
    assert r.returncode == 0 and "format 1" in r.stdout, r.stdout
    # the trial's log records what ran before it
    log = install.Layout(inst.pyz).log.read_text()
    assert "down-migration 2.0.0: history.jsonl" in log, log
    # rollback is no downgrade by --to: it puts 2.0.0 back with the state 2.0.0 had
    r = inst.run("rollback")
    assert r.returncode == 0, r.stderr
    assert "down-migration" not in r.stdout + r.stderr
    assert inst.pyz.read_bytes() == world.v2.read_bytes()
    assert (inst.state / "history.jsonl").exists() and not (inst.state / "history.txt").exists()


def test_a_failing_down_migration_changes_nothing_and_blames_no_release(
    world: World, inst: Install
) -> None:
    url = _on_v2(world, inst, "down-fails")
    before = (sha(inst.pyz), tree(inst.state))
    failing = dict(inst.env, NSAPP_FAIL_MIGRATION="1")
    r = inst.run("update", "--to", V1, "--repo", url, env=failing)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    line = lines[0].removeprefix("nsapp update: ")
    assert_sentence(line)
    log = install.Layout(inst.pyz).log
    assert f"the down-migration 2.0.0 (downgrade_from_2) of {V2} failed" in line, line
    assert "failed on purpose" in line and f"see the log {log}" in line, line
    assert "with its state restored" in line and f"{V1} was not installed" in line, line
    assert "FAILED: down-migration 2.0.0 (downgrade_from_2)" in log.read_text()
    assert "Traceback" in log.read_text()  # the whole story is in the log
    # byte-identical: the build, and the state the down-migration had half rewritten
    assert (sha(inst.pyz), tree(inst.state)) == before
    assert V1 not in install.read_bad(install.Layout(inst.pyz))  # 1.0.0 is not to blame
    assert not (inst.pyz.parent / ".nsapp.pyz.journal").exists()
    # nothing held against it: without the fault the same downgrade goes through
    r = inst.run("update", "--to", V1, "--repo", url)
    assert r.returncode == 0, r.stderr
    assert inst.pyz.read_bytes() == world.v1.read_bytes()
