"""A real nginx serving a release repository on 127.0.0.1 with the shipped configuration
(docs/nginx-repo.conf), for tests/test_fleet.py and bench/bench_fleet.py (no tests here).

nginx runs unprivileged as well: every path it writes (pid, logs, temporary files) is in a
directory of the caller's, and as root its workers run as root too (a pytest tmp_path is
0700 root's, which the default worker user nobody could not read).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONF = ROOT / "docs" / "nginx-repo.conf"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


@dataclass
class Nginx:
    url: str
    access_log: Path
    pid: int

    def log_lines(self) -> list[str]:
        """``METHOD PATH STATUS BODY_BYTES BYTES_SENT REQUEST_BYTES`` per request so far."""
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def config(
    prefix: Path, repo: Path, port: int, *, workers: int = 1, server_conf: Path = SHIPPED_CONF
) -> str:
    """nginx.conf: the shipped server block (or ``server_conf``) with its ``root`` and
    ``listen`` lines replaced."""
    server = server_conf.read_text()
    server = server.replace("listen 80;", f"listen 127.0.0.1:{port};")
    server = server.replace("root /srv/selfupdate-repo;", f"root {repo};")
    (prefix / "repo-server.conf").write_text(server)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temps = "".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\nworker_processes {workers};\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    log_format fleet\n"
        "        '$request_method $request_uri $status $body_bytes_sent $bytes_sent '\n"
        "        '$request_length';\n"
        f"    access_log {prefix}/access.log fleet;\n"
        f"{temps}"
        f"    include {prefix}/repo-server.conf;\n"
        "}\n"
    )


@contextmanager
def serve(
    repo: Path, prefix: Path, *, workers: int = 1, server_conf: Path = SHIPPED_CONF
) -> Iterator[Nginx]:
    """Start nginx (``nginx -c CONF -p PREFIX``) serving ``repo``; stop it (by its PID) after."""
    binary = nginx_binary()
    assert binary is not None, "callers skip where nginx is missing"
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "tmp").mkdir(exist_ok=True)
    port = _free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(config(prefix, repo, port, workers=workers, server_conf=server_conf))
    with open(prefix / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL, stderr=err,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                logs = [prefix / "stderr.log", prefix / "error.log"]
                raise RuntimeError("nginx exited: " + " ".join(
                    p.read_text(errors="replace") for p in logs if p.exists()))  # fmt: skip
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield Nginx(f"http://127.0.0.1:{port}", prefix / "access.log", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
