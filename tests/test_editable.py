"""Registered children in the ways a developer installs an app (framework issue).

Each app lives outside this repository, is installed with a real ``pip install -e`` into a
fresh venv (with the framework itself installed editable, as ``make venv`` does), and is
started from another directory; its registered child must run the app's own code:

- setuptools' PEP 660 editable install, default mode (an import hook from a ``.pth``) and
  ``strict`` mode (a link tree on a path ``.pth``), flat and ``src`` layouts;
- hatchling's editable install (a path ``.pth``);
- a namespace package;
- a ``.pth`` that imports a module which installs an import hook of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CLI = textwrap.dedent(
    """
    import sys
    import reexec_core

    def greet():
        print("greet from", __name__, reexec_core.current_name(), flush=True)
        return 0

    reexec_core.register("{name}-greet", greet)

    def main():
        if reexec_core.init():
            return 0
        r = reexec_core.command("{name}-greet").run(capture_output=True, text=True)
        print("child:", r.returncode, r.stdout.strip(), r.stderr.strip()[-300:])
        return r.returncode
    """
)


def _pyproject(name: str, backend: str) -> str:
    build = {
        "setuptools": '[build-system]\nrequires = ["setuptools>=68"]\n'
        'build-backend = "setuptools.build_meta"\n',
        "hatchling": '[build-system]\nrequires = ["hatchling"]\n'
        'build-backend = "hatchling.build"\n',
    }[backend]
    return build + textwrap.dedent(
        f"""
        [project]
        name = "{name}"
        version = "1.0.0"
        dependencies = ["reexec-selfupdate"]
        [project.scripts]
        {name} = "{_module(name)}.cli:main"
        """
    )


def _module(name: str) -> str:
    return name.replace("-", "_")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, framework_checkout: Path) -> Path:
    """A fresh venv with the framework installed editable (pip's cache makes this quick)."""
    base = tmp_path_factory.mktemp("editable")
    env_dir = base / "venv"
    python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([python, "-m", "venv", str(env_dir)], check=True, timeout=300)
    py = env_dir / "bin" / "python"
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e",
         str(framework_checkout)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"pip install -e of the framework failed: {proc.stderr[-2000:]}"
    return env_dir


def _install(venv: Path, project: Path, *pip_args: str) -> None:
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", *pip_args, "-e", str(project)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _run_child(venv: Path, name: str) -> str:
    proc = subprocess.run(
        [str(venv / "bin" / name)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",  # another directory: nothing of the project is on sys.path by accident
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _app(root: Path, name: str, backend: str = "setuptools", src: bool = False) -> Path:
    project = root / name
    pkg = project / ("src" if src else "") / _module(name)
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text(CLI.format(name=name))
    (project / "pyproject.toml").write_text(_pyproject(name, backend))
    return project


@pytest.mark.parametrize(
    ("name", "backend", "src", "pip_args"),
    [
        ("flatdefault", "setuptools", False, ()),
        ("srcdefault", "setuptools", True, ()),
        ("flatstrict", "setuptools", False, ("--config-settings", "editable_mode=strict")),
        ("hatchapp", "hatchling", False, ()),
    ],
)
def test_registered_child_of_an_editable_install(
    venv: Path, tmp_path: Path, name: str, backend: str, src: bool, pip_args: tuple[str, ...]
) -> None:
    _install(venv, _app(tmp_path, name, backend, src=src), *pip_args)
    out = _run_child(venv, name)
    assert f"child: 0 greet from {name}.cli {name}-greet" in out, out


def test_registered_child_of_a_namespace_package(venv: Path, tmp_path: Path) -> None:
    # nsroot/ is a namespace portion (no __init__.py at the top) found through the finder.
    name = "nspkgapp"
    project = tmp_path / name
    pkg = project / "nsroot" / "nsportion" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text(CLI.format(name=name))
    (project / "pyproject.toml").write_text(
        _pyproject(name, "setuptools").replace(
            f'"{name}.cli:main"', f'"nsportion.{name}.cli:main"'
        )
        + '\n[tool.setuptools.packages.find]\nwhere = ["nsroot"]\nnamespaces = true\n'
    )
    _install(venv, project)
    out = _run_child(venv, name)
    assert f"child: 0 greet from nsportion.{name}.cli {name}-greet" in out, out


def test_registered_child_through_a_pth_that_installs_an_import_hook(
    venv: Path, tmp_path: Path
) -> None:
    # The app's code is served by a meta-path finder that a .pth file imports and installs,
    # from a directory that is not on sys.path.
    name = "hookapp"
    code = tmp_path / "hidden"
    pkg = code / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text(CLI.format(name=name))
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    (Path(site) / "hookapp_finder.py").write_text(textwrap.dedent(
        f"""
        import importlib.machinery, sys
        class Finder:
            @classmethod
            def find_spec(cls, name, path=None, target=None):
                if name == {name!r} or name.startswith({name + "."!r}):
                    return importlib.machinery.PathFinder.find_spec(name, path or [{str(code)!r}])
                return None
        sys.meta_path.append(Finder)
        """
    ))
    (Path(site) / "hookapp.pth").write_text("import hookapp_finder\n")
    script = venv / "bin" / name
    script.write_text(
        f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {name}.cli import main\n"
        "sys.exit(main())\n"
    )
    script.chmod(0o755)
    out = _run_child(venv, name)
    assert f"child: 0 greet from {name}.cli {name}-greet" in out, out
