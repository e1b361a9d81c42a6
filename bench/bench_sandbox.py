"""Benchmark the sandbox (issue 16): ``APP run --sandbox strict`` vs without, vs bubblewrap.

Side by side in one run, interleaved round-robin, medians of ``--runs`` (>= 30):

1. Cold, as from a shell: ``nsapp run -- true``, ``nsapp run --sandbox strict -- true``, and
   ``bwrap`` with the closest flags: ``--unshare-all --die-with-parent --new-session
   --cap-drop ALL --ro-bind / / --proc /proc --dev /dev``, without and with ``--seccomp FD``,
   FD holding *our* default filter (``_seccomp.load("default")``, the same BPF program), so
   the two tools install the same one. nsjail where installed.
2. From one Python process: ``namespaces.run(["true"])`` vs
   ``namespaces.run(["true"], sandbox="strict")``.

Usage::

    python bench/bench_sandbox.py [--runs 40] [--pyz PATH | --no-pyz]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench_namespaces import REPO, app_env, call_timer, measure, spawn_timer, table

BWRAP_FLAGS = [
    "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
]  # fmt: skip
PLAIN, STRICT = "nsapp run -- true", "nsapp run --sandbox strict -- true"
BWRAP, BWRAP_SECCOMP = "bwrap <closest flags> true", "bwrap <closest flags> --seccomp FD true"
API, API_STRICT = 'namespaces.run(["true"])', 'namespaces.run(["true"], sandbox="strict")'
_FD = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="runs per row (>= 30)")
    parser.add_argument("--pyz", help="the app .pyz to measure (default: build one)")
    parser.add_argument("--no-pyz", action="store_true", help="use the console script")
    args = parser.parse_args()
    if args.runs < 30:
        parser.error("--runs must be >= 30")
    tmp = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    try:
        env, app = app_env(args, tmp)
        sys.path.insert(0, str(REPO))
        from reexec_core import namespaces
        from reexec_core.namespaces import _seccomp

        cli: dict[str, Callable[[], float]] = {
            PLAIN: spawn_timer([*app, "run", "--", "true"], env),
            STRICT: spawn_timer([*app, "run", "--sandbox", "strict", "--", "true"], env),
        }
        bwrap = shutil.which("bwrap")
        if bwrap:
            program = tmp / "default.bpf"
            program.write_bytes(_seccomp.load("default"))
            cli[BWRAP] = spawn_timer([bwrap, *BWRAP_FLAGS, "true"], env)
            # bwrap reads the program from a descriptor, consumed: opened anew for each run.
            opened = ((os.POSIX_SPAWN_OPEN, _FD, str(program), os.O_RDONLY, 0),)
            cli[BWRAP_SECCOMP] = spawn_timer(
                [bwrap, *BWRAP_FLAGS, "--seccomp", str(_FD), "true"], env, opened
            )
        else:
            print("(bwrap not installed: apt-get install bubblewrap)")
        nsjail = shutil.which("nsjail")
        if nsjail:
            cli["nsjail -Mo --quiet -- /bin/true"] = spawn_timer(
                [nsjail, "-Mo", "--quiet", "--", "/bin/true"], env
            )
        else:
            print("(nsjail not installed: Debian has no package for it here)")
        m1 = table("cold start, as from a shell:", measure(cli, args.runs))
        api = {
            API: call_timer(lambda: namespaces.run(["true"])),
            API_STRICT: call_timer(lambda: namespaces.run(["true"], sandbox="strict")),
        }
        m2 = table("from one Python process:", measure(api, args.runs))
        print("\nratios:")
        print(f"  {STRICT} / {PLAIN}: {m1[STRICT] / m1[PLAIN]:.2f}x")
        if bwrap:
            print(f"  {STRICT} / {BWRAP_SECCOMP}: {m1[STRICT] / m1[BWRAP_SECCOMP]:.2f}x")
            print(f"  {BWRAP_SECCOMP} / {BWRAP}: {m1[BWRAP_SECCOMP] / m1[BWRAP]:.2f}x")
        print(f"  {API_STRICT} / {API}: {m2[API_STRICT] / m2[API]:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
