"""The publisher's signing keys: Ed25519, one per top-level role, in a private directory.

Layout of ``KEYS_DIR`` (mode 0700, every file 0600)::

    publisher.json          app name and expiry periods chosen at ``init``
    root.pem ...            PKCS#8 PEM private key of each role (unencrypted: protect the
                            directory, or keep it offline)
    retired/                keys replaced by ``rotate`` (kept for audit)

The directory is refused when group or others can access it (like ``ssh`` does), and when it
lies inside the repository directory (which is published as is).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner

from selfupdate import errors
from selfupdate._durable import fsync_dir, write_atomic

ROLES = ("root", "targets", "snapshot", "timestamp")
CONFIG = "publisher.json"


def check_separate(keys_dir: Path, repo_dir: Path) -> None:
    """Refuse a keys directory inside (or equal to) the published repository directory, and a
    repository inside the keys directory (private, so never served; and ``init`` refuses a
    keys directory that is not empty)."""
    k, r = keys_dir.resolve(), repo_dir.resolve()
    if k == r or k.is_relative_to(r):
        raise errors.KeysError(
            f"the keys directory {keys_dir} is inside the repository directory {repo_dir}, "
            "which is published as is: choose a keys directory outside it"
        )
    if r.is_relative_to(k):
        raise errors.KeysError(
            f"the repository directory {repo_dir} is inside the keys directory {keys_dir}, "
            "which must stay private: choose a repository directory outside it"
        )


def check_new(keys_dir: Path) -> None:
    """Refuse a ``keys_dir`` that exists and is not an empty directory (``init`` never
    overwrites keys)."""
    if keys_dir.exists():
        if not keys_dir.is_dir() or any(keys_dir.iterdir()):
            raise errors.KeysError(
                f"the keys directory {keys_dir} already exists and is not empty: "
                "choose a new directory (init never overwrites keys)"
            )


def create_dir(keys_dir: Path) -> None:
    """Create ``keys_dir`` (mode 0700), or accept an existing empty one."""
    check_new(keys_dir)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)


def remove_all(keys_dir: Path, *, remove_dir: bool) -> None:
    """Delete every file in ``keys_dir`` (an ``init`` that failed before its repository
    trusted them), and the directory itself if ``remove_dir``. Best effort: the caller is
    already handling the error that made the keys useless."""
    with contextlib.suppress(OSError):
        for child in keys_dir.iterdir():
            child.unlink()
        if remove_dir:
            keys_dir.rmdir()


def check_dir(keys_dir: Path) -> None:
    """Refuse a missing keys directory, or one that others can read."""
    try:
        st = keys_dir.stat()
    except FileNotFoundError:
        raise errors.KeysError(
            f"the keys directory {keys_dir} does not exist: run `selfupdate init` or pass "
            "the right --keys"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise errors.KeysError(f"the keys path {keys_dir} is not a directory: pass --keys DIR")
    if st.st_mode & 0o077:
        raise errors.KeysError(
            f"the keys directory {keys_dir} is accessible by other users "
            f"(mode {stat.S_IMODE(st.st_mode):o}): run `chmod -R go= {keys_dir}`"
        )


@contextlib.contextmanager
def locked(keys_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``keys_dir`` (one publisher command at a time per keys
    directory: a cron ``refresh`` waits for a running ``publish``). Released on exit, also
    when the process dies."""
    fd = os.open(keys_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def generate() -> CryptoSigner:
    return CryptoSigner.generate_ed25519()


def save(keys_dir: Path, name: str, signer: CryptoSigner) -> Path:
    path = keys_dir / f"{name}.pem"
    write_atomic(path, signer.private_bytes, mode=0o600)
    return path


def load(keys_dir: Path, role: str) -> CryptoSigner:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    path = keys_dir / f"{role}.pem"
    try:
        st = path.stat()
        if st.st_mode & 0o077:
            raise errors.KeysError(
                f"the key file {path} is accessible by other users: run `chmod 600 {path}`"
            )
        priv = load_pem_private_key(path.read_bytes(), None)
    except FileNotFoundError:
        raise errors.KeysError(
            f"the {role} key {path} is missing: pass the keys directory `selfupdate init` made"
        ) from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        # Not cryptography's text: it runs to several sentences and a URL.
        raise errors.KeysError(
            f"the key file {path} is not a valid unencrypted PEM private key: restore it from "
            "your backup of the keys directory"
        ) from e
    return CryptoSigner(priv)


def retire(keys_dir: Path, role: str, keyid: str) -> None:
    """Move the current key of ``role`` to ``retired/`` (after its replacement is in place)."""
    retired = keys_dir / "retired"
    retired.mkdir(mode=0o700, exist_ok=True)
    src = keys_dir / f"{role}.pem"
    if src.exists():
        os.replace(src, retired / f"{role}-{keyid[:16]}.pem")
        fsync_dir(retired)


def read_config(keys_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((keys_dir / CONFIG).read_bytes())
    except FileNotFoundError:
        raise errors.KeysError(
            f"{keys_dir} has no {CONFIG}: pass the keys directory `selfupdate init` made"
        ) from None
    except ValueError as e:
        raise errors.KeysError(f"{keys_dir / CONFIG} is not valid JSON ({e}): restore it") from e
    if not isinstance(data, dict):
        raise errors.KeysError(f"{keys_dir / CONFIG} is not a JSON object: restore it")
    return data


def write_config(keys_dir: Path, config: dict[str, Any]) -> None:
    write_atomic(
        keys_dir / CONFIG, json.dumps(config, indent=2, sort_keys=True).encode() + b"\n", 0o600
    )
