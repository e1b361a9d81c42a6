"""Shared helpers of the delta tests and bench (no tests here): builds derived from a real
``.pyz`` the way a rebuild changes it, and hand-made (hostile) deltas."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from selfupdate.releases._delta import MAGIC, DeltaHeader

Change = Callable[[zipfile.ZipInfo, bytes], "tuple[str, bytes] | None"]


def rewritten(src: Path, out: Path, change: Change) -> Path:
    """A copy of the zip ``src`` with each entry ``change(info, data)`` returns ``(name,
    data)`` for replaced (``None``: kept). Python's zipfile rewrites an unchanged entry
    byte-identically (the same ZipInfo, zlib level), as shiv wrote it: so this is what a
    reproducible rebuild with those files changed gives."""
    data = src.read_bytes()
    shebang = data[: data.index(b"PK\x03\x04")]
    with zipfile.ZipFile(src) as zin, open(out, "wb") as f:
        f.write(shebang)
        with zipfile.ZipFile(f, "w") as zout:
            for info in zin.infolist():
                body = zin.read(info)
                new = change(info, body)
                if new is not None:
                    name, body = new
                    info = _renamed(info, name)
                zout.writestr(info, body)
    out.chmod(0o755)
    return out


def _renamed(info: zipfile.ZipInfo, name: str) -> zipfile.ZipInfo:
    if name == info.filename:
        return info
    new = zipfile.ZipInfo(name, info.date_time)
    new.compress_type, new.external_attr = info.compress_type, info.external_attr
    new.create_system, new.extra = info.create_system, info.extra
    return new


def app_code_change(info: zipfile.ZipInfo, data: bytes) -> tuple[str, bytes] | None:
    """One module of the app's own code changed (a comment added)."""
    if info.filename == "site-packages/nsapp/cli.py":
        return info.filename, data + b"\n# a fix in the app's own code\n"
    return None


DEP = "idna"


def bump_of(dep: str) -> Change:
    """Every file of the dependency ``dep`` changed, and its dist-info renamed, as a version
    bump does."""

    def change(info: zipfile.ZipInfo, data: bytes) -> tuple[str, bytes] | None:
        name = info.filename
        if name.startswith(f"site-packages/{dep}/"):
            return name, data + b"\n# the next version\n"
        if name.startswith(f"site-packages/{dep}-"):
            head, _, rest = name.partition(".dist-info/")
            return f"{head}.post1.dist-info/{rest}", data + b"\n"
        return None

    return change


dependency_bump = bump_of(DEP)


def versioned(change: Change, version: str) -> Change:
    """``change``, and the build's embedded release configuration says ``version`` (and shiv's
    build id is another: shiv extracts each build to a directory named by it)."""

    def both(info: zipfile.ZipInfo, data: bytes) -> tuple[str, bytes] | None:
        if info.filename == "site-packages/selfupdate/_build_config.py":
            text = re.sub(r"(?m)^VERSION = .*$", f"VERSION = {version!r}", data.decode())
            return info.filename, text.encode()
        if info.filename == "environment.json":
            env = json.loads(data)
            env["build_id"] = hashlib.sha256(f"{env['build_id']} {version}".encode()).hexdigest()
            return info.filename, json.dumps(env).encode()
        return change(info, data)

    return both


def dependency_share(build: Path, dep: str = DEP) -> int:
    """Bytes of ``build`` (compressed entries) that belong to the dependency ``dep``."""
    with zipfile.ZipFile(build) as z:
        return sum(i.compress_size for i in z.infolist()
                   if i.filename.startswith((f"site-packages/{dep}/", f"site-packages/{dep}-")))


def header_bytes(h: DeltaHeader) -> bytes:
    return struct.pack(">8sQ32sQ32s", MAGIC, h.base_length, bytes.fromhex(h.base_sha256),
                       h.target_length, bytes.fromhex(h.target_sha256))


def op_copy(offset: int, length: int) -> bytes:
    return b"C" + struct.pack(">QQ", offset, length)


def op_data(data: bytes) -> bytes:
    return b"D" + struct.pack(">Q", len(data)) + data


def op_zdata(data: bytes, said: int | None = None) -> bytes:
    packed = zlib.compress(data)
    return b"Z" + struct.pack(">QQ", len(data) if said is None else said, len(packed)) + packed
