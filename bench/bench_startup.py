#!/usr/bin/env python3
"""Start-up cost of the framework, side by side in one run (medians of >= 30 runs).

1. ``./nsapp.pyz --version`` vs a stdlib ``zipapp`` hello-world (goal <= 1.3x) and vs
   ``python3 -I -S -c pass`` (the floor; goal <= 2.5x), and vs a hello-world shiv ``.pyz``
   built the same way (same shiv flags, same dependencies; the old goal <= 1.10x). Every
   archive is started through its own ``#!`` line, as a user types it, with ``python3`` on
   PATH the real interpreter (never a shim). A hello-world pyz without dependencies is shown
   too, for what the dependencies cost.
2. Round trip of ``reexec_core.command("reexec-true").run()`` from inside ``nsapp.pyz`` (an
   entry point that returns at once) vs spawning ``python -I -S -c pass`` from the same
   process. Goal: <= 1.5x.

3. Cold first start after an update (a build whose extraction is not there yet: shiv's
   extraction, the check, the fsyncs and the completion marker included) vs a warm start,
   interleaved, ``--cold-runs`` of each (default 30).
4. ``-X importtime`` of a warm ``--version``: every module the program's process imports.
5. ``./nsapp.pyz run -- true`` vs ``bwrap --unshare-all --ro-bind / / --proc /proc --dev /dev
   true`` (goal <= 4x), with ``unshare -Urnpfmiu --mount-proc true`` beside it (where they run).

Everything runs through ``sys.executable``'s real interpreter (never a ``python3`` shim), with
PYTHONDONTWRITEBYTECODE unset so that .pyc files are written and used as in real life, and
after warm-up runs (shiv's one-time extraction is not what is measured).

With ``--against DIR`` (another checkout, e.g. the tree before a change), that checkout's
``nsapp.pyz`` (built by its own ``build.sh``) is measured in the same interleaved run.

With ``--cold-only`` only 3. is measured; ``--against-pyz FILE`` (an archive built before a
change) is then measured cold and warm in the same interleaved run.

Usage: python bench/bench_startup.py [--runs N] [--cold-runs N] [--json] [--against DIR]
                                     [--cold-only [--against-pyz FILE]]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_VERSION = 1.10  # vs the hello-world shiv pyz (the old goal)
GOAL_ZIPAPP = 1.3  # vs a stdlib zipapp hello-world
GOAL_FLOOR = 2.5  # vs python3 -I -S -c pass
GOAL_ROUNDTRIP = 1.5
GOAL_BWRAP = 4.0  # ./nsapp.pyz run -- true vs bwrap --unshare-all ... true


def _env(shiv_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["SHIV_ROOT"] = str(shiv_root)
    # The archives' "#!/usr/bin/env python3" finds the real interpreter, not a shim.
    env["PATH"] = f"{Path(os.path.realpath(sys.executable)).parent}{os.pathsep}{env['PATH']}"
    return env


def build_zipapp(work: Path, name: str, interpreter: str) -> Path:
    """A stdlib zipapp hello-world, started through its ``#!`` line."""
    import zipapp

    src = work / f"{name}-src"
    src.mkdir()
    (src / "__main__.py").write_text('print("hello 1.0.0")\n')
    out = work / f"{name}.pyz"
    zipapp.create_archive(src, out, interpreter=interpreter)
    return out


def cold_vs_warm(pyzs: dict[str, Path], env: dict[str, str], runs: int) -> dict[str, float]:
    """``pyz --version`` with its extraction removed first (cold: a first start after an
    update) and with it in place (warm), for each archive, all interleaved in a fresh random
    order each round. Keys ``"NAME cold"`` and ``"NAME warm"``."""
    import zipfile

    exts = {}
    for name, pyz in pyzs.items():
        with zipfile.ZipFile(pyz) as zf:
            build_id = json.loads(zf.read("environment.json"))["build_id"]
        exts[name] = Path(env["SHIV_ROOT"]) / f"{pyz.name}_{build_id}"
    samples: dict[str, list[float]] = {f"{n} {k}": [] for n in pyzs for k in ("cold", "warm")}
    for _ in range(runs):
        for key in random.sample(list(samples), len(samples)):
            name, kind = key.split(" ")
            argv = [str(pyzs[name]), "--version"]
            if kind == "cold":
                shutil.rmtree(exts[name], ignore_errors=True)
            else:
                subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
            samples[key].append(time.perf_counter() - t0)
    return {k: median_ms(v) for k, v in samples.items()}


