"""The delta format: rebuild a new ``.pyz`` from the installed one plus what changed (pure, no
network; see docs/delta.md).

A ``.pyz`` is a zip built reproducibly, so an entry whose file did not change is byte-identical
(local header and compressed data) between two builds, only at another offset. A delta lists
the new file as a sequence of operations::

    header   MAGIC, base length (u64), base sha256 (32 bytes), target length, target sha256
    COPY     b"C" offset (u64) length (u64)         bytes of the base file
    DATA     b"D" length (u64), then the bytes       literal bytes
    ZDATA    b"Z" length (u64) zlength (u64), then zlength bytes of zlib: ``length`` bytes
    END      b"E"                                   nothing may follow

All integers big-endian. :func:`make_delta` matches each local entry of the new zip (header,
data, data descriptor: up to the next entry) against the base's entries of the same name, CRC
and sizes, and copies it when the bytes are equal; the rest (the shebang line, changed entries,
the central directory) is literal, compressed where that helps, in pieces of at most
:data:`LITERAL_PIECE` bytes so that neither side holds more than that in memory.

:func:`apply_delta` trusts nothing in the delta: it is called only on a delta whose signed
length and hashes were verified, and still checks that the header names the base and target it
was given, that every COPY lies inside the base, that no operation writes past the target's
length, that decompressed data is exactly as long as said, that nothing follows END, and that
the output hashes to the target's sha256. The caller verifies the output again against the
full target's signed length and hashes before using it.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from selfupdate import errors

__all__ = [
    "LITERAL_PIECE",
    "MAGIC",
    "DeltaError",
    "DeltaHeader",
    "DeltaStats",
    "Writer",
    "apply_delta",
    "file_digest",
    "make_delta",
    "read_header",
]

MAGIC = b"SUDELTA\x01"
LITERAL_PIECE = 1 << 20  # bytes: the largest literal operation (bounds memory on both sides)
_CHUNK = 1 << 20  # bytes read or written at once
_SAMPLE = 8 << 10  # bytes at the start, middle and end of a literal piece tried first
_HEADER = struct.Struct(">8sQ32sQ32s")
_U64 = struct.Struct(">Q")
_U64X2 = struct.Struct(">QQ")
_Key = tuple[str, int, int, int, int]  # name, CRC, compressed size, size, compression


class Writer(Protocol):
    """Where a delta or a rebuilt file goes: anything with ``write``."""

    def write(self, data: bytes, /) -> object: ...


class DeltaError(errors.SelfUpdateError):
    """A delta that cannot rebuild the target from the base it was given: malformed,
    truncated, for another base or target, or out of bounds. The client falls back to the
    full download."""


@dataclass(frozen=True)
class DeltaHeader:
    base_length: int
    base_sha256: str
    target_length: int
    target_sha256: str


@dataclass(frozen=True)
class DeltaStats:
    """What :func:`make_delta` wrote."""

    length: int  # bytes of the delta
    copied: int  # bytes of the target taken from the base
    literal: int  # bytes of the target carried in the delta (before compression)
    header: DeltaHeader


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """``(length, sha256 hex)`` of a file, read in chunks (constant memory)."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Making a delta (publisher side: both files are the publisher's own builds)


