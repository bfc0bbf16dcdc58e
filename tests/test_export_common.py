"""Tests for capture.export: the message facts the exporters share."""

from __future__ import annotations


from capture import export
from capture.export import FormPart, is_exchange, multipart_parts, replay_headers, utf8
from test_export_samples import BOUNDARY, MULTIPART, PNG, message, samples


def test_is_exchange() -> None:
    """HTTP flows are exchanges; tunnels and failed CONNECTs are not."""
    flows = samples()
    assert is_exchange(flows["get_query"]) and is_exchange(flows["error"])
    assert not is_exchange(flows["tunnel"]) and not is_exchange(flows["tls_failure"])


def test_replay_headers() -> None:
    """Hop-by-hop, Proxy-*, Connection-named and Content-Length go; the rest keep order and case."""
    headers = message([
        ("Host", "a"), ("connection", "Keep-Alive, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "t=5"),
        ("Proxy-Authorization", "x"), ("Proxy-Foo", "y"), ("TE", "trailers"), ("Trailer", "X"),
        ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("content-length", "3"), ("X-A", "1"), ("x-a", "2"),
    ]).headers
    assert replay_headers(headers) == [(b"Host", b"a"), (b"X-A", b"1"), (b"x-a", b"2")]


def test_utf8() -> None:
    """Text is UTF-8 without NUL bytes; anything else is binary."""
    assert utf8("café".encode()) == "café"
    assert utf8(b"") == ""
    assert utf8(b"\xff") is None
    assert utf8(b"a\x00b") is None


def test_language() -> None:
    """Media types map to Postman's raw languages."""
    assert [export.language(m) for m in ("application/json", "application/problem+json", "text/xml",
                                         "image/svg+xml", "text/html", "text/javascript", "text/csv")] == [
        "json", "json", "xml", "xml", "html", "javascript", "text"]


def test_multipart_parts() -> None:
    """Parts come back with name, bytes, filename and content type, even with the boundary inside a value."""
    parts = multipart_parts(MULTIPART, f"multipart/form-data; boundary={BOUNDARY}")
    assert parts == [
        FormPart(name="title", value="Holiday été".encode()),
        FormPart(name="photo", value=PNG, filename="beach.png", content_type="image/png"),
    ]
    tricky = (b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx--b y\r\n"
              b"--b\r\nContent-Disposition: form-data; name=\"e\"\r\n\r\n\r\n--b--")
    assert multipart_parts(tricky, 'multipart/form-data; boundary="b"') == [
        FormPart(name="a", value=b"x--b y"), FormPart(name="e", value=b"")]


def test_multipart_that_does_not_parse() -> None:
    """Wrong type, no boundary, no closing delimiter or a part without a name give None."""
    assert multipart_parts(MULTIPART, "multipart/mixed; boundary=" + BOUNDARY) is None
    assert multipart_parts(MULTIPART, "multipart/form-data") is None
    assert multipart_parts(MULTIPART[:-10], f"multipart/form-data; boundary={BOUNDARY}") is None
    nameless = b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n"
    assert multipart_parts(nameless, "multipart/form-data; boundary=b") is None
