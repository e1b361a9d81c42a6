"""A fast registered child starts lean: reexec_core itself imports neither os nor site.

Start-up is what a registered child costs (issue 2's round-trip goal): importing ``os`` in a
child started with ``-I -S`` costs ~2 ms here, so the bootstrap and the dispatch use ``posix``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import reexec_core

SOURCE_ROOT = str(Path(reexec_core.__file__).resolve().parent.parent)

APP = textwrap.dedent(
    """
    import sys

    import reexec_core


    def report() -> int:
        import json

        print(json.dumps({m: m in sys.modules for m in ("os", "site", "typing", "ctypes")}))
        return 0


    reexec_core.register("report", report)
    if reexec_core.init():
        sys.exit(0)
    child = reexec_core.command("report").run(capture_output=True, text=True)
    sys.stdout.write(child.stdout)
    sys.stderr.write(child.stderr)
    sys.exit(child.returncode)
    """
)


def test_fast_child_imports_neither_os_nor_site_nor_typing(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = dict(os.environ, PYTHONPATH=SOURCE_ROOT)
    proc = subprocess.run(
        [sys.executable, str(app)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"os": False, "site": False, "typing": False, "ctypes": False}
