"""What a build says about itself, read from the archive without running any of it.

``selfupdate build`` writes, inside the shiv zip, ``site-packages/selfupdate/_build_config.py``
(a module of literals: ``APP``, ``VERSION``, ``CHANNEL``, ``REPO_URL``, ``TRUSTED_ROOT``; see
:mod:`selfupdate._release`) and, when it was given one, ``site-packages/selfupdate/
_release_root.json`` (the trusted TUF root, byte for byte). The publisher reads both to check
the build it is about to sign: the module is parsed with :mod:`ast` and only ``NAME = literal``
assignments are accepted (:func:`ast.literal_eval`), never imported or executed, and every read
is capped.

:func:`read_build` does the reading; :func:`refusal` is the pure decision over what was read.
"""

from __future__ import annotations

import ast
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfupdate import _release, errors
from selfupdate.releases._trust import parse_version

__all__ = ["CONFIG_PATH", "ROOT_PATH", "BuildConfig", "RefusedError", "read_build", "refusal"]

CONFIG_PATH = f"site-packages/selfupdate/{_release.CONFIG_MODULE}.py"
ROOT_PATH = f"site-packages/selfupdate/{_release.ROOT_NAME}"
MAX_CONFIG_BYTES = 64 * 1024  # the generated module is a few hundred bytes
MAX_ROOT_BYTES = 512_000  # ngclient's own cap on root metadata (Updater config)
_TYPES: dict[str, tuple[type, ...]] = {
    "APP": (str,),
    "VERSION": (str,),
    "CHANNEL": (str,),
    "REPO_URL": (str, type(None)),
    "TRUSTED_ROOT": (bool,),
}


class RefusedError(errors.PublishError):
    """The publisher refuses a command as asked (the wrong build, a version that is not newer,
    a release that does not exist): nothing was written. The command line exits 2."""


@dataclass(frozen=True)
class BuildConfig:
    """The release configuration a build embeds.

    Attributes:
        app, version, channel: what the build calls itself and follows.
        repo_url: the repository URL built in, or None.
        trusted_root: the embedded root metadata (bytes), or None.
    """

    app: str
    version: str
    channel: str
    repo_url: str | None
    trusted_root: bytes | None


def read_build(path: Path) -> BuildConfig:
    """The release configuration of the build at ``path``.

    Raises:
        RefusedError: not a zip archive, not made by ``selfupdate build`` for an app that
            depends on the framework, or its configuration is not plain literals.
        OSError: the file cannot be read.
    """
    hint = "publish a .pyz made by `selfupdate build` for an app that depends on the framework"
    try:
        if not zipfile.is_zipfile(path):
            raise RefusedError(f"{path} is not a zip or .pyz archive: {hint}")
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "__main__.py" not in names:
                raise RefusedError(
                    f"{path} has no __main__.py, so it is not a runnable .pyz: {hint}"
                )
            if CONFIG_PATH not in names:
                raise RefusedError(
                    f"{path} carries no release configuration ({CONFIG_PATH}), so it cannot "
                    f"be checked: {hint}"
                )
            source = _read_capped(z, CONFIG_PATH, MAX_CONFIG_BYTES, path)
            values = _literals(source, path)
            root: bytes | None = None
            if values["TRUSTED_ROOT"]:
                if ROOT_PATH not in names:
                    raise RefusedError(
                        f"{path} says it embeds a trusted root but holds no {ROOT_PATH}: "
                        "rebuild it with `selfupdate build --trusted-root`"
                    )
                root = _read_capped(z, ROOT_PATH, MAX_ROOT_BYTES, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
        # A damaged archive (a bad header, an unknown compression, cut short).
        raise RefusedError(f"{path} is a damaged zip archive ({e}): build it again") from e
    return BuildConfig(
        values["APP"], values["VERSION"], values["CHANNEL"], values["REPO_URL"], root
    )


def _read_capped(z: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    # The size in the directory can lie: read at most one byte past the limit.
    with z.open(name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise RefusedError(
            f"{name} in {path} is larger than the {limit} bytes a build writes: build it again"
        )
    return data


def _literals(source: bytes, path: Path) -> dict[str, Any]:
    """The ``NAME = literal`` assignments of the configuration module, checked by type."""
    bad = f"the release configuration in {path} is not what `selfupdate build` writes"
    try:
        tree = ast.parse(source, filename=CONFIG_PATH)
    except (SyntaxError, ValueError) as e:  # ValueError: NUL bytes
        raise RefusedError(f"{bad} (it does not parse): build it again") from e
    values: dict[str, Any] = {}
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if not (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            raise RefusedError(
                f"{bad} (line {getattr(node, 'lineno', '?')} is not NAME = literal): build it again"
            )
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
            raise RefusedError(
                f"{bad} (line {node.lineno} is not a literal): build it again"
            ) from e
    for name, types in _TYPES.items():
        if name not in values:
            raise RefusedError(f"{bad} (it has no {name}): build it again")
        if not isinstance(values[name], types):
            raise RefusedError(f"{bad} ({name} is a {type(values[name]).__name__}): build it again")
    return values


def _same_root(a: bytes, b: bytes) -> bool:
    """The same root metadata, whatever the JSON formatting (the bytes are signed as parsed)."""
    if a == b:
        return True
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return False


def refusal(
    build: BuildConfig,
    file: Path,
    *,
    app: str,
    version: str | None,
    roots: Iterable[bytes],
    repo_dir: Path,
) -> str | None:
    """Why the publisher must not sign ``build`` as a release of ``app``, or None.

    Args:
        file: where the build was read from (for the message).
        app: the app this release is for (``--app``, or the repository's).
        version: the version asked for (``--version``), or None for the build's own.
        roots: every root metadata version of the repository (``metadata/N.root.json``).
        repo_dir: the repository (for the message).
    """
    if build.app != app:
        return (
            f"{file} is a build of {build.app!r}, not of {app!r}: publish a build of {app}, or "
            "pass the repository of that app"
        )
    try:
        own = parse_version(build.version)
    except ValueError:
        return f"{file} calls itself version {build.version!r}, which is not PEP 440: rebuild it"
    if version is not None and parse_version(version) != own:
        return (
            f"{file} is version {build.version}, not {version}: clients that installed it "
            f"would find {version} newer forever, so publish it as {build.version} (drop "
            "--version) or build it as the version you want"
        )
    fix = f"rebuild it with `selfupdate build --trusted-root {repo_dir}/metadata/root.json`"
    if build.trusted_root is None:
        return (
            f"{file} embeds no trusted root, so once installed it could never verify an "
            f"update: {fix}"
        )
    if not any(_same_root(build.trusted_root, r) for r in roots):
        return (
            f"the trusted root embedded in {file} is none of the roots of {repo_dir}, so "
            f"clients running it would refuse every update from this repository: {fix}"
        )
    return None
