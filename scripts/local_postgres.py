"""A throwaway PostgreSQL server on 127.0.0.1, for trying many workers on one machine, for the
tests and for the worker benchmark.

    python scripts/local_postgres.py start /tmp/edgenas-pg     # prints the storage URL
    python scripts/local_postgres.py restart /tmp/edgenas-pg
    python scripts/local_postgres.py stop /tmp/edgenas-pg

Needs the PostgreSQL server programs (Debian: ``apt-get install postgresql``). The server
trusts local connections and listens on 127.0.0.1 only: fine for a test, not for sharing a
study between machines (there, use a real server with passwords; see the README).
Run as root, it runs the server as the ``postgres`` user, as PostgreSQL requires.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DB = "edgenas"
USER = "postgres"


class PostgresMissing(RuntimeError):
    pass


def bindir() -> Path:
    """The folder of initdb and pg_ctl."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if versions:
        return Path(versions[-1]).parent
    raise PostgresMissing("the PostgreSQL server programs (initdb, pg_ctl) are not installed: "
                          "on Debian or Ubuntu run 'apt-get install postgresql'")


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresMissing("running as root, but there is no 'postgres' user to run the "
                              "server as (installing Debian's postgresql package makes one)")
    return ["runuser", "-u", "postgres", "--", *cmd]


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.stdout}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url(data: Path) -> str:
    port = (data / "edgenas_port").read_text().strip()
    return f"postgresql://{USER}@127.0.0.1:{port}/{DB}"


def _ctl(data: Path, action: str) -> None:
    port = (data / "edgenas_port").read_text().strip()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={data}"
    args = [str(bindir() / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l",
            str(data / "server.log")]
    if action in ("start", "restart"):
        args += ["-o", opts]
    if action in ("stop", "restart"):
        args += ["-m", "fast"]
    _run(args + [action])


def start(data: Path, port: int | None = None) -> str:
    """Create (first time) and start a server whose files live in ``data``; its URL."""
    data = Path(data)
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(data, "postgres", "postgres")
        data.chmod(0o700)
        _run([str(bindir() / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
              "-E", "UTF8", "--no-instructions"])
        (data / "edgenas_port").write_text(str(port or free_port()))
    _ctl(data, "start")
    if not (data / "edgenas_db_created").exists():
        _run([str(bindir() / "createdb"), "-h", "127.0.0.1", "-p",
              (data / "edgenas_port").read_text().strip(), "-U", USER, DB])
        (data / "edgenas_db_created").write_text("")
    return url(data)


def create_database(data: Path, name: str) -> str:
    """A new, empty database on the server of ``data``; its URL."""
    port = (Path(data) / "edgenas_port").read_text().strip()
    _run([str(bindir() / "createdb"), "-h", "127.0.0.1", "-p", port, "-U", USER, name])
    return f"postgresql://{USER}@127.0.0.1:{port}/{name}"


def stop(data: Path) -> None:
    _ctl(Path(data), "stop")


def restart(data: Path) -> None:
    _ctl(Path(data), "restart")


def wait_ready(data: Path, timeout: float = 30) -> None:
    port = (Path(data) / "edgenas_port").read_text().strip()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if subprocess.run([str(bindir() / "pg_isready"), "-h", "127.0.0.1", "-p", port],
                          capture_output=True, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"PostgreSQL in {data} did not become ready in {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "restart", "url"])
    parser.add_argument("data", type=Path, help="folder of the server's files")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    try:
        if args.action == "start":
            print(start(args.data, args.port))
        elif args.action == "stop":
            stop(args.data)
        elif args.action == "restart":
            restart(args.data)
        else:
            print(url(args.data))
    except (PostgresMissing, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