def cold_only(opts: argparse.Namespace) -> int:
    """``--cold-only``: the cold first start and a warm start of this tree's build, and of the
    ``--against-pyz`` archive (built before a change) in the same interleaved run."""
    work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    try:
        pyzs = {"nsapp": build_nsapp(work)[0]}
        if opts.against_pyz is not None:
            (work / "against").mkdir()
            pyzs["against"] = work / "against" / "nsapp-against.pyz"
            shutil.copyfile(opts.against_pyz, pyzs["against"])
            pyzs["against"].chmod(0o755)
        (work / "shiv-root").mkdir(mode=0o700)
        cold = cold_vs_warm(pyzs, _env(work / "shiv-root"), opts.cold_runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Python {sys.version.split()[0]}, {opts.cold_runs} runs each, medians, interleaved; "
          f"load average before: {os.getloadavg()[0]:.2f}\n")
    print("| archive | cold first start ms | warm ms | cold / warm |")
    print("| --- | ---: | ---: | ---: |")
    for name in pyzs:
        c, w = cold[f"{name} cold"], cold[f"{name} warm"]
        label = "this tree" if name == "nsapp" else f"`{opts.against_pyz}`"
        print(f"| {label} | {c:.1f} | {w:.1f} | {c / w:.1f}x |")
    if "against" in pyzs:
        print(f"\ncold first start, this tree / against: "
              f"{cold['nsapp cold'] / cold['against cold']:.2f}x")
    if opts.json:
        print(json.dumps({"cold_ms": cold}))
    return 0


def imports(pyz: Path, env: dict[str, str]) -> list[str]:
    """The modules a warm ``pyz --version`` imports (its shebang's flags, -X importtime)."""
    exe = os.path.realpath(sys.executable)
    proc = subprocess.run([exe, "-I", "-S", "-X", "importtime", str(pyz), "--version"],
                          env=env, capture_output=True, text=True, check=True)
    return [ln.rpartition("|")[2].strip() for ln in proc.stderr.splitlines()
            if ln.startswith("import time:") and "imported package" not in ln]


