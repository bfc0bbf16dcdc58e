#!/usr/bin/env python3
"""Benchmark the capture appliance against a local nginx, optionally beside mitmdump.

    python bench/run.py [--quick] [--peer] [--only SCENARIO ...] [--store sqlite|postgresql]

Standard library only. It compiles bench/loadgen.c into bench/out/ when
needed, makes a throwaway origin CA and certificate, starts nginx (HTTP and
HTTPS) and the appliance with a temporary config and a session recording
everything, pins the proxy to one core and the load generator and nginx to
another, runs each scenario, prints one JSON line per scenario and tool, and
writes a markdown report to bench/out/results.md. With ``--store postgresql``
the appliance stores its flows in a throwaway local PostgreSQL cluster
(tests/pgcluster.py) instead of SQLite. Every process it starts is stopped by
pid on the way out, Ctrl-C included. See bench/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = OUT / "loadgen"
MITM_VENV = OUT / "mitm-venv"
MITM_SPEC = "mitmproxy==11.0.*"
APT_HINT = "hint: apt-get install nginx-light libcurl4-openssl-dev"

CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20

# name: (kind, scheme, connections, new connection per request)
SCENARIOS: dict[str, tuple[str, str, int, bool]] = {
    "http-ka-10": ("rps", "http", 10, False),
    "http-ka-10-nocapture": ("rps", "http", 10, False),
    "http-ka-50": ("rps", "http", 50, False),
    "http-ka-50-nocapture": ("rps", "http", 50, False),
    "https-ka-10": ("rps", "https", 10, False),
    "https-ka-50": ("rps", "https", 50, False),
    # HTTP/2: that many streams multiplexed on one connection (libcurl CURLPIPE_MULTIPLEX, PIPEWAIT).
    "h2-mux-10": ("rps", "https", 10, False),
    "h2-mux-50": ("rps", "https", 50, False),
    "http-new": ("rps", "http", 10, True),
    "https-new": ("rps", "https", 10, True),
    "dl-http": ("dl", "http", 1, False),
    "dl-https": ("dl", "https", 1, False),
    "ul-http": ("ul", "http", 1, False),
    "ul-https": ("ul", "https", 1, False),
}
OURS_ONLY = {"http-ka-10-nocapture", "http-ka-50-nocapture"}


class BenchError(Exception):
    """A failure that ends the run with a one-line message."""


# -- processes ----------------------------------------------------------------


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a child gets SIGTERM if this harness dies without cleaning up.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


class Children:
    """Every process the harness starts, stopped by pid (and known descendants) at the end."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.extra_pids: set[int] = set()

    def start(self, name: str, argv: list[str], log: Path | None = None, **kw: Any) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=kw.pop("stdout", out),
                stderr=kw.pop("stderr", subprocess.STDOUT if log else subprocess.DEVNULL),
                start_new_session=True,
                preexec_fn=_die_with_parent,
                **kw,
            )
        finally:
            if log:
                out.close()
        self.procs.append((name, proc))
        return proc

    def remember(self, pids: set[int]) -> None:
        self.extra_pids |= pids

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        # Note the descendants first: once the parent is gone they are harder to find.
        self.extra_pids |= descendants(proc.pid)
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]
        self._stop_extra()

    def _stop_extra(self) -> None:
        for pid in sorted(self.extra_pids):
            if not alive(pid):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                continue
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in self.extra_pids):
            time.sleep(0.05)
        for pid in self.extra_pids:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.extra_pids = {p for p in self.extra_pids if alive(p)}

    def stop_all(self) -> None:
        for _name, proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as e:  # keep stopping the others
                print(f"bench: could not stop pid {proc.pid}: {e}", file=sys.stderr)
        self._stop_extra()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process: sched_setaffinity on a pid moves its main thread only."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass  # the thread ended meanwhile


