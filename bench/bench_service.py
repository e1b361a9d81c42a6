"""``nsapp serve --listen`` under load: steady state vs a handover, side by side in one run.

Four clients (two on a new connection per request, two on keep-alive connections) send
``GET /`` for the whole run. The service is handed over ``--handovers`` times, alternately to
2.0.0 and back to 1.0.0 (``nsapp update --force`` / ``nsapp rollback`` made beside it, then
SIGHUP: the same drain and ``exec`` an update ends with, without the download and trial in
the window). For each handover, the second before the SIGHUP is "steady", and the span from
the SIGHUP to one second after the new build's first answer is "handover": requests per
second and p50/p99/max latency of each, pooled. The longest accept pause of a handover is the
gap, seen by the clients, between the last answer of the old build and the first of the new.

Reference, same run, interleaved with the handovers and under the same load: the new build's
warm start as a service (on another port), from ``exec`` of ``nsapp.pyz serve --listen`` (its
shiv extraction present) to its first answer, i.e. what a plain restart would make clients
wait; the goal is pause <= warm start + 50 ms.

Usage: python bench/bench_service.py [--handovers N] [--starts N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_update import PY, build, run, serve  # noqa: E402 - the shared build and repo helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Load:
    """Clients that record (start, end, version) of every answer, and every failure."""

    def __init__(self, port: int) -> None:
        self.port, self.stop = port, threading.Event()
        self.answers: list[tuple[float, float, str]] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._client, args=(keep,), daemon=True)
                        for keep in (False, False, True, True)]
        for t in self.threads:
            t.start()

    def _client(self, keep: bool) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            reused = conn is not None
            conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            t0 = time.monotonic()
            try:
                conn.request("GET", "/")
                r = conn.getresponse()
                version = json.loads(r.read())["version"]
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = None
                # a keep-alive connection closed between two requests: sent again (RFC 9112)
                if not (reused and isinstance(e, (http.client.RemoteDisconnected,
                                                  ConnectionResetError))):
                    self.failures.append(repr(e))
                continue
            self.answers.append((t0, time.monotonic(), version))
            if not keep or r.getheader("Connection") == "close":
                conn.close()
                conn = None

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def first_answer(port: int, deadline: float) -> float:
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/")
            c.getresponse().read()
            c.close()
            return time.monotonic()
        except OSError:
            time.sleep(0.001)
    raise SystemExit(f"nothing answers on 127.0.0.1:{port}")


def stats(lat: list[float], seconds: float) -> str:
    q = statistics.quantiles(lat, n=100)
    return (f"{len(lat) / seconds:7.0f} req/s  p50 {q[49] * 1e3:6.1f} ms  p99 {q[98] * 1e3:6.1f} "
            f"ms  max {max(lat) * 1e3:6.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--handovers", type=int, default=6)
    ap.add_argument("--starts", type=int, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    server = None
    svc = None
    try:
        env = dict(os.environ, SHIV_ROOT=str(work / "shiv"), NSAPP_STATE_DIR=str(work / "state"))
        run([PY, "-m", "selfupdate", "init", "--keys", str(work / "keys"), "--repo",
             str(work / "repo"), "--app", "nsapp"])
        root = work / "repo/metadata/root.json"
        root = root if root.exists() else work / "repo/metadata/1.root.json"
        server, url = serve(work / "repo")
        v1, v2 = (build(v, work / v / "nsapp.pyz", root, url) for v in ("1.0.0", "2.0.0"))
        run([PY, "-m", "selfupdate", "publish", "--keys", str(work / "keys"), "--repo",
             str(work / "repo"), str(v2)])
        app = work / "opt/nsapp.pyz"
        app.parent.mkdir()
        shutil.copy(v1, app)
        ref_port = free_port()
        ref_env = dict(env, NSAPP_STATE_DIR=str(work / "ref-state"))  # not the service's state

        def warm_start() -> float:
            """One start of 2.0.0 as a service on another port, to its first answer."""
            t0 = time.monotonic()
            p = subprocess.Popen([PY, str(v2), "serve", "--listen", f"127.0.0.1:{ref_port}"],
                                 env=ref_env, stderr=subprocess.DEVNULL)
            t1 = first_answer(ref_port, t0 + 60)
            p.send_signal(signal.SIGTERM)
            p.wait()
            return t1 - t0

        warm_start()  # extracts 2.0.0 once: every later start is warm
        starts = []
        port = free_port()
        svc = subprocess.Popen([PY, str(app), "serve", "--listen", f"127.0.0.1:{port}",
                                "--repo", url], env=env, stderr=subprocess.PIPE, text=True)
        first_answer(port, time.monotonic() + 60)
        load = Load(port)
        time.sleep(1.5)
        steady: list[float] = []
        during: list[float] = []
        steady_s = during_s = 0.0
        pauses = []
        for i in range(args.handovers):
            target = "2.0.0" if i % 2 == 0 else "1.0.0"
            cmd = ["update", "--force", "--repo", url] if target == "2.0.0" else ["rollback"]
            run([PY, str(app), "-q", *cmd], env=env)
            # The reference, interleaved and under the same load.
            starts += [warm_start() for _ in range(max(1, args.starts // args.handovers))]
            time.sleep(1.0)
            hup = time.monotonic()
            steady += [e - s for s, e, _ in load.answers if hup - 1.0 <= s < hup]
            steady_s += 1.0
            mark = len(load.answers)
            svc.send_signal(signal.SIGHUP)
            while not any(v == target for _, _, v in load.answers[mark:]):
                time.sleep(0.01)
            new_first = min(e for s, e, v in load.answers if v == target and s >= hup)
            time.sleep(1.0)
            end = new_first + 1.0
            during += [e - s for s, e, _ in load.answers if hup <= s < end]
            during_s += end - hup
            old_last = max(e for s, e, v in load.answers if v != target and e < new_first)
            pauses.append(new_first - old_last)
        load.finish()
        svc.send_signal(signal.SIGTERM)
        _, err = svc.communicate(timeout=60)
        warm = statistics.median(starts)
        print(f"{len(load.answers)} requests, {len(load.failures)} failed "
              f"{load.failures[:3]}; service exit status {svc.returncode}")
        print(f"steady state : {stats(steady, steady_s)}")
        print(f"handover     : {stats(during, during_s)}")
        print(f"accept pause of a handover: median {statistics.median(pauses) * 1e3:.0f} ms, "
              f"max {max(pauses) * 1e3:.0f} ms ({len(pauses)} handovers)")
        print(f"warm start of the service (exec -> first answer): median {warm * 1e3:.0f} ms "
              f"({len(starts)} starts); goal: pause <= {warm * 1e3 + 50:.0f} ms: "
              f"{'met' if max(pauses) <= warm + 0.05 else 'not met'} (max)")
        return 0
    finally:
        if svc is not None and svc.poll() is None:
            svc.kill()
            svc.wait()
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
