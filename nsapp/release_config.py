"""The release configuration embedded by ``./build.sh --trusted-root FILE --repo-url URL``.

``nsapp/_release/trusted_root.json`` and ``nsapp/_release/repo_url.txt`` exist only in a build
made with those flags (never in a dev checkout).
"""

from __future__ import annotations

from importlib import resources


def _read(name: str) -> bytes | None:
    try:
        return resources.files("nsapp").joinpath("_release", name).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def load() -> tuple[bytes | None, str | None]:
    """Return (trusted root metadata bytes or None, repository URL or None) of this build.

    Returns:
        The embedded initial trusted root (TUF root.json) and the release repository URL;
        None for what the build did not embed.
    """
    root = _read("trusted_root.json")
    url = _read("repo_url.txt")
    return root, (url.decode("utf-8").strip() or None) if url is not None else None
