"""The appliance's certificate authority, the leaf certificates it mints, and
a bounded cache of ready TLS server contexts, one per host.

Certificates are built with ``cryptography``'s x509 API; pyOpenSSL is used
only for the ``SSL.Context`` objects Twisted's TLS transport needs.  Nothing
here touches the reactor: loading or creating the CA is disk work done once at
start-up, and minting a leaf is a few hundred microseconds (ECDSA P-256).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

__all__ = ["CAError", "CertificateAuthority"]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CA_DER_FILE = "ca.der"

CA_VALIDITY = datetime.timedelta(days=3650)
# iOS 13+ refuses server certificates valid for more than 825 days, Safari and
# Chrome more than 398, and the CA/Browser Forum is stepping that down to 200
# and below: 179 days from not_before (back-dating included) clears them all.
LEAF_VALIDITY = datetime.timedelta(days=179)
# Back-date so that a device whose clock runs a little behind still accepts
# the certificate.
BACKDATE = datetime.timedelta(days=1)
# A cached context is minted again this long before its leaf expires.
RENEW_MARGIN = datetime.timedelta(days=1)
# Same session-id context on every per-host Context, so a session made under
# one can be resumed under another after Twisted switches contexts on SNI.
SESSION_ID_CONTEXT = b"capture"
ALPN_HTTP11 = b"http/1.1"
CN_MAX = 64

_CAKey = Union[
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
]


class CAError(Exception):
    """The CA cannot be loaded or created; the message is one line naming the file."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _sign_hash(key: _CAKey) -> hashes.HashAlgorithm | None:
    # Ed25519/Ed448 sign without a separate hash; everything else uses SHA-256.
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """Digital signature (ECDSA handshakes), plus certificate and CRL signing for the CA."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _utc(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc).replace(microsecond=0)


def _normalise_host(host: str) -> tuple[str, x509.GeneralName]:
    """The cache key for ``host`` and the SubjectAlternativeName entry for it.

    Accepts names (lowercased, trailing dot dropped, IDNA-encoded when not
    ASCII) and IP literals, with or without IPv6 brackets or zone.
    """
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        ip = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        pass
    else:
        return str(ip), x509.IPAddress(ip)
    name = name.rstrip(".").lower()
    if not name:
        raise ValueError(f"not a host name: {host!r}")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"not a host name: {host!r}") from exc
    if any(c <= " " or c == "\x7f" for c in name):
        raise ValueError(f"not a host name: {host!r}")
    return name, x509.DNSName(name)


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> bytes | object:
    """The protocol chosen for this connection before its handshake (``h2`` when the origin
    speaks it), else HTTP/1.1 when the client offers it; otherwise decline ALPN.

    Declining (rather than failing) lets an h2-only client fall back to
    HTTP/1.1.  The choice rides on the connection's app data (Twisted sets
    it to the TLS transport, ``capture.tls.bulk.BulkTLSTransport``), so one
    context serves every connection to a host.
    """
    wanted = getattr(connection.get_app_data(), "alpn_choice", None)
    if wanted is not None and wanted in offered:
        return wanted
    if ALPN_HTTP11 in offered:
        return ALPN_HTTP11
    return SSL.NO_OVERLAPPING_PROTOCOLS


class CertificateAuthority:
    """One CA (loaded from or created in ``ca_dir``) that mints leaf
    certificates and hands out cached server contexts per host."""

    def __init__(
        self,
        cert: x509.Certificate,
        key: _CAKey,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = 1024,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.cert = cert
        self._key = key
        self._clock = clock
        self._cache_size = cache_size
        self.pem: bytes = cert.public_bytes(serialization.Encoding.PEM)
        self.der: bytes = cert.public_bytes(serialization.Encoding.DER)
        self.sha256: str = ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
        # One leaf key for every host: generating a key per host would cost
        # far more than signing, and mitmproxy does the same.
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        self._contexts: OrderedDict[str, tuple[SSL.Context, datetime.datetime]] = OrderedDict()
        # Contexts may be minted from a thread pool as well as the reactor.
        self._lock = threading.Lock()

    # -- loading and creating -------------------------------------------------

    @classmethod
    def load_or_create(
        cls,
        ca_dir: str | os.PathLike[str],
        clock: Callable[[], float] = time.time,
        cache_size: int = 1024,
    ) -> CertificateAuthority:
        """Load the CA from ``ca_dir``, creating it (and the directory) on first start.

        A damaged or mismatched CA is an error, never replaced: devices in the
        lab trust that exact certificate.
        """
        ca_dir = os.fspath(ca_dir)
        _secure_dir(ca_dir)
        cert_path = os.path.join(ca_dir, CA_CERT_FILE)
        key_path = os.path.join(ca_dir, CA_KEY_FILE)
        der_path = os.path.join(ca_dir, CA_DER_FILE)
        cert_exists = os.path.lexists(cert_path)
        key_exists = os.path.lexists(key_path)
        if not cert_exists and not key_exists:
            cert, key = _create_ca(ca_dir, clock)
        elif not key_exists:
            raise CAError(
                f"cannot load the CA: {cert_path} exists but {key_path} is missing "
                f"(restore it, or remove {cert_path} to create a new CA)"
            )
        elif not cert_exists:
            raise CAError(
                f"cannot load the CA: {key_path} exists but {cert_path} is missing "
                f"(restore it, or remove {key_path} to create a new CA)"
            )
        else:
            cert, key = _load_ca(cert_path, key_path)
        _ensure_der(der_path, cert)
        return cls(cert, key, clock=clock, cache_size=cache_size)

    # -- leaves ---------------------------------------------------------------

    def _mint(self, host: str) -> tuple[x509.Certificate, datetime.datetime]:
        name, san = _normalise_host(host)
        not_before = _utc(self._clock()) - BACKDATE
        not_after = min(not_before + LEAF_VALIDITY, self.cert.not_valid_after_utc)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, name[:CN_MAX]),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "capture appliance"),
            ]
        )
        leaf_public = self._leaf_key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(leaf_public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(self._aki, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_public), critical=False)
        )
        return builder.sign(self._key, _sign_hash(self._key)), not_after

    def leaf_pem(self, host: str) -> tuple[bytes, bytes]:
        """A fresh (certificate PEM, key PEM) pair for ``host`` (a name or IP literal)."""
        cert, _ = self._mint(host)
        return cert.public_bytes(serialization.Encoding.PEM), self._leaf_key_pem

    def _build_context(self, leaf: x509.Certificate) -> SSL.Context:
        # Built whole here: pyOpenSSL refuses changes once a Context is used.
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
        ctx.use_certificate(leaf)
        ctx.add_extra_chain_cert(self.cert)
        ctx.use_privatekey(self._leaf_key)
        ctx.check_privatekey()
        ctx.set_alpn_select_callback(_select_alpn)
        ctx.set_session_id(SESSION_ID_CONTEXT)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        return ctx

    def _lookup(self, key: str) -> SSL.Context | None:
        now = _utc(self._clock())
        with self._lock:
            entry = self._contexts.get(key)
            if entry is not None and now < entry[1] - RENEW_MARGIN:
                self._contexts.move_to_end(key)
                return entry[0]
        return None

    def cached(self, host: str) -> SSL.Context | None:
        """The cached context for ``host``, or None when it must be minted.

        Cheap and never signs, so the reactor can try it before deferring
        ``context_for`` to a thread.
        """
        try:
            key, _ = _normalise_host(host)
        except ValueError:
            return None  # context_for will say why
        return self._lookup(key)

    def context_for(self, host: str) -> SSL.Context:
        """A ready server ``SSL.Context`` for ``host``, from a bounded LRU cache.

        A cached context whose leaf is about to expire is minted again, so a
        long-running appliance never serves an expired certificate.  Safe to
        call from a thread pool.
        """
        key, _ = _normalise_host(host)
        ctx = self._lookup(key)
        if ctx is not None:
            return ctx
        leaf, not_after = self._mint(key)
        ctx = self._build_context(leaf)
        with self._lock:
            self._contexts[key] = (ctx, not_after)
            self._contexts.move_to_end(key)
            while len(self._contexts) > self._cache_size:
                self._contexts.popitem(last=False)
        return ctx

    @property
    def cached_contexts(self) -> int:
        """How many contexts are cached (for tests and status pages)."""
        return len(self._contexts)


# -- files ----------------------------------------------------------------------


def _secure_dir(ca_dir: str) -> None:
    try:
        os.makedirs(ca_dir, mode=0o700, exist_ok=True)
        mode = stat.S_IMODE(os.stat(ca_dir).st_mode)
        if mode != 0o700:
            # makedirs honours the umask, and an existing dir may be looser.
            os.chmod(ca_dir, 0o700)
    except OSError as exc:
        raise CAError(f"cannot prepare the CA directory {ca_dir}: {_one_line(exc)}") from None


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CAError(f"cannot load the CA {what} from {path}: {_one_line(exc)}") from None


def _load_ca(cert_path: str, key_path: str) -> tuple[x509.Certificate, _CAKey]:
    cert_data = _read(cert_path, "certificate")
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
    except ValueError as exc:
        raise CAError(f"cannot load the CA certificate from {cert_path}: {_one_line(exc)}") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        constraints = None
    if constraints is None or not constraints.ca:
        raise CAError(f"cannot load the CA certificate from {cert_path}: it is not a CA certificate")

    key_data = _read(key_path, "key")
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CAError(f"cannot load the CA key from {key_path}: {_one_line(exc)}") from None
    if not isinstance(
        key,
        (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey),
    ):
        raise CAError(f"cannot load the CA key from {key_path}: unsupported key type {type(key).__name__}")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise CAError(f"cannot load the CA key from {key_path}: it does not match the certificate in {cert_path}")
    _tighten(key_path, 0o600)
    return cert, key


def _tighten(path: str, mode: int) -> None:
    # A key restored with a loose mode is made private again; failure to do
    # so is not worth refusing to start over.
    try:
        if stat.S_IMODE(os.stat(path).st_mode) & ~mode:
            os.chmod(path, mode)
    except OSError:
        pass


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file created with ``mode`` (never briefly looser)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask could only have narrowed it; make it exact
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _ensure_der(der_path: str, cert: x509.Certificate) -> None:
    # ca.der is only a copy of ca.pem for devices that want DER: rewrite it
    # when missing or stale rather than refusing to start.
    der = cert.public_bytes(serialization.Encoding.DER)
    try:
        with open(der_path, "rb") as f:
            if f.read() == der:
                return
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CAError(f"cannot read the CA copy {der_path}: {_one_line(exc)}") from None
    tmp = f"{der_path}.{secrets.token_hex(4)}.tmp"
    try:
        _write_new(tmp, der, 0o644)
        os.replace(tmp, der_path)
    except OSError as exc:
        raise CAError(f"cannot write the CA copy {der_path}: {_one_line(exc)}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _create_ca(ca_dir: str, clock: Callable[[], float]) -> tuple[x509.Certificate, _CAKey]:
    """Create and store a new CA key and self-signed certificate.

    Files are written under temporary names and linked into place, key
    first, so a crash leaves either nothing or (within microseconds) both;
    ``os.link`` never overwrites, so a CA created concurrently is kept.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"capture CA {secrets.token_hex(4)}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "capture appliance"),
        ]
    )
    not_before = _utc(clock()) - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + BACKDATE + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    suffix = secrets.token_hex(4)
    key_path = os.path.join(ca_dir, CA_KEY_FILE)
    cert_path = os.path.join(ca_dir, CA_CERT_FILE)
    tmp_key = f"{key_path}.{suffix}.tmp"
    tmp_cert = f"{cert_path}.{suffix}.tmp"
    current = key_path
    linked_key = False
    try:
        _write_new(tmp_key, key_pem, 0o600)
        current = cert_path
        _write_new(tmp_cert, cert_pem, 0o644)
        current = key_path
        os.link(tmp_key, key_path)
        linked_key = True
        current = cert_path
        os.link(tmp_cert, cert_path)
    except OSError as exc:
        if linked_key:
            os.unlink(key_path)  # ours, just linked: leave no lone key behind
        raise CAError(f"cannot create the CA file {current}: {_one_line(exc)}") from None
    finally:
        for tmp in (tmp_key, tmp_cert):
            if os.path.lexists(tmp):
                os.unlink(tmp)
    _fsync_dir(ca_dir)
    return cert, key
