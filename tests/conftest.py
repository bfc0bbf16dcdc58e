"""Fixtures that run the real thing: the origin server and the twistd appliance."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"(proxy|admin) listening on (\S+):(\d+)")


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate`` returns something true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """Is the process there (a zombie only waits for its parent to reap it, so it counts as gone)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def child_env() -> dict[str, str]:
    """The environment for processes under test: this checkout's code first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy", "no_proxy", "NO_PROXY"):
        env.pop(name, None)
    return env


class Origin:
    """tests/origin.py in its own process (HTTPS when given a certificate and key)."""

    def __init__(self, cert: Path | None = None, key: Path | None = None) -> None:
        tls = [str(cert), str(key)] if cert else []
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "origin.py"), *tls],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        line = self.process.stdout.readline()
        self.port = int(line.split()[1])
        self.url = f"{'https' if cert else 'http'}://127.0.0.1:{self.port}"

    def log(self) -> list[dict]:
        """Every request this (plain HTTP) origin has seen."""
        return requests.get(f"{self.url}/__log", timeout=5).json()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.stop()


class Appliance:
    """``twistd -n capture`` with a temporary config, driven like a user would."""

    def __init__(self, directory: Path, **sections: dict[str, Any]) -> None:
        self.directory = directory
        self.var = directory / "var"
        settings: dict[str, dict[str, Any]] = {
            "proxy": {"listen": "tcp:0:interface=127.0.0.1"},
            "tls": {"ca_dir": self.var / "ca"},
            "store": {"socket": self.var / "run" / "sessiond.sock", "database": self.var / "capture.sqlite"},
            "admin": {"listen": "tcp:0:interface=127.0.0.1", "token_file": self.var / "admin.token"},
        }
        for section, values in sections.items():
            settings.setdefault(section, {}).update(values)
        self.config = directory / "capture.ini"
        self.config.write_text(
            "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items()) for s, kv in settings.items())
        )
        self.log_path = directory / "twistd.log"
        self.process: subprocess.Popen | None = None
        self.env: dict[str, str] = {}  # added to the environment twistd starts with
        self.proxy_port = self.admin_port = 0
        self._log_offset = 0

    # -- life -------------------------------------------------------------------

    def start(self, timeout: float = 30.0, wait_connected: bool = True) -> Appliance:
        """Start twistd; return once both listeners are up and (unless told not to) the session manager is linked."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "capture", "--config", str(self.config)],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**child_env(), **self.env},
            )
        ports = wait_for(self._ports, timeout)
        self.proxy_port, self.admin_port = ports["proxy"], ports["admin"]
        if wait_connected:
            wait_for(lambda: self.status().get("session_manager", {}).get("connected"), timeout)
        return self

    def _ports(self) -> dict[str, int] | None:
        if self.process.poll() is not None:
            raise AssertionError(f"twistd exited with {self.process.returncode}:\n{self.log_text()}")
        found = {name: int(port) for name, _, port in _LISTENING.findall(self.log_text())}
        return found if len(found) == 2 else None

    def log_text(self) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as systemd does; returns twistd's exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    # -- use --------------------------------------------------------------------

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def token(self) -> str:
        return (self.var / "admin.token").read_text().strip()

    def tunnel(self, port: int, host: str = "localhost") -> socket.socket:
        """A socket through the proxy's CONNECT to ``host:port``, past its 200 reply."""
        sock = socket.create_connection(("127.0.0.1", self.proxy_port), timeout=10)
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(1024)
        assert reply.startswith(b"HTTP/1.1 200")
        return sock

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        with requests.Session() as session:
            session.trust_env = False
            return session.request(method, self.admin_url + path, headers=headers, timeout=15, **kwargs)

    def status(self) -> dict[str, Any]:
        try:
            return self.api("GET", "/api/status").json()
        except requests.RequestException:
            return {}

    def client(self) -> requests.Session:
        """A requests session that goes through the proxy."""
        session = requests.Session()
        session.trust_env = False
        session.proxies = {"http": self.proxy_url}
        return session

    def new_session(self, **fields: Any) -> dict[str, Any]:
        response = self.api("POST", "/api/sessions", json={"name": "test", **fields})
        assert response.status_code == 201, response.text
        return response.json()

    def flows(self, session_id: int, **params: Any) -> dict[str, Any]:
        response = self.api("GET", f"/api/sessions/{session_id}/flows", params={"limit": 1000, **params})
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_flows(self, session_id: int, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The session's flows once at least ``count`` are stored."""
        def enough():
            try:
                flows = self.flows(session_id)["flows"]
            except (AssertionError, requests.RequestException):
                return None
            return flows if len(flows) >= count else None
        return wait_for(enough, timeout, interval=0.1)

    def sessiond_pid(self) -> int:
        return self.status()["session_manager"]["pid"]


@pytest.fixture
def make_appliance(tmp_path: Path) -> Iterator[Callable[..., Appliance]]:
    """Build appliances with config overrides; every one is stopped (or killed) afterwards."""
    made: list[Appliance] = []

    def make(**sections: dict[str, Any]) -> Appliance:
        appliance = Appliance(tmp_path, **sections)
        made.append(appliance)
        return appliance

    yield make
    for appliance in made:
        try:
            appliance.stop(timeout=20)
        except subprocess.TimeoutExpired:
            appliance.kill()


@pytest.fixture
def appliance(make_appliance: Callable[..., Appliance]) -> Appliance:
    return make_appliance().start()


# -- store backends -----------------------------------------------------------------

#: Every store backend the store test suite runs on.
STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the whole test run; skipped where none is installed."""
    import pgcluster

    reason = pgcluster.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = pgcluster.Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


def fresh_database(backend: str, directory: Path, request: pytest.FixtureRequest) -> str:
    """A new, empty database of ``backend``, as ``[store] database`` names it."""
    if backend == "sqlite":
        return str(directory / "db" / "capture.sqlite")
    if backend == "postgresql":
        return request.getfixturevalue("postgres_cluster").create_database()
    raise ValueError(f"unknown store backend {backend!r}")


@pytest.fixture(params=STORE_BACKENDS)
def store_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database for one test, once for each store backend."""
    return fresh_database(request.param, tmp_path, request)
