"""End to end: the flow detail's gRPC section for real grpcio calls carrying real protobuf messages.

The origin is a grpcio server with generic handlers; the messages are
protobufs the protobuf library serialises (descriptor.proto's and
struct.proto's own messages), so the section is checked against encodings
no test code wrote by hand.
"""

from __future__ import annotations

import queue
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2, struct_pb2

from certs import OriginCA

SERVICE = "capture.test.Files"


def request_message(name: str) -> bytes:
    proto = descriptor_pb2.FileDescriptorProto(name=name, package="chat")
    proto.message_type.add(name="Hello").field.add(name="text", number=1)
    return proto.SerializeToString()


def _describe(request: bytes, context: grpc.ServicerContext) -> bytes:
    name = descriptor_pb2.FileDescriptorProto.FromString(request).name
    return struct_pb2.Value(string_value=f"seen {name}").SerializeToString()


def _sizes(requests, context: grpc.ServicerContext):
    for request in requests:
        yield struct_pb2.Value(number_value=float(len(request))).SerializeToString()


def serve(directory: Path) -> grpc.Server:
    """A started grpcio server of SERVICE on loopback, with its TLS CA (``.ca``) and ``.port``."""
    ca = OriginCA(directory, "grpc messages CA")
    cert, key = ca.issue("grpc", ["localhost", "127.0.0.1"])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handlers = {"Describe": grpc.unary_unary_rpc_method_handler(_describe),
                "Sizes": grpc.stream_stream_rpc_method_handler(_sizes)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.port = server.add_secure_port("127.0.0.1:0",
                                         grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    server.ca = ca
    server.start()
    return server


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    server = serve(tmp_path_factory.mktemp("grpc-messages"))
    yield server
    server.stop(grace=None)


def ping_pong_sizes(channel: grpc.Channel) -> list[float]:
    """The bidirectional Sizes call, each request sent once the answer to the one before is in,
    so the order on the wire is known: request, response, request, response."""
    answered: queue.Queue[bytes] = queue.Queue()

    def requests():
        for request in (b"\x08\x01", b"\x08\x02\x10\x03"):
            yield request
            answered.get(timeout=20)

    sizes = []
    for size in channel.stream_stream(f"/{SERVICE}/Sizes")(requests(), timeout=20):
        sizes.append(struct_pb2.Value.FromString(size).number_value)
        answered.put(size)
    return sizes


def channel_through(appliance, port: int) -> grpc.Channel:
    """A TLS channel to the origin on ``port`` through the appliance's proxy, trusting the appliance's CA."""
    root = (appliance.var / "ca" / "ca.pem").read_bytes()
    options = [("grpc.http_proxy", appliance.proxy_url), ("grpc.enable_http_proxy", 1)]
    return grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(root_certificates=root),
                               options=options)


def grpc_flow(appliance, session_id: int, method: str) -> dict:
    flows = appliance.wait_for_flows(session_id, 1)
    (summary,) = [f for f in flows if f["path"].endswith(method)]
    return appliance.api("GET", f"/api/flows/{summary['id']}").json()


def test_grpc_section_lists_service_method_and_decoded_messages(make_appliance, origin):
    """A unary and a bidirectional call through the proxy: each flow names service and method, its status,
    and every message in the order it passed, with its direction, time and protobuf fields."""
    appliance = make_appliance(tls={"upstream_ca": origin.ca.path}).start()
    session = appliance.new_session()
    with channel_through(appliance, origin.port) as channel:
        answer = channel.unary_unary(f"/{SERVICE}/Describe")(request_message("hello.proto"), timeout=20)
        assert struct_pb2.Value.FromString(answer).string_value == "seen hello.proto"
        assert ping_pong_sizes(channel) == [2.0, 4.0]

    detail = grpc_flow(appliance, session["id"], "/Describe")
    section = detail["grpc"]
    assert (section["service"], section["method"], section["status"]) == (SERVICE, "Describe", "0")
    request, response = section["messages"]
    assert (request["from_client"], response["from_client"]) == (True, False)
    (name,) = [f for f in request["fields"] if f["number"] == 1]
    assert name["string"] == "hello.proto"
    (message_type,) = [f for f in request["fields"] if f["number"] == 4]
    assert [f["string"] for f in message_type["message"] if f["number"] == 1] == ["Hello"]
    assert response["fields"][0]["number"] == 3 and response["fields"][0]["string"] == "seen hello.proto"

    section = grpc_flow(appliance, session["id"], "/Sizes")["grpc"]
    messages = section["messages"]
    assert [m["from_client"] for m in messages] == [True, False, True, False]  # as they passed
    assert messages[2]["fields"] == [{"number": 1, "wire_type": "varint", "value": 2},
                                     {"number": 2, "wire_type": "varint", "value": 3}]
    assert [messages[i]["fields"][0]["float"] for i in (1, 3)] == [2.0, 4.0]
    times = [m["time"] for m in messages]
    assert None not in times and times == sorted(times)
