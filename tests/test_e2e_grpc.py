"""End to end: gRPC calls from a grpcio client through the proxy (capture CA trusted) to a grpcio server.

The server is written with generic handlers on raw bytes, so no generated
code is needed; unary and streaming calls pass, grpc-status and
grpc-message trailers reach the client and are kept apart from the
headers in the flow."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from certs import OriginCA

SERVICE = "capture.test.Echo"


def _say(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return b"echo:" + request


def _count(request: bytes, context: grpc.ServicerContext):
    for i in range(int(request)):
        yield b"%d" % i


def _collect(requests, context: grpc.ServicerContext) -> bytes:
    return b",".join(requests)


def _chat(requests, context: grpc.ServicerContext):
    for request in requests:
        yield request.upper()


@pytest.fixture(scope="module")
def grpc_origin(tmp_path_factory):
    ca = OriginCA(tmp_path_factory.mktemp("grpc"), "grpc origin CA")
    cert, key = ca.issue("grpc", ["localhost", "127.0.0.1"])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(_say),
        "Count": grpc.unary_stream_rpc_method_handler(_count),
        "Collect": grpc.stream_unary_rpc_method_handler(_collect),
        "Chat": grpc.stream_stream_rpc_method_handler(_chat),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    server.start()
    server.ca = ca
    server.port = port
    yield server
    server.stop(grace=None)


@pytest.fixture
def grpc_appliance(make_appliance, grpc_origin):
    return make_appliance(tls={"upstream_ca": grpc_origin.ca.path}).start()


def channel(appliance, port: int) -> grpc.Channel:
    root = (appliance.var / "ca" / "ca.pem").read_bytes()
    return grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(root_certificates=root),
                               options=[("grpc.http_proxy", appliance.proxy_url), ("grpc.enable_http_proxy", 1)])


def test_unary_and_streaming_calls_pass_and_are_captured_with_trailers(grpc_appliance, grpc_origin):
    """Unary, server-streaming, client-streaming and bidirectional calls answer through the proxy; each
    call is one HTTP/2 flow whose response trailers (not headers) hold grpc-status."""
    appliance = grpc_appliance
    session = appliance.new_session()
    with channel(appliance, grpc_origin.port) as ch:
        assert ch.unary_unary(f"/{SERVICE}/Say")(b"hi", timeout=20) == b"echo:hi"
        assert list(ch.unary_stream(f"/{SERVICE}/Count")(b"3", timeout=20)) == [b"0", b"1", b"2"]
        assert ch.stream_unary(f"/{SERVICE}/Collect")(iter([b"a", b"b", b"c"]), timeout=20) == b"a,b,c"
        assert list(ch.stream_stream(f"/{SERVICE}/Chat")(iter([b"x", b"y"]), timeout=20)) == [b"X", b"Y"]
    flows = appliance.wait_for_flows(session["id"], 4)
    details = {d["path"]: d for d in (appliance.api("GET", f"/api/flows/{f['id']}").json() for f in flows)}
    assert set(details) == {f"/{SERVICE}/{name}" for name in ("Say", "Count", "Collect", "Chat")}
    for detail in details.values():
        assert detail["http_version"] == "2.0" and detail["status"] == 200
        response = detail["response"]
        assert ["grpc-status", "0"] in response["trailers"]
        assert not any(name == "grpc-status" for name, _ in response["headers"])
        assert any(name == "content-type" and value.startswith("application/grpc") for name, value in response["headers"])


def test_a_failed_call_relays_its_status_and_message(grpc_appliance, grpc_origin):
    """A call the server aborts reaches the client with its status and message; the flow records them.

    grpcio answers an aborted call trailers-only (one HEADERS frame that ends the stream), so there
    the status is in the response's only header block."""
    appliance = grpc_appliance
    session = appliance.new_session()
    with channel(appliance, grpc_origin.port) as ch, pytest.raises(grpc.RpcError) as raised:
        ch.unary_unary(f"/{SERVICE}/Say")(b"missing", timeout=20)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND and raised.value.details() == "no such thing"
    [summary] = appliance.wait_for_flows(session["id"], 1)
    response = appliance.api("GET", f"/api/flows/{summary['id']}").json()["response"]
    fields = response["headers"] + response["trailers"]
    assert ["grpc-status", "5"] in fields and ["grpc-message", "no such thing"] in fields
