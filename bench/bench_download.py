"""Download + verify of a release from a loopback HTTP server: our client vs curl + sha256sum.

Side by side in one run, interleaved, medians of N runs (issue 4, Performance):

- ``client``: ``UpdateClient.download_to`` of a signed 100 MB target into a file (streaming,
  length cap, SHA-256 over the same bytes, fsync-free like curl), in this process, metadata
  already refreshed;
- ``curl+sha256sum``: ``curl -s -o FILE URL && sha256sum FILE`` (two processes, as a shell
  script would verify a download);
- for context, ``client, cold``: a fresh Python process that imports the client, refreshes
  the TUF metadata (root, timestamp, snapshot, targets) and downloads.

Then peak memory (``ru_maxrss`` of a child doing check + download) for a 100 MB and a 10 MB
target: streaming means the difference stays under 5 MB.

The server is ``python -m http.server`` in its own process, serving the repository the
publisher made. Goal: client <= 1.3x curl+sha256sum; peak RSS difference < 5 MB.

Usage: python bench/bench_download.py [--runs 15] [--mb 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PY = sys.executable

CHILD = r"""
import os, sys, resource
from pathlib import Path
from selfupdate.releases.client import UpdateClient
url, root, cache, channel, out = sys.argv[1:6]
c = UpdateClient("bench", url, Path(root).read_bytes(), channel=channel,
                 cache_dir=Path(cache), progress=False)
rel = c.check("0")
with open(out, "wb") as f:
    c.download_to(rel, f)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def serve(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    p = subprocess.Popen(
        [PY, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(directory), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/metadata/timestamp.json", timeout=1).read()
            return p, url
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit("http.server did not start")


def random_file(path: Path, mb: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(os.urandom(1 << 20))
    return path


def child_maxrss(args: list[str]) -> int:
    """Peak RSS in KiB of one child process (wait4 gives that child's own rusage)."""
    p = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"child failed: {args}")
    return int(ru.ru_maxrss)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--mb", type=int, default=100)
    ns = ap.parse_args()
    if not shutil.which("curl") or not shutil.which("sha256sum"):
        print("bench_download: curl and sha256sum are needed", file=sys.stderr)
        return 1

    from selfupdate.releases import publish
    from selfupdate.releases.client import UpdateClient

    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        t = Path(tmp)
        keys, repo = t / "keys", t / "repo"
        publish.init(keys, repo, "bench")
        big = publish.publish(keys, repo, random_file(t / "big.bin", ns.mb), "1", channel="big")
        small = publish.publish(keys, repo, random_file(t / "small.bin", 10), "1", channel="small")
        root = repo / "metadata" / "1.root.json"
        server, url = serve(repo)
        try:
            rel = big.release
            d, _, name = rel.target_path.rpartition("/")
            target_url = f"{url}/targets/{d}/{rel.sha256}.{name}"
            client = UpdateClient(
                "bench", url, root.read_bytes(), channel="big", cache_dir=t / "c", progress=False
            )
            assert client.check("0") == rel
            out = t / "out.bin"

            def ours() -> None:
                with open(out, "wb") as f:
                    client.download_to(rel, f)

            def curl() -> None:
                subprocess.run(["curl", "-s", "-o", str(out), target_url], check=True)
                proc = subprocess.run(
                    ["sha256sum", str(out)], check=True, capture_output=True, text=True
                )
                assert proc.stdout.split()[0] == rel.sha256

            def cold() -> None:
                shutil.rmtree(t / "cold-cache", ignore_errors=True)
                subprocess.run(
                    [PY, "-c", CHILD, url, str(root), str(t / "cold-cache"), "big", str(out)],
                    check=True,
                    env=dict(os.environ, PYTHONPATH=str(REPO)),
                )

            cases = {"client": ours, "curl+sha256sum": curl, "client, cold process": cold}
            times: dict[str, list[float]] = {k: [] for k in cases}
            for fn in cases.values():  # warm-up: page cache, server, connections
                fn()
            for _ in range(ns.runs):
                for k, fn in cases.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)

            rss = {}
            for label, channel in ((f"{ns.mb} MB", "big"), ("10 MB", "small")):
                cache = t / f"rss-{channel}"
                rss[label] = child_maxrss(
                    [PY, "-c", CHILD, url, str(root), str(cache), channel, str(out)]
                )
            del small
        finally:
            server.terminate()
            server.wait()

    base = statistics.median(times["curl+sha256sum"])
    print(f"download + verify of a {ns.mb} MB target over loopback, median of {ns.runs} runs")
    print(f"{'case':<24} {'median':>10} {'min':>10} {'ratio':>7}")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:<24} {med * 1000:>8.1f}ms {min(v) * 1000:>8.1f}ms {med / base:>6.2f}x")
    ratio = statistics.median(times["client"]) / base
    print(
        f"goal: client <= 1.30x curl+sha256sum: {'met' if ratio <= 1.3 else 'NOT met'}"
        f" ({ratio:.2f}x)"
    )
    big_kb, small_kb = rss[f"{ns.mb} MB"], rss["10 MB"]
    diff_mb = (big_kb - small_kb) / 1024
    print(
        f"peak RSS (child: check + download): {ns.mb} MB target {big_kb / 1024:.1f} MB, "
        f"10 MB target {small_kb / 1024:.1f} MB, difference {diff_mb:.1f} MB "
        f"(goal < 5 MB: {'met' if diff_mb < 5 else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
