"""nsapp's command-line conventions (issue 11), as the publisher's ``selfupdate`` has them:
``-q``/``-v`` (with ``-v`` the reason TUF refused, never a traceback), ``history --json``, a
closed pipe that ends quietly, bad numbers refused by argparse in one line, an example in
every ``--help``; and hints that name the likely cause first: ``https://`` to a plain-HTTP
port, and a client pointed at another app's repository (each against a real server on
127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _support_client import (
    Pub,
    RepoServer,
    assert_sentence,
    forge,
    make_pub,
    no_proxy_env,  # noqa: F401 - fixture, used through pytestmark
    serve,
)

from selfupdate import errors
from selfupdate.releases.client import UpdateClient

pytestmark = pytest.mark.usefixtures("no_proxy_env")
REPO = Path(__file__).resolve().parent.parent


def nsapp(*args: str, state: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    """nsapp from this checkout's source (``python -m nsapp``), with its own state dir."""
    path = os.pathsep.join([str(REPO), str(REPO / "examples" / "nsapp")])
    env = dict(os.environ, PYTHONPATH=path, NSAPP_STATE_DIR=str(state))
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "nsapp", *args],
        stderr=subprocess.PIPE, text=True, env=env, timeout=60, **kw,
    )  # fmt: skip


# --- -q / -v ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "quiet", "verbose"),
    [
        (["history"], False, False),
        (["-q", "history"], True, False),
        (["history", "--quiet"], True, False),
        (["-v", "history"], False, True),
        (["history", "-v"], False, True),
        (["-v", "update", "--check"], False, True),
    ],
)
def test_quiet_and_verbose_are_global_options(
    argv: list[str], quiet: bool, verbose: bool
) -> None:
    from nsapp import cli

    ns = cli.build_parser().parse_args(argv)
    assert (ns.quiet, ns.verbose) == (quiet, verbose)


@pytest.mark.parametrize(
    "argv",
    [["-q", "-v", "history"], ["history", "-q", "-v"], ["-q", "history", "-v"],
     ["-v", "history", "--quiet"], ["-q", "update", "-v", "--check"]],
)
def test_quiet_and_verbose_exclude_each_other(argv: list[str], tmp_path: Path) -> None:
    proc = nsapp(*argv, state=tmp_path / "state")
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "not allowed with argument" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "state").exists()  # nothing ran


