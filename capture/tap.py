"""``twistd capture``: the options and the whole service tree in one place.

    MultiService
      SessionManagerMonitor   the session-manager child, restarted with back-off
      ClientService           the UNIX-socket link to it, reconnecting with back-off
      proxy listener          ProxyFactory on [proxy] listen
      admin listener          the JSON API on [admin] listen

Services stop in reverse order: listeners first, then the link (after the
pending flows are flushed), then the child.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any

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
from capture.ca import CAError, CertificateAuthority
from capture.delivery import SpillFile
from capture.flow import iso_time
from capture.proxy import ProxyFactory
from capture.shipper import Shipper, ShipperFactory

log = Logger()

FLUSH_TIMEOUT = 5.0


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


class SessionManagerMonitor(ProcessMonitor):
    """ProcessMonitor that counts restarts and waits for the child when stopping."""

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor=reactor) if reactor is not None else super().__init__()
        self.starts = 0
        self._exited: list[defer.Deferred] = []

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)

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


def makeService(options: Options, reactor: Any = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor
    settings: config.Settings = options["settings"]
    try:
        ca = CertificateAuthority.load_or_create(settings.tls.ca_dir)
    except CAError as e:
        print(f"capture: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info("CA {path}/ca.pem, SHA-256 {fingerprint}", path=settings.tls.ca_dir, fingerprint=ca.sha256)
    token = ensure_token(settings.admin.token_file)
    log.info("admin token file: {path}", path=settings.admin.token_file)
    if settings.proxy.workers != 1:
        log.warn("[proxy] workers = {n} is not supported yet; running one proxy process", n=settings.proxy.workers)
    if settings.proxy.upstream is not None:
        log.info("chaining to upstream proxy {host}:{port}", host=settings.proxy.upstream.host, port=settings.proxy.upstream.port)

    top = OrderedServices()

    monitor = SessionManagerMonitor(reactor)
    monitor.minRestartDelay = 0.5
    monitor.maxRestartDelay = 30
    monitor.addProcess(
        "sessiond",
        [sys.executable, "-m", "capture.sessiond", "--config", settings.source],
        env=dict(os.environ),
    )
    monitor.setServiceParent(top)

    capture_settings = settings.capture
    try:
        spill = SpillFile(capture_settings.spill_file) if capture_settings.spill_limit > 0 else None
    except OSError as e:
        print(f"capture: cannot open the spill file {capture_settings.spill_file}: {e.strerror}", file=sys.stderr)
        raise SystemExit(1) from None
    if spill is not None and spill.items:
        log.info("{n} flows from an earlier run wait in {path}; shipping them first",
                 n=spill.items, path=capture_settings.spill_file)
    shipper = Shipper(reactor, capture_settings.buffer_memory, spill, capture_settings.spill_limit)
    ShipperService(shipper, UNIXClientEndpoint(reactor, settings.store.socket), reactor).setServiceParent(top)

    proxy = ProxyFactory(settings, shipper, reactor, ca=ca)
    proxy_listener = Listener("proxy", settings.proxy.listen, proxy, reactor,
                              drain=lambda: proxy.drain(settings.limits.shutdown_grace))
    proxy_listener.setServiceParent(top)

    def status() -> dict[str, Any]:
        return {
            "version": __version__,
            "listeners": {"proxy": proxy_listener.address, "admin": admin_listener.address},
            "session_manager": {**shipper.status(), "restarts": monitor.restarts},
            "pending_flows": shipper.pending,
            "spilled_flows": shipper.queue.spilled,
            "dropped_flows": shipper.dropped,
            "refused_clients": proxy.refused,
            "client_connections": proxy.connections,
            "connections_over_limit": proxy.over_limit,
            "ca_sha256": ca.sha256,
            "auto_passthrough": [
                {"client": client, "host": host, "since": iso_time(since)}
                for (client, host), since in sorted(proxy.auto_passthrough.items())
            ],
        }

    admin_listener = Listener("admin", settings.admin.listen, admin_site(shipper, token, status, proxy), reactor)
    admin_listener.setServiceParent(top)

    # Remember our own ports so requests that would loop back are refused.
    def proxy_listening(port: int) -> None:
        proxy.own_ports.add(port)
        proxy.proxy_port = port

    proxy_listener.on_listening = proxy_listening
    admin_listener.on_listening = proxy.own_ports.add
    return top


class Listener(service.Service):
    """A listening endpoint that knows its bound address; failing to bind stops start-up."""

    def __init__(self, name: str, description: str, factory: Any, reactor: Any, drain: Any = None) -> None:
        self.name = name
        self.drain = drain
        self.description = description
        self.factory = factory
        self.reactor = reactor
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
        results: list[Any] = []
        serverFromString(self.reactor, self.description).listen(self.factory).addBoth(results.append)
        if not results or isinstance(results[0], Failure):
            reason = results[0].getErrorMessage() if results else "did not bind at once"
            print(f"capture: cannot listen for {self.name} on {self.description}: {reason}", file=sys.stderr)
            raise SystemExit(1)
        self._port = results[0]
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
