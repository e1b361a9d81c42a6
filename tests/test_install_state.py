"""nsapp's state migrations and health check, and selfupdate.app's choice of migrations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nsapp import state
from selfupdate.app import migrations_between


def test_migrations_crossed_in_version_order() -> None:
    versions = ["3.0.0", "2.0.0", "10.0"]
    assert migrations_between("1.0.0", "3.0.0", versions) == ["2.0.0", "3.0.0"]
    assert migrations_between("2.0.0", "2.1.0", versions) == []
    assert migrations_between("1.9", "2.0.0+failmigration", versions) == ["2.0.0"]
    assert migrations_between("3.0.0", "1.0.0", versions) == []  # rollback: none
    assert migrations_between("9.0", "10.0", versions) == ["10.0"]


def test_format_follows_major_version() -> None:
    assert [state.format_of(v) for v in ("0.1.0.dev0", "1.0.0", "2.0.0", "2.9", "3.0.0+x")] == [
        1, 1, 2, 2, 3,
    ]


def test_failing_on_purpose_is_a_local_version_label(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NSAPP_FAIL_MIGRATION", raising=False)
    assert state.failing_on_purpose("3.0.0+failmigration")
    assert not state.failing_on_purpose("3.0.0")
    monkeypatch.setenv("NSAPP_FAIL_MIGRATION", "1")
    assert state.failing_on_purpose("3.0.0")


def test_migrations_convert_text_to_jsonl_to_numbered(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NSAPP_FAIL_MIGRATION", raising=False)
    (tmp_path / "history.txt").write_text("2026-01-01T00:00:00Z a b\n2026-01-02T00:00:00Z c\n")
    assert state.migrate_to_2(tmp_path) == "history.txt (2 lines) -> history.jsonl"
    assert not (tmp_path / "history.txt").exists()
    lines = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert lines == [{"time": "2026-01-01T00:00:00Z", "event": "a b"},
                     {"time": "2026-01-02T00:00:00Z", "event": "c"}]
    state.migrate_to_3(tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in lines] == [1, 2]


def test_failing_migration_changes_state_halfway_then_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NSAPP_FAIL_MIGRATION", "1")
    (tmp_path / "history.txt").write_text("".join(f"t{i} e{i}\n" for i in range(10)))
    with pytest.raises(RuntimeError, match="failed on purpose"):
        state.migrate_to_2(tmp_path)
    # half done: exactly what the installer's snapshot must undo
    assert (tmp_path / "history.jsonl").exists() and (tmp_path / "history.txt").exists()


def test_health_check_refuses_the_other_format(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "history.txt").write_text("t e\n")
    monkeypatch.setattr(state, "VERSION", "2.0.0")
    with pytest.raises(RuntimeError, match="history.txt found"):
        state.check(tmp_path)
    monkeypatch.setattr(state, "VERSION", "1.0.0")
    state.check(tmp_path)
