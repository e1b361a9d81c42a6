"""Delta updates (issue 14): bytes, whole update time, cost of making deltas, memory of applying.

Side by side in one run, interleaved, medians:

1. **Bytes downloaded** for an app-code-only change of the example app (a copy of
   ``examples/nsapp`` with one module changed, rebuilt by ``build.sh`` as the next version;
   goal <= 1% of the full build) and for a one-dependency bump (the same build with every file
   of ``idna`` changed and its dist-info renamed, as ``tests/_support_delta.py`` derives it:
   no second version of a dependency is fetched here; goal <= that dependency's share of the
   archive + 5%).
2. **Whole ``nsapp update``** (start, TUF refresh, download or delta + rebuild, verification,
   trial, switch, handover) with the delta published vs the same repository published with
   ``--deltas 0``, on loopback and with the server throttled to 10 MB/s.
3. **Making the deltas of a ~100 MB build** (a zip of 2,000 incompressible entries, five of
   them changed) vs a full ``publish`` of it: ``publish --deltas 1`` minus ``--deltas 0``.
4. **Peak memory** (``ru_maxrss`` of a child) applying a 100 MB delta vs a 10 MB one (all
   literal: nothing in common with the base). Goal: < 5 MB apart.

Usage: python bench/bench_delta.py [--runs 5] [--mb 100]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
PY = sys.executable

from selfupdate.releases import publish  # noqa: E402
from selfupdate.releases._delta import make_delta  # noqa: E402
from tests._support_delta import (  # noqa: E402
    dependency_bump,
    dependency_share,
    rewritten,
    versioned,
)


class _Throttled(http.server.SimpleHTTPRequestHandler):
    rate = 0.0  # bytes/s; 0: as fast as loopback goes

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        start, sent = time.monotonic(), 0
        while chunk := source.read(64 * 1024):
            outputfile.write(chunk)
            sent += len(chunk)
            if self.rate:
                ahead = sent / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return proc


def build(project: Path, version: str, out: Path, root: Path, url: str) -> Path:
    run(["bash", str(REPO / "build.sh"), str(project), "--version", version, "--out", str(out),
         "--trusted-root", str(root), "--repo-url", url],
        env=dict(os.environ, PYTHON=PY, NSAPP_BUILD_CACHE=str(REPO / "build" / "cache")))
    return out


def delta_size(base: Path, target: Path) -> int:
    with open(os.devnull, "wb") as null:
        return make_delta(base, target, null).length  # type: ignore[arg-type]


def timed_update(app: Path, url: str, tmp: Path, base: Path) -> tuple[float, str]:
    """One whole `nsapp update` of a fresh copy of ``base``: seconds, and its output."""
    d = tmp / "inst"
    shutil.rmtree(d, ignore_errors=True)
    (d / "opt").mkdir(parents=True)
    shutil.copy(base, app := d / "opt" / "nsapp.pyz")
    app.chmod(0o755)
    env = dict(os.environ, SHIV_ROOT=str(tmp / "shiv"), NSAPP_STATE_DIR=str(d / "state"),
               SELFUPDATE_TRIAL_TIMEOUT="60")
    run([PY, str(app), "history"], env=env)  # the installed build has run before
    t = time.perf_counter()
    proc = run([PY, str(app), "update", "--repo", url], env=env)
    return time.perf_counter() - t, proc.stdout + proc.stderr


def big_zip(path: Path, mb: int, changed: int = 0) -> Path:
    """A ~``mb`` MB zip of 2,000 incompressible entries; ``changed`` of them differ."""
    rnd = __import__("random").Random(1)
    per = mb * 2**20 // 2000
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("__main__.py", (2020, 1, 1, 0, 0, 0)), "print('big')\n")
        for i in range(2000):
            data = rnd.randbytes(per)
            if i < changed:
                data = os.urandom(per)
            z.writestr(zipfile.ZipInfo(f"pkg/f{i:04d}.bin", (2020, 1, 1, 0, 0, 0)), data,
                       zipfile.ZIP_DEFLATED)
    return path


CHILD = r"""
import sys
from selfupdate.releases._delta import DeltaHeader, apply_delta, file_digest, read_header
delta, base, out = sys.argv[1:4]
with open(delta, "rb") as d:
    h = read_header(d)
with open(delta, "rb") as d, open(base, "rb") as b, open(out, "wb") as o:
    apply_delta(d, b, o, h)
