"""selfupdate._durable: the one atomic-replace helper the publisher, installer and
conformance client share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from selfupdate._durable import write_atomic, write_atomic_from


def test_write_atomic_replaces_and_sets_mode_regardless_of_umask(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        write_atomic(target, b"new", mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_write_atomic_from_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")

    def half_write(f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic_from(target, half_write)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_write_atomic_does_not_follow_a_symlink_at_the_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(victim)
    write_atomic(tmp_path / "link", b"new")
    assert victim.read_bytes() == b"keep"
    assert not (tmp_path / "link").is_symlink()
