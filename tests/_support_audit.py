"""``audited(watch)``: see every audit event (PEP 578) this process raises inside a block.

A hook cannot be removed once added, so one dispatcher is added per session and watchers come
and go. The events are raised *before* the operation: a watcher sees the file system as it was
just before each rename, unlink, link, open, ...
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

Watch = Callable[[str, tuple[Any, ...]], None]

_watchers: list[Watch] = []
_added: list[bool] = []


def _dispatch(event: str, args: tuple[Any, ...]) -> None:
    for w in list(_watchers):
        w(event, args)


@contextlib.contextmanager
def audited(watch: Watch) -> Iterator[None]:
    """Call ``watch(event, args)`` for every audit event raised while the block runs."""
    if not _added:
        sys.addaudithook(_dispatch)
        _added.append(True)
    _watchers.append(watch)
    try:
        yield
    finally:
        _watchers.remove(watch)


def path_arg(value: object) -> str | None:
    """An event argument as a path string (None for a descriptor or anything else)."""
    return os.fspath(value) if isinstance(value, str | os.PathLike) else None  # type: ignore
