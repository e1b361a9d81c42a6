"""Which release ``update`` takes, and what it says about the ones it does not (issue 11).

Held, not bad: a release the operator rolled back from is *held* (no verdict), one whose own
trial refused it has *failed* (the log's last lines in the message), a timeout is no verdict.
``update --force`` tries either again, ``--to`` installs a chosen published version (also an
older one), ``--channel`` switches channels and remembers it. The trial first checks the build
it is about to run (its own app name, version, update configuration). ``update --check`` exits
0 / 100 / 1 and prints JSON with ``--json``.

The install-level tests use tiny script builds and an in-memory client; the end-to-end ones the
real ``.pyz`` builds, a real signed repository and a real HTTP server of ``test_update_e2e``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from _support_client import assert_sentence
from _support_install import FakeClient, env_fixture, script, tree  # noqa: F401
from test_update_e2e import (  # noqa: F401 - the fixtures, by their names
    V1,
    V2,
    Install,
    World,
    inst_fixture,
    server_fixture,
    sha,
    world_fixture,
)
from test_update_e2e import tree as state_tree

from selfupdate import install
from selfupdate.install._transaction import parse_bad

# --------------------------------------------------------------------------------------------
# The record: held or failed, and what older updaters wrote


def test_the_record_says_why_and_older_formats_are_still_read() -> None:
    new = (b'{"version": "2.1.0", "reason": "held", "when": "2026-12-01T10:00:00Z", '
           b'"detail": "rolled back from"}\n{"version": "2.2.0", "reason": "failed"}\n'
           b"not json at all\n")
    verdicts = parse_bad(new)
    assert [(v.version, v.reason) for v in verdicts.values()] == [
        ("2.1.0", "held"), ("2.2.0", "failed"),
    ]
    assert verdicts["2.1.0"].when == "2026-12-01T10:00:00Z"
    # what the updater wrote before issue 11 (a JSON list), and plain lines: reason unknown
    assert {v: x.reason for v, x in parse_bad(b'["2.0.0", "2.1.0"]').items()} == {
        "2.0.0": "unknown", "2.1.0": "unknown",
    }
    assert list(parse_bad(b"2.0.0\n2.1.0\n")) == ["2.0.0", "2.1.0"]


def test_a_rolled_back_release_is_held_and_force_installs_it(env: tuple[Path, Path]) -> None:
    app, state = env
    install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    install.rollback(app, "2.0", state)
    layout = install.Layout(app)
    before = (app.read_bytes(), tree(state), tree(app.parent))
    with pytest.raises(install.KnownBadError) as ei:
        install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    assert ei.value.reason == "held"
    assert_sentence(str(ei.value))
    assert "you rolled back from 2.0" in str(ei.value) and "update --force" in str(ei.value)
    assert "failed" not in str(ei.value)
    assert (app.read_bytes(), tree(state), tree(app.parent)) == before  # byte-identical
    out = install.update(app, FakeClient("2.0", script("2.0")), "1.0", state, force=True)
    assert out.status == "updated"
    assert not install.read_bad(layout)  # it passed: the record is gone


def test_an_old_style_record_is_refused_with_force_as_the_way_out(
    env: tuple[Path, Path],
) -> None:
    app, state = env
    install.Layout(app).bad.write_text('["2.0"]')
    install.Layout(app).bad.chmod(0o600)
    with pytest.raises(install.KnownBadError, match="earlier version of the updater") as ei:
        install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    assert "update --force" in str(ei.value)
    assert install.update(app, FakeClient("2.0", script("2.0")), "1.0", state,
                          force=True).status == "updated"


def test_a_refused_trial_quotes_the_end_of_its_log(env: tuple[Path, Path]) -> None:
    app, state = env
    with pytest.raises(install.TrialFailedError) as ei:
        install.update(app, FakeClient("2.0", script("2.0", "refuse")), "1.0", state)
    msg = str(ei.value)
    assert_sentence(msg)
    assert "its log ends: FAILED: migration refused on purpose" in msg, msg
    verdict = install.read_bad(install.Layout(app))["2.0"]
    assert verdict.reason == "failed" and "refused on purpose" in verdict.detail
    # asked again: it failed, said so, with when and what
    with pytest.raises(install.KnownBadError) as again:
        install.update(app, FakeClient("2.0", script("2.0", "refuse")), "1.0", state)
    assert again.value.reason == "failed"
    assert re.search(r"2\.0 failed its trial run on \d{4}-\d\d-\d\d \(", str(again.value))
    # --force tries it again (and it fails again, recorded again)
    with pytest.raises(install.TrialFailedError):
        install.update(app, FakeClient("2.0", script("2.0", "refuse")), "1.0", state,
                       force=True)
    mode = stat.S_IMODE(os.stat(install.Layout(app).bad).st_mode)
    assert mode == 0o600


def test_a_timeout_is_reported_as_one_and_never_recorded(env: tuple[Path, Path]) -> None:
    app, state = env
    before = (app.read_bytes(), tree(state))
    with pytest.raises(install.TrialIncompleteError) as ei:
        install.update(app, FakeClient("2.0", script("2.0", "hang")), "1.0", state,
                       trial_timeout=1)
    from selfupdate.errors import TrialTimeoutError

    assert isinstance(ei.value, TrialTimeoutError) and ei.value.timeout == 1
    assert "within 1 seconds" in str(ei.value) and "a timeout is no verdict" in str(ei.value)
    assert not install.Layout(app).bad.exists()
    assert (app.read_bytes(), tree(state)) == before


def test_a_build_configuration_that_cannot_be_read_is_no_verdict(tmp_path: Path) -> None:
    from selfupdate.install._trial import build_refusal, read_build_config

    # A real OSError (EISDIR at the open): before, any OSError read as "no configuration".
    with pytest.raises(IsADirectoryError) as ei:
        read_build_config(tmp_path)
    assert ei.value.filename == str(tmp_path)
    with pytest.raises(OSError):
        build_refusal(tmp_path, tmp_path, "nsapp", "2.0")


@pytest.mark.parametrize("code", [errno.EIO, errno.EMFILE])
def test_an_unreadable_candidate_fails_the_update_without_a_verdict(
    env: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    app, state = env
    # The installed build carries a release configuration (a real zip archive), so before,
    # a candidate whose configuration could not be read "carried none" and was recorded as
    # failed for good.
    with zipfile.ZipFile(app, "w") as z:
        z.writestr("__main__.py", script("1.0"))
        z.writestr("site-packages/selfupdate/_build_config.py",
                   'APP = "app"\nVERSION = "1.0"\nREPO_URL = "http://x"\nTRUSTED_ROOT = True\n')
        z.writestr("site-packages/selfupdate/_release_root.json", "{}")
    layout = install.Layout(app)
    real = zipfile.ZipFile

    def zipfile_failing_on_the_candidate(file: object, *a: object, **kw: object) -> object:
        # The kernel's answer to reading the downloaded file (a disk error, no descriptors
        # left), which no file system here can be made to give on demand.
        if str(file) == str(layout.staged):
            raise OSError(code, os.strerror(code), str(file))
        return real(file, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(zipfile, "ZipFile", zipfile_failing_on_the_candidate)
    before = (app.read_bytes(), tree(state), tree(app.parent))
    with pytest.raises(install.TrialIncompleteError) as ei:
        install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    msg = str(ei.value)
    assert_sentence(msg)
    assert f"could not read the release configuration embedded in {layout.staged}" in msg
    assert f"({os.strerror(code)})" in msg and "no verdict" in msg, msg
    assert not layout.bad.exists()  # nothing recorded
    after = (app.read_bytes(), tree(state), tree(app.parent))
    after[2].pop(".app.py.lock", None)  # the updater's lock file stays, as after any update
    assert after == before
    monkeypatch.setattr(zipfile, "ZipFile", real)
    # the next update tries it again (and the real mismatch is still a verdict)
    with pytest.raises(install.TrialFailedError) as again:
        install.update(app, FakeClient("2.0", script("2.0")), "1.0", state)
    assert not isinstance(again.value, install.TrialIncompleteError)
    assert "carries no release configuration" in str(again.value)
    assert install.read_bad(layout)["2.0"].reason == "failed"


# --------------------------------------------------------------------------------------------
# End to end: nsapp update / rollback / --check against a real repository


def publish_unchecked(world: World, repo: Path, build: Path, version: str, **kw: str) -> None:
    """Sign ``build`` as ``version`` without the publisher's checks of the build (what an older
    publisher did, or a repository someone else fills)."""
    from selfupdate.releases import publish

    publish.publish(world.keys, repo, build, version, **kw)  # type: ignore[arg-type]


def with_config(src: Path, out: Path, **values: object) -> Path:
    """A copy of the build ``src`` whose embedded release configuration says ``values``
    (``APP="hello"``, ``TRUSTED_ROOT=False``, ...) instead."""
    data = src.read_bytes()
    shebang = data[: data.index(b"PK\x03\x04")]
    name = "site-packages/selfupdate/_build_config.py"
    with zipfile.ZipFile(src) as zin, open(out, "wb") as f:
        f.write(shebang)
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                body = zin.read(info)
                if info.filename == name:
                    text = body.decode()
                    for key, value in values.items():
                        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value!r}", text)
                        assert n == 1, (key, text)
                    body = text.encode()
                zout.writestr(info, body)
    out.chmod(0o755)
    return out


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def check_json(inst: Install, url: str, *extra: str) -> tuple[int, dict[str, object]]:
    r = inst.run("update", "--check", "--json", "--repo", url, *extra)
    assert r.returncode in (0, 100), r.stderr
    return r.returncode, json.loads(r.stdout)


def test_rollback_then_update_says_held_and_force_reinstalls(
    world: World, inst: Install
) -> None:
    url, repo = world.repo("choice-held")
    world.publish(repo, world.v2, V2)
    assert inst.run("update", "--repo", url).returncode == 0
    r = inst.run("rollback")
    assert r.returncode == 0 and "is held" in r.stdout, r.stderr
    before = (sha(inst.pyz), state_tree(inst.state))
    r = inst.run("update", "--repo", url)
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert f"you rolled back from {V2}" in line and "update --force" in line, line
    assert "failed its trial" not in line
    assert (sha(inst.pyz), state_tree(inst.state)) == before
    code, report = check_json(inst, url)
    assert code == 0 and report["status"] == "held" and report["available"] == V2
    r = inst.run("update", "--check", "--repo", url)
    assert r.returncode == 0 and "you rolled back from it" in r.stdout, r.stdout
    r = inst.run("update", "--force", "--repo", url)
    assert r.returncode == 0, r.stderr
    assert inst.pyz.read_bytes() == world.v2.read_bytes()
    assert not (inst.pyz.parent / ".nsapp.pyz.bad").exists()


def test_a_failed_trial_is_reported_with_its_log_and_check_says_failed(
    world: World, inst: Install
) -> None:
    url, repo = world.repo("choice-failed")
    world.publish(repo, world.builds["health-fails"], f"{V2}+failhealth")
    r = inst.run("update", "--repo", url)
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "its log ends:" in line and "health check failed on purpose" in line, line
    code, report = check_json(inst, url)
    assert code == 0 and report["status"] == "failed", report
    assert "health check failed on purpose" in str(report["detail"])
    r = inst.run("update", "--repo", url)
    line = one_line(r.stderr)
    assert r.returncode == 1 and "failed its trial run on" in line and "--force" in line


def test_check_exit_status_json_and_release_notes(world: World, inst: Install) -> None:
    url, repo = world.repo("choice-check")
    code, report = check_json(inst, url)
    assert code == 0 and report["status"] == "up-to-date" and report["available"] is None
    publish_unchecked(world, repo, world.v2, V2, notes="Faster start.\nNew history format.")
    code, report = check_json(inst, url)
    assert code == 100, report
    download = report.pop("download")  # what the update would download (tests/test_delta.py)
    assert download["full"] == world.v2.stat().st_size >= download["bytes"] > 0, download
    assert report == {
        "app": "nsapp", "installed": V1, "available": V2, "status": "available",
        "channel": "stable", "notes": "Faster start.\nNew history format.", "detail": None,
        "withdrawn": None, "rollout": None,
    }
    r = inst.run("update", "--check", "--repo", url)
    assert r.returncode == 100 and f"nsapp {V2} is available" in r.stdout
    assert "  Faster start." in r.stdout and "  New history format." in r.stdout
    # --json goes with --check only
    assert inst.run("update", "--json", "--repo", url).returncode == 2


def test_a_withdrawn_installed_version_is_reported(world: World, inst: Install) -> None:
    from selfupdate.releases import publish

    url, repo = world.repo("choice-withdrawn")
    world.publish(repo, world.v1, V1)
    publish.yank(world.keys, repo, "nsapp", V1, reason="corrupts the history")
    code, report = check_json(inst, url)
    assert code == 0 and report["status"] == "withdrawn", report
    assert report["withdrawn"]["reason"] == "corrupts the history"  # type: ignore[index]
    r = inst.run("update", "--repo", url)
    assert r.returncode == 0 and "its publisher withdrew 1.0.0" in r.stdout, r.stdout


def test_check_to_a_version_still_says_the_installed_one_was_withdrawn(
    world: World, inst: Install
) -> None:
    from selfupdate.releases import publish

    url, repo = world.repo("choice-withdrawn-to")
    world.publish(repo, world.v1, V1)
    world.publish(repo, world.v2, V2)
    publish.yank(world.keys, repo, "nsapp", V1, reason="corrupts the history")
    code, report = check_json(inst, url, "--to", V2)
    assert code == 100 and report["available"] == V2, report
    assert report["withdrawn"] == {"when": report["withdrawn"]["when"],  # type: ignore[index]
                                   "reason": "corrupts the history"}, report
    r = inst.run("update", "--check", "--to", V2, "--repo", url)
    assert r.returncode == 100, r.stderr
    assert f"the running {V1} was withdrawn by its publisher" in r.stdout, r.stdout
    r = inst.run("update", "--check", "--repo", url)  # the newest: said there already
    assert r.returncode == 100 and "was withdrawn by its publisher" in r.stdout, r.stdout


def test_update_to_a_version_and_an_explicit_downgrade(world: World, inst: Install) -> None:
    url, repo = world.repo("choice-to")
    world.publish(repo, world.v2, V2)
    world.publish(repo, world.builds["2.0.1"], "2.0.1")
    r = inst.run("update", "--to", "3.1.4", "--repo", url)
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "3.1.4 is not published on channel 'stable'" in line and "2.0.0, 2.0.1" in line
    assert inst.pyz.read_bytes() == world.v1.read_bytes()
    r = inst.run("update", "--to", V2, "--repo", url)  # not the newest
    assert r.returncode == 0, r.stderr
    assert inst.pyz.read_bytes() == world.v2.read_bytes()
    assert inst.run("update", "--repo", url).returncode == 0  # now the newest
    assert inst.run("--version").stdout.strip() == "nsapp 2.0.1"
    events = state_tree(inst.state)
    r = inst.run("update", "--to", V2, "--repo", url)  # older: said so, no migration
    assert r.returncode == 0, r.stderr
    assert "downgrading 2.0.1 -> 2.0.0 as asked: no migration runs" in r.stdout
    assert "nsapp downgraded 2.0.1 -> 2.0.0 in place" in r.stdout, r.stdout
    assert "migration " not in r.stdout.replace("no migration", "")
    assert inst.pyz.read_bytes() == world.v2.read_bytes()
    assert state_tree(inst.state) == events  # the state is as 2.0.1 left it
    r = inst.run("update", "--to", V2, "--repo", url)
    assert r.returncode == 0 and "is up to date" in r.stdout


def test_channel_switch_is_remembered_and_an_empty_channel_named(
    world: World, inst: Install
) -> None:
    url, repo = world.repo("choice-channel")
    world.publish(repo, world.v2, V2)
    publish_unchecked(world, repo, world.builds["2.0.1"], "2.0.1", channel="beta")
    side = inst.pyz.parent / ".nsapp.pyz.channel"
    before = (sha(inst.pyz), state_tree(inst.state))
    r = inst.run("update", "--channel", "nightly", "--repo", url)
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert "no release of nsapp on channel 'nightly'" in line and "beta, stable" in line, line
    assert (sha(inst.pyz), state_tree(inst.state)) == before and not side.exists()
    code, report = check_json(inst, url, "--channel", "beta")
    assert code == 100 and report["available"] == "2.0.1" and report["channel"] == "beta"
    assert not side.exists()  # a check remembers nothing
    r = inst.run("update", "--channel", "beta", "--repo", url)
    assert r.returncode == 0, r.stderr
    assert inst.run("--version").stdout.strip() == "nsapp 2.0.1"
    assert side.read_text().strip() == "beta" and stat.S_IMODE(side.stat().st_mode) == 0o600
    code, report = check_json(inst, url)  # no --channel: the remembered one
    assert code == 0 and report["channel"] == "beta" and report["status"] == "up-to-date"


def test_nsapp_follows_the_channel_its_build_embeds(world: World, inst: Install) -> None:
    url, repo = world.repo("choice-embedded-channel")
    world.publish(repo, world.v2, V2)  # stable
    publish_unchecked(world, repo, world.builds["2.0.1"], "2.0.1", channel="beta")
    shutil.copy(with_config(world.v2, world.tmp / "beta-2.0.0.pyz", CHANNEL="beta"), inst.pyz)
    code, report = check_json(inst, url)  # the build's channel: beta
    assert (code, report["channel"], report["available"]) == (100, "beta", "2.0.1"), report
    code, report = check_json(inst, url, "--channel", "stable")  # --channel overrides it
    assert (code, report["channel"], report["status"]) == (0, "stable", "up-to-date"), report
    side = inst.pyz.parent / ".nsapp.pyz.channel"
    side.write_text("stable\n")  # and so does D/.I.channel (what `update --channel` keeps)
    side.chmod(0o600)
    code, report = check_json(inst, url)
    assert (code, report["channel"], report["status"]) == (0, "stable", "up-to-date"), report


@pytest.mark.parametrize("kind", ["version", "app", "no-root", "no-url"])
def test_the_trial_refuses_a_build_that_is_not_what_was_released(
    world: World, inst: Install, kind: str
) -> None:
    url, repo = world.repo(f"choice-build-{kind}")
    build, version = world.v2, "2.0.1"  # v2 signed as 2.0.1: it would be offered forever
    if kind != "version":
        version = V2
        values: dict[str, object] = {
            "app": {"APP": "hello"}, "no-root": {"TRUSTED_ROOT": False},
            "no-url": {"REPO_URL": None},
        }[kind]
        build = with_config(world.v2, world.tmp / f"{kind}.pyz", **values)
    publish_unchecked(world, repo, build, version)
    before = (sha(inst.pyz), state_tree(inst.state))
    r = inst.run("update", "--repo", url)
    assert r.returncode == 1
    line = one_line(r.stderr)
    expect = {
        "version": "calls itself version 2.0.0, not 2.0.1", "app": "is a build of 'hello'",
        "no-root": "embeds no trusted root", "no-url": "embeds no release repository URL",
    }[kind]
    assert expect in line and "it was not installed" in line, line
    assert (sha(inst.pyz), state_tree(inst.state)) == before
    assert not (inst.pyz.parent / ".nsapp.pyz.update").exists()
    verdict = install.read_bad(install.Layout(inst.pyz))[version]
    assert verdict.reason == "failed" and expect in verdict.detail
