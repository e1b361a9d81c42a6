"""What to build, read from an app's ``pyproject.toml`` (PEP 621): pure, no I/O but the read.

The framework is not on a package index a user's pip can reach (and must match the one that
builds): an app names it among its dependencies, and the build puts in the framework's own
packages from the installation that runs it, plus the framework's runtime dependencies, in
place of that one requirement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from selfupdate.errors import SelfUpdateError

#: The framework's distribution name, as an app's pyproject.toml depends on it.
FRAMEWORK = "reexec-selfupdate"
#: The framework's import packages, copied into every build that depends on it.
FRAMEWORK_PACKAGES = ("reexec_core", "selfupdate")

_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


class BuildError(SelfUpdateError):
    """A build that cannot be made as asked: the sentence says what to change."""


@dataclass(frozen=True)
class Project:
    """The parts of a ``pyproject.toml`` a build needs."""

    dir: Path
    name: str
    version: str | None
    dependencies: tuple[str, ...]
    scripts: dict[str, str] = field(default_factory=dict)

    @property
    def uses_framework(self) -> bool:
        return any(requirement_name(d) == FRAMEWORK for d in self.dependencies)

    def entry_point(self, chosen: str | None) -> str:
        """``MOD:FN`` to start: ``chosen``, else the project's one console script."""
        if chosen is not None:
            if not _ENTRY.match(chosen):
                raise BuildError(
                    f"--entry-point {chosen!r} is not MODULE:FUNCTION (for example "
                    f"{self.name.replace('-', '_')}.cli:main)"
                )
            return chosen
        if not self.scripts:
            raise BuildError(
                f"{self.dir / 'pyproject.toml'} declares no [project.scripts] entry: add one "
                "(name = \"package.module:function\") or pass --entry-point MODULE:FUNCTION"
            )
        if len(self.scripts) > 1:
            names = ", ".join(f"{k} = {v}" for k, v in sorted(self.scripts.items()))
            raise BuildError(
                f"{self.dir / 'pyproject.toml'} declares several console scripts ({names}): "
                "choose one with --entry-point MODULE:FUNCTION"
            )
        target = next(iter(self.scripts.values()))
        if not _ENTRY.match(target):
            raise BuildError(
                f"the console script {target!r} in {self.dir / 'pyproject.toml'} is not "
                "MODULE:FUNCTION: pass --entry-point MODULE:FUNCTION"
            )
        return target

    def requirements(self, framework_requirements: list[str]) -> list[str]:
        """What pip installs: the app's dependencies, the framework's own in its place."""
        own = [d for d in self.dependencies if requirement_name(d) != FRAMEWORK]
        if not self.uses_framework:
            return own
        return own + [r for r in framework_requirements if not _extra_only(r)]


def read_project(project_dir: Path) -> Project:
    """Parse ``project_dir/pyproject.toml``; :class:`BuildError` for what a build cannot use."""
    import tomllib

    path = project_dir / "pyproject.toml"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise BuildError(
            f"{project_dir} has no pyproject.toml: pass the directory of your app's project"
        ) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BuildError(f"cannot read {path}: {e}; fix the file and build again") from None
    return parse_project(project_dir, data)


def parse_project(project_dir: Path, data: dict[str, object]) -> Project:
    """The pure half of :func:`read_project`."""
    where = project_dir / "pyproject.toml"
    project = data.get("project")
    if not isinstance(project, dict):
        raise BuildError(f"{where} has no [project] table (PEP 621): add name and version")
    name = project.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BuildError(f"{where}: [project] name is missing or not a valid project name")
    version = project.get("version")
    if version is not None and not isinstance(version, str):
        raise BuildError(f"{where}: [project] version must be a string such as \"1.0.0\"")
    deps = project.get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise BuildError(f"{where}: [project] dependencies must be a list of strings")
    scripts = project.get("scripts", {})
    if not isinstance(scripts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in scripts.items()
    ):
        raise BuildError(f"{where}: [project.scripts] must map names to \"module:function\"")
    return Project(project_dir, name, version, tuple(deps), dict(scripts))


def requirement_name(requirement: str) -> str:
    """The canonical (PEP 503) name of a requirement string."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        return canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement:
        raise BuildError(f"{requirement!r} is not a valid requirement (PEP 508)") from None


def _extra_only(requirement: str) -> bool:
    """True for a requirement that only one of the framework's extras brings (shiv, pytest)."""
    from packaging.requirements import Requirement

    marker = Requirement(requirement).marker
    return marker is not None and not marker.evaluate({"extra": ""})


def check_version(version: str) -> str:
    from packaging.version import InvalidVersion, Version

    try:
        Version(version)
    except InvalidVersion:
        raise BuildError(
            f"bad version {version!r}: use a PEP 440 version such as 1.2.0"
        ) from None
    return version


def check_trusted_root(data: bytes, path: Path) -> None:
    """Refuse a file that is not TUF root metadata: a build with it could never verify an
    update. Only the shape is checked here; the client verifies the signatures."""
    import json

    try:
        ok = json.loads(data)["signed"]["_type"] == "root"
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise BuildError(
            f"--trusted-root {path} is not TUF root metadata: pass the repository's "
            "metadata/root.json (selfupdate init prints its path)"
        )
