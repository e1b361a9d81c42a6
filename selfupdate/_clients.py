"""How :mod:`selfupdate.app` makes its update client: the default one for what the build
embedded, and the app's own factory on a chosen or remembered channel (``update --channel``).

Kept apart from :mod:`selfupdate.app` (the app-facing surface); imports ``packaging`` and the
releases half only when called.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from selfupdate.install._staging import ClientLike

__all__ = ["channel_name", "client_for", "default_client", "older"]


def default_client(
    name: str,
    repo_url: str | None,
    channel: str | None = None,
    state_dir: Callable[[], Path] | None = None,
) -> ClientLike:
    """An UpdateClient of app ``name`` for what the build embedded (trusted root, URL or
    mirrors, channel; ``channel`` instead of the build's when given), keeping its install ID
    in the app's ``state_dir()`` (default: the platform's state directory for the app).

    Raises:
        ConfigError: the build embeds no trusted root, or no URL is given or embedded.
    """
    from selfupdate._release import build_info
    from selfupdate.errors import ConfigError

    info = build_info()
    root = info.trusted_root if info is not None else None
    if root is None:
        raise ConfigError(
            f"this build of {name} has no embedded trusted root, so it cannot verify "
            "updates: build it with selfupdate build --trusted-root ROOT.json --repo-url URL"
        )
    assert info is not None  # it had a root
    url = repo_url or info.repo_url
    if not url:
        raise ConfigError(
            f"this build of {name} has no release repository URL: pass one, or build it "
            "with selfupdate build --repo-url URL"
        )
    import hashlib

    import platformdirs

    from selfupdate.releases.client import UpdateClient

    # The cache directory, not the state directory: a snapshot of the state never holds it.
    # One per repository and root: metadata trusted from one never meets another's.
    key = hashlib.sha256(url.encode() + b"\0" + root).hexdigest()[:16]
    cache = platformdirs.user_cache_path(name) / "tuf" / key
    return UpdateClient(name, url, root, channel=channel or info.channel, cache_dir=cache,
                        state_dir=state_dir() if state_dir is not None else None)


def older(a: str, b: str) -> bool:
    """``a`` is an older PEP 440 version than ``b`` (False when either is none)."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a) < Version(b)
    except InvalidVersion:
        return False


def channel_name(channel: str | None) -> str | None:
    """``channel`` if it is a valid channel name (or None).

    Raises:
        ConfigError: it is not.
    """
    from selfupdate.errors import ConfigError
    from selfupdate.releases._trust import check_name

    try:
        return None if channel is None else check_name("channel", channel)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def client_for(
    factory: Any, repo_url: str | None, channel: str | None, pyz: Path
) -> ClientLike:
    """The app's client from its ``factory`` (``configure(client=...)``), on ``channel`` or
    the one ``update --channel`` remembered beside ``pyz``, if any.

    The factory is called with ``channel=NAME`` when it takes that keyword; otherwise the
    client it returns has its ``channel`` set (a factory written before channels could be
    switched keeps working).
    """
    from selfupdate.install import Layout, read_channel

    chosen = channel or read_channel(Layout(pyz))
    if chosen is None:
        return factory(repo_url)  # type: ignore[no-any-return]
    import inspect

    try:
        takes = "channel" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes = False
    client = factory(repo_url, channel=chosen) if takes else factory(repo_url)
    if getattr(client, "channel", None) != chosen:
        client.channel = chosen  # UpdateClient's channel is a plain attribute
    return client  # type: ignore[no-any-return]
