"""A service updated under load (issue 13): ``nsapp serve --listen`` moves v1 -> v2 -> v3 on
SIGHUP, refuses a ``+failmigration`` build, goes back on a rollback, while client threads keep
sending requests on new and on keep-alive connections: no request fails, no connection is
refused, every answer comes from one build (versions only move forward, but at the rollback),
the PID never changes, and systemd is told (``NOTIFY_SOCKET``, a real datagram socket). The
same under socket activation (``systemd-socket-activate``). A slow request in flight at the
handover is answered by the old build. A ``kill -9`` at a random moment of a handover leaves a
service that starts again and serves the old or the new build.

Real ``.pyz`` builds (the session's ``build_pyz``), a real signed repository and HTTP server on
127.0.0.1 (``test_update_e2e``'s), real processes and sockets.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_update_e2e import (  # noqa: F401 - server_fixture: the fixture, by its name
    PY,
    new_repository,
    selfupdate_cli,
    server_fixture,
)

from selfupdate.install import FAILPOINT_ENV

V1, BAD, V2, V3 = "1.0.0", "2.0.0+failmigration", "2.0.1", "3.0.0"


@dataclass
class Releases:
    url: str
    www: Path
    keys: Path
    base: Path
    builds: dict[str, Path]

    def repo(self, name: str) -> tuple[str, Path]:
        d = self.www / name
        shutil.copytree(self.base, d)
        return f"{self.url}/{name}", d

    def publish(self, repo: Path, version: str) -> None:
        selfupdate_cli("publish", "--keys", str(self.keys), "--repo", str(repo),
                       str(self.builds[version]), "--version", version)


@pytest.fixture(scope="module", name="releases")
def releases_fixture(server: tuple[str, Path, type], build_pyz: Callable[..., Path],
                     tmp_path_factory: pytest.TempPathFactory) -> Releases:
    url, www, _ = server
    keys, base, root = new_repository(tmp_path_factory.mktemp("service-releases"))
    builds = {v: build_pyz(v, trusted_root=root, repo_url=f"{url}/base") for v in (V1, BAD, V2, V3)}
    return Releases(url, www, keys, base, builds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Svc:
    """One installed v1 and how to run it: ``start()`` the service, ``nsapp(...)`` a command."""

    pyz: Path
    env: dict[str, str]
    port: int
    notify_path: Path
    repo_url: str
    notes: list[tuple[float, list[str]]] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None

    def nsapp(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, str(self.pyz), *args], env=self.env, capture_output=True,
                              text=True, timeout=120)

    def start(self, activated: bool = False, **extra: str) -> subprocess.Popen[str]:
        cmd = [PY, str(self.pyz), "serve", "--listen", f"127.0.0.1:{self.port}",
               "--repo", self.repo_url]
        if activated:
            tool = shutil.which("systemd-socket-activate")
            if tool is None:
                pytest.skip("systemd-socket-activate is not installed (Debian: systemd)")
            # It passes on only a few variables of its own: env (an exec, same PID) sets ours.
            cmd = [tool, "-l", f"127.0.0.1:{self.port}", "--fdname=http", "env",
                   *(f"{k}={v}" for k, v in self.env.items()), *cmd]
        self.proc = subprocess.Popen(cmd, env=dict(self.env, **extra), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        return self.proc

    def wait_note(self, field: str, after: int, timeout: float = 120) -> int:
        """Index of the first notification at or after ``after`` that holds ``field``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(after, len(self.notes)):
                if field in self.notes[i][1]:
                    return i
            assert self.proc is not None and self.proc.poll() is None, self.proc.stderr
            time.sleep(0.01)
        raise AssertionError(f"no {field} after #{after}: {self.notes}")


@pytest.fixture(name="svc")
def svc_fixture(releases: Releases, tmp_path: Path) -> Iterator[Svc]:
    d = tmp_path / "opt"
    d.mkdir()
    pyz = d / "nsapp.pyz"
    shutil.copy(releases.builds[V1], pyz)
    pyz.chmod(0o755)
    url, _ = releases.repo(tmp_path.name)
    notify_path = tmp_path / "notify"
    env = dict(os.environ, NSAPP_STATE_DIR=str(tmp_path / "state"),
               SELFUPDATE_TRIAL_TIMEOUT="60", NOTIFY_SOCKET=str(notify_path))
    env.pop(FAILPOINT_ENV, None)
    svc = Svc(pyz, env, _free_port(), notify_path, url)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))

    def collect() -> None:
        while True:
            try:
                data = sock.recv(4096)
            except OSError:
                return
            svc.notes.append((time.monotonic(), data.decode().splitlines()))

    threading.Thread(target=collect, daemon=True).start()
    try:
        yield svc
    finally:
        if svc.proc is not None and svc.proc.returncode is None:
            svc.proc.kill()
            svc.proc.communicate()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


