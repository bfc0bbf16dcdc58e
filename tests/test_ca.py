"""Tests for capture.ca: the CA on disk, leaf certificates, the context cache,
and real TLS handshakes against the contexts it hands out."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import select
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from capture.tls.ca import CAError, CertificateAuthority

NOW = 1_800_000_000.0  # a fixed clock for validity checks


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(ca_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ca_dir.iterdir())}


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return tmp_path / "ca"


@pytest.fixture
def ca(ca_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(str(ca_dir))


def _assert_one_line_naming(exc: CAError, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message
    assert str(path) in message


# -- the CA on disk --------------------------------------------------------------


def test_first_start_creates_files_with_private_modes(ca_dir: Path) -> None:
    """First start creates ca_dir 0700, ca-key.pem 0600, and ca.pem/ca.der 0644, even under umask 0."""
    old = os.umask(0)
    try:
        ca = CertificateAuthority.load_or_create(str(ca_dir))
    finally:
        os.umask(old)
    assert _mode(ca_dir) == 0o700
    assert _mode(ca_dir / "ca-key.pem") == 0o600
    assert _mode(ca_dir / "ca.pem") == 0o644
    assert _mode(ca_dir / "ca.der") == 0o644
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca-key.pem", "ca.der", "ca.pem"]
    assert (ca_dir / "ca.pem").read_bytes() == ca.pem
    assert (ca_dir / "ca.der").read_bytes() == ca.der
    key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_loose_existing_dir_is_tightened(ca_dir: Path) -> None:
    """An existing ca_dir with a looser mode is chmod-ed to 0700."""
    ca_dir.mkdir(mode=0o755)
    os.chmod(ca_dir, 0o755)
    CertificateAuthority.load_or_create(str(ca_dir))
    assert _mode(ca_dir) == 0o700


def test_second_start_reuses_the_ca(ca_dir: Path, ca: CertificateAuthority) -> None:
    """A later start loads the same CA (same fingerprint) and leaves the files as they were."""
    before = _snapshot(ca_dir)
    again = CertificateAuthority.load_or_create(str(ca_dir))
    assert again.sha256 == ca.sha256
    assert again.pem == ca.pem
    assert _snapshot(ca_dir) == before


def test_missing_der_copy_is_rewritten(ca_dir: Path, ca: CertificateAuthority) -> None:
    """ca.der is only a copy of ca.pem: when missing it is written again from ca.pem."""
    (ca_dir / "ca.der").unlink()
    CertificateAuthority.load_or_create(str(ca_dir))
    assert (ca_dir / "ca.der").read_bytes() == ca.der
    assert _mode(ca_dir / "ca.der") == 0o644


def test_damaged_cert_raises_and_is_kept(ca_dir: Path, ca: CertificateAuthority) -> None:
    """A damaged ca.pem raises CAError in one line naming it, and no file changes."""
    (ca_dir / "ca.pem").write_bytes(ca.pem[:100])
    before = _snapshot(ca_dir)
    with pytest.raises(CAError) as info:
        CertificateAuthority.load_or_create(str(ca_dir))
    _assert_one_line_naming(info.value, ca_dir / "ca.pem")
    assert _snapshot(ca_dir) == before


def test_damaged_key_raises_and_is_kept(ca_dir: Path, ca: CertificateAuthority) -> None:
    """A damaged ca-key.pem raises CAError in one line naming it, and no file changes."""
    (ca_dir / "ca-key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    before = _snapshot(ca_dir)
    with pytest.raises(CAError) as info:
        CertificateAuthority.load_or_create(str(ca_dir))
    _assert_one_line_naming(info.value, ca_dir / "ca-key.pem")
    assert _snapshot(ca_dir) == before


def test_mismatched_key_raises_and_is_kept(tmp_path: Path, ca_dir: Path, ca: CertificateAuthority) -> None:
    """A valid key that does not match ca.pem raises CAError naming the key, and no file changes."""
    other = tmp_path / "other"
    CertificateAuthority.load_or_create(str(other))
    shutil.copyfile(other / "ca-key.pem", ca_dir / "ca-key.pem")
    before = _snapshot(ca_dir)
    with pytest.raises(CAError) as info:
        CertificateAuthority.load_or_create(str(ca_dir))
    _assert_one_line_naming(info.value, ca_dir / "ca-key.pem")
    assert "does not match" in str(info.value)
    assert _snapshot(ca_dir) == before


def test_non_ca_certificate_is_refused(ca_dir: Path, ca: CertificateAuthority) -> None:
    """A leaf certificate (with its matching key) put in place of the CA is refused, naming ca.pem."""
    cert_pem, key_pem = ca.leaf_pem("example.test")
    (ca_dir / "ca.pem").write_bytes(cert_pem)
    (ca_dir / "ca-key.pem").write_bytes(key_pem)
    before = _snapshot(ca_dir)
    with pytest.raises(CAError) as info:
        CertificateAuthority.load_or_create(str(ca_dir))
    _assert_one_line_naming(info.value, ca_dir / "ca.pem")
    assert _snapshot(ca_dir) == before


@pytest.mark.parametrize("missing", ["ca.pem", "ca-key.pem"])
def test_exactly_one_file_present_raises(ca_dir: Path, ca: CertificateAuthority, missing: str) -> None:
    """With only one of ca.pem / ca-key.pem present, CAError names the missing file and nothing is created."""
    (ca_dir / missing).unlink()
    before = _snapshot(ca_dir)
    with pytest.raises(CAError) as info:
        CertificateAuthority.load_or_create(str(ca_dir))
    _assert_one_line_naming(info.value, ca_dir / missing)
    assert _snapshot(ca_dir) == before
    assert not (ca_dir / missing).exists()


def test_ca_certificate_extensions(ca_dir: Path) -> None:
    """The CA cert has the subject, constraints, key usage, SKI, validity and signature devices require."""
    ca = CertificateAuthority.load_or_create(str(ca_dir), clock=lambda: NOW)
    cert = ca.cert
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert re.fullmatch(r"capture CA [0-9a-f]+", cn)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "capture appliance"
    assert cert.issuer == cert.subject

    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())

    now = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)
    assert cert.not_valid_before_utc == now - datetime.timedelta(days=1)
    assert cert.not_valid_after_utc == now + datetime.timedelta(days=3650)
    assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha256"
    cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    assert cert.serial_number > 2**64  # random, not a counter


def test_sha256_fingerprint_format(ca: CertificateAuthority) -> None:
    """sha256 is the DER's SHA-256 as uppercase hex pairs joined by colons."""
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", ca.sha256)
    assert ca.sha256.replace(":", "").lower() == hashlib.sha256(ca.der).hexdigest()


