"""reexec_core's own entry points work in a program that imports their module only lazily."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import reexec_core
from reexec_core import namespaces

SOURCE_ROOT = str(Path(reexec_core.__file__).resolve().parent.parent)

APP = textwrap.dedent(
    """
    import sys
    import threading
    import time

    import reexec_core


    def main() -> int:
        if reexec_core.init():
            return 0
        # Imported only here, as an app's command handler would: the re-executed setup child
        # re-runs this main, which never imports the namespace runner before init().
        from reexec_core import namespaces

        # A second thread makes the caller threaded: run() must start the namespace setup
        # as a fresh interpreter through reexec (the kernel refuses unshare to threads).
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        return namespaces.run(["sh", "-c", "exit 7"], namespaces="user")


    sys.exit(main())
    """
)


@pytest.mark.skipif("user" not in namespaces.available(), reason="no user namespaces here")
def test_threaded_run_works_when_the_app_imports_namespaces_lazily(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = dict(os.environ, PYTHONPATH=SOURCE_ROOT)
    proc = subprocess.run(
        [sys.executable, str(app)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 7, proc.stderr
    assert "no entry point is registered" not in proc.stderr
