"""The example app's version: the one its single-file build was made with (``selfupdate build
--version V`` or ``examples/nsapp/pyproject.toml``), else this checkout's development version."""

from selfupdate import build_info

_DEVELOPMENT = "0.1.0.dev0"
_info = build_info()
VERSION = _info.version if _info is not None else _DEVELOPMENT
