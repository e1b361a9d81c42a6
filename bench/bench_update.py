"""Whole ``nsapp update`` of a 100 MB build on loopback vs ``curl -o new && sha256sum && mv``.

Side by side in one run, interleaved, medians. The update includes everything a user waits
for: start of the old build (which has run before: its shiv extraction exists), TUF metadata
refresh, download + length/hash verification, the trial run of the new build as
``post-update`` (shiv extracts the new build there: 100 MB of it), the state snapshot, the
atomic switch and the handover (``exec``) to the new build, which prints what changed.

The 100 MB build is the real 2.0.0 build with a 100 MB file of random bytes added, in one of
two places (both measured):

* ``package``: in its package (``site-packages/nsapp/_padding.bin``), so shiv extracts it when
  the new build first starts, i.e. in the trial: 100 MB more written before the switch. The
  worst case, a build made of big dependencies.
* ``archive``: beside ``site-packages`` in the archive (data the app reads from the zip), so
  shiv does not extract it: downloaded and verified only.

Usage: python bench/bench_update.py [--runs N] [--mb 100] [--where package,archive]
Goal (issue 5): update <= 1.5x the curl + sha256sum + mv pipeline, the trial included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    return proc  # type: ignore[no-any-return]


def build(version: str, out: Path, root_json: Path, url: str) -> Path:
    proc = run(["bash", str(REPO / "build.sh"), "--version", version, "--out", str(out),
                "--trusted-root", str(root_json), "--repo-url", url],
               env=dict(os.environ, PYTHON=PY))
    return Path(proc.stdout.strip().splitlines()[-1])


def pad(pyz: Path, mb: int, where: str = "package") -> None:
    """Add ``mb`` MB of random bytes to the build (stored: random bytes do not deflate)."""
    name = "site-packages/nsapp/_padding.bin" if where == "package" else "data/_padding.bin"
    with zipfile.ZipFile(pyz, "a") as zf:
        info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        with zf.open(info, "w") as f:
            for _ in range(mb):
                f.write(os.urandom(1 << 20))


def serve(directory: Path) -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen([PY, "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                          str(directory), "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    port = line.split(" port ")[1].split()[0]
    return p, f"http://127.0.0.1:{port}"


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--where", default="package,archive")
    ns = ap.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("bench_update: curl is needed for the baseline")

    rows = []
    imports: list[tuple[str, float]] = []
    for where in ns.where.split(","):
        rows.append(bench(where, ns.runs, ns.mb))
        if not imports:
            imports = rows[-1][-1]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{ns.runs} runs each, interleaved, loopback HTTP, medians (min); load average {load}")
    print(f"{'100 MB padding in':18} {'size':>8} {'nsapp update':>18} {'curl+sha256sum+mv':>20} "
          f"{'ratio':>7}")
    for where, size, upd, curl, _ in rows:
        u, c = median_ms(upd), median_ms(curl)
        print(f"{where:18} {size / 1e6:6.1f}MB {u:8.0f}ms ({min(upd) * 1000:5.0f}) "
              f"{c:10.0f}ms ({min(curl) * 1000:5.0f}) {u / c:6.2f}x")
    print("goal: update (trial included) <= 1.5x")
    print("update-path imports of `nsapp update --check` (python -X importtime, cumulative ms):")
    for name, ms in imports:
        print(f"  {name:28} {ms:7.1f}")
    return 0


def bench(where: str, runs: int, mb: int
          ) -> tuple[str, int, list[float], list[float], list[tuple[str, float]]]:
    with tempfile.TemporaryDirectory(prefix="bench-update-") as t:
        tmp = Path(t)
        keys, repo = tmp / "keys", tmp / "repo"
        run([PY, "-m", "selfupdate", "init", "--keys", str(keys), "--repo", str(repo),
             "--app", "nsapp"])
        root_json = repo / "metadata" / "root.json"
        if not root_json.exists():
            root_json = repo / "metadata" / "1.root.json"
        server, url = serve(repo)
        try:
            v1 = build("1.0.0", tmp / "b1" / "nsapp.pyz", root_json, url)
            v2 = build("2.0.0", tmp / "b2" / "nsapp.pyz", root_json, url)
            pad(v2, mb, where)
            run([PY, "-m", "selfupdate", "publish", "--keys", str(keys), "--repo", str(repo),
                 str(v2), "--version", "2.0.0"])
            target = max((repo / "targets").rglob("*"), key=lambda p: p.stat().st_size)
            target_url = f"{url}/{target.relative_to(repo).as_posix()}"
            size = v2.stat().st_size

            env = dict(os.environ, SHIV_ROOT=str(tmp / "shiv"), NSAPP_STATE_DIR=str(tmp / "state"))
            opt = tmp / "opt"
            app = opt / "nsapp.pyz"
            upd_times: list[float] = []
            curl_times: list[float] = []
            phases: list[list[float]] = []
            for i in range(runs):
                # --- reset: v1 installed and run before (its extraction exists); v2 never ran
                shutil.rmtree(opt, ignore_errors=True)
                opt.mkdir()
                shutil.copy(v1, app)
                app.chmod(0o755)
                shutil.rmtree(tmp / "state", ignore_errors=True)
                for d in (tmp / "shiv").glob("*"):
                    if d.is_dir() and not d.name.startswith(".") and _build_id(v1) not in d.name:
                        shutil.rmtree(d)
                run([PY, str(app), "history", "--add", f"run {i}"], env=env)
                t0 = time.perf_counter()
                marks = _timed_update(app, env)
                upd_times.append(time.perf_counter() - t0)
                phases.append(marks)

                new = opt / "new"
                t0 = time.perf_counter()
                run(["sh", "-c", 'curl -sf -o "$1" "$2" && sha256sum "$1" >/dev/null && '
                     'mv "$1" "$3"', "sh", str(new), target_url, str(tmp / "curl-app")])
                curl_times.append(time.perf_counter() - t0)

            imports = _import_profile(app, env)
        finally:
            server.terminate()
            server.wait()
    print(f"[{where}] phases of nsapp update, medians in ms: start+imports+TUF refresh "
          f"{_med(phases, 0)}, download+verify+fsync+snapshot {_med(phases, 1)}, "
          f"trial+switch+exec {_med(phases, 2)}, new build finishing {_med(phases, 3)}",
          flush=True)
    return where, size, upd_times, curl_times, imports


def _med(phases: list[list[float]], i: int) -> str:
    return f"{statistics.median(p[i] for p in phases) * 1000:.0f}"


def _timed_update(app: Path, env: dict[str, str]) -> list[float]:
    """Run ``nsapp update``; return the durations between its progress lines."""
    t0 = time.perf_counter()
    p = subprocess.Popen([PY, "-u", str(app), "update"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    stamps = [t0]
    out = []
    for line in p.stdout:
        out.append(line)
        if line.startswith(("downloading", "trying", "nsapp updated")):
            stamps.append(time.perf_counter())
    err = p.stderr.read() if p.stderr else ""
    p.wait()
    stamps.append(time.perf_counter())
    if p.returncode != 0 or len(stamps) != 5:
        raise SystemExit(f"nsapp update failed ({p.returncode}): {''.join(out)}{err}")
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def _build_id(pyz: Path) -> str:
    import json

    with zipfile.ZipFile(pyz) as zf:
        return str(json.loads(zf.read("environment.json"))["build_id"])


def _import_profile(app: Path, env: dict[str, str]) -> list[tuple[str, float]]:
    """Top-level imports of ``nsapp update --check`` (up to date now), heaviest first."""
    proc = subprocess.run([PY, "-X", "importtime", str(app), "update", "--check"], env=env,
                          capture_output=True, text=True)
    rows: list[tuple[str, float]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = [p.strip() for p in line[len("import time:"):].split("|")]
        try:
            cumulative = int(parts[1]) / 1000
        except ValueError:
            continue
        name = parts[2]
        if not name.startswith(" ") and "." not in name:
            rows.append((name, cumulative))
    rows.sort(key=lambda r: -r[1])
    total = sum(ms for _, ms in rows)
    return [("(all top-level imports)", total), *rows[:8]]


if __name__ == "__main__":
    sys.exit(main())
