"""A throwaway PostgreSQL cluster for the tests: Debian's server, started and removed by us.

The data directory is a fresh one under /tmp (pytest's own temporary
directory is root's alone, and the server refuses to run as root), owned by
the package's ``postgres`` user when the tests run as root.  The server
listens on a free loopback port and on a UNIX socket in that directory,
with fsync off: the tests want a real server, not one that survives a power cut.
``wal_init_zero=off``: a new cluster makes a WAL file every 16 MB written and
would fill each with zeros first, which a server running for a while, reusing
its old files, does not; in ``bench/run.py --store postgresql`` that filling
was about a seventh of the database's CPU.  Commits stay synchronous, so a
stopped (crashed) server keeps every transaction it acknowledged, as a
production one does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


def missing_reason() -> str | None:
    """Why no cluster can be started here, or None when one can."""
    if not (BIN / "initdb").exists() or not (BIN / "pg_ctl").exists():
        return f"PostgreSQL server not installed ({BIN}/initdb, pg_ctl); apt-get install postgresql"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg not installed: pip install '.[postgres]'"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run the server as"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One server: ``start``, ``stop`` (as an outage would), ``create_database``, ``remove``."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="capture-pg-", dir="/tmp"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(BIN / "initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")

    @property
    def socket_dir(self) -> str:
        return str(self.directory)

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL for ``dbname`` over TCP on loopback."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        options = (f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory}"
                   " -c fsync=off -c full_page_writes=off -c wal_init_zero=off -c max_connections=200")
        self._run(BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "30", "start")

    @property
    def pid(self) -> int | None:
        """The running server's (postmaster's) pid, from its pid file; None when it is not running."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop at once, dropping every connection, as a crash or an outage would."""
        self._run(BIN / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t", "30", "stop")

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass  # not running
        shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self, *command: object) -> None:
        argv = [str(part) for part in command]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=60, cwd="/tmp")
