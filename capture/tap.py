"""``twistd capture``: the options and the whole service tree in one place.

    MultiService
      ChildMonitor            the session-manager child, restarted with back-off
      ShipperService          the UNIX-socket link to it, reconnecting with back-off
      proxy listener          ProxyFactory on [proxy] listen
      ChildMonitor            [proxy] workers - 1 more proxy processes (capture/worker.py)
      admin listener          the JSON API on [admin] listen

Services stop one after another in reverse order: the admin listener, the
workers (each drains and flushes itself), the proxy listener (stops
accepting, lets exchanges finish), the link (after pending flows are
flushed or spilled), then the session manager.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any, Callable

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint, serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.runner.procmon import ProcessMonitor

from capture import __version__, config
from capture.admin import admin_site
from capture.tls.ca import CAError, CertificateAuthority
from capture.delivery import SpillFile
from capture.flow import iso_time
from capture.identity import IdentityError, appliance_identity
from capture import reuseport
from capture.proxy.factory import ProxyFactory
from capture.shipper import Shipper, ShipperFactory

log = Logger()

FLUSH_TIMEOUT = 5.0
CHILD_STOP_TIMEOUT = 30.0


class Options(usage.Options):
    optParameters = [["config", "c", "etc/capture.ini", "Path to the appliance's INI file."]]

    def postOptions(self) -> None:
        try:
            self["settings"] = config.load(self["config"])
        except config.ConfigError as e:
            # One line and a non-zero exit: twistd would print its whole usage text for a UsageError.
            print(f"capture: configuration error in {self['config']}: {e}", file=sys.stderr)
            raise SystemExit(2) from None


class OrderedServices(service.MultiService):
    """Stops its children one after the other, last added first, each waiting for the one before.

    MultiService stops them all at once; we need the proxy to finish its
    exchanges before the shipper flushes, and the flush before the child stops.
    """

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("stopping {service} failed", service=child.name)


class ChildMonitor(ProcessMonitor):
    """ProcessMonitor that counts restarts and, when stopping, waits for its children to exit.

    A child gets SIGTERM and CHILD_STOP_TIMEOUT seconds to finish (a proxy
    worker drains and flushes) before SIGKILL.
    """

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor=reactor) if reactor is not None else super().__init__()
        self.minRestartDelay = 0.5
        self.maxRestartDelay = 30
        self.killTime = CHILD_STOP_TIMEOUT
        self.starts = 0
        self._exited: list[defer.Deferred] = []

    @property
    def restarts(self) -> int:
        return max(0, self.starts - len(self._processes))

    @property
    def pid(self) -> int | None:
        protocol = self.protocols.get("sessiond")
        transport = getattr(protocol, "transport", None)
        return getattr(transport, "pid", None)

    def startProcess(self, name: str) -> None:
        if name not in self.protocols:
            self.starts += 1
        super().startProcess(name)

    def _monitoredProcessExited(self, name: str, reason: Any = None) -> None:
        super()._monitoredProcessExited(name, reason)
        if not self.protocols:
            exited, self._exited = self._exited, []
            for d in exited:
                d.callback(None)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._exited.append(d)
        return d


class ShipperService(ClientService):
    """The link to the session manager; on stop, gives pending flows a moment to ship."""

    def __init__(self, shipper: Shipper, endpoint: Any, reactor: Any) -> None:
        super().__init__(endpoint, ShipperFactory(shipper), retryPolicy=backoffPolicy(0.1, 5.0), clock=reactor)
        self.shipper = shipper

    @defer.inlineCallbacks
    def stopService(self):
        if self.shipper.pending:
            flushed = yield self.shipper.drained(FLUSH_TIMEOUT)
            if not flushed:
                log.warn("{n} captured flows not yet stored; keeping them in the spill file for the next start",
                         n=self.shipper.pending)
        self.shipper.queue.persist()
        yield super().stopService()


def ensure_token(path: str) -> str:
    """The admin token, created (mode 0600) on first start."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, encoding="ascii") as f:
            token = f.read().strip()
        if not token:
            raise SystemExit(f"capture: the admin token file {path} is empty")
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    log.info("created admin token in {path}", path=path)
    return token


