"""Snapshots of the app's state directory around a transaction, and putting one back.

A snapshot directory holds either ``state/`` (a copy of the state directory) or the marker
``ABSENT`` (there was no state directory). :func:`restore_steps` plans a restore purely from
what is on disk; each step is a rename or a removal, so a kill between steps is repaired by
planning again.
"""

from __future__ import annotations

import os
import shutil

from selfupdate._durable import fsync_dir, fsync_tree
from selfupdate.install._layout import STATE_EXCLUDE, Layout, remove

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["copy_state_from", "restore_state", "restore_steps", "snapshot_state"]


def restore_steps(snap_has_state: bool, snap_absent: bool, live_exists: bool) -> list[str]:
    """Steps that put a snapshot back in place of the live state directory (idempotent).

    Returns:
        A list of ``"discard-live"`` (rename the live state away), ``"restore"`` (rename
        ``state/`` into place) and ``"drop"`` (remove the snapshot and the discarded state).
    """
    steps = []
    if snap_has_state or snap_absent:
        if live_exists:
            steps.append("discard-live")
        if snap_has_state:
            steps.append("restore")
    steps.append("drop")
    return steps


def _state(layout: Layout) -> Path:
    if layout.state_dir is None:
        raise RuntimeError("this layout has no state directory")
    return layout.state_dir


def snapshot_state(layout: Layout) -> None:
    """Copy the state directory to :attr:`Layout.snapshot` (complete or not at all)."""
    state = _state(layout)
    state.parent.mkdir(parents=True, exist_ok=True)
    remove(layout.snapshot_tmp)
    layout.snapshot_tmp.mkdir(mode=0o700)
    if state.is_dir():
        shutil.copytree(
            state,
            layout.snapshot_tmp / "state",
            symlinks=True,
            ignore=shutil.ignore_patterns(*STATE_EXCLUDE),
        )
    else:
        (layout.snapshot_tmp / "ABSENT").write_bytes(b"")
    fsync_tree(layout.snapshot_tmp)
    remove(layout.snapshot)
    os.replace(layout.snapshot_tmp, layout.snapshot)
    fsync_dir(state.parent)


def restore_state(layout: Layout, snap: Path) -> None:
    """Put the snapshot ``snap`` back as the state directory (idempotent, kill-safe)."""
    state = _state(layout)
    steps = restore_steps(
        (snap / "state").is_dir(), (snap / "ABSENT").exists(), state.exists()
    )
    for step in steps:
        if step == "discard-live":
            remove(layout.discard)
            os.replace(state, layout.discard)
        elif step == "restore":
            os.replace(snap / "state", state)
            fsync_dir(state.parent)
        else:
            _keep_caches(layout.discard, state)
            remove(snap)
            remove(layout.discard)
    if state.parent.exists():
        fsync_dir(state.parent)


def copy_state_from(layout: Layout, snap: Path) -> None:
    """Make the live state a copy of the snapshot ``snap`` (used by rollback's trial)."""
    state = _state(layout)
    if state.exists():
        remove(layout.discard)
        os.replace(state, layout.discard)
    if (snap / "state").is_dir():
        shutil.copytree(snap / "state", state, symlinks=True)
        fsync_tree(state)
    _keep_caches(layout.discard, state)
    remove(layout.discard)
    fsync_dir(state.parent)


def _keep_caches(old: Path, state: Path) -> None:
    """Carry caches (:data:`STATE_EXCLUDE`, e.g. the verified TUF metadata, whose versions
    protect against rollback attacks) over from the discarded state to the restored one."""
    for name in STATE_EXCLUDE:
        if (old / name).is_dir() and state.is_dir() and not (state / name).exists():
            try:
                os.replace(old / name, state / name)
            except OSError:
                pass  # a cache: losing it costs a fresh download, nothing else
