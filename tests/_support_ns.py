"""What namespace tests share: a new root the host's programs run in."""

from __future__ import annotations

import os
from pathlib import Path


def merged_usr_root(tmp_path: Path) -> Path:
    """An empty root ``tmp_path/root`` in which the host's ``/bin/sh`` runs once ``/usr`` is
    bound into it: the host's merged-usr links (``/bin -> usr/bin``, ...) are copied."""
    root = tmp_path / "root"
    root.mkdir()
    for name in ("bin", "lib", "lib64", "sbin"):
        target = Path("/") / name
        if target.is_symlink():
            (root / name).symlink_to(os.readlink(target))
    return root