def load_ca(settings: config.Settings) -> CertificateAuthority:
    try:
        return CertificateAuthority.load_or_create(settings.tls.ca_dir)
    except CAError as e:
        print(f"capture: {e}", file=sys.stderr)
        raise SystemExit(1) from None


class ProxyPart:
    """What every proxy process runs: the shipper and its link, the proxy and its listener.

    ``port`` is None for the main process (it binds the configured endpoint,
    sharing it with SO_REUSEPORT when there are workers) and the bound port
    number for a worker, which must bind the same one.
    """

    def __init__(self, settings: config.Settings, reactor: Any, ca: CertificateAuthority, index: int = 0,
                 port: int | None = None) -> None:
        capture_settings = settings.capture
        spill_path = capture_settings.spill_file + (f".{index}" if index else "")
        try:
            spill = SpillFile(spill_path) if capture_settings.spill_limit > 0 else None
        except OSError as e:
            print(f"capture: cannot open the spill file {spill_path}: {e.strerror}", file=sys.stderr)
            raise SystemExit(1) from None
        if spill is not None and spill.items:
            log.info("{n} flows from an earlier run wait in {path}; shipping them first", n=spill.items, path=spill_path)
        self.shipper = Shipper(reactor, capture_settings.buffer_memory, spill, capture_settings.spill_limit,
                               worker=index, workers=settings.proxy.workers)
        self.shipper_service = ShipperService(self.shipper, UNIXClientEndpoint(reactor, settings.store.socket), reactor)
        self.proxy = proxy = ProxyFactory(settings, self.shipper, reactor, ca=ca)
        queue = self.shipper.queue
        self.shipper.stats = lambda: {
            "worker": index,
            "pid": os.getpid(),
            **proxy.counters(),
            "pending": queue.pending,
            "spilled": queue.spilled,
            "dropped": queue.dropped,
            "shipped": queue.shipped,
        }
        description = settings.proxy.listen
        if port is not None or settings.proxy.workers > 1:
            bind = lambda: reuseport.listen(reactor, description, proxy, port)  # noqa: E731
        else:
            bind = lambda: _listen_endpoint(reactor, description, proxy)  # noqa: E731
        self.listener = Listener("proxy", description, bind, drain=lambda: proxy.drain(settings.limits.shutdown_grace))
        self.listener.on_listening = proxy.listening_on

    def add_to(self, parent: service.MultiService) -> None:
        """Link first, listener after: stopping in reverse drains the proxy before the flush."""
        self.shipper_service.setServiceParent(parent)
        self.listener.setServiceParent(parent)


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    settings: config.Settings = options["settings"]
    ca = load_ca(settings)
    log.info("CA {path}/ca.pem, SHA-256 {fingerprint}", path=settings.tls.ca_dir, fingerprint=ca.sha256)
    token = ensure_token(settings.admin.token_file)
    log.info("admin token file: {path}", path=settings.admin.token_file)
    try:
        appliance = appliance_identity(settings.store.appliance_file)
    except IdentityError as e:
        print(f"capture: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info("appliance {name} (from {path})", name=appliance, path=settings.store.appliance_file)
    if isinstance(settings.proxy.upstream, config.SystemProxy):
        log.info("chaining as the environment says (http_proxy, https_proxy, no_proxy)")
    elif settings.proxy.upstream is not None:
        log.info("chaining to upstream proxy {host}:{port}", host=settings.proxy.upstream.host, port=settings.proxy.upstream.port)

    top = OrderedServices()
    sessiond = ChildMonitor(reactor)
    sessiond.addProcess(
        "sessiond",
        [sys.executable, "-m", "capture.sessiond", "--config", settings.source],
        env=dict(os.environ),
    )
    sessiond.setServiceParent(top)

    main = ProxyPart(settings, reactor, ca)
    main.add_to(top)
    shipper, proxy = main.shipper, main.proxy

    workers = ChildMonitor(reactor)  # extra proxy processes, stopped before the proxy drains
    workers.setServiceParent(top)

    def proxy_listening(port: int) -> None:
        for index in range(1, settings.proxy.workers):
            workers.addProcess(
                f"worker-{index}",
                [sys.executable, "-m", "capture.worker", "--config", settings.source,
                 "--index", str(index), "--port", str(port), "--admin-port", str(admin_port[0])],
                env=dict(os.environ),
            )

    admin_port = [0]

    async def status() -> dict[str, Any]:
        own = shipper.stats()
        others = []
        if settings.proxy.workers > 1 and shipper.connected:
            try:
                reports = await shipper.call("proxies").addTimeout(2.0, reactor)
                others = [r for r in reports if r.get("worker") != 0]
            except Exception:  # the status page answers even without the session manager
                others = []
        processes = [own, *others]
        return {
            "version": __version__,
            "appliance": appliance,
            "listeners": {"proxy": main.listener.address, "admin": admin_listener.address},
            "session_manager": {**shipper.status(), "restarts": sessiond.restarts},
            "workers": {"configured": settings.proxy.workers, "running": 1 + len(others), "restarts": workers.restarts},
            "processes": processes,
            "pending_flows": sum(p["pending"] for p in processes),
            "spilled_flows": sum(p["spilled"] for p in processes),
            "dropped_flows": sum(p["dropped"] for p in processes),
            "refused_clients": sum(p["refused_clients"] for p in processes),
            "client_connections": sum(p["client_connections"] for p in processes),
            "connections_over_limit": sum(p["connections_over_limit"] for p in processes),
            "ca_sha256": ca.sha256,
            "upstream": proxy.connector.via.describe() if proxy.connector.via is not None else {"mode": "direct"},
            "auto_passthrough": [
                {"client": client, "host": host, "since": iso_time(since)}
                for (client, host), since in sorted(proxy.auto_passthrough.entries().items())
            ],
        }

    site = admin_site(shipper, token, status, proxy, settings.admin.listen)
    admin_listener = Listener("admin", settings.admin.listen, lambda: _listen_endpoint(reactor, settings.admin.listen, site))
    admin_listener.setServiceParent(top)

    def admin_listening(port: int) -> None:
        admin_port[0] = port
        proxy.own_ports.add(port)

    admin_listener.on_listening = admin_listening
    main.listener.on_listening = lambda port: (proxy.listening_on(port), proxy_listening(port))
    return top


def _listen_endpoint(reactor: Any, description: str, factory: Any) -> Any:
    """Listen on a Twisted endpoint string; the port, or the Failure if it did not bind at once."""
    results: list[Any] = []
    serverFromString(reactor, description).listen(factory).addBoth(results.append)
    if not results:
        raise RuntimeError("did not bind at once")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class Listener(service.Service):
    """A listening socket that knows its bound address; failing to bind stops start-up with one line."""

    def __init__(self, name: str, description: str, bind: Callable[[], Any], drain: Any = None) -> None:
        self.name = name
        self.description = description
        self.bind = bind
        self.drain = drain
        self.on_listening: Any = None
        self._port: Any = None

    @property
    def address(self) -> str | None:
        if self._port is None:
            return None
        host = self._port.getHost()
        return f"{host.host}:{host.port}" if hasattr(host, "port") else str(host)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            self._port = self.bind()
        except Exception as e:
            print(f"capture: cannot listen for {self.name} on {self.description}: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        host = self._port.getHost()
        log.info("{name} listening on {address}", name=self.name, address=self.address)
        if self.on_listening is not None and hasattr(host, "port"):
            self.on_listening(host.port)

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._port is not None:
            port, self._port = self._port, None
            yield port.stopListening()
        if self.drain is not None:
            yield self.drain()