@pytest.mark.parametrize("argv", [["-q", "-v", "status"], ["-q", "status", "-v"]])
def test_the_publisher_refuses_quiet_and_verbose_together(
    argv: list[str], tmp_path: Path
) -> None:
    proc = subprocess.run([sys.executable, "-m", "selfupdate", *argv, "--repo", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "not allowed with argument" in proc.stderr and proc.stdout == ""


def test_quiet_history_add_prints_nothing(tmp_path: Path) -> None:
    proc = nsapp("-q", "history", "--add", "deployed", state=tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert "deployed" in (tmp_path / "history.txt").read_text()


# --- history --json and a closed pipe -------------------------------------------------------


def test_history_json_is_one_object(tmp_path: Path) -> None:
    proc = nsapp("history", "--add", "deployed", "--json", state=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc) == {"app", "version", "state_dir", "format", "files", "entries"}
    assert doc["app"] == "nsapp"
    assert doc["state_dir"] == str(tmp_path)
    assert isinstance(doc["format"], int)
    assert doc["files"] == sorted(p.name for p in tmp_path.iterdir())
    assert doc["entries"][-1]["event"] == "deployed"


def test_history_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """``nsapp history | head -1``: the reader is gone before nsapp writes (made certain
    here by closing the pipe's read end first)."""
    lines = "".join(f"2026-01-01T00:00:00Z event{i}\n" for i in range(2000))
    (tmp_path / "history.txt").write_text(lines)
    r, w = os.pipe()
    os.close(r)
    try:
        proc = nsapp("history", state=tmp_path, stdout=w)
    finally:
        os.close(w)
    assert proc.stderr == ""
    assert proc.returncode == 0


# --- numbers and --help ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "soon"])
def test_a_bad_auto_update_interval_is_refused_in_one_line(value: str, tmp_path: Path) -> None:
    # --count/--interval bound the run should the value be accepted (as it was before).
    proc = nsapp("serve", "--auto-update", value, "--count", "1", "--interval", "0.01",
                 state=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"nsapp serve: error: argument --auto-update: expected a number of seconds > 0, got "
        f"{value!r} (see `nsapp serve --help`)"
    ]


_AUTO_UPDATE = """
import sys
from selfupdate import app
try:
    app.start_auto_update(float(sys.argv[1]))
except ValueError as e:
    print("ValueError", e)
else:
    print("started")
"""


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf"])
def test_start_auto_update_refuses_an_interval_that_is_not_positive(interval: str) -> None:
    # In a child: before the check, such an interval spun (0) or killed the thread (< 0).
    out = subprocess.run(
        [sys.executable, "-c", _AUTO_UPDATE, interval],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    ).stdout  # fmt: skip
    assert out.startswith("ValueError the auto-update interval must be a finite number > 0")


_JITTER = """
import os, time
from selfupdate import app
waits = []
def sleep(seconds):
    waits.append(seconds)
    if len(waits) == 20:
        print(" ".join(map(str, waits)), flush=True)
        os._exit(0)
time.sleep = sleep
app.update = lambda *a, **k: None
app.start_auto_update(100.0).join()
"""


def test_auto_update_waits_are_jittered_around_the_interval() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _JITTER], capture_output=True, text=True, cwd=REPO, timeout=60
    ).stdout
    waits = [float(w) for w in out.split()]
    assert len(waits) == 20
    assert all(90.0 <= w <= 110.0 for w in waits), waits
    assert len(set(waits)) > 1, "every wait is the same: a fleet would check in lockstep"


def test_help_shows_an_example_for_every_command(tmp_path: Path) -> None:
    from nsapp import cli

    top = nsapp("--help", state=tmp_path).stdout
    commands = sorted(cli.build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert {"run", "shell", "reexec-demo", "update", "rollback", "serve", "history"} <= set(
        commands
    )
    for command in commands:
        assert f"\n  nsapp {command}" in top, f"no example of {command} in nsapp --help"
    for command in ("run", "shell", "reexec-demo", "serve", "history"):
        text = nsapp(command, "--help", state=tmp_path).stdout
        assert "example" in text and f"\n  nsapp {command} " in text, text


# --- hint: https:// to a plain-HTTP port ------------------------------------------------------


@pytest.fixture
def pub(tmp_path: Path) -> Pub:
    (tmp_path / "a").mkdir()
    p = make_pub(tmp_path / "a")
    p.publish("1.0.0")
    return p


@pytest.fixture
def server(pub: Pub) -> Iterator[RepoServer]:
    yield from serve(pub.repo)


def test_https_to_a_plain_http_port_says_the_server_does_not_speak_tls(
    pub: Pub, server: RepoServer, tmp_path: Path
) -> None:
    port = server.httpd.server_port
    url = f"https://127.0.0.1:{port}"
    c = UpdateClient("nsapp", url, pub.root, cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(errors.UnreachableError) as ei:
        c.check("1.0.0")
    message = str(ei.value)
    assert_sentence(message)
    assert "does not speak TLS on that port" in message
    assert f"is the repository URL meant to be http://127.0.0.1:{port}?" in message
    assert "certificate" not in message
    # The very same repository over http:// is fine: the hint was right.
    http = UpdateClient("nsapp", server.url, pub.root, cache_dir=tmp_path / "c", progress=False)
    assert http.check("0.1.0") is not None


# --- hint: another app's repository -----------------------------------------------------------


@pytest.fixture
def other(tmp_path: Path) -> Pub:
    """Another app's repository, made by another publisher (other keys)."""
    (tmp_path / "b").mkdir()
    p = make_pub(tmp_path / "b", app="hello")
    p.publish("1.0.0", app="hello")
    return p


@pytest.fixture
def other_server(other: Pub) -> Iterator[RepoServer]:
    yield from serve(other.repo)


@pytest.mark.parametrize("rotated", [False, True], ids=["first-root", "rotated-root"])
def test_first_fetch_from_another_apps_repository_says_the_url_is_likely_wrong(
    rotated: bool, pub: Pub, other: Pub, other_server: RepoServer, tmp_path: Path
) -> None:
    """Nothing cached yet, and the repository's metadata is signed only by keys the embedded
    root does not know: the repository's own timestamp (or its next root, if it rotated)."""
    from selfupdate.releases import publish

    if rotated:
        publish.rotate(other.keys, other.repo, "root")
    c = UpdateClient(
        "nsapp", other_server.url, pub.root, cache_dir=tmp_path / "c", progress=False
    )
    with pytest.raises(errors.SignatureError) as ei:
        c.check("1.0.0")
    e = ei.value
    assert e.role == ("root" if rotated else "timestamp")
    assert e.foreign
    assert_sentence(str(e))
    assert str(e).startswith(
        f"the repository URL {other_server.url} probably points to another app's or another "
        "publisher's repository"
    )
    assert "tampered" in str(e)  # still named, second


def test_a_bad_signature_after_the_first_fetch_still_says_tampered(
    pub: Pub, server: RepoServer, tmp_path: Path
) -> None:
    """Control: once this repository's metadata is trusted (cached), a timestamp signed by a
    stranger's key is not a wrong URL."""
    from selfupdate.releases import _keys

    def client() -> UpdateClient:
        return UpdateClient("nsapp", server.url, pub.root, cache_dir=tmp_path / "c",
                            progress=False)  # fmt: skip

    assert client().check("0.1.0") is not None
    forge(pub, signers={"timestamp": _keys.generate()})
    with pytest.raises(errors.SignatureError) as ei:
        client().check("0.1.0")
    assert not ei.value.foreign
    assert "tampered" in str(ei.value)
    assert "another app" not in str(ei.value)


# --- -v end to end: the app's update names why TUF refused ------------------------------------


@pytest.fixture
def pyz(build_pyz: Any, pub: Pub) -> Path:
    return build_pyz(version="1.0.0", trusted_root=pub.root)  # type: ignore[no-any-return]


def _update_check(
    pyz: Path, state: Path, url: str, *flags: str
) -> subprocess.CompletedProcess[str]:
    # A copy: the test owns the installed file it runs (build_pyz shares its builds).
    inst = state.parent / "install" / "nsapp.pyz"
    if not inst.exists():
        inst.parent.mkdir(parents=True, exist_ok=True)
        inst.write_bytes(pyz.read_bytes())
    env = dict(os.environ, NSAPP_STATE_DIR=str(state))
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, str(inst), *flags, "update", "--check", "--repo", url],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_verbose_update_error_names_why_tuf_refused(
    pyz: Path, other_server: RepoServer, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    plain = _update_check(pyz, state, other_server.url)
    assert plain.returncode == 1
    assert len(plain.stderr.splitlines()) == 1, plain.stderr
    assert "probably points to another app's" in plain.stderr

    verbose = _update_check(pyz, state, other_server.url, "-v")
    assert verbose.returncode == 1
    lines = verbose.stderr.splitlines()
    assert lines[0] == plain.stderr.splitlines()[0]
    assert "nsapp: cause: UnsignedMetadataError: timestamp was signed by 0/1 keys" in lines[1:]
    assert 2 <= len(lines) <= 4, verbose.stderr
    assert "Traceback" not in verbose.stderr
