"""The arguments of ``selfupdate build`` (shared by the ``selfupdate`` command and ``build.sh``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from selfupdate.build._project import BuildError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from selfupdate.build import BuildOptions

EXAMPLE = """example:
  selfupdate build ~/src/hello --version 1.0.0 \\
      --trusted-root ~/release/repo/metadata/root.json --repo-url https://example.org/hello/
  -> prints ~/src/hello/dist/hello-1.0.0.pyz
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "project_dir", nargs="?", type=Path, default=Path("."), metavar="PROJECT_DIR",
        help="the app's project directory, with its pyproject.toml (default: .)",
    )
    p.add_argument("--entry-point", metavar="MOD:FN",
                   help="what the .pyz starts (default: the project's one console script)")
    p.add_argument("--version", metavar="V",
                   help="the version of this build (default: the project's own)")
    p.add_argument("--out", type=Path, metavar="PATH",
                   help="where to write the .pyz (default: PROJECT_DIR/dist/NAME-VERSION.pyz)")
    p.add_argument("--trusted-root", type=Path, metavar="FILE",
                   help="the release repository's metadata/root.json, embedded for updates")
    p.add_argument("--repo-url", metavar="URL", action="append",
                   help="the release repository's URL; repeat it for mirrors, tried in order")
    p.add_argument("--channel", default="stable", metavar="NAME",
                   help="the release channel this build follows (default: stable)")
    p.add_argument("--cache", type=Path, metavar="DIR",
                   help="where installed dependencies are kept between builds (default: "
                   "$SELFUPDATE_BUILD_CACHE or PROJECT_DIR/build/selfupdate-cache)")


def options_from(ns: argparse.Namespace) -> BuildOptions:
    from selfupdate.build import BuildOptions

    if ns.channel is not None and not ns.channel.strip():
        raise BuildError("--channel needs a name such as stable")
    return BuildOptions(
        project_dir=ns.project_dir,
        entry_point=ns.entry_point,
        version=ns.version,
        out=ns.out,
        trusted_root=ns.trusted_root,
        # Mirrors travel as one string, separated by spaces (no URL holds a raw space).
        repo_url=" ".join(u for url in ns.repo_url or () for u in url.split()) or None,
        channel=ns.channel,
        cache_dir=ns.cache,
    )
