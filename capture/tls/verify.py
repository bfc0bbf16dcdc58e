"""TLS towards origins (verified) and the connection creator for intercepted clients.

Origins are verified against the system trust store (which honours
``SSL_CERT_FILE``) or a PEM bundle, and then by name with
``service_identity``; a failure is turned into a short reason a tester can
act on ("unknown issuer", "name mismatch", "expired").
"""

from __future__ import annotations

import ipaddress
from typing import Any

import service_identity
from OpenSSL import SSL
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from zope.interface import implementer

# OpenSSL X509_V_ERR_* codes worth naming to a tester.
_VERIFY_REASONS = {
    9: "certificate not yet valid",
    10: "certificate expired",
    18: "unknown issuer (self-signed certificate)",
    19: "unknown issuer (self-signed certificate in chain)",
    20: "unknown issuer",
    21: "unknown issuer",
    2: "unknown issuer",
}


class VerificationFailed(Exception):
    """The origin's certificate was not accepted; the message says why."""


@implementer(IOpenSSLClientConnectionCreator)
class ClientConnection:
    """One client connection: SNI, ALPN and a per-connection verify callback."""

    def __init__(self, upstream: UpstreamTLS, server_name: str, alpn: tuple[bytes, ...] = (b"http/1.1",)) -> None:
        self.upstream = upstream
        self.server_name = server_name
        self.alpn = alpn
        self.errors: list[int] = []
        self.ssl: SSL.Connection | None = None

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = self.ssl = SSL.Connection(self.upstream.context_for(self.alpn), None)
        if not _is_ip(self.server_name):
            connection.set_tlsext_host_name(self.server_name.encode("idna"))
        if self.upstream.verify:
            connection.set_verify(SSL.VERIFY_PEER, self._verify)
        connection.set_connect_state()
        return connection

    def _verify(self, connection: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            self.errors.append(errno)
        return bool(ok)

    def check(self, connection: SSL.Connection) -> None:
        """After the handshake: the name must match (chain errors end the handshake earlier)."""
        if not self.upstream.verify:
            return
        try:
            if _is_ip(self.server_name):
                verify_ip_address(connection, self.server_name)
            else:
                verify_hostname(connection, self.server_name)
        except service_identity.VerificationError:
            raise VerificationFailed(f"name mismatch: the certificate is not valid for {self.server_name}") from None

    def failure_reason(self) -> str | None:
        """Why verification failed, if it did."""
        if not self.errors:
            return None
        errno = self.errors[0]
        return _VERIFY_REASONS.get(errno, f"certificate rejected (OpenSSL verify error {errno})")


class UpstreamTLS:
    """The client Contexts for origins: one per list of ALPN protocols offered, each built once and shared."""

    def __init__(self, verify: bool = True, ca_bundle: str = "") -> None:
        self.verify = verify
        self.ca_bundle = ca_bundle
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {}
        self.context_for((b"http/1.1",))  # a bad CA bundle shows at start, not on the first request

    def context_for(self, alpn: tuple[bytes, ...]) -> SSL.Context:
        context = self._contexts.get(alpn)
        if context is None:
            # Built whole before first use: pyOpenSSL refuses changes to a Context once used.
            context = SSL.Context(SSL.TLS_CLIENT_METHOD)
            context.set_min_proto_version(SSL.TLS1_2_VERSION)
            context.set_alpn_protos(list(alpn))
            if self.verify:
                if self.ca_bundle:
                    context.load_verify_locations(self.ca_bundle)
                else:
                    context.set_default_verify_paths()
            self._contexts[alpn] = context
        return context

    def connection(self, server_name: str, alpn: tuple[bytes, ...] = (b"http/1.1",)) -> ClientConnection:
        return ClientConnection(self, server_name, alpn)


@implementer(IOpenSSLServerConnectionCreator)
class ServerConnection:
    """Serves one intercepted client with a Context chosen before the handshake."""

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_accept_state()
        return connection


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def describe_tls_failure(reason: Any) -> str:
    """A short text for an OpenSSL error seen during a handshake."""
    value = getattr(reason, "value", reason)
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        texts = [str(entry[2]) for entry in value.args[0] if len(entry) == 3]
        if texts:
            return ", ".join(texts)
    return str(value) or type(value).__name__