# VmHWM: this process image's own peak (the rusage of a child also counts the parent's pages
# it ran on before its exec)
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def child_maxrss(args: list[str]) -> int:
    """Peak RSS in KiB of one child process image, as it reports it (VmHWM)."""
    proc = run(args, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return int(proc.stdout.split()[-1])


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=int, default=100)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-delta-") as tmp_name:
        tmp = Path(tmp_name)
        handler = type("H", (_Throttled,), {})
        www = tmp / "www"
        www.mkdir()
        httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(www)))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        keys, base = tmp / "keys", www / "base"
        root = publish.init(keys, base, "nsapp")

        # 1. bytes
        project = tmp / "nsapp-src"
        shutil.copytree(REPO / "examples" / "nsapp", project,
                        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info"))
        v1 = build(project, "1.0.0", tmp / "v1.pyz", root, f"{url}/base")
        cli = project / "nsapp" / "cli.py"
        cli.write_text(cli.read_text() + "\n# a fix in the app's own code\n")
        app = build(project, "1.0.1", tmp / "app.pyz", root, f"{url}/base")
        dep = rewritten(v1, tmp / "dep.pyz", versioned(dependency_bump, "1.0.1"))
        full = app.stat().st_size
        app_d, dep_d = delta_size(v1, app), delta_size(v1, dep)
        share = dependency_share(dep)
        print(f"app-code-only change: delta {app_d} B of {full} B = {app_d / full:.3%} "
              f"(goal <= 1%: {'met' if app_d <= 0.01 * full else 'NOT met'})")
        print(f"one dependency (idna, {share / full:.2%} of the archive) bumped: delta {dep_d} B "
              f"= {dep_d / full:.2%} (goal <= {share / full + 0.05:.2%}: "
              f"{'met' if dep_d <= share + 0.05 * full else 'NOT met'})")

        # 2. whole update, delta vs full, loopback and 10 MB/s
        for name, deltas in (("with-delta", 3), ("full", 0)):
            shutil.copytree(base, www / name)
            publish.publish_build(keys, www / name, v1, deltas=deltas)
            publish.publish_build(keys, www / name, app, deltas=deltas)
        for rate, label in ((0.0, "loopback"), (10e6, "10 MB/s")):
            handler.rate = rate
            times: dict[str, list[float]] = {"with-delta": [], "full": []}
            for _ in range(ns.runs):
                for name in times:
                    s, out = timed_update(tmp / "inst", f"{url}/{name}", tmp, v1)
                    assert ("a delta;" in out) == (name == "with-delta"), out
                    times[name].append(s)
            d, f = med(times["with-delta"]), med(times["full"])
            print(f"whole nsapp update, {label}: delta {d * 1000:.0f} ms, full {f * 1000:.0f} ms, "
                  f"ratio {d / f:.2f}x (medians of {ns.runs})")
        handler.rate = 0.0

        # 3. making the deltas of a ~100 MB build vs a full publish
        b1, b2 = big_zip(tmp / "b1.zip", ns.mb), big_zip(tmp / "b2.zip", ns.mb, changed=5)
        make_s: dict[int, list[float]] = {0: [], 1: []}
        for i in range(ns.runs):
            for deltas in (0, 1):
                r = tmp / f"big-{i}-{deltas}"
                shutil.copytree(base, r)
                publish.publish(keys, r, b1, "1.0.0", deltas=0)
                t = time.perf_counter()
                res = publish.publish(keys, r, b2, "1.0.1", deltas=deltas)
                make_s[deltas].append(time.perf_counter() - t)
                assert len(res.deltas) == deltas
                shutil.rmtree(r)
        alone = []
        for _ in range(ns.runs):
            t = time.perf_counter()
            size = delta_size(b1, b2)
            alone.append(time.perf_counter() - t)
        p0, p1 = med(make_s[0]), med(make_s[1])
        print(f"publish of a {b2.stat().st_size / 1e6:.0f} MB build: {p0 * 1000:.0f} ms with "
              f"--deltas 0, {p1 * 1000:.0f} ms with --deltas 1 ({p1 / p0:.2f}x); make_delta "
              f"alone {med(alone) * 1000:.0f} ms for a {size / 1e6:.2f} MB delta")

        # 4. peak memory applying a 100 MB vs a 10 MB delta
        rss = {}
        for mb in (ns.mb, 10):
            target = tmp / f"lit-{mb}.bin"
            with open(target, "wb") as f:
                for _ in range(mb):
                    f.write(os.urandom(2**20))
            delta = tmp / f"lit-{mb}.delta"
            with open(delta, "wb") as f:
                make_delta(b1, target, f)
            rss[mb] = child_maxrss([PY, "-c", CHILD, str(delta), str(b1), str(tmp / "out.bin")])
            target.unlink()
        print(f"peak RSS applying a {ns.mb} MB delta: {rss[ns.mb] / 1024:.1f} MB, a 10 MB one: "
              f"{rss[10] / 1024:.1f} MB, {abs(rss[ns.mb] - rss[10]) / 1024:.1f} MB apart "
              "(goal < 5 MB)")
        httpd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