# -- leaves ----------------------------------------------------------------------


def _leaf(ca: CertificateAuthority, host: str) -> tuple[x509.Certificate, bytes]:
    cert_pem, key_pem = ca.leaf_pem(host)
    return x509.load_pem_x509_certificate(cert_pem), key_pem


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.test", x509.DNSName("example.test")),
        ("Example.TEST", x509.DNSName("example.test")),
        ("127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ("::1", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("[::1]", x509.IPAddress(ipaddress.ip_address("::1"))),
    ],
)
def test_leaf_certificate(ca_dir: Path, host: str, expected: x509.GeneralName) -> None:
    """A leaf has the right SAN (DNSName or IPAddress), serverAuth, constraints,
    issuer, key identifiers, a CA signature, and at most 180 days of validity around now."""
    ca = CertificateAuthority.load_or_create(str(ca_dir), clock=lambda: NOW)
    leaf, _ = _leaf(ca, host)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [expected]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    assert leaf.issuer == ca.cert.subject
    cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == str(expected.value)
    ca.cert.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
    assert leaf.signature_hash_algorithm is not None and leaf.signature_hash_algorithm.name == "sha256"

    now = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)
    assert leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(days=180)


def test_long_host_name_truncates_cn_only(ca: CertificateAuthority) -> None:
    """A host name over 64 characters is truncated in the CN but kept whole in the SAN."""
    host = ("a" * 60) + ".example.test"
    leaf, _ = _leaf(ca, host)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == host[:64]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName(host)]