# --------------------------------------------------------------------------------------------
# The load: clients on new connections and on keep-alive ones


@dataclass
class Load:
    port: int
    stop: threading.Event = field(default_factory=threading.Event)
    # per client thread: the (version, pid) of each answer, in order
    seen: list[list[tuple[str, int]]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # a request on a reused keep-alive connection that the server had closed at a request
    # boundary before reading it: sent again on a new connection, as HTTP/1.1 clients do
    # (RFC 9112, 9.3.1; urllib3, Go's net/http), and counted
    resent: int = 0
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, new: int = 2, keep_alive: int = 2) -> None:
        for i in range(new + keep_alive):
            answers: list[tuple[str, int]] = []
            self.seen.append(answers)
            t = threading.Thread(target=self._client, args=(i >= new, answers), daemon=True)
            t.start()
            self.threads.append(t)

    def _get(self, conn: http.client.HTTPConnection) -> tuple[str, int, bool]:
        conn.request("GET", "/")
        r = conn.getresponse()
        doc = json.loads(r.read())
        assert r.status == 200, doc
        return doc["version"], doc["pid"], r.getheader("Connection") == "close"

    def _client(self, keep: bool, answers: list[tuple[str, int]]) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                version, pid, closing = self._get(conn)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                conn = None
                if reused:  # closed between two requests: send it again, once, on a new one
                    self.resent += 1
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                    try:
                        version, pid, closing = self._get(conn)
                    except Exception as e2:
                        self.failures.append(f"{time.monotonic():.3f} resent: {e2!r}")
                        conn.close()
                        conn = None
                        continue
                else:
                    self.failures.append(f"{time.monotonic():.3f} {e!r}")
                    continue
            except Exception as e:  # refused, timed out, a bad answer
                self.failures.append(f"{time.monotonic():.3f} {e!r}")
                conn.close()
                conn = None
                continue
            answers.append((version, pid))
            if closing or not keep:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def wait_for(self, version: str, timeout: float = 60) -> None:
        """Until every client thread got an answer from ``version`` (its newest)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(a and a[-1][0] == version for a in self.seen):
                return
            time.sleep(0.01)
        raise AssertionError(f"not every client sees {version}: {[a[-3:] for a in self.seen]}")

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _moves(answers: list[tuple[str, int]]) -> list[str]:
    """The versions in the order a client saw them, each run of one version once."""
    out: list[str] = []
    for version, _ in answers:
        if not out or out[-1] != version:
            out.append(version)
    return out


def _subsequence(seq: list[str], of: list[str]) -> bool:
    it = iter(of)
    return all(x in it for x in seq)


def _first_connection(port: int) -> http.client.HTTPConnection:
    for _ in range(500):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.connect()
            return conn
        except ConnectionRefusedError:
            time.sleep(0.02)
    raise AssertionError(f"systemd-socket-activate does not listen on 127.0.0.1:{port}")


def _slow_request(port: int, seconds: float, out: list[object]) -> threading.Thread:
    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("GET", f"/sleep?seconds={seconds}")
            r = conn.getresponse()
            out.extend([r.status, json.loads(r.read()), time.monotonic()])
        except Exception as e:
            out.append(e)
        finally:
            conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# --------------------------------------------------------------------------------------------
# The update sequence under load, bound by the service or handed over by systemd


@pytest.mark.parametrize("activated", [False, True], ids=["bound", "socket-activated"])
def test_updates_a_failed_trial_and_a_rollback_under_load_lose_no_request(
    releases: Releases, svc: Svc, activated: bool
) -> None:
    repo = releases.www / svc.repo_url.rsplit("/", 1)[1]
    p = svc.start(activated)
    load = Load(svc.port)
    if activated:
        # systemd-socket-activate binds, then starts the service at the first connection.
        first = _first_connection(svc.port)
        ready = svc.wait_note("READY=1", 0)
        first.request("GET", "/")
        assert json.loads(first.getresponse().read())["version"] == V1
        first.close()
    else:
        ready = svc.wait_note("READY=1", 0)
    load.start()
    assert svc.notes[ready][1] == ["READY=1", f"STATUS=serving {V1}", f"MAINPID={p.pid}"]
    load.wait_for(V1)

    def hup(expect: str) -> int:
        """SIGHUP; wait for RELOADING=1 then READY=1 (from ``expect``); its index."""
        n = len(svc.notes)
        p.send_signal(signal.SIGHUP)
        reloading = svc.wait_note("RELOADING=1", n)
        assert svc.notes[reloading][1][1].startswith("MONOTONIC_USEC=")
        again = svc.wait_note("READY=1", reloading + 1)
        assert f"STATUS=serving {expect}" in svc.notes[again][1], svc.notes[again]
        load.wait_for(expect)
        return again

    # A failed trial: nothing changes, one line says why, the service stays ready.
    releases.publish(repo, BAD)
    hup(V1)
    releases.publish(repo, V2)
    hup(V2)
    releases.publish(repo, V3)
    hup(V3)
    # A rollback made by hand, then SIGHUP hands over to it, with a slow request in flight:
    # the old build answers it before the exec.
    r = svc.nsapp("rollback")
    assert r.returncode == 0, r.stderr
    slow: list[object] = []
    t = _slow_request(svc.port, 2.0, slow)
    time.sleep(0.5)  # it is being answered (well within its 2 s) when the handover starts
    again = hup(V2)
    t.join(60)
    assert slow[:2] == [200, {"app": "nsapp", "version": V3, "pid": p.pid}], slow
    assert isinstance(slow[2], float) and slow[2] < svc.notes[again][0]  # answered, then exec
    load.finish()  # before SIGTERM: once the service has exited, connections are refused
    n = len(svc.notes)
    p.send_signal(signal.SIGTERM)
    svc.wait_note("STOPPING=1", n)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err

    assert load.failures == [], (load.failures, [(round(t, 3), f) for t, f in svc.notes], err)
    counts = [len(a) for a in load.seen]
    assert all(c > 0 for c in counts)
    assert {pid for a in load.seen for _, pid in a} == {p.pid}  # one process throughout
    for answers in load.seen:
        assert _subsequence(_moves(answers), [V1, V2, V3, V2]), _moves(answers)
    lines = [ln for ln in err.splitlines() if "update check" in ln]
    assert len(lines) == 1 and f"{BAD}" in lines[0] and "failed" in lines[0], err
    print(f"\n{sum(counts)} requests, 0 failed, {load.resent} resent after an idle close")
    # Every READY=1 came from the same process, as MAINPID says at the first.
    assert [i for i, (_, f) in enumerate(svc.notes) if f[0] == "READY=1"][0] == ready


# --------------------------------------------------------------------------------------------
# kill -9 at a random moment of a handover


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


# (how the kill is placed, what the next start must serve: None = either)
_KILLS = [("trial-running", V1), ("replaced", V2), ("handover", None), ("anywhere", None)]


@pytest.mark.parametrize(("when", "expect"), _KILLS, ids=[w for w, _ in _KILLS])
def test_a_sigkill_in_a_handover_leaves_old_or_new_serving(
    releases: Releases, svc: Svc, when: str, expect: str | None
) -> None:
    """kill -9 in the trial (old), right after the switch (new), in the drain / exec / new
    build's start, and at a random moment across all of it: the next start serves a whole
    build, reading its state."""
    repo = releases.www / svc.repo_url.rsplit("/", 1)[1]
    releases.publish(repo, V2)
    stop_at = {FAILPOINT_ENV: when} if when in ("trial-running", "replaced") else {}
    p = svc.start(**stop_at)
    svc.wait_note("READY=1", 0)
    n = len(svc.notes)
    p.send_signal(signal.SIGHUP)
    svc.wait_note("RELOADING=1", n)
    if stop_at:  # it stops itself (SIGSTOP) as it enters that phase of the update
        deadline = time.monotonic() + 120
        while not _stopped(p.pid):
            assert time.monotonic() < deadline and p.poll() is None, "never reached " + when
            time.sleep(0.01)
    elif when == "handover":  # the drain, the exec, the new build's start
        assert p.stderr is not None
        while "handing over" not in (line := p.stderr.readline()):
            assert line, "the service ended before its handover"
        time.sleep(random.uniform(0.0, 0.3))
    else:  # anywhere across the download, the trial, the switch, the drain and the exec
        time.sleep(random.uniform(0.0, 2.0))
    p.kill()
    p.communicate()
    n = len(svc.notes)
    p = svc.start()
    svc.wait_note("READY=1", n)
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=60)
    conn.request("GET", "/history")
    r = conn.getresponse()
    doc = json.loads(r.read())
    conn.close()
    # The build that answers reads the state it finds (its format): a whole build, with its state.
    assert r.status == 200 and doc["version"] in (V1, V2), doc
    if expect is not None:
        assert doc["version"] == expect, doc
    assert svc.nsapp("--version").stdout.strip() == f"nsapp {doc['version']}"
    assert svc.nsapp("history").returncode == 0
