"""Benchmark the namespace runner against unshare(1) and bubblewrap, side by side in one run.

1. Cold, as from a shell: ``nsapp run -- true`` vs ``nsapp --version`` (the app's own start),
   with ``unshare -Urnpfmiu --mount-proc true`` and
   ``bwrap --unshare-all --ro-bind / / --proc /proc --dev /dev true`` beside them.
   Goal: ``run -- true`` <= 1.30x ``--version``.
2. From one Python process: ``reexec_core.namespaces.run(["true"])`` vs
   ``subprocess.run(["unshare", "-Urnpfmiu", "--mount-proc", "true"])``. Goal: <= 1.0x.

3. ``--against DIR``: ``namespaces.run(["true"])`` (all 8, and without a PID namespace) of this
   tree and of another checkout (e.g. the tree before a change) side by side, each in a
   long-lived helper process of its own, interleaved.

Runs are interleaved round-robin (so drifting machine load hits every row alike); the table
shows the median and the 10th/90th percentiles of ``--runs`` runs (>= 30) in milliseconds.

Usage::

    python bench/bench_namespaces.py [--runs 40] [--pyz PATH | --no-pyz] [--against DIR]

The app is the ``.pyz`` from ``./build.sh`` (built into a temporary directory with this
interpreter unless ``--pyz`` is given), else the ``nsapp`` console script beside
``sys.executable``; the output says which. Always ``sys.executable``, never ``python3`` from
PATH (a pyenv shim there costs ~50 ms).
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
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
API_ALL = 'namespaces.run(["true"])  (all 8)'
API_SIX = 'namespaces.run(["true"], namespaces=<the six>)'
API_UNSHARE = 'subprocess.run(["unshare", "-Urnpfmiu", ...])'
sys.path.insert(0, str(REPO))


def spawn_timer(
    argv: list[str], env: dict[str, str], actions: tuple[tuple[object, ...], ...] = ()
) -> Callable[[], float]:
    """Time one cold start of argv as a shell would do it (fork/exec, wait), output dropped;
    ``actions``: more ``posix_spawn`` file actions (a descriptor it reads, say)."""
    devnull = os.open(os.devnull, os.O_RDWR)

    def once() -> float:
        t0 = time.perf_counter()
        pid = os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1), *actions],
        )
        _, status = os.waitpid(pid, 0)
        dt = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"benchmark command failed ({status}): {' '.join(argv)}")
        return dt

    return once


def call_timer(fn: Callable[[], int]) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter()
        rc = fn()
        dt = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"benchmark call failed with status {rc}")
        return dt

    return once


# A helper that times namespaces.run of the tree it is given, on request (one line per run).
HELPER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from reexec_core import namespaces
for line in sys.stdin:
    kw = {"namespaces": line.strip()} if line.strip() else {}
    t0 = time.perf_counter()
    rc = namespaces.run(["true"], **kw)
    print(time.perf_counter() - t0 if rc == 0 else -1, flush=True)
"""


