"""Snapshots of the app's state directory around a transaction, and putting one back.

The copies are kept in the install directory, ``D/.I.state/{snapshot,previous}``
(:attr:`~selfupdate.install._layout.Layout.saved_states`), out of reach of the trial, which
is handed the state directory ``S`` and may remove all of it before failing (issue 11). A
snapshot directory holds either ``state/`` (a copy of every entry of ``S`` but the reserved
directory and the caches of :data:`STATE_EXCLUDE`) or the marker ``ABSENT`` (there was no
state directory; the updater does not create one).

Putting a ``state/`` snapshot back first copies it into ``S/.selfupdate/incoming`` (complete or
not at all), then moves entries by ``rename`` within ``S`` (one filesystem), never ``S`` itself
(a systemd ``StateDirectory=`` may be a mount point and its parent is root's).
:func:`restore_steps` plans that purely from what is on disk, so a kill between any two steps
is repaired by planning again: the live entries are moved aside, then the marker
``restoring`` is written (``fsync``ed) in the copy, then its entries are moved in; a marker
means the live entries are the restored ones and are not discarded again. The copy is dropped
by renaming it away first, so a half-removed copy is never taken for one to restore; the
snapshot in ``D`` is removed only once all of that is done, so until then a later recovery
starts again from it.
"""

from __future__ import annotations

import os
import shutil
import stat

