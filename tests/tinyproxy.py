"""A real tinyproxy (Debian's /usr/bin/tinyproxy) as the lab's corporate proxy, for chaining tests.

Each instance writes its own config file, listens on a free loopback port,
runs in the foreground as a child of the test and is stopped by its pid.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

TINYPROXY = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TinyProxy:
    """tinyproxy on 127.0.0.1; ``seen()`` lists the requests it served as 'METHOD TARGET'."""

    def __init__(self, directory: Path, name: str = "tinyproxy", credentials: tuple[str, str] | None = None) -> None:
        self.log_path = directory / f"{name}.log"
        self.config = directory / f"{name}.conf"
        self.process: subprocess.Popen | None = None
        for _ in range(5):  # the free port may be taken between asking and binding
            self.port = _free_port()
            self.config.write_text(
                f"Port {self.port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 50\nAllow 127.0.0.1\n"
                f'LogFile "{self.log_path}"\nLogLevel Info\nDisableViaHeader Yes\n'
                + (f"BasicAuth {credentials[0]} {credentials[1]}\n" if credentials else "")
            )
            self.process = subprocess.Popen([TINYPROXY, "-d", "-c", str(self.config)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._listening():
                return
            self.stop()
        raise RuntimeError(f"tinyproxy did not start; see {self.log_path}")

    def _listening(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def seen(self) -> list[str]:
        """Requests served so far, in order."""
        if not self.log_path.exists():
            return []
        return [" ".join(m.groups()) for m in _REQUEST.finditer(self.log_path.read_text(errors="replace"))]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