def test_bad_host_is_refused(ca: CertificateAuthority) -> None:
    """An empty host or one with spaces or control characters is a ValueError, not a certificate."""
    for host in ("", ".", "a b", "a\x00b"):
        with pytest.raises(ValueError):
            ca.leaf_pem(host)


def test_leaf_key_is_reused(ca: CertificateAuthority) -> None:
    """Every leaf carries the same public key, and leaf_pem hands back that one key."""
    one, key_one = _leaf(ca, "one.test")
    two, key_two = _leaf(ca, "two.test")
    assert key_one == key_two
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert one.public_key().public_bytes(der, spki) == two.public_key().public_bytes(der, spki)
    key = serialization.load_pem_private_key(key_one, None)
    assert key.public_key().public_bytes(der, spki) == one.public_key().public_bytes(der, spki)
    assert one.serial_number != two.serial_number


# -- the context cache -----------------------------------------------------------


def test_context_for_caches(ca: CertificateAuthority) -> None:
    """context_for gives the same Context back for the same host, case and trailing dot aside."""
    ctx = ca.context_for("example.test")
    assert isinstance(ctx, SSL.Context)
    assert ca.context_for("example.test") is ctx
    assert ca.context_for("EXAMPLE.test.") is ctx
    assert ca.context_for("other.test") is not ctx


def test_cached_looks_up_without_minting(ca: CertificateAuthority) -> None:
    """cached() returns None for an unseen (or invalid) host and the cached context after context_for."""
    assert ca.cached("example.test") is None
    assert ca.cached_contexts == 0
    ctx = ca.context_for("example.test")
    assert ca.cached("Example.Test") is ctx
    assert ca.cached("a b") is None


def test_context_for_from_threads(ca: CertificateAuthority) -> None:
    """context_for may be called from several threads at once (the proxy mints off the reactor)."""
    errors: list[BaseException] = []

    def mint(n: int) -> None:
        try:
            for i in range(20):
                ca.context_for(f"h{(n * 7 + i) % 30}.test")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=mint, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert ca.cached_contexts == 30


def test_context_cache_is_bounded_lru(ca_dir: Path) -> None:
    """Beyond its bound the cache evicts the least recently used host."""
    ca = CertificateAuthority.load_or_create(str(ca_dir), cache_size=2)
    a = ca.context_for("a.test")
    b = ca.context_for("b.test")
    assert ca.context_for("a.test") is a  # a is now the most recent
    ca.context_for("c.test")  # evicts b
    assert ca.cached_contexts == 2
    assert ca.context_for("a.test") is a
    assert ca.context_for("b.test") is not b


def test_cached_context_renewed_before_leaf_expiry(ca_dir: Path) -> None:
    """A cached context whose leaf nears expiry is minted again, so none is served expired."""
    now = [NOW]
    ca = CertificateAuthority.load_or_create(str(ca_dir), clock=lambda: now[0])
    first = ca.context_for("example.test")
    now[0] += 100 * 86400
    assert ca.context_for("example.test") is first
    now[0] += 79 * 86400
    assert ca.context_for("example.test") is not first


# -- real handshakes -------------------------------------------------------------