from selfupdate._durable import fsync_dir, fsync_tree
from selfupdate.install._layout import (
    STATE_EXCLUDE,
    STATE_RESERVED,
    Layout,
    remove,
    untrusted_dir,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

__all__ = [
    "copy_state_from",
    "forget_states",
    "keep_snapshot_as_previous",
    "restore_state",
    "restore_steps",
    "rollback_state",
    "snapshot_state",
    "undo_state",
]

#: Written into a snapshot once the live entries are moved aside (see :func:`restore_steps`).
RESTORING = "restoring"

#: Top-level names of ``S`` that are not the app's state.
_NOT_STATE = frozenset({STATE_RESERVED, *STATE_EXCLUDE})


def restore_steps(
    kind: str | None, restoring: bool, live: Iterable[str], saved: Iterable[str]
) -> list[tuple[str, str]]:
    """Steps that put a snapshot back in place of the live state (pure; idempotent: planning
    again after a kill at any step gives the steps that remain).

    Args:
        kind: what the snapshot holds: ``"state"`` (a ``state/`` copy), ``"absent"`` (the
            marker ``ABSENT``), or None (there is no complete snapshot).
        restoring: the snapshot has the ``restoring`` marker: the live entries were moved
            aside already, those there now were moved in from the snapshot.
        live: the names of the live state's entries (without the reserved directory and the
            caches).
        saved: the names still in the snapshot's ``state/``.

    Returns:
        ``(step, name)`` pairs: ``("discard", NAME)`` (move the live entry aside), ``("mark",
        "")`` (write the marker), ``("restore", NAME)`` (move the snapshot's entry in),
        ``("drop", "")`` (remove the snapshot and what was moved aside) and, for ``"absent"``,
        ``("remove-state-dir", "")`` (remove the state directory the updater created, if
        nothing but caches is left in it).
    """
    steps: list[tuple[str, str]] = []
    live = sorted(live)
    if kind is not None:
        if not restoring:
            steps += [("discard", name) for name in live]
            steps.append(("mark", ""))
            live = []
        for name in sorted(saved):
            if name in live:  # moved in by hand meanwhile: the snapshot is the truth
                steps.append(("discard", name))
            steps.append(("restore", name))
    steps.append(("drop", ""))
    if kind == "absent":
        steps.append(("remove-state-dir", ""))
    return steps


def _state(layout: Layout) -> Path:
    if layout.state_dir is None:
        raise RuntimeError("this layout has no state directory")
    return layout.state_dir


def _entries(state: Path) -> list[str]:
    """The names of the app's state in ``state`` (none if it is not a directory)."""
    try:
        return sorted(n for n in os.listdir(state) if n not in _NOT_STATE)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _kind(snap: Path) -> str | None:
    if (snap / "state").is_dir():
        return "state"
    if (snap / "ABSENT").exists():
        return "absent"
    return None


def _made(path: Path) -> Path:
    """``path``, a directory of the installer's own, created 0700 if missing."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    return path


def _copy_entry(src: Path, dst: Path) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(*STATE_EXCLUDE))
    else:
        shutil.copy2(src, dst, follow_symlinks=False)


def _fsync_entry(path: Path) -> None:
    if path.is_symlink():
        return
    if path.is_dir():
        fsync_tree(path)
        return
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(layout: Layout, name: str) -> None:
    """Move the live entry ``name`` aside (into :attr:`Layout.discard`, same filesystem)."""
    _made(layout.state_private)
    discard = _made(layout.discard)
    remove(discard / name)  # left by an earlier, interrupted restore: garbage as well
    os.replace(_state(layout) / name, discard / name)


def _tidy(layout: Layout, state_dir_too: bool = False) -> None:
    """Remove the reserved directory when it is empty (and, after putting back "there was no
    state directory", the state directory when nothing but caches is left in it)."""
    state = _state(layout)
    try:
        os.rmdir(layout.state_private)
    except FileNotFoundError:
        pass
    except OSError:
        return  # not empty (the first layout of issue 11 keeps a previous state there)
    if not state_dir_too:
        if state.is_dir():
            fsync_dir(state)
        return
    if not state.is_dir() or _entries(state):
        return
    for name in STATE_EXCLUDE:  # caches of a state that never existed: nothing to keep
        remove(state / name)
    try:
        os.rmdir(state)
    except OSError:
        return  # not ours to remove, or not empty: an empty state directory is no state
    fsync_dir(state.parent)


def _drop(path: Path) -> None:
    """Remove the snapshot ``path``, renamed away in one step first: one half removed by a
    kill would be taken for a whole one by the next recovery. What a kill left renamed goes
    as well."""
    gone = path.with_name(path.name + ".dropped")
    if path.exists():
        remove(gone)
        os.replace(path, gone)
        fsync_dir(path.parent)
    remove(gone)


def _tidy_saved(layout: Layout) -> None:
    try:
        os.rmdir(layout.saved_states)
    except OSError:
        return  # not empty (a previous state is kept), or gone
    fsync_dir(layout.dir)


def snapshot_state(layout: Layout) -> None:
    """Copy the state to :attr:`Layout.snapshot` (complete or not at all): every entry of the
    state directory but the reserved one and the caches, or ``ABSENT`` when there is no state
    directory (none is created).

    Raises:
        OSError: the copy cannot be made (nothing of the live state is changed).
    """
    state = _state(layout)
    saved = _made(layout.saved_states)
    tmp = layout.snapshot_tmp
    remove(tmp)
    tmp.mkdir(mode=0o700)
    if not state.is_dir():
        (tmp / "ABSENT").write_bytes(b"")
    else:
        (tmp / "state").mkdir(mode=0o700)
        for name in _entries(state):
            _copy_entry(state / name, tmp / "state" / name)
    fsync_tree(tmp)
    remove(layout.snapshot)
    os.replace(tmp, layout.snapshot)
    fsync_dir(saved)


def restore_state(layout: Layout, snap: Path) -> None:
    """Put the snapshot ``snap``, a directory inside the state directory, back as the live
    state by renames (idempotent, kill-safe; see :func:`restore_steps`): a copy of
    :attr:`Layout.snapshot` in :attr:`Layout.incoming`, or one an older version left
    (:attr:`Layout.inside_snapshot`, :attr:`Layout.legacy_snapshot`). ``snap`` is gone
    afterwards.

    Raises:
        OSError: a step failed (planning again later finishes the job).
    """
    state = _state(layout)
    kind = _kind(snap)
    if kind == "state" and not state.is_dir():
        state.mkdir(mode=0o700)  # removed by the trial, or an older version moved it away
    saved = _entries(snap / "state") if kind == "state" else []
    steps = restore_steps(kind, (snap / RESTORING).exists(), _entries(state), saved)
    for step, name in steps:
        if step == "discard":
            _discard(layout, name)
        elif step == "mark":
            fd = os.open(snap / RESTORING, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if state.is_dir():
                fsync_dir(state)
            fsync_dir(snap)
        elif step == "restore":
            os.replace(snap / "state" / name, state / name)
        elif step == "drop":
            if state.is_dir():
                fsync_dir(state)
            _drop(snap)
            remove(layout.discard)
        else:  # remove-state-dir
            _tidy(layout, state_dir_too=True)
    _tidy(layout)


def _stage(layout: Layout, snap: Path) -> Path:
    """Copy the ``state/`` snapshot ``snap`` (in ``D``) into :attr:`Layout.incoming`
    (complete or not at all), so that it can be renamed into place; return that copy."""
    state = _state(layout)
    _made(state)  # the trial removed it
    private = _made(layout.state_private)
    tmp = layout.incoming_tmp
    remove(tmp)
    tmp.mkdir(mode=0o700)
    (tmp / "state").mkdir(mode=0o700)
    for name in _entries(snap / "state"):
        _copy_entry(snap / "state" / name, tmp / "state" / name)
    fsync_tree(tmp)
    os.replace(tmp, layout.incoming)
    fsync_dir(private)
    return layout.incoming


def _clear_state(layout: Layout) -> None:
    """Put back "there was no state directory": what the trial made goes, and the state
    directory too unless it cannot be removed (an empty one is no state either)."""
    state = _state(layout)
    if not state.is_dir():
        return
    for name in _entries(state):
        _discard(layout, name)
    remove(layout.discard)
    _tidy(layout, state_dir_too=True)


def copy_state_from(layout: Layout, snap: Path) -> None:
    """Make the live state a copy of the snapshot ``snap`` (rollback's trial runs on it; the
    snapshot of the state rolled back from was taken before, so a kill here is undone).

    Raises:
        OSError: a step failed.
    """
    state = _state(layout)
    for name in _entries(state):
        _discard(layout, name)
    if (snap / "state").is_dir():
        _made(state)
        for name in _entries(snap / "state"):
            _copy_entry(snap / "state" / name, state / name)
            _fsync_entry(state / name)
    remove(layout.discard)
    if state.is_dir():
        fsync_dir(state)


def _legacy_trusted(layout: Layout) -> bool:
    """Whether what an older version left beside the state directory may be used: only from a
    directory that only this user or root can write (as the older version required)."""
    return untrusted_dir(_state(layout).parent) is None


def _legacy(path: Path, layout: Layout) -> Path | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or not _legacy_trusted(layout):
        return None
    if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o022:
        return None
    return path


def _remove_quietly(path: Path) -> None:
    try:
        remove(path)
    except OSError:
        pass  # beside the state directory: an older version's, and not always ours to remove


def rollback_state(layout: Layout) -> Path | None:
    """The state a rollback puts back: :attr:`Layout.previous_state`, else one an older
    version kept (the update to this version was made by it: in the state directory, else
    beside it), else None (no state was kept: the previous build's trial runs on the live
    state)."""
    if layout.previous_state.is_dir():
        return layout.previous_state
    if layout.inside_previous_state.is_dir():
        return layout.inside_previous_state
    return _legacy(layout.legacy_previous_state, layout)


def undo_state(layout: Layout, expected: bool = False) -> str:
    """Undo the state side of a transaction that did not reach its commit point: the snapshot
    (or one an older version's transaction left) is put back.

    Args:
        layout: the installed file and state directory.
        expected: the transaction had recorded its snapshot as taken (so finding none means
            it was removed behind the updater's back).

    Returns:
        ``"restored"`` (a snapshot was put back), ``"none"`` (no snapshot had been taken: the
        live state was not touched yet) or ``"missing"`` (one had been taken and is gone: the
        live state is left as it was found).

    Raises:
        OSError: a step failed (the journal stays; the next recovery plans again from the
            snapshot, which is removed last).
    """
    outcome = "none"
    if layout.incoming.is_dir():
        restore_state(layout, layout.incoming)  # a restore under way: finish it
        outcome = "restored"
    kind = _kind(layout.snapshot)
    if kind == "absent":
        _clear_state(layout)
        outcome = "restored"
    elif kind == "state" and outcome == "none":
        restore_state(layout, _stage(layout, layout.snapshot))
        outcome = "restored"
    elif kind is None and outcome == "none":
        outcome = _undo_older(layout)
    _drop(layout.snapshot)
    remove(layout.snapshot_tmp)
    _tidy_saved(layout)
    if layout.state_private.is_dir():
        for leftover in layout.leftovers:
            remove(leftover)
        _tidy(layout)
    if outcome == "none" and expected:
        return "missing"
    return outcome


def _undo_older(layout: Layout) -> str:
    """Put back the snapshot an older version's interrupted transaction left, if any."""
    if layout.inside_snapshot.is_dir():
        restore_state(layout, layout.inside_snapshot)
        return "restored"
    legacy = _legacy(layout.legacy_snapshot, layout)
    if legacy is None:
        return "none"
    restore_state(layout, legacy)
    for leftover in layout.legacy_leftovers:
        _remove_quietly(leftover)
    return "restored"


def keep_snapshot_as_previous(layout: Layout) -> None:
    """After an update's commit point: the snapshot becomes the previous build's state, and a
    previous state an older version kept is dropped (it belongs to a build no longer kept).

    Raises:
        OSError: a step failed (the journal stays; the next recovery finishes).
    """
    if layout.snapshot.exists():
        remove(layout.previous_state)
        os.replace(layout.snapshot, layout.previous_state)
        fsync_dir(layout.saved_states)
        remove(layout.inside_previous_state)
        if _legacy(layout.legacy_previous_state, layout) is not None:
            _remove_quietly(layout.legacy_previous_state)
        if layout.state_private.is_dir():
            _tidy(layout)
        return
    # An older version's update, killed after its commit point and finished by this one: its
    # snapshot becomes the previous state where it keeps it, as it would have done (unless it
    # is older than the previous state this version kept: a leftover, not this transaction's).
    if layout.inside_snapshot.is_dir() and _newer(layout.inside_snapshot, layout.previous_state):
        remove(layout.inside_previous_state)
        os.replace(layout.inside_snapshot, layout.inside_previous_state)
        fsync_dir(layout.state_private)
        remove(layout.previous_state)
        _tidy_saved(layout)
        return
    legacy = _legacy(layout.legacy_snapshot, layout)
    if legacy is not None and _newer(legacy, layout.previous_state):
        remove(layout.legacy_previous_state)
        os.replace(legacy, layout.legacy_previous_state)
        fsync_dir(legacy.parent)
        remove(layout.previous_state)
        remove(layout.inside_previous_state)
        _tidy_saved(layout)
        if layout.state_private.is_dir():
            _tidy(layout)


def _newer(path: Path, than: Path) -> bool:
    """Whether ``path`` was written after ``than`` (or ``than`` does not exist)."""
    try:
        return os.stat(path).st_mtime_ns >= os.stat(than).st_mtime_ns
    except FileNotFoundError:
        return True


def forget_states(layout: Layout) -> None:
    """After a rollback's commit point: nothing is previous any more; the snapshot and every
    kept state (ours and an older version's) go. When the state put back was "there was no
    state directory", the state directory goes too if nothing but caches is left in it.

    Raises:
        OSError: a step failed (the journal stays; the next recovery finishes).
    """
    source = rollback_state(layout)
    absent = source is not None and _kind(source) == "absent"
    remove(layout.snapshot)
    remove(layout.previous_state)
    _tidy_saved(layout)
    if layout.state_private.is_dir():
        remove(layout.inside_snapshot)
        remove(layout.inside_previous_state)
        for leftover in layout.leftovers:
            remove(leftover)
    if _legacy(layout.legacy_previous_state, layout) is not None:
        _remove_quietly(layout.legacy_previous_state)
    if _legacy(layout.legacy_snapshot, layout) is not None:
        _remove_quietly(layout.legacy_snapshot)
    _tidy(layout, state_dir_too=absent)