def helper_timer(tree: Path, names: str) -> Callable[[], float]:
    """Time ``namespaces.run(["true"], namespaces=names)`` of ``tree`` in a helper process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HELPER, str(tree)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tree,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def once() -> float:
        stdin.write(names + "\n")
        stdin.flush()
        dt = float(stdout.readline())
        if dt < 0:
            raise SystemExit(f"benchmark run failed in {tree}")
        return dt

    return once


def measure(rows: dict[str, Callable[[], float]], runs: int) -> dict[str, list[float]]:
    for fn in rows.values():  # warm-up: page cache, shiv extraction, bytecode
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(runs):
        for name, fn in rows.items():
            times[name].append(fn() * 1000)
    return times


def table(title: str, times: dict[str, list[float]]) -> dict[str, float]:
    print(f"\n{title}")
    print(f"{'':52} {'median ms':>10} {'p10':>8} {'p90':>8}")
    medians = {}
    for name, values in times.items():
        values = sorted(values)
        p10 = values[len(values) // 10]
        p90 = values[(len(values) * 9) // 10]
        medians[name] = statistics.median(values)
        print(f"{name:52} {medians[name]:10.2f} {p10:8.2f} {p90:8.2f}")
    return medians


def find_app(args: argparse.Namespace, tmp: Path) -> tuple[list[str], str]:
    if args.pyz:
        return [sys.executable, str(Path(args.pyz).resolve())], f"pyz {args.pyz}"
    if not args.no_pyz:
        out = tmp / "nsapp.pyz"
        env = dict(os.environ, PYTHON=sys.executable)
        done = subprocess.run(
            ["bash", str(REPO / "build.sh"), "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode == 0 and out.exists():
            return [sys.executable, str(out)], "pyz built now by ./build.sh"
        print(f"(./build.sh failed, using the console script: {done.stderr.strip()[-200:]})")
    script = Path(sys.executable).parent / "nsapp"
    if script.exists():
        return [str(script)], f"console script {script}"
    return [sys.executable, "-m", "nsapp"], f"{sys.executable} -m nsapp (PYTHONPATH=repo)"


def app_env(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, str], list[str]]:
    """The environment the commands run in and the app's command line; says which app."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["SHIV_ROOT"] = str(tmp / "shiv")
    env["PYTHONPATH"] = str(REPO)
    app, how = find_app(args, tmp)
    print(
        f"python: {sys.executable} ({sys.version.split()[0]}); uid {os.geteuid()}; "
        f"kernel {os.uname().release}; app: {how}"
    )
    return env, app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per row (>= 30)")
    parser.add_argument("--pyz", help="the app .pyz to measure (default: build one)")
    parser.add_argument("--no-pyz", action="store_true", help="use the console script")
    parser.add_argument("--against", help="another checkout to measure namespaces.run beside")
    args = parser.parse_args()
    if args.runs < 30:
        parser.error("--runs must be >= 30")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ns-"))
    try:
        env, app = app_env(args, tmp)
        unshare = shutil.which("unshare")
        bwrap = shutil.which("bwrap")

        cli: dict[str, Callable[[], float]] = {
            "nsapp --version": spawn_timer([*app, "--version"], env),
            "nsapp run -- true  (all 8 namespaces)": spawn_timer([*app, "run", "--", "true"], env),
            "nsapp run --ns user,pid,mount,net,uts,ipc -- true": spawn_timer(
                [*app, "run", "--ns", "user,pid,mount,net,uts,ipc", "--", "true"], env
            ),
        }
        if app[1:2] != ["-m"]:
            # The same two from the source tree (as a venv's console script runs them), to
            # show what the .pyz bootstrap adds or hides.
            src = [sys.executable, "-m", "nsapp"]
            cli["python -m nsapp --version"] = spawn_timer([*src, "--version"], env)
            cli["python -m nsapp run -- true"] = spawn_timer([*src, "run", "--", "true"], env)
        if unshare:
            cli["unshare -Urnpfmiu --mount-proc true"] = spawn_timer(
                [unshare, "-Urnpfmiu", "--mount-proc", "true"], env
            )
        if bwrap:
            cli["bwrap --unshare-all --ro-bind / / --proc ... true"] = spawn_timer(
                [
                    bwrap,
                    "--unshare-all",
                    "--ro-bind",
                    "/",
                    "/",
                    "--proc",
                    "/proc",
                    "--dev",
                    "/dev",
                    "true",
                ],
                env,
            )
        else:
            print("(bwrap not installed: apt-get install bubblewrap)")
        m1 = table("cold start, as from a shell:", measure(cli, args.runs))

        from reexec_core import namespaces

        api: dict[str, Callable[[], float]] = {
            API_ALL: call_timer(lambda: namespaces.run(["true"])),
            API_SIX: call_timer(
                lambda: namespaces.run(["true"], namespaces="user,pid,mount,net,uts,ipc")
            ),
        }
        if unshare:
            api[API_UNSHARE] = call_timer(
                lambda: subprocess.run([unshare, "-Urnpfmiu", "--mount-proc", "true"]).returncode
            )
        m2 = table("from one Python process:", measure(api, args.runs))

        print("\nratios (goal):")
        v = m1["nsapp --version"]
        print(
            f"  nsapp run -- true / nsapp --version            "
            f"{m1['nsapp run -- true  (all 8 namespaces)'] / v:5.2f}x  (<= 1.30)"
        )
        print(
            f"  nsapp run --ns <unshare's six> / --version     "
            f"{m1['nsapp run --ns user,pid,mount,net,uts,ipc -- true'] / v:5.2f}x"
        )
        if "python -m nsapp --version" in m1:
            print(
                f"  python -m nsapp: run -- true / --version     "
                f"{m1['python -m nsapp run -- true'] / m1['python -m nsapp --version']:5.2f}x"
            )
        if unshare:
            u = m2[API_UNSHARE]
            print(
                f"  namespaces.run (all 8) / subprocess unshare    "
                f"{m2[API_ALL] / u:5.2f}x  (<= 1.0)"
            )
            print(f"  namespaces.run (same six) / subprocess unshare {m2[API_SIX] / u:5.2f}x")
        if args.against:
            other = Path(args.against).resolve()
            side: dict[str, Callable[[], float]] = {}
            for label, names in (("all 8", ""), ("user,mount,net: no PID 1", "user,mount,net")):
                side[f"this tree, {label}"] = helper_timer(REPO, names)
                side[f"{other.name}, {label}"] = helper_timer(other, names)
            table(f"namespaces.run(['true']), side by side with {other}:", measure(side, args.runs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