def build_nsapp(work: Path) -> tuple[Path, Path]:
    """Build nsapp.pyz with build.sh; return it and the dependency site-packages it used."""
    proc = subprocess.run(
        ["bash", str(REPO / "build.sh"), "--version", "1.0.0", "--out", str(work / "nsapp.pyz")],
        env=dict(os.environ, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        check=True,
    )
    deps = next(
        line.split(" from ", 1)[1]
        for line in proc.stderr.splitlines()
        if line.startswith("selfupdate build: dependencies from ")
    )
    return Path(proc.stdout.strip().splitlines()[-1]), Path(deps)


HELLO = 'def main():\n    print("hello 1.0.0")\n    return 0\n'
# The smallest app on the framework: registers one entry point, calls init(), says hello.
MINIMAL = """\
import reexec_core

reexec_core.register("reexec-true", lambda *args: 0)


def main():
    if reexec_core.init():
        return 0
    print("hello 1.0.0")
    return 0
"""


def build_hello(work: Path, name: str, deps: Path | None, minimal: bool = False) -> Path:
    """A hello-world app packed by shiv exactly as selfupdate build packs nsapp."""
    src = work / f"{name}-src" / "hello"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "cli.py").write_text(MINIMAL if minimal else HELLO)
    if minimal:
        shutil.copytree(
            REPO / "reexec_core",
            src.parent / "reexec_core",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    out = work / f"{name}.pyz"
    cmd = [sys.executable, "-m", "shiv", "--reproducible", "--compressed"]
    cmd += ["--python", "/usr/bin/env python3", "--entry-point", "hello.cli:main"]
    if deps is not None:
        cmd += ["--site-packages", str(deps)]
    cmd += ["--site-packages", str(src.parent), "--output-file", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def time_commands(cmds: dict[str, list[str]], env: dict[str, str], runs: int) -> dict[str, float]:
    """Run each command `runs` times, interleaved in a fresh random order each round."""
    for argv in cmds.values():  # warm-up: shiv extraction, .pyc files, page cache
        for _ in range(3):
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
    samples: dict[str, list[float]] = {k: [] for k in cmds}
    order = list(cmds)
    for _ in range(runs):
        random.shuffle(order)
        for key in order:
            t0 = time.perf_counter()
            subprocess.run(cmds[key], env=env, stdout=subprocess.DEVNULL, check=True)
            samples[key].append(time.perf_counter() - t0)
    return {k: median_ms(v) for k, v in samples.items()}


def roundtrip(pyz: Path, env: dict[str, str], runs: int) -> dict[str, float]:
    """Run :func:`inside_pyz` inside ``pyz`` (shiv runs it instead of the app's main)."""
    rt_env = dict(
        env,
        SHIV_ENTRY_POINT="bench_startup:inside_pyz",
        SHIV_PREPEND_PYTHONPATH=str(Path(__file__).resolve().parent),
        BENCH_RUNS=str(runs),
    )
    proc = subprocess.run([sys.executable, str(pyz)], env=rt_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"round trip inside {pyz.name} failed:\n{proc.stderr}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def inside_pyz() -> int:
    """Entry point run inside nsapp.pyz (through SHIV_ENTRY_POINT): the round-trip loop."""
    import reexec_core

    # The children re-run the archive's own entry point (nsapp.cli:main), which dispatches;
    # this loop stands in for a main, and a main calls init() first.
    assert reexec_core.init() is False
    # Do not hand this bench's directory on to the children: measure what nsapp's child pays.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != here]
    os.environ.pop("SHIV_PREPEND_PYTHONPATH", None)  # a child build starts as users start it
    runs = int(os.environ["BENCH_RUNS"])
    plain = [sys.executable, "-I", "-S", "-c", "pass"]
    for _ in range(3):
        assert reexec_core.command("reexec-true").run().returncode == 0
        subprocess.run(plain, check=True)
    samples: dict[str, list[float]] = {"reexec": [], "plain": [], "program": []}
    program = sys.argv[0]
    for _ in range(runs):
        for key in random.sample(list(samples), len(samples)):
            t0 = time.perf_counter()
            if key == "reexec":
                rc = reexec_core.command("reexec-true").run().returncode
            elif key == "program":
                rc = reexec_core.command("reexec-true", program=program).run().returncode
            else:
                rc = subprocess.run(plain).returncode
            samples[key].append(time.perf_counter() - t0)
            assert rc == 0, key
    print(json.dumps({k: median_ms(v) for k, v in samples.items()}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per command (>= 30)")
    parser.add_argument("--cold-runs", type=int, default=30,
                        help="cold and warm first starts after an update (>= 30)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="another checkout whose nsapp.pyz is measured side by side")
    parser.add_argument("--cold-only", action="store_true",
                        help="measure only the cold first start against a warm one (3.)")
    parser.add_argument("--against-pyz", type=Path, metavar="FILE",
                        help="with --cold-only: a .pyz built before a change, measured in the "
                        "same interleaved run")
    opts = parser.parse_args()
    if opts.runs < 30 or opts.cold_runs < 30:
        parser.error("--runs and --cold-runs must be at least 30 (medians of >= 30 runs)")
    if opts.against_pyz is not None and not opts.cold_only:
        parser.error("--against-pyz goes with --cold-only (use --against DIR otherwise)")
    if opts.cold_only:
        return cold_only(opts)
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        nsapp, deps = build_nsapp(work)
        hello = build_hello(work, "hello", deps)
        bare = build_hello(work, "hello-bare", None)
        minimal = build_hello(work, "minimal", deps, minimal=True)
        zipapp_pyz = build_zipapp(work, "zipapp", "/usr/bin/env python3")
        # The same with the shebang a build writes: what the archive format itself costs.
        zipapp_iso = build_zipapp(work, "zipapp-isolated", "/usr/bin/env -S python3 -I -S")
        (work / "shiv-root").mkdir(mode=0o700)
        env = _env(work / "shiv-root")
        exe = sys.executable
        cmds = {
            "nsapp": [str(nsapp), "--version"],
            "zipapp": [str(zipapp_pyz)],
            "zipapp_iso": [str(zipapp_iso)],
            "hello": [str(hello)],
            "bare": [str(bare)],
            "pass": [os.path.realpath(exe), "-I", "-S", "-c", "pass"],
        }
        # `APP run -- true` against the tools a user compares it with (goal <= 4x bwrap).
        sandbox = {
            "run": [str(nsapp), "run", "--", "true"],
            "bwrap": ["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc",
                      "--dev", "/dev", "true"],
            "unshare": ["unshare", "-Urnpfmiu", "--mount-proc", "true"],
        }  # fmt: skip
        for key, argv in sandbox.items():
            if subprocess.run(argv, env=env, capture_output=True).returncode == 0:
                cmds[key] = argv
            else:
                print(f"(not measured: {' '.join(argv[:2])} ... does not run here)")
        against = None
        if opts.against is not None:
            (work / "against").mkdir()
            against = work / "against" / "nsapp.pyz"
            subprocess.run(
                ["bash", str(opts.against / "build.sh"), "--version", "1.0.0", "--out",
                 str(against)],
                env=dict(os.environ, PYTHON=exe), capture_output=True, check=True,
            )  # fmt: skip
            cmds["against"] = [str(against), "--version"]
        startup = time_commands(cmds, env, opts.runs)
        rt = roundtrip(nsapp, env, opts.runs)
        rt_min = roundtrip(minimal, env, opts.runs)
        rt_against = roundtrip(against, env, opts.runs) if against is not None else None
        both = cold_vs_warm({"nsapp": nsapp}, env, opts.cold_runs)
        cold = {"cold": both["nsapp cold"], "warm": both["nsapp warm"]}
        modules = imports(nsapp, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    r_version = startup["nsapp"] / startup["hello"]
    r_rt = rt["reexec"] / rt["plain"]
    r_min = rt_min["reexec"] / rt_min["plain"]
    print(f"Python {sys.version.split()[0]} ({exe}), {opts.runs} runs each, medians, warm "
          f"unless cold; every archive started through its #! line\n")
    print("| measurement | median ms | ratio |")
    print("| --- | ---: | ---: |")
    r_zipapp = startup["nsapp"] / startup["zipapp"]
    r_floor = startup["nsapp"] / startup["pass"]
    print(f"| `./nsapp.pyz --version` | {startup['nsapp']:.1f} | {r_zipapp:.2f}x zipapp "
          f"hello-world, {r_floor:.2f}x `python3 -I -S -c pass`, {r_version:.2f}x hello pyz |")
    print(f"| stdlib `zipapp` hello-world, `#!/usr/bin/env python3` | {startup['zipapp']:.1f} "
          "| 1.00x |")
    r_iso = startup["nsapp"] / startup["zipapp_iso"]
    print(f"| the same hello-world, `#!/usr/bin/env -S python3 -I -S` | "
          f"{startup['zipapp_iso']:.1f} | nsapp {r_iso:.2f}x it |")
    print(f"| hello-world pyz, same deps and flags | {startup['hello']:.1f} | 1.00x |")
    bare_ratio = startup["bare"] / startup["hello"]
    print(f"| hello-world pyz, no deps | {startup['bare']:.1f} | {bare_ratio:.2f}x hello pyz |")
    print(f"| `python -I -S -c pass` | {startup['pass']:.1f} | |")
    print(f'| `command("reexec-true").run()` from nsapp.pyz | {rt["reexec"]:.1f} | {r_rt:.2f}x |')
    print(f"| spawn `python -I -S -c pass` from nsapp.pyz | {rt['plain']:.1f} | 1.00x |")
    print(
        f'| `command("reexec-true").run()` from a minimal reexec app pyz '
        f"| {rt_min['reexec']:.1f} | {r_min:.2f}x |"
    )
    print(f"| spawn `python -I -S -c pass` from that pyz | {rt_min['plain']:.1f} | 1.00x |")
    if rt_against is not None:
        print(f"| `nsapp.pyz --version` of {opts.against} | {startup['against']:.1f} | "
              f"{startup['against'] / startup['hello']:.2f}x hello pyz; this tree "
              f"{startup['nsapp'] / startup['against']:.2f}x it |")
        print(f'| `command("reexec-true").run()` from its nsapp.pyz | {rt_against["reexec"]:.1f} '
              f"| {rt_against['reexec'] / rt_against['plain']:.2f}x; this tree "
              f"{rt['reexec'] / rt_against['reexec']:.2f}x it |")
    r_prog = rt["program"] / rt["plain"]
    print(
        f'| `command("reexec-true", program=nsapp.pyz).run()` | {rt["program"]:.1f} '
        f"| {r_prog:.2f}x |"
    )
    if "run" in startup:
        print(f"| `./nsapp.pyz run -- true` (all namespaces) | {startup['run']:.1f} | |")
    for key, label in (("bwrap", "`bwrap --unshare-all --ro-bind / / --proc /proc --dev /dev "
                        "true`"), ("unshare", "`unshare -Urnpfmiu --mount-proc true`")):
        if key in startup and "run" in startup:
            print(f"| {label} | {startup[key]:.1f} | nsapp run "
                  f"{startup['run'] / startup[key]:.2f}x it |")
    r_cold = cold["cold"] / cold["warm"]
    print(f"| cold first start after an update (`--version`) | {cold['cold']:.1f} | "
          f"{r_cold:.1f}x warm |")
    print(f"| warm start, same run | {cold['warm']:.1f} | 1.00x |")
    print()
    print(f"modules a warm --version imports ({len(modules)}): {' '.join(modules)}")
    print()
    print(f"--version vs zipapp hello-world: {r_zipapp:.2f}x (goal <= {GOAL_ZIPAPP}x: "
          f"{'met' if r_zipapp <= GOAL_ZIPAPP else 'MISSED'}); vs python3 -I -S -c pass: "
          f"{r_floor:.2f}x (goal <= {GOAL_FLOOR}x: {'met' if r_floor <= GOAL_FLOOR else 'MISSED'})")
    if "run" in startup and "bwrap" in startup:
        r_bwrap = startup["run"] / startup["bwrap"]
        print(f"run -- true vs bwrap: {r_bwrap:.2f}x (goal <= {GOAL_BWRAP}x: "
              f"{'met' if r_bwrap <= GOAL_BWRAP else 'MISSED'})")
    ok1, ok2 = r_version <= GOAL_VERSION, r_rt <= GOAL_ROUNDTRIP
    print(f"--version vs hello pyz: {r_version:.2f}x (goal <= {GOAL_VERSION}x: "
          f"{'met' if ok1 else 'MISSED'})")  # fmt: skip
    print(f"reexec round trip vs python -I -S -c pass: {r_rt:.2f}x from nsapp.pyz (goal <= "
          f"{GOAL_ROUNDTRIP}x: {'met' if ok2 else 'MISSED'}), {r_min:.2f}x from the minimal app "
          f"({'met' if r_min <= GOAL_ROUNDTRIP else 'MISSED'})")  # fmt: skip
    if opts.json:
        print(json.dumps({"startup_ms": startup, "roundtrip_ms": rt,
                          "roundtrip_minimal_ms": rt_min, "ratio_version": r_version,
                          "ratio_roundtrip": r_rt, "ratio_roundtrip_minimal": r_min,
                          "ratio_zipapp": r_zipapp, "ratio_zipapp_isolated": r_iso,
                          "ratio_floor": r_floor, "cold_ms": cold,
                          "imports": modules}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
