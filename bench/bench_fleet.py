"""A fleet checking for updates against nginx (issue 15, Performance).

The repository is served by a real nginx with the shipped configuration (docs/nginx-repo.conf;
tests/_support_nginx.py starts it on 127.0.0.1 with its own prefix). Counted at the server,
from nginx's access log:

- ``idle check``: what one client that finds nothing new costs: requests, bytes the server
  sent (headers included) and received, and the client's CPU and wall time per check (median
  of N checks by one warm client, in this process);
- ``fleet``: 1,000 simulated clients (an install ID and a metadata directory each, in
  ``--procs`` processes), one cold check each (the first: root, timestamp, snapshot, targets)
  then idle checks: checks per second, requests per second at the server, client CPU per
  check;
- ``nginx alone``: what the static repository sustains here without the clients' Python: keep-
  alive GETs of ``timestamp.json`` from ``--conns`` asyncio connections for ``--seconds`` s (a
  lower bound: the load generator shares the 2 CPUs with nginx).

Usage: python bench/bench_fleet.py [--clients 1000] [--procs 2] [--idle 50] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from _support_client import make_pub  # noqa: E402
from _support_nginx import nginx_binary, serve  # noqa: E402

WORKER = r"""
import json, os, sys, time
from selfupdate.releases.client import UpdateClient
url, root_file, cache, first, count, rounds = sys.argv[1:7]
root = open(root_file, "rb").read()
clients = [UpdateClient("nsapp", url, root, cache_dir=os.path.join(cache, str(i)),
                        install_id=f"bench-{i:05d}")
           for i in range(int(first), int(first) + int(count))]
t0, c0 = time.perf_counter(), time.process_time()
for c in clients:
    c.check("1.0.0")
cold = (time.perf_counter() - t0, time.process_time() - c0)
t0, c0 = time.perf_counter(), time.process_time()
for _ in range(int(rounds)):
    for c in clients:
        c.check("2.0.0")
idle = (time.perf_counter() - t0, time.process_time() - c0)
print(json.dumps({"cold": cold, "idle": idle, "n": len(clients)}))
"""


def _log(ng: object) -> list[list[str]]:
    return [line.split() for line in ng.log_lines()]  # type: ignore[attr-defined]


def idle_check(ng: object, pub: object, tmp: Path, n: int) -> dict[str, float]:
    from selfupdate.releases.client import UpdateClient

    client = UpdateClient("nsapp", ng.url, pub.root, cache_dir=tmp / "one")  # type: ignore[attr-defined]
    client.check("2.0.0")
    before = len(_log(ng))
    walls, cpus = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        assert client.check("2.0.0") is None
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    lines = _log(ng)[before:]
    return {
        "requests": len(lines) / n,
        "sent": sum(int(x[4]) for x in lines) / n,
        "received": sum(int(x[5]) for x in lines) / n,
        "wall_ms": statistics.median(walls) * 1000,
        "cpu_ms": statistics.median(cpus) * 1000,
        "paths": sorted({f"{x[1]} {x[2]}" for x in lines}),  # type: ignore[dict-item]
    }


def _nginx_cpu(pid: int) -> float:
    """CPU seconds of nginx's master and workers so far (/proc/PID/stat utime + stime)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    total = 0.0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def fleet(ng: object, pub: object, tmp: Path, clients: int, procs: int) -> dict[str, float]:
    import json

    root_file = tmp / "root.json"
    root_file.write_bytes(pub.root)  # type: ignore[attr-defined]
    per = clients // procs
    before = len(_log(ng))
    cpu0 = _nginx_cpu(ng.pid)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, ng.url, str(root_file), str(tmp / "fleet"),  # type: ignore[attr-defined]
             str(i * per), str(per), "3"],
            stdout=subprocess.PIPE, text=True, cwd=REPO,
        )
        for i in range(procs)
    ]  # fmt: skip
    results = [json.loads(c.communicate()[0]) for c in children]
    wall = time.perf_counter() - t0
    nginx_cpu = _nginx_cpu(ng.pid) - cpu0  # type: ignore[attr-defined]
    lines = _log(ng)[before:]
    n = sum(r["n"] for r in results)
    idle_wall = max(r["idle"][0] for r in results)
    idle_checks = 3 * n
    return {
        "clients": n,
        "wall_s": wall,
        "requests": len(lines),
        "cold_cpu_ms": sum(r["cold"][1] for r in results) / n * 1000,
        "idle_checks_per_s": idle_checks / idle_wall,
        "idle_requests_per_s": 2 * idle_checks / idle_wall,
        "idle_cpu_ms": sum(r["idle"][1] for r in results) / idle_checks * 1000,
        "nginx_us_per_request": nginx_cpu / max(len(lines), 1) * 1e6,
    }


async def _hammer(port: int, path: str, conns: int, seconds: float) -> int:
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: selfupdate\r\n"
               "Accept-Encoding: identity\r\n\r\n").encode()  # fmt: skip
    stop = time.monotonic() + seconds
    done = 0

    async def one() -> None:
        nonlocal done
        while time.monotonic() < stop:
            # nginx closes a kept-alive connection after keepalive_requests (1000): reconnect.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                while time.monotonic() < stop:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    done += 1
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return done


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--idle", type=int, default=50)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    if nginx_binary() is None:
        print("bench_fleet: nginx is not installed (apt-get install nginx): skipped")
        return 0
    os.environ.pop("HTTP_PROXY", None)
    os.environ.pop("http_proxy", None)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pub = make_pub(tmp)
        pub.publish("2.0.0", extra=os.urandom(1 << 20))
        with serve(pub.repo, tmp / "nginx", workers=1) as ng:
            one = idle_check(ng, pub, tmp, args.idle)
            print(f"idle check (one warm client, median of {args.idle}): "
                  f"{one['requests']:.1f} requests ({', '.join(one['paths'])}), "  # type: ignore[arg-type]
                  f"{one['sent']:.0f} bytes sent by the server, {one['received']:.0f} received; "
                  f"client {one['cpu_ms']:.2f} ms CPU, {one['wall_ms']:.2f} ms wall")
            f = fleet(ng, pub, tmp, args.clients, args.procs)
            print(f"fleet of {f['clients']} clients in {args.procs} processes: first check "
                  f"{f['cold_cpu_ms']:.1f} ms CPU each; idle checks {f['idle_checks_per_s']:.0f}/s "
                  f"= {f['idle_requests_per_s']:.0f} requests/s at nginx, "
                  f"{f['idle_cpu_ms']:.2f} ms client CPU per check "
                  f"({f['requests']} requests in {f['wall_s']:.1f} s; nginx "
                  f"{f['nginx_us_per_request']:.0f} us CPU per request)")
            port = int(ng.url.rsplit(":", 1)[1])
            n = asyncio.run(_hammer(port, "/metadata/timestamp.json", args.conns, args.seconds))
            print(f"nginx alone: {n / args.seconds:.0f} requests/s of timestamp.json "
                  f"({args.conns} keep-alive connections, {args.seconds:g} s, one worker; the "
                  "load generator shares the CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
