"""docs/tutorial.md, run as written: its files are written, its shell blocks run in order.

The one placeholder, the framework checkout's path in ``export FRAMEWORK=...``, is a copy of
this repository's framework project (the ``framework_checkout`` fixture). Everything happens
in a fresh directory outside the repository, with a HOME of its own (the app's state, shiv's
extractions and pip's cache live there), as whichever user runs the suite (root, and nobody
in make test's second pass).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "docs" / "tutorial.md"
PLACEHOLDER = "/path/to/the/framework/checkout"

_BLOCK = re.compile(r"(?:<!-- file: (?P<file>\S+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```",
                    re.S)


def tutorial() -> tuple[dict[str, str], str]:
    """The tutorial's files (path -> text) and its shell commands, in order."""
    files: dict[str, str] = {}
    script: list[str] = []
    for m in _BLOCK.finditer(TUTORIAL.read_text(encoding="utf-8")):
        if m["file"]:
            files[m["file"]] = m["body"]
        elif m["lang"] == "sh":
            script.append(m["body"])
    return files, "\n".join(script)


def test_the_tutorial_has_what_it_promises() -> None:
    files, script = tutorial()
    assert "hello/src/hello/cli.py" in files and "hello/pyproject.toml" in files
    cli = files["hello/src/hello/cli.py"]
    for needed in ("reexec_core.register(", "namespaces.run(", "@su.migration(",
                   "@su.health_check", "su.update("):
        assert needed in cli
    assert PLACEHOLDER in script and "selfupdate build" in script and "update" in script


def test_the_tutorial_runs_as_written(tmp_path: Path, framework_checkout: Path) -> None:
    files, script = tutorial()
    work = tmp_path / "work"
    home = tmp_path / "home"
    work.mkdir()
    home.mkdir(mode=0o700)
    for rel, text in files.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    # The user's own checkout of the framework: a copy they can write to, as pip needs.
    script = script.replace(PLACEHOLDER, str(framework_checkout))
    python = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    env = {
        "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "LANG": "C.UTF-8",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=work, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{proc.stderr}"
    assert "hello you, from pid" in out and "started as hello-greet" in out
    assert "uid=0 host=hello-box pid=2" in out
    assert "hello-1.0.0.pyz" in out and "hello-2.0.0.pyz" in out
    lines = out.splitlines()
    assert "hello 1.0.0" in lines and "hello 2.0.0" in lines
    assert lines.index("hello 1.0.0") < lines.index("hello 2.0.0")
    assert lines[-1] == "hello from 2.0.0"  # the migration ran, in the user's state dir
    # The updated build starts past shiv's bootstrap (issue 12): its extraction, seeded
    # during the update, is marked complete; -X importtime shows what the process imported.
    warm = subprocess.run(
        [str(python), "-I", "-S", "-X", "importtime", str(work / "hello" / "installed" / "hello"),
         "--version"], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert warm.stdout == "hello 2.0.0\n", warm.stderr
    assert " _bootstrap\n" not in warm.stderr + "\n", "the tutorial's build missed the fast start"
    # The single file holds the app and the framework, never the example app.
    import zipfile

    with zipfile.ZipFile(work / "hello" / "dist" / "hello-2.0.0.pyz") as zf:
        assert not [n for n in zf.namelist() if "nsapp" in n]