def descendants(pid: int) -> set[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total


def core_ticks(cpus: set[int]) -> int:
    """Busy ticks (anything but idle and iowait, steal included) of these CPUs, from /proc/stat."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
                total += user + nice + system + irq + softirq + steal
    return total


def mem_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def reset_peak(pids: list[int]) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode}{log_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{what} did not listen on port {port} within {timeout:.0f} s{log_tail(log)}")


def log_tail(log: Path | None, lines: int = 15) -> str:
    if not log or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n--- " + str(log) + " (tail) ---\n" + "\n".join(text)


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


# -- prerequisites --------------------------------------------------------------


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BenchError(f"nginx not found\n{APT_HINT}")


def build_loadgen() -> None:
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise BenchError(f"no C compiler (gcc) found to build {LOADGEN_SRC}\nhint: apt-get install gcc libcurl4-openssl-dev")
    OUT.mkdir(parents=True, exist_ok=True)
    cmd = [cc, "-O2", "-Wall", "-o", str(LOADGEN), str(LOADGEN_SRC), "-lcurl"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        hint = APT_HINT if "curl/curl.h" in result.stderr or "lcurl" in result.stderr else ""
        raise BenchError(f"building loadgen failed: {shlex.join(cmd)}\n{result.stderr.strip()}\n{hint}".rstrip())
    print(f"bench: built {LOADGEN.relative_to(ROOT)}", file=sys.stderr)


def ensure_mitmdump() -> Path:
    mitmdump = MITM_VENV / "bin" / "mitmdump"
    if mitmdump.exists():
        return mitmdump
    print(f"bench: installing {MITM_SPEC} into {MITM_VENV.relative_to(ROOT)} (a minute or two)", file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(MITM_VENV)], check=True, timeout=300)
        subprocess.run([str(MITM_VENV / "bin" / "pip"), "install", "-q", MITM_SPEC], check=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(MITM_VENV, ignore_errors=True)
        raise BenchError(f"installing mitmproxy failed: {e}") from None
    return mitmdump


# -- the origin -------------------------------------------------------------------


def make_origin_pki(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a 127.0.0.1/localhost server certificate, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise BenchError("openssl not found\nhint: apt-get install openssl")
    ca_key, ca_pem = tmp / "origin-ca.key", tmp / "origin-ca.pem"
    key, csr, pem, ext = tmp / "origin.key", tmp / "origin.csr", tmp / "origin.pem", tmp / "origin.ext"
    ext.write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n"
    )

    def run(*args: str) -> None:
        result = subprocess.run([openssl, *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise BenchError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_pem), "-days", "2",
        "-subj", "/CN=capture bench origin CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-new", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_pem), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(pem))
    return ca_pem, pem, key


def make_files(www: Path, big_bytes: int) -> dict[str, int]:
    www.mkdir()
    sizes = {"1k.bin": 1024, "1m.bin": MIB, "100m.bin": 100 * MIB}
    if big_bytes != 100 * MIB:
        sizes[f"{big_bytes // MIB}m.bin"] = big_bytes
    for name, size in sizes.items():
        with open(www / name, "wb") as f:
            if size <= MIB:
                f.write(os.urandom(size))
            else:
                f.truncate(size)  # sparse: created at once, read back as zeros
    return sizes


def nginx_conf(tmp: Path, http_port: int, https_port: int, cert: Path, key: Path, nginx: str) -> Path:
    compiled = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=30).stderr
    temp_paths = [f"client_body_temp_path {tmp}/nginx-body;", f"proxy_temp_path {tmp}/nginx-proxy;"]
    for module in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in compiled:
            temp_paths.append(f"{module}_temp_path {tmp}/nginx-{module};")
    conf = tmp / "nginx.conf"
    conf.write_text(f"""\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {' '.join(temp_paths)}
    types {{ application/octet-stream bin; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    log_format upload '$request_length $status $request_time';
    log_format sink '$connection_requests';
    upstream sink {{ server 127.0.0.1:{http_port}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{http_port} backlog=4096;
        listen 127.0.0.1:{https_port} ssl http2 backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:10m;
        root {tmp}/www;
        location / {{ }}
        # Uploads: proxy_pass with request buffering reads the whole body
        # before answering (a bare "return" may answer first); the log line
        # lets the harness check how many bytes arrived.
        location = /upload {{
            access_log {tmp}/upload.log upload;
            client_max_body_size 0;
            client_body_buffer_size 1m;
            proxy_request_buffering on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://sink/discard;
        }}
        location = /discard {{ access_log {tmp}/sink.log sink; client_max_body_size 0; return 200 "ok\\n"; }}
        # Connections accepted, to see how well the proxy reuses its upstream connections
        # (less the internal ones to /discard, counted from sink.log).
        location = /nginx-status {{ stub_status; }}
    }}
}}
""")
    return conf


# -- the proxies under test ---------------------------------------------------------


class Api:
    """The appliance's admin API over http.client (no proxy, bearer token)."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token

    def __call__(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Authorization": f"Bearer {self.token}"}
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            text = response.read()
            if response.status >= 400:
                raise BenchError(f"admin API {method} {path}: {response.status} {text[:200]!r}")
            return json.loads(text) if text else None
        finally:
            conn.close()


class Capture:
    """The appliance (twistd capture) with a temporary config and one session recording everything."""

    tool = "capture"

    def __init__(self, children: Children, tmp: Path, origin_ca: Path, cpus: str | None, workers: int,
                 sessiond_cpus: str | None = None, *, wrap: Callable[[list[str]], list[str]] | None = None,
                 ready_timeout: float = 60, database: str | None = None) -> None:
        self.children = children
        self.workers = workers
        self.dir = tmp / "capture"
        self.dir.mkdir()
        self.port = free_port()
        self.admin_port = free_port()
        self.log = self.dir / "capture.log"
        self.cacert = self.dir / "ca" / "ca.pem"
        self.config = self.dir / "capture.ini"
        self.config.write_text(f"""\
[proxy]
listen = tcp:{self.port}:interface=127.0.0.1
max_capture_body = 1048576
workers = {workers}
[tls]
ca_dir = {self.dir}/ca
upstream_ca = {origin_ca}
[store]
socket = {self.dir}/run/sessiond.sock
database = {database or self.dir / "capture.sqlite"}
[admin]
listen = tcp:{self.admin_port}:interface=127.0.0.1
token_file = {self.dir}/admin.token
""")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        # twistd with the harness's own Python (and the checkout first on the path).
        twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
        argv = [sys.executable, "-c", twistd, "-n", "--pidfile=", "capture", "--config", str(self.config)]
        argv = pinned(cpus, argv)
        if wrap is not None:  # bench/instructions.py runs the proxy under callgrind
            argv = wrap(argv)
        self.proc = children.start("capture", argv, log=self.log, env=env, cwd=self.dir)
        self.api = self._ready(ready_timeout)
        if sessiond_cpus:
            # The session manager inherits the proxy's pinning; move it where asked, every thread
            # of it (the PostgreSQL store's writer and listener threads are running already).
            pin_threads(self.sessiond_pid(), cpu_set(sessiond_cpus))
        self.session = self.api("POST", "/api/sessions", {"name": "bench"})["id"]

    def _ready(self, timeout: float = 60) -> Api:
        deadline = time.monotonic() + timeout
        token_file = self.dir / "admin.token"
        api = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the appliance exited with status {self.proc.returncode}{log_tail(self.log)}")
            if api is None and token_file.exists() and token_file.read_text().strip():
                api = Api(self.admin_port, token_file.read_text().strip())
            if api is not None:
                try:
                    status = api("GET", "/api/status", timeout=2)
                    if status["listeners"].get("proxy") and status["session_manager"].get("connected"):
                        self.children.remember(descendants(self.proc.pid))
                        return api
                except (OSError, BenchError, KeyError, ValueError):
                    pass
            time.sleep(0.2)
        raise BenchError(f"the appliance was not ready within {timeout:.0f} s{log_tail(self.log)}")

    def status(self) -> dict[str, Any]:
        return self.api("GET", "/api/status")

    def sessiond_pid(self) -> int | None:
        return self.status()["session_manager"].get("pid")

    def proxy_pids(self) -> list[int]:
        """twistd and any worker processes: every descendant but the session manager."""
        manager = self.sessiond_pid()
        others = descendants(self.proc.pid)
        if manager is not None:
            others -= {manager} | descendants(manager)
        return [self.proc.pid, *sorted(others)]

    def flow_count(self) -> int:
        return int(self.api("GET", f"/api/sessions/{self.session}")["flow_count"])

    def pending(self) -> int:
        return int(self.status()["pending_flows"])

    def drain(self, timeout: float) -> float | None:
        """Seconds until no flow is pending, or None after ``timeout``.

        Worker processes report their counters every second, so with workers
        a 0 may be a second old: it must still read 0 after that second.
        """
        start = time.monotonic()
        settle = 1.5 if self.workers > 1 else 0.0
        while time.monotonic() - start < timeout:
            if self.pending() == 0:
                drained = time.monotonic() - start
                time.sleep(settle)
                if not settle or self.pending() == 0:
                    return drained
            time.sleep(0.1)
        return None

    def stop(self) -> None:
        self.children.remember(descendants(self.proc.pid))
        self.children.stop(self.proc, timeout=30)


class Mitmdump:
    """mitmdump from its own virtual environment, with a temporary confdir."""

    tool = "mitmdump"

    def __init__(self, children: Children, tmp: Path, origin_ca: Path, cpus: str | None, exe: Path) -> None:
        self.children = children
        self.dir = tmp / "mitmdump"
        self.dir.mkdir()
        self.port = free_port()
        self.log = self.dir / "mitmdump.log"
        self.cacert = self.dir / "conf" / "mitmproxy-ca-cert.pem"
        argv = [
            str(exe), "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
            "--set", f"confdir={self.dir / 'conf'}",
            "--set", f"ssl_verify_upstream_trusted_ca={origin_ca}",
            "--set", "stream_large_bodies=1m", "-q",
        ]
        self.proc = children.start("mitmdump", pinned(cpus, argv), log=self.log)
        wait_port(self.port, self.proc, 60, "mitmdump", self.log)
        deadline = time.monotonic() + 30
        while not self.cacert.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self.cacert.exists():
            raise BenchError(f"mitmdump wrote no CA to {self.cacert}")

    def proxy_pids(self) -> list[int]:
        return [self.proc.pid, *sorted(descendants(self.proc.pid))]

    def stop(self) -> None:
        self.children.stop(self.proc, timeout=15)


# -- running scenarios ------------------------------------------------------------


class Sampler(threading.Thread):
    """Samples the proxy's RSS every 50 ms and the appliance's backlog every second."""

    def __init__(self, pids: list[int], capture: Capture | None) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.capture = capture
        self.stop_event = threading.Event()
        self.rss_max_kb = 0
        self.pending_max = 0

    def run(self) -> None:
        next_poll = 0.0
        while not self.stop_event.is_set():
            self.rss_max_kb = max(self.rss_max_kb, sum(mem_kb(p, "VmRSS") for p in self.pids))
            if self.capture is not None and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + 1
                try:
                    self.pending_max = max(self.pending_max, self.capture.pending())
                except (OSError, BenchError, KeyError, ValueError):
                    pass
            self.stop_event.wait(0.05)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(5)


class Bench:
    def __init__(self, args: argparse.Namespace, children: Children, tmp: Path) -> None:
        self.args = args
        self.children = children
        self.tmp = tmp
        self.seconds = args.seconds if args.seconds else (2.0 if args.quick else 10.0)
        self.big = (args.big_mib if args.big_mib else (20 if args.quick else 100)) * MIB
        self.results: list[dict[str, Any]] = []

    def start_origin(self) -> None:
        nginx = find_nginx()
        self.origin_ca, cert, key = make_origin_pki(self.tmp)
        make_files(self.tmp / "www", self.big)
        self.http_port, self.https_port = free_port(), free_port()
        conf = nginx_conf(self.tmp, self.http_port, self.https_port, cert, key, nginx)
        log = self.tmp / "nginx-out.log"
        argv = [nginx, "-e", str(self.tmp / "nginx-error.log"), "-p", str(self.tmp), "-c", str(conf)]
        self.nginx = self.children.start("nginx", pinned(self.args.load_cpus, argv), log=log)
        wait_port(self.http_port, self.nginx, 30, "nginx", self.tmp / "nginx-error.log")
        wait_port(self.https_port, self.nginx, 30, "nginx", self.tmp / "nginx-error.log")

    def origin_accepts(self) -> int:
        """Connections nginx accepted from the proxy so far (not counting its own to /discard)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request("GET", "/nginx-status")
            # "Active connections: 1 \nserver accepts handled requests\n 5 5 9 \n..."
            accepts = int(conn.getresponse().read().split(b"\n")[2].split()[0])
        finally:
            conn.close()
        sink = self.tmp / "sink.log"
        internal = sink.read_text().split().count("1") if sink.exists() else 0
        return accepts - internal

    def url(self, scheme: str, path: str) -> str:
        port = self.http_port if scheme == "http" else self.https_port
        return f"{scheme}://127.0.0.1:{port}/{path}"

    def loadgen(self, proxy: Any, url: str, connections: int, *, seconds: float | None = None,
                requests: int | None = None, new: bool = False, upload: int | None = None,
                http2: bool = False) -> tuple[float, subprocess.Popen]:
        argv = [str(LOADGEN), "--url", url, "--proxy", f"http://127.0.0.1:{proxy.port}",
                "--cacert", str(proxy.cacert), "--connections", str(connections),
                "--http2" if http2 else "--http1.1", "--timeout", "300"]
        argv += ["--duration", str(seconds)] if seconds else ["--requests", str(requests)]
        if new:
            argv.append("--new-connection")
        if upload is not None:
            argv += ["--upload-bytes", str(upload)]
        errlog = self.tmp / "loadgen.err"
        with open(errlog, "w") as err:
            proc = self.children.start("loadgen", pinned(self.args.load_cpus, argv), stdout=subprocess.PIPE, stderr=err)
        return time.monotonic(), proc

    def finish_loadgen(self, proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.children.stop(proc)
            raise BenchError(f"the load generator ran past {timeout:.0f} s") from None
        self.children.procs = [(n, p) for n, p in self.children.procs if p is not proc]
        err = (self.tmp / "loadgen.err").read_text(errors="replace").strip()
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise BenchError(f"the load generator printed no result (status {proc.returncode}): {err}") from None
        if err:
            result["first_error"] = err.splitlines()[0]
        return result

    def warm_up(self, proxy: Any) -> None:
        """One round over HTTP and HTTPS: leaf certificate minted, pools filled, errors caught early."""
        for scheme in ("http", "https"):
            _, proc = self.loadgen(proxy, self.url(scheme, "1k.bin"), 2, requests=20)
            result = self.finish_loadgen(proc, 60)
            if result["errors"]:
                raise BenchError(f"{proxy.tool}: warm-up over {scheme} failed: {result.get('first_error', '')}")

    def run_tool(self, proxy: Any, names: list[str]) -> None:
        self.warm_up(proxy)
        capture = proxy if isinstance(proxy, Capture) else None
        if capture is not None and capture.drain(60) is None:
            raise BenchError("the appliance did not store the warm-up flows within 60 s")
        for round_number in range(1, self.args.rounds + 1):
            for name in names:
                if name in OURS_ONLY and capture is None:
                    continue
                result = self.scenario(proxy, capture, name)
                if self.args.rounds > 1:
                    result["round"] = round_number
                self.results.append(result)
                print(json.dumps(result), flush=True)
                time.sleep(0.5)
        # The proxy's memory once the whole run is over.
        time.sleep(1)
        pids = proxy.proxy_pids()
        final = {"scenario": "after-run", "tool": proxy.tool,
                 "rss_mb": round(sum(mem_kb(p, "VmRSS") for p in pids) / 1024, 1),
                 "peak_rss_mb": round(sum(mem_kb(p, "VmHWM") for p in pids) / 1024, 1)}
        if capture is not None:
            manager = capture.sessiond_pid()
            final["sessiond_rss_mb"] = round(mem_kb(manager, "VmRSS") / 1024, 1) if manager else None
            status = capture.status()
            final["dropped_flows"] = status["dropped_flows"]
            final["session_flows"] = capture.flow_count()
        self.results.append(final)
        print(json.dumps(final), flush=True)

    def scenario(self, proxy: Any, capture: Capture | None, name: str) -> dict[str, Any]:
        kind, scheme, connections, new = SCENARIOS[name]
        paused = name.endswith("-nocapture")
        manager = None
        if capture is not None:
            if paused:
                capture.api("POST", f"/api/sessions/{capture.session}/pause")
            before_flows = capture.flow_count()
            manager = capture.sessiond_pid()
        upload_log = self.tmp / "upload.log"
        upload_lines = len(upload_log.read_text().splitlines()) if upload_log.exists() else 0
        pids = proxy.proxy_pids()
        rss_before = sum(mem_kb(p, "VmRSS") for p in pids)
        peak_reset = reset_peak(pids)
        t_proxy = cpu_ticks(pids)
        t_manager = cpu_ticks([manager]) if manager else 0
        t_nginx = cpu_ticks([self.nginx.pid])
        accepts = self.origin_accepts()
        proxy_cores = cpu_set(self.args.proxy_cpus) if self.args.proxy_cpus else None
        t_cores = core_ticks(proxy_cores) if proxy_cores else 0

        if kind == "rps":
            start, proc = self.loadgen(proxy, self.url(scheme, "1k.bin"), connections, seconds=self.seconds, new=new,
                                       http2=name.startswith("h2-"))
            timeout = self.seconds + 120
        elif kind == "dl":
            path = f"{self.big // MIB}m.bin"
            start, proc = self.loadgen(proxy, self.url(scheme, path), 1, seconds=self.seconds)
            timeout = self.seconds + 600
        else:
            start, proc = self.loadgen(proxy, self.url(scheme, "upload"), 1, seconds=self.seconds, upload=self.big)
            timeout = self.seconds + 600
        sampler = Sampler(pids, capture)
        sampler.start()
        try:
            load = self.finish_loadgen(proc, timeout)
        finally:
            sampler.finish()
        wall = time.monotonic() - start

        cpu = lambda ticks: round(100.0 * ticks / CLK_TCK / wall, 1)  # noqa: E731 - % of one core
        result: dict[str, Any] = {"scenario": name, "tool": proxy.tool}
        ok = load["requests"] - load["errors"]
        result.update({
            "requests": load["requests"], "errors": load["errors"], "seconds": load["seconds"],
            "rps": load["rps"], "p50_ms": load["p50_ms"], "p99_ms": load["p99_ms"],
            "mb_per_s": load["mb_per_s"], "connections": connections, "connects": load["connects"],
            "proxy_cpu": cpu(cpu_ticks(pids) - t_proxy),
            "loadgen_cpu": round(100.0 * load["cpu_s"] / wall, 1),
            "nginx_cpu": cpu(cpu_ticks([self.nginx.pid]) - t_nginx),
            "origin_connects": self.origin_accepts() - accepts - 1,  # less the status request itself
        })
        if capture is not None:
            result["sessiond_cpu"] = cpu(cpu_ticks([manager]) - t_manager) if manager else None
        if proxy_cores:
            # Whatever else ran on the proxy's cores (other programs, the hypervisor's steal): noise.
            ours = result["proxy_cpu"] + (0 if self.args.sessiond_cpus else result.get("sessiond_cpu") or 0)
            result["other_on_proxy_cpu"] = round(max(0.0, cpu(core_ticks(proxy_cores) - t_cores) - ours), 1)
        rss_after = sum(mem_kb(p, "VmRSS") for p in pids)
        hwm = sum(mem_kb(p, "VmHWM") for p in pids)
        peak = max(hwm if peak_reset else 0, sampler.rss_max_kb, rss_after)
        result["rss_mb"] = round(rss_after / 1024, 1)
        result["peak_rss_growth_mb"] = round((peak - rss_before) / 1024, 1)
        if "first_error" in load:
            result["first_error"] = load["first_error"]
        if kind == "ul":
            lines = upload_log.read_text().splitlines()[upload_lines:] if upload_log.exists() else []
            arrived = sum(1 for line in lines if line.split()[1] == "200" and int(line.split()[0]) >= self.big)
            result["origin_received_ok"] = arrived == ok and ok > 0
        if capture is not None:
            end_flows = capture.flow_count()
            result["pending_at_end"] = capture.pending()
            result["pending_max"] = max(sampler.pending_max, result["pending_at_end"])
            drained = capture.drain(120)
            stored = capture.flow_count() - before_flows
            result["drain_s"] = round(drained, 2) if drained is not None else None
            result["stored"] = stored
            result["stored_ok"] = stored == (0 if paused else ok)
            result["ingest_fps"] = round((end_flows - before_flows) / max(load["seconds"], 1e-9), 1)
            if paused:
                capture.api("POST", f"/api/sessions/{capture.session}/resume")
        return result


# -- the report ---------------------------------------------------------------------


def versions(nginx: str | None, mitmdump: Path | None) -> dict[str, str]:
    def out(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            return (r.stdout + r.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    probe = (
        "import twisted, OpenSSL.SSL as S, ssl\n"
        "v = getattr(S, 'OpenSSL_version', None) or S.SSLeay_version\n"
        "print(twisted.__version__); print(v(S.OPENSSL_VERSION).decode()); print(ssl.OPENSSL_VERSION)\n"
    )
    py = out([sys.executable, "-c", probe]).splitlines()
    info = {
        "machine": f"{os.cpu_count()} CPUs ({model or platform.machine()}), Linux {platform.release()}",
        "python": platform.python_version() + f" ({sys.executable})",
        "twisted": py[0] if len(py) > 0 else "?",
        "openssl": (f"{py[1]} (pyOpenSSL, used by the appliance); {py[2]} (Python ssl)" if len(py) > 2 else "?"),
        "nginx": out([nginx, "-v"]).replace("nginx version: ", "") if nginx else "?",
        "libcurl": next((w for w in out([str(LOADGEN), "--version"]).replace("(", " ").split() if w.startswith("libcurl/")),
                        "?").replace("libcurl/", ""),
    }
    commit = out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    if commit and " " not in commit:
        dirty = out(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
        info["capture"] = commit + (" + uncommitted changes" if dirty else "")
    if mitmdump:
        info["mitmproxy"] = out([str(mitmdump), "--version"]).splitlines()[0].replace("Mitmproxy: ", "")
    return info


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def median_rounds(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One result per scenario and tool: with several rounds, the round of median throughput."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["scenario"], r["tool"]), []).append(r)
    chosen = []
    for (scenario, _tool), runs in groups.items():
        key = "rps" if scenario in SCENARIOS and SCENARIOS[scenario][0] == "rps" else "mb_per_s"
        ranked = sorted(runs, key=lambda r: r.get(key) or 0)
        pick = dict(ranked[(len(ranked) - 1) // 2])
        if len(runs) > 1:
            pick["rounds"] = [r.get(key) for r in runs]
        chosen.append(pick)
    return chosen


def report(results: list[dict[str, Any]], info: dict[str, str], args: argparse.Namespace, bench: Bench) -> str:
    results = median_rounds(results)
    rows = [r for r in results if r["scenario"] != "after-run"]
    by = {(r["scenario"], r["tool"]): r for r in results}
    lines = [
        "# capture benchmark",
        "",
        f"Run {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: `python bench/run.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += [
        f"- pinning: proxy on CPU {args.proxy_cpus or 'any'}; session manager on CPU "
        f"{args.sessiond_cpus or args.proxy_cpus or 'any'}; load generator and nginx on CPU {args.load_cpus or 'any'}",
        f"- {bench.seconds:g} s per scenario: 1 KiB responses for requests/s, {bench.big // MIB} MiB bodies one after "
        "another on one connection for download/upload; CPU in % of one core",
        *([f"- {args.rounds} interleaved rounds; each row is the scenario's median round (by req/s or MB/s), "
           "the rounds' figures in the last column"] if args.rounds > 1 else []),
        "",
        "| scenario | tool | req/s | MB/s | p50 ms | p99 ms | errors | proxy CPU % | sessiond CPU % "
        "| other on proxy core % | loadgen CPU % | nginx CPU % | origin conns | RSS after MB | peak RSS growth MB "
        "| stored = sent | flows/s stored | max backlog |" + (" rounds |" if args.rounds > 1 else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
        + ("---|" if args.rounds > 1 else ""),
    ]
    for r in rows:
        kind = SCENARIOS[r["scenario"]][0]
        lines.append("| " + " | ".join([
            r["scenario"], r["tool"],
            fmt(r["rps"]) if kind == "rps" else "–",
            fmt(r["mb_per_s"]) if kind != "rps" else "–",
            fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2), fmt(r["errors"]),
            fmt(r["proxy_cpu"], 0), fmt(r.get("sessiond_cpu"), 0), fmt(r.get("other_on_proxy_cpu"), 0),
            fmt(r["loadgen_cpu"], 0), fmt(r["nginx_cpu"], 0),
            fmt(r["origin_connects"]),
            fmt(r["rss_mb"]), fmt(r["peak_rss_growth_mb"]),
            fmt(r.get("stored_ok")) if "stored_ok" in r else "–",
            fmt(r.get("ingest_fps"), 0) if "ingest_fps" in r else "–",
            fmt(r.get("pending_max")) if "pending_max" in r else "–",
            *([", ".join(fmt(v) for v in r.get("rounds", []))] if args.rounds > 1 else []),
        ]) + " |")
    for r in results:
        if r["scenario"] == "after-run":
            extra = f", session manager {fmt(r['sessiond_rss_mb'])} MB" if r.get("sessiond_rss_mb") else ""
            lines.append(f"\n{r['tool']} after the run: RSS {fmt(r['rss_mb'])} MB, peak {fmt(r['peak_rss_mb'])} MB{extra}.")

    for base in ("http-ka-10", "http-ka-50"):
        on, off = by.get((base, "capture")), by.get((base + "-nocapture", "capture"))
        if on and off and off["rps"]:
            line = (f"\nCapture on vs off ({base}): {on['rps']:,.0f} vs {off['rps']:,.0f} req/s = "
                    f"{100 * on['rps'] / off['rps']:.0f} %")
            # The two run back to back in each round, so a round's own ratio cancels
            # whatever slowed that whole round down.
            paired = [a / b for a, b in zip(on.get("rounds", []), off.get("rounds", [])) if a and b]
            if len(paired) > 1:
                line += (f"; round by round {', '.join(f'{100 * p:.0f}' for p in paired)} %, "
                         f"median {100 * statistics.median(paired):.0f} %")
            lines.append(line + " (target ≥ 85 %).")

    ratios = []
    for r in rows:
        peer = by.get((r["scenario"], "mitmdump"))
        if r["tool"] != "capture" or not peer:
            continue
        kind = SCENARIOS[r["scenario"]][0]
        metrics = [("req/s", "rps", "higher"), ("p50 ms", "p50_ms", "lower"), ("p99 ms", "p99_ms", "lower")] if kind == "rps" \
            else [("MB/s", "mb_per_s", "higher"), ("peak RSS growth MB", "peak_rss_growth_mb", "lower")]
        for label, key, better in metrics:
            ratio = r[key] / peer[key] if peer[key] else None
            ratios.append(f"| {r['scenario']} | {label} | {fmt(r[key], 2)} | {fmt(peer[key], 2)} | "
                          f"{fmt(ratio, 2)} | {better} |")
    if ratios:
        lines += ["", "Ours / mitmdump, same run:", "",
                  "| scenario | metric | capture | mitmdump | ours/mitmdump | better is |",
                  "|---|---|---:|---:|---:|---|", *ratios]
        lines += ["", *targets(by)]

    saturated, noisy = [], []
    for r in rows:
        manager = r.get("sessiond_cpu") or 0
        proxy_side = r["proxy_cpu"] + (0 if args.sessiond_cpus else manager)
        load_side = r["loadgen_cpu"] + r["nginx_cpu"] + (manager if args.sessiond_cpus == args.load_cpus else 0)
        sides = [side for side, value in (("proxy", proxy_side), ("loader+nginx", load_side)) if value >= 90]
        if sides:
            saturated.append(f"{r['scenario']} ({r['tool']}): {' and '.join(sides)}")
        if (r.get("other_on_proxy_cpu") or 0) >= 10:
            noisy.append(f"{r['scenario']} ({r['tool']}): {r['other_on_proxy_cpu']:.0f} %")
    if saturated:
        lines += ["", "Sides at ≥ 90 % of their core (the limit of that run): " + "; ".join(saturated) + "."]
    if noisy:
        lines += ["", "Other load on the proxy's core (figures less trustworthy): " + "; ".join(noisy) + "."]
    return "\n".join(lines) + "\n"


def targets(by: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """The issue's targets, met or not, from this run's figures."""
    out = ["Targets:", ""]

    def line(ok: bool, text: str) -> None:
        out.append(f"- {'met' if ok else '**not met**'}: {text}")

    for name, (kind, *_rest) in SCENARIOS.items():
        ours, peer = by.get((name, "capture")), by.get((name, "mitmdump"))
        if not ours or not peer:
            continue
        if kind == "rps" and peer["rps"]:
            ratio = ours["rps"] / peer["rps"]
            line(ratio >= 4, f"{name} req/s ≥ 4× mitmdump ({ratio:.2f}×)")
        elif kind != "rps" and peer["mb_per_s"]:
            ratio = ours["mb_per_s"] / peer["mb_per_s"]
            line(ratio >= 1.5, f"{name} MB/s ≥ 1.5× mitmdump ({ratio:.2f}×)")
            line(ours["peak_rss_growth_mb"] < 30, f"{name} peak RSS growth < 30 MB ({ours['peak_rss_growth_mb']:.1f} MB)")
        if name in ("http-ka-10", "https-ka-10"):
            line(ours["p99_ms"] < peer["p50_ms"],
                 f"{name} p99 below mitmdump's p50 ({ours['p99_ms']:.2f} vs {peer['p50_ms']:.2f} ms)")
    stored = [r for (n, t), r in by.items() if t == "capture" and "stored_ok" in r]
    if stored:
        bad = [r["scenario"] for r in stored if not r["stored_ok"]]
        line(not bad, "every flow stored (stored count = requests sent)" + (f"; not in {', '.join(bad)}" if bad else ""))
    return out


# -- main ------------------------------------------------------------------------------


def start_postgres(tmp: Path, cpus: str | None) -> tuple[Any, str, str]:
    """A throwaway local PostgreSQL cluster (as the tests start one): the cluster, a database URL, a description.

    The server and the backends it forks run on ``cpus`` (the load
    generator's side): a shared database is another machine's work.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    import pgcluster

    reason = pgcluster.missing_reason()
    if reason is not None:
        raise BenchError(f"--store postgresql: {reason}")
    try:
        cluster = pgcluster.Cluster()
        cluster.start()
    except (OSError, subprocess.SubprocessError) as e:
        raise BenchError(f"--store postgresql: cannot start a cluster: {e}") from None
    if cpus and cluster.pid is not None:
        for pid in (cluster.pid, *descendants(cluster.pid)):
            try:
                os.sched_setaffinity(pid, cpu_set(cpus))
            except OSError:
                pass
    url = cluster.create_database()
    version = subprocess.run([str(pgcluster.BIN / "postgres"), "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip().replace("postgres (PostgreSQL) ", "")
    where = f", on CPU {cpus}" if cpus else ""
    settings = "fsync and WAL file zero-filling off"
    return cluster, url, f"postgresql (PostgreSQL {version}: a throwaway local cluster, {settings}{where})"


def stop_postgres(cluster: Any) -> None:
    """Stop the cluster (pg_ctl signals the postmaster by the pid in its pid file), then make sure by pid."""
    pid = cluster.pid
    cluster.remove()
    if pid is not None and alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def cpu_set(text: str) -> set[int]:
    """A taskset CPU list ("1", "0,2", "2-3") as a set."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 s per requests/s scenario and 20 MiB bodies (a smoke check)")
    p.add_argument("--peer", action="store_true", help="also run every scenario against mitmdump and print ratios")
    p.add_argument("--only", nargs="+", metavar="SCENARIO", choices=list(SCENARIOS), help="run only these scenarios")
    p.add_argument("--seconds", type=float, help="seconds per requests/s scenario (default 10, --quick 2)")
    p.add_argument("--big-mib", type=int, help="MiB per download/upload (default 100, --quick 20)")
    p.add_argument("--workers", type=int, default=1, help="[proxy] workers for the appliance (default 1)")
    p.add_argument("--proxy-cpus", default="0", help="taskset CPU list for the proxy (default 0; '' = no pinning)")
    p.add_argument("--load-cpus", default="1", help="taskset CPU list for the load generator and nginx (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the scenarios this many times, interleaved, and report each one's median round")
    p.add_argument("--sessiond-cpus", default="", help="taskset CPU list for the session manager (default: the proxy's)")
    p.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                   help="where the appliance stores flows: SQLite (default) or a throwaway local PostgreSQL cluster")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database) and print its path")
    args = p.parse_args(argv)
    if args.seconds is not None and not 0 < args.seconds <= 600:
        p.error("--seconds must be in (0, 600]")
    if not 1 <= args.rounds <= 20:
        p.error("--rounds must be in 1..20")
    if args.big_mib is not None and not 1 <= args.big_mib <= 4096:
        p.error("--big-mib must be in 1..4096")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    names = [n for n in SCENARIOS if not args.only or n in args.only]
    if not shutil.which("taskset"):
        print("bench: taskset not found (util-linux); running unpinned", file=sys.stderr)
        args.proxy_cpus = args.load_cpus = ""
    elif (os.cpu_count() or 1) < 2:
        print("bench: one CPU only; running unpinned", file=sys.stderr)
        args.proxy_cpus = args.load_cpus = ""
    args.proxy_cpus = args.proxy_cpus or None
    args.load_cpus = args.load_cpus or None
    if args.load_cpus:
        # The harness itself samples and polls; keep it off the proxy's core.
        os.sched_setaffinity(0, cpu_set(args.load_cpus))

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    children = Children()
    tmp = Path(tempfile.mkdtemp(prefix="capture-bench-"))
    status = 0
    bench = None
    mitmdump = None
    cluster = None
    database = None
    store = "sqlite (a file in the temporary directory)"
    try:
        nginx = find_nginx()
        build_loadgen()
        if args.peer:
            mitmdump = ensure_mitmdump()
        if args.store == "postgresql":
            cluster, database, store = start_postgres(tmp, args.load_cpus)
        bench = Bench(args, children, tmp)
        bench.start_origin()
        tools: list[str] = ["capture"] + (["mitmdump"] if args.peer else [])
        for tool in tools:
            if tool == "capture":
                proxy: Any = Capture(children, tmp, bench.origin_ca, args.proxy_cpus, args.workers,
                                     args.sessiond_cpus or None, database=database)
            else:
                proxy = Mitmdump(children, tmp, bench.origin_ca, args.proxy_cpus, mitmdump)
            try:
                bench.run_tool(proxy, names)
            finally:
                proxy.stop()
        info = versions(nginx, mitmdump)
        info["store"] = store
        text = report(bench.results, info, args, bench)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "results.md").write_text(text)
        print("\n" + text)
        print(f"bench: wrote {(OUT / 'results.md').relative_to(ROOT)}", file=sys.stderr)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("bench: interrupted; stopping everything", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop_all()
        if cluster is not None:
            stop_postgres(cluster)
        if args.keep:
            print(f"bench: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
