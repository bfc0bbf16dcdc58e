"""capture.autopass: what a proxy process reports about intercepted clients, and what it records (no sockets)."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from capture import wire
from capture.autopass import REPORT_TIMEOUT, AutoPassthrough
from capture.shipper import Shipper, ShipperProtocol


def connected() -> tuple[Shipper, StringTransport, ShipperProtocol, MemoryReactorClock]:
    clock = MemoryReactorClock()
    clock.advance(1000)
    shipper = Shipper(clock)
    protocol = ShipperProtocol(shipper)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(wire.encode("welcome", pid=1, last_seq=0))
    transport.clear()
    return shipper, transport, protocol, clock


def calls(transport: StringTransport) -> list[dict[str, Any]]:
    messages = wire.Decoder().feed(transport.value())
    transport.clear()
    return [m for m in messages if m["t"] == "call"]


def alert(text: str) -> Failure:
    return Failure(SSL.Error([("SSL routines", "", text)]))


def test_an_alert_passes_through_here_at_once_and_is_reported():
    """An unknown_ca alert: the host passes through in this process before any push, the flow says so."""
    shipper, transport, _, clock = connected()
    auto = AutoPassthrough(shipper, clock, enabled=True)
    recorded: list[str] = []
    auto.handshake_failed("10.0.0.7", "api.example", 990.0, alert("tlsv1 alert unknown ca"), recorded.append)
    assert auto.passes("10.0.0.7", "api.example")
    [call] = calls(transport)
    assert call["method"] == "passthrough.rejected" and call["args"]["host"] == "api.example"
    [message] = recorded
    assert "alert unknown ca" in message and "passed through" in message


def test_a_cut_is_counted_by_the_session_manager_before_its_flow_is_recorded():
    """A reset mid-handshake is reported with its times; the flow waits for the count and names it."""
    shipper, transport, protocol, clock = connected()
    auto = AutoPassthrough(shipper, clock, enabled=True)
    recorded: list[str] = []
    auto.handshake_failed("10.0.0.7", "api.example", 990.0, Failure(ConnectionLost()), recorded.append)
    assert not auto.passes("10.0.0.7", "api.example")
    [call] = calls(transport)
    assert call["method"] == "passthrough.closed"
    assert (call["args"]["start"], call["args"]["end"]) == (990.0, 1000.0)
    assert recorded == []
    protocol.dataReceived(wire.encode("reply", id=call["id"], result={"passed": False, "count": 1}))
    [message] = recorded
    assert "not finished: the client went away" in message and "capture CA" not in message
    assert "(1 of 3 in a row" in message


def test_the_flow_is_recorded_even_if_the_session_manager_never_answers():
    """No answer within REPORT_TIMEOUT: the flow is recorded without the count; nothing is lost."""
    shipper, transport, _, clock = connected()
    auto = AutoPassthrough(shipper, clock, enabled=True)
    recorded: list[str] = []
    auto.closed_before_request("10.0.0.7", "api.example", 990.0, recorded.append)
    clock.advance(REPORT_TIMEOUT + 0.1)
    assert recorded == ["the client closed the TLS connection to api.example after the handshake without sending a request"]


def test_a_first_request_resets_only_a_pair_with_closes_counted():
    """request_seen sends a report only for a suspect pair, once: no message per request."""
    shipper, transport, _, clock = connected()
    auto = AutoPassthrough(shipper, clock, enabled=True)
    auto.request_seen("10.0.0.7", "api.example")
    assert calls(transport) == []
    shipper.suspects.add(("10.0.0.7", "api.example"))
    auto.request_seen("10.0.0.7", "api.example")
    auto.request_seen("10.0.0.7", "api.example")
    assert [c["method"] for c in calls(transport)] == ["passthrough.succeeded"]


def test_disabled_records_but_never_passes_through():
    """auto_passthrough = no: an alert is recorded, nothing is reported or passed through."""
    shipper, transport, _, clock = connected()
    auto = AutoPassthrough(shipper, clock, enabled=False)
    recorded: list[str] = []
    auto.handshake_failed("10.0.0.7", "api.example", 990.0, alert("sslv3 alert bad certificate"), recorded.append)
    assert not auto.passes("10.0.0.7", "api.example") and calls(transport) == []
    assert "alert bad certificate" in recorded[0] and "passed through" not in recorded[0]