def _entry_spans(path: str | os.PathLike[str], size: int) -> list[tuple[_Key, int, int]]:
    """The local entries of the zip at ``path`` as ``(key, start, end)`` in file order, each
    ending where the next begins (the last where the central directory starts); ``[]`` for a
    file that is not a zip, or whose entries do not lie in order before the central directory
    (then the whole file is literal)."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = sorted(z.infolist(), key=lambda i: i.header_offset)
            start_dir = int(getattr(z, "start_dir", size))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return []
    spans: list[tuple[_Key, int, int]] = []
    for n, info in enumerate(infos):
        start = info.header_offset
        end = infos[n + 1].header_offset if n + 1 < len(infos) else start_dir
        if not 0 <= start < end <= start_dir <= size:
            return []
        key = (info.filename, info.CRC, info.compress_size, info.file_size, info.compress_type)
        spans.append((key, start, end))
    return spans


def _same_bytes(a: BinaryIO, a_off: int, b: BinaryIO, b_off: int, length: int) -> bool:
    a.seek(a_off)
    b.seek(b_off)
    left = length
    while left:
        n = min(left, _CHUNK)
        if a.read(n) != b.read(n):
            return False
        left -= n
    return True


class _Writer:
    """Emits operations, merging adjacent COPYs and gathering literal bytes into pieces."""

    def __init__(self, out: Writer) -> None:
        self.out = out
        self.length = 0
        self.copied = 0
        self.literal = 0
        self._copy: tuple[int, int] | None = None  # (offset, length) not written yet
        self._lit = bytearray()

    def _put(self, data: bytes) -> None:
        self.out.write(data)
        self.length += len(data)

    def copy(self, offset: int, length: int) -> None:
        self._flush_literal()
        self.copied += length
        if self._copy is not None and self._copy[0] + self._copy[1] == offset:
            self._copy = (self._copy[0], self._copy[1] + length)
            return
        self._flush_copy()
        self._copy = (offset, length)

    def data(self, chunk: bytes) -> None:
        self._flush_copy()
        self.literal += len(chunk)
        self._lit += chunk
        while len(self._lit) >= LITERAL_PIECE:
            piece = bytes(self._lit[:LITERAL_PIECE])
            del self._lit[:LITERAL_PIECE]
            self._literal_op(piece)

    def end(self) -> None:
        self._flush_copy()
        self._flush_literal()
        self._put(b"E")

    def _flush_copy(self) -> None:
        if self._copy is not None:
            self._put(b"C" + _U64X2.pack(*self._copy))
            self._copy = None

    def _flush_literal(self) -> None:
        if self._lit:
            piece = bytes(self._lit)
            self._lit.clear()
            self._literal_op(piece)

    def _literal_op(self, piece: bytes) -> None:
        # Changed entries are mostly deflated already: a fast try on a sample spares zlib's
        # slowest level on data it cannot shrink (~20 MB/s on incompressible bytes).
        n = len(piece)
        samples = [piece[at:at + _SAMPLE] for at in {0, max(0, n // 2 - _SAMPLE // 2),
                                                      max(0, n - _SAMPLE)}]
        if all(len(zlib.compress(x, 1)) > 0.95 * len(x) for x in samples):
            self._put(b"D" + _U64.pack(len(piece)) + piece)
            return
        packed = zlib.compress(piece, 9)
        if len(packed) + 8 < len(piece):
            self._put(b"Z" + _U64X2.pack(len(piece), len(packed)) + packed)
        else:  # already compressed entries: stored as they are
            self._put(b"D" + _U64.pack(len(piece)) + piece)


def make_delta(
    base: str | os.PathLike[str], target: str | os.PathLike[str], out: Writer
) -> DeltaStats:
    """Write to ``out`` a delta that rebuilds ``target`` from ``base``; return what it holds.

    Streams both files (memory is bounded by :data:`LITERAL_PIECE`, not by their size).

    Raises:
        OSError: a file cannot be read, or ``out`` cannot be written.
    """
    base_len, base_sha = file_digest(base)
    target_len, target_sha = file_digest(target)
    header = DeltaHeader(base_len, base_sha, target_len, target_sha)
    index: dict[_Key, list[tuple[int, int]]] = {}
    base_spans = _entry_spans(base, base_len)
    for key, start, end in base_spans:
        index.setdefault(key, []).append((start, end))
    target_spans = _entry_spans(target, target_len)
    # The central directory and what follows it, as one more span: equal when no entry moved
    # (the same build republished).
    tail: _Key = ("", 0, 0, 0, -1)
    if base_spans:
        index[tail] = [(base_spans[-1][2], base_len)]
    if target_spans:
        target_spans.append((tail, target_spans[-1][2], target_len))

    w = _Writer(out)
    w._put(_HEADER.pack(MAGIC, base_len, bytes.fromhex(base_sha), target_len,
                        bytes.fromhex(target_sha)))
    with open(base, "rb") as b, open(target, "rb") as t:

        def literal(start: int, end: int) -> None:
            t.seek(start)
            left = end - start
            while left:
                chunk = t.read(min(left, _CHUNK))
                if not chunk:
                    raise OSError(f"{target} changed while the delta was made")
                w.data(chunk)
                left -= len(chunk)

        pos = 0
        for key, start, end in target_spans:
            literal(pos, start)  # the shebang line before the first entry, gaps
            match = next(
                (s for s, e in index.get(key, ())
                 if e - s == end - start and _same_bytes(b, s, t, start, end - start)),
                None,
            )
            if match is not None:
                w.copy(match, end - start)
            else:
                literal(start, end)
            pos = end
        literal(pos, target_len)  # the central directory (or, not a zip, the whole file)
    w.end()
    return DeltaStats(w.length, w.copied, w.literal, header)


# ---------------------------------------------------------------------------------------------
# Applying a delta (client side: after the delta's own signed length and hashes verified)


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DeltaError(f"the delta is truncated (in {what})")
    return data


def read_header(delta: BinaryIO) -> DeltaHeader:
    """The header at the start of ``delta``.

    Raises:
        DeltaError: not a delta of this format, or truncated.
    """
    magic, bl, bs, tl, ts = _HEADER.unpack(_read_exact(delta, _HEADER.size, "its header"))
    if magic != MAGIC:
        raise DeltaError("the file is not a delta of a format this client reads")
    return DeltaHeader(bl, bs.hex(), tl, ts.hex())


def apply_delta(delta: BinaryIO, base: BinaryIO, out: Writer, expect: DeltaHeader) -> int:
    """Rebuild the target into ``out`` from ``base`` and ``delta``; return its length.

    Args:
        delta: the delta, positioned at its start (read sequentially).
        base: the base file (seekable), whose length and sha256 the caller checked.
        out: where the target is written (sequentially, from its current position).
        expect: the base and target the caller knows from signed metadata; the delta's header
            must name exactly these.

    Raises:
        DeltaError: anything in the delta that does not rebuild exactly ``expect``'s target
            from ``expect``'s base (the output is then not the target: discard it).
        OSError: reading the base or writing ``out`` failed (a full disk, ...).
    """
    header = read_header(delta)
    if header != expect:
        raise DeltaError("the delta was made for another base or target than the one asked for")
    written = 0
    h = hashlib.sha256()
    limit = expect.target_length

    def emit(data: bytes) -> None:
        nonlocal written
        if written + len(data) > limit:
            raise DeltaError(f"the delta writes more than the target's {limit} bytes")
        out.write(data)
        h.update(data)
        written += len(data)

    while True:
        tag = _read_exact(delta, 1, "an operation")
        if tag == b"E":
            break
        if tag == b"C":
            offset, length = _U64X2.unpack(_read_exact(delta, 16, "a copy"))
            if offset + length > expect.base_length:
                raise DeltaError("the delta copies bytes from beyond the end of the base")
            if written + length > limit:
                raise DeltaError(f"the delta writes more than the target's {limit} bytes")
            base.seek(offset)
            left = length
            while left:
                chunk = base.read(min(left, _CHUNK))
                if not chunk:
                    raise DeltaError("the base file is shorter than the delta expects")
                emit(chunk)
                left -= len(chunk)
        elif tag == b"D":
            (length,) = _U64.unpack(_read_exact(delta, 8, "literal data"))
            if written + length > limit:
                raise DeltaError(f"the delta writes more than the target's {limit} bytes")
            left = length
            while left:
                chunk = _read_exact(delta, min(left, _CHUNK), "literal data")
                emit(chunk)
                left -= len(chunk)
        elif tag == b"Z":
            length, zlength = _U64X2.unpack(_read_exact(delta, 16, "compressed data"))
            if written + length > limit:
                raise DeltaError(f"the delta writes more than the target's {limit} bytes")
            _inflate(delta, zlength, length, emit)
        else:
            raise DeltaError(f"the delta holds an unknown operation {tag!r}")
    if delta.read(1):
        raise DeltaError("the delta has data after its end")
    if written != limit:
        raise DeltaError(f"the delta rebuilt {written} bytes, not the target's {limit}")
    if h.hexdigest() != expect.target_sha256:
        raise DeltaError("the rebuilt file's sha256 differs from the target's")
    return written


def _inflate(
    delta: BinaryIO, zlength: int, length: int, emit: Callable[[bytes], None]
) -> None:
    """Decompress ``zlength`` bytes of ``delta`` that must give exactly ``length`` bytes,
    never holding more than :data:`_CHUNK` of output at once (a zip bomb stops at ``length``)."""
    d = zlib.decompressobj()
    left_in, left_out = zlength, length
    try:
        while left_in or d.unconsumed_tail:
            if d.unconsumed_tail:
                data = d.unconsumed_tail
            else:
                data = _read_exact(delta, min(left_in, _CHUNK), "compressed data")
                left_in -= len(data)
            chunk = d.decompress(data, min(_CHUNK, left_out + 1))
            if len(chunk) > left_out:
                raise DeltaError("the delta's compressed data is longer than it says")
            left_out -= len(chunk)
            emit(chunk)
            if d.eof:
                break
    except zlib.error:
        raise DeltaError("the delta's compressed data is corrupt") from None
    if not d.eof or left_in or d.unused_data or left_out:
        raise DeltaError("the delta's compressed data does not have the length it says")