class _Server:
    """A plain-socket TLS server thread on 127.0.0.1 using pyOpenSSL and one Context.

    Each connection: handshake, send b"hello\\n", then wait (bounded) for the
    client to close.  Handshake outcomes are recorded for the test.
    """

    def __init__(self, ctx: SSL.Context, timeout: float = 10.0) -> None:
        self.ctx = ctx
        self.timeout = timeout
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.results: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=self.timeout)
        self.listener.close()
        assert not self.thread.is_alive(), "server thread did not stop"

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                self.results.append(self._serve(sock))
            except Exception as exc:  # recorded, so the test can show it
                self.results.append(f"error: {exc!r}")
            finally:
                sock.close()

    def _wait(self, sock: socket.socket, write: bool, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("server timed out")
        if write:
            select.select([], [sock], [], left)
        else:
            select.select([sock], [], [], left)

    def _serve(self, sock: socket.socket) -> str:
        sock.setblocking(False)
        deadline = time.monotonic() + self.timeout
        conn = SSL.Connection(self.ctx, sock)
        conn.set_accept_state()
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                self._wait(sock, False, deadline)
            except SSL.WantWriteError:
                self._wait(sock, True, deadline)
        try:
            conn.sendall(b"hello\n")
            while time.monotonic() < deadline:
                try:
                    if not conn.recv(1024):
                        break
                except SSL.WantReadError:
                    self._wait(sock, False, deadline)
        except (SSL.ZeroReturnError, SSL.SysCallError, SSL.Error, TimeoutError):
            pass  # the client went away; the handshake is what we check
        return "ok"


def _client(
    port: int,
    cafile: Path,
    hostname: str,
    *,
    alpn: list[str] | None = None,
    max_version: ssl.TLSVersion | None = None,
    ctx: ssl.SSLContext | None = None,
    session: ssl.SSLSession | None = None,
) -> tuple[str | None, ssl.SSLSession | None, bool]:
    """Connect with Python's ssl, verifying against ``cafile``; return (ALPN, session, reused)."""
    if ctx is None:
        ctx = ssl.create_default_context(cafile=str(cafile))
        if alpn is not None:
            ctx.set_alpn_protocols(alpn)
        if max_version is not None:
            ctx.maximum_version = max_version
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=hostname, session=session) as tls:
            assert tls.recv(6) == b"hello\n"
            return tls.selected_alpn_protocol(), tls.session, tls.session_reused


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_python_ssl_client_verifies(ca_dir: Path, ca: CertificateAuthority, host: str) -> None:
    """Python's ssl, trusting only ca.pem, completes and verifies a handshake
    against context_for(host), for a name and for an IP literal."""
    with _Server(ca.context_for(host)) as server:
        alpn, _, _ = _client(server.port, ca_dir / "ca.pem", host)
    assert alpn is None
    assert server.results == ["ok"]


def test_wrong_host_name_fails_verification(ca_dir: Path, ca: CertificateAuthority) -> None:
    """A client asking for another name rejects the leaf minted for localhost."""
    with _Server(ca.context_for("localhost")) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            _client(server.port, ca_dir / "ca.pem", "other.test")


def test_alpn_selects_http11_or_declines(ca_dir: Path, ca: CertificateAuthority) -> None:
    """ALPN picks http/1.1 when offered, and an h2-only client gets no ALPN but still connects."""
    with _Server(ca.context_for("localhost")) as server:
        both, _, _ = _client(server.port, ca_dir / "ca.pem", "localhost", alpn=["h2", "http/1.1"])
        h2_only, _, _ = _client(server.port, ca_dir / "ca.pem", "localhost", alpn=["h2"])
    assert both == "http/1.1"
    assert h2_only is None
    assert server.results == ["ok", "ok"]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_session_resumption(ca_dir: Path, ca: CertificateAuthority, version: ssl.TLSVersion) -> None:
    """A returning client resumes its session (TLS 1.2 session id, TLS 1.3 ticket)."""
    client_ctx = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
    client_ctx.maximum_version = version
    with _Server(ca.context_for("localhost")) as server:
        _, session, reused = _client(server.port, ca_dir / "ca.pem", "localhost", ctx=client_ctx)
        assert session is not None and not reused
        _, _, reused = _client(server.port, ca_dir / "ca.pem", "localhost", ctx=client_ctx, session=session)
    assert reused
    assert server.results == ["ok", "ok"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_s_client_verifies(ca_dir: Path, ca: CertificateAuthority) -> None:
    """openssl s_client, trusting only ca.pem and checking the name, verifies with code 0."""
    with _Server(ca.context_for("localhost")) as server:
        proc = subprocess.run(
            [
                "openssl", "s_client",
                "-connect", f"127.0.0.1:{server.port}",
                "-servername", "localhost",
                "-verify_hostname", "localhost",
                "-CAfile", str(ca_dir / "ca.pem"),
                "-verify_return_error",
            ],
            input=b"",
            capture_output=True,
            timeout=20,
        )  # fmt: skip
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out
    assert "Certificate chain" in out and "capture CA" in out


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Each test ends with no extra threads of ours still running."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and set(threading.enumerate()) - before:
        time.sleep(0.01)
    assert not set(threading.enumerate()) - before
