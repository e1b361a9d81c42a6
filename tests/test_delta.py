"""Delta updates (issue 14): the format on real ``.pyz`` builds and against hostile deltas.

Real builds of the example app (``build_pyz``, session-cached), builds derived from them the
way a reproducible rebuild changes them (``tests/_support_delta.py``).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from selfupdate.releases._delta import (
    DeltaError,
    DeltaHeader,
    apply_delta,
    file_digest,
    make_delta,
    read_header,
)
from tests._support_delta import (
    app_code_change,
    dependency_bump,
    dependency_share,
    header_bytes,
    op_copy,
    op_data,
    op_zdata,
    rewritten,
)


@pytest.fixture(scope="module", name="builds")
def builds_fixture(build_pyz: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    assert callable(build_pyz)
    tmp = tmp_path_factory.mktemp("delta-builds")
    v1 = build_pyz("1.0.0")
    v2 = build_pyz("1.0.1")
    return {
        "v1": v1,
        "v2": v2,
        "app": rewritten(v2, tmp / "app.pyz", app_code_change),
        "dep": rewritten(v2, tmp / "dep.pyz", dependency_bump),
    }


def _delta(base: Path, target: Path) -> tuple[bytes, DeltaHeader]:
    out = io.BytesIO()
    stats = make_delta(base, target, out)
    assert stats.length == len(out.getvalue())
    return out.getvalue(), stats.header


def _apply(delta: bytes, base: Path, expect: DeltaHeader) -> bytes:
    out = io.BytesIO()
    with open(base, "rb") as b:
        apply_delta(io.BytesIO(delta), b, out, expect)
    return out.getvalue()


@pytest.mark.parametrize(
    ("base", "target", "limit"),
    [
        ("v1", "v2", 0.01),  # a new version: the build's configuration and dist-info changed
        ("v2", "app", 0.01),  # one module of the app's own code
        ("v2", "v2", 0.001),  # the same build republished
    ],
)
def test_round_trip_rebuilds_the_target_exactly_and_is_small(
    builds: dict[str, Path], base: str, target: str, limit: float
) -> None:
    delta, header = _delta(builds[base], builds[target])
    assert _apply(delta, builds[base], header) == builds[target].read_bytes()
    assert len(delta) <= limit * builds[target].stat().st_size


def test_dependency_bump_costs_about_its_share(builds: dict[str, Path]) -> None:
    delta, header = _delta(builds["v2"], builds["dep"])
    assert _apply(delta, builds["v2"], header) == builds["dep"].read_bytes()
    full = builds["dep"].stat().st_size
    assert len(delta) <= dependency_share(builds["dep"]) + 0.05 * full


def test_files_that_are_not_zips_round_trip_as_literal(tmp_path: Path) -> None:
    base, target = tmp_path / "a", tmp_path / "b"
    base.write_bytes(b"not a zip " * 1000)
    target.write_bytes(bytes(range(256)) * 9000)  # > one literal piece
    delta, header = _delta(base, target)
    assert _apply(delta, base, header) == target.read_bytes()
    assert header == DeltaHeader(*file_digest(base), *file_digest(target))


# ---------------------------------------------------------------------------------------------
# Hostile deltas (signed by a compromised publisher, or corrupted): an error, never a wrong file


def _hostile_cases(base: bytes, target: bytes) -> dict[str, tuple[bytes, bytes]]:
    """name -> (the header's target, the operations after the header)."""
    n = max(len(base), 10)
    return {
        "copy beyond the base": (target, op_copy(n - 10, 11) + b"E"),
        "copy with a huge offset": (target, op_copy(2**64 - 5, 10) + b"E"),
        "data beyond the target length": (target, op_data(target + b"x") + b"E"),
        "copy beyond the target length": (base[:5], op_copy(0, 6) + b"E"),
        "compressed data longer than said": (target, op_zdata(target + b"y" * 10**6,
                                                               said=len(target)) + b"E"),
        "compressed data shorter than said": (target + b"z", op_zdata(target, said=len(target)
                                                                      + 1) + b"E"),
        "output shorter than the target": (target + b"more", op_data(target) + b"E"),
        "right length, wrong bytes": (target, op_data(bytes(len(target))) + b"E"),
        "unknown operation": (target, b"X" + op_data(target) + b"E"),
        "data after the end": (target, op_data(target) + b"E" + b"extra"),
        "no end": (target, op_data(target)),
    }


@pytest.mark.parametrize("case", list(_hostile_cases(b"", b"x")))
def test_hostile_delta_is_an_error_never_a_wrong_file(tmp_path: Path, case: str) -> None:
    base_bytes = b"B" * 5000
    target_bytes = b"T" * 3000
    target_for, ops = _hostile_cases(base_bytes, target_bytes)[case]
    base = tmp_path / "base"
    base.write_bytes(base_bytes)
    header = DeltaHeader(len(base_bytes), hashlib.sha256(base_bytes).hexdigest(),
                         len(target_for), hashlib.sha256(target_for).hexdigest())
    out = io.BytesIO()
    with pytest.raises(DeltaError) as e, open(base, "rb") as b:
        apply_delta(io.BytesIO(header_bytes(header) + ops), b, out, header)
    assert str(e.value).startswith("the ")
    assert len(out.getvalue()) <= header.target_length  # never written past the cap


def test_truncated_delta_is_an_error_at_every_cut(builds: dict[str, Path]) -> None:
    delta, header = _delta(builds["v1"], builds["v2"])
    for cut in sorted({1, 8, 80, 81, 97, len(delta) // 3, len(delta) // 2, len(delta) - 1}):
        with pytest.raises(DeltaError):
            _apply(delta[:cut], builds["v1"], header)


def test_delta_for_another_base_or_target_is_refused(builds: dict[str, Path]) -> None:
    delta, header = _delta(builds["v1"], builds["v2"])
    other_base = DeltaHeader(*file_digest(builds["v2"]), header.target_length,
                             header.target_sha256)
    other_target = DeltaHeader(header.base_length, header.base_sha256,
                               *file_digest(builds["app"]))
    for expect in (other_base, other_target):
        with pytest.raises(DeltaError, match="another base or target"):
            _apply(delta, builds["v1"], expect)
    with pytest.raises(DeltaError, match="not a delta"):
        read_header(io.BytesIO(b"PK\x03\x04" + bytes(100)))


def test_a_base_that_differs_from_the_one_the_delta_was_made_from_is_caught(
    builds: dict[str, Path], tmp_path: Path
) -> None:
    """Same length, one byte changed (a disk error, a hand edit after the hash was taken): the
    output's hash is checked, so the rebuild fails rather than giving a wrong file."""
    delta, header = _delta(builds["v1"], builds["v2"])
    data = bytearray(builds["v1"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    changed = tmp_path / "changed.pyz"
    changed.write_bytes(bytes(data))
    with pytest.raises(DeltaError, match="sha256 differs"):
        _apply(delta, changed, header)
