"""capturectl show for a WebSocket: its messages one per line, and how it closed."""

from __future__ import annotations

from capture import cli_format


def test_show_lists_messages_and_close():
    """Each message is a line with its direction and type; binary is hidden without --body; the close follows."""
    flow = {"id": 3, "time": "2026-01-01T00:00:00.000Z", "client": "10.0.0.1", "client_port": 5, "method": "GET",
            "url": "http://h/ws", "request": {"headers": []}, "response": {"status": 101, "headers": []},
            "timings": {}, "duration_ms": 5.0,
            "websocket": {"open": False, "message_count": 3, "close": {"code": 1000, "reason": "bye",
                                                                         "closed_by": "client"},
                          "messages": [
                              {"from_client": True, "type": "text", "content": "hi", "encoding": "utf-8",
                               "size": 2, "truncated": False, "time": "2026-01-01T00:00:01.000Z"},
                              {"from_client": False, "type": "binary", "content": "AAE=", "encoding": "base64",
                               "size": 2, "truncated": False, "time": "2026-01-01T00:00:02.000Z"}]}}
    lines = cli_format.flow_detail(flow)
    tail = lines[lines.index("websocket: 3 message(s)"):]
    assert tail[1].endswith("> text: hi")
    assert tail[2].endswith("< binary: <2 bytes, base64; --body prints it>")
    assert tail[3] == "<1 more: GET /api/flows/ID/messages?offset=2>"
    assert tail[4] == "closed by client: 1000 bye"
    assert cli_format.flow_detail(flow, show_binary=True)[-3].endswith("< binary: AAE=")


def test_show_says_when_a_message_was_not_stored():
    """An omitted message (responses not captured) shows its size and why there is no content."""
    flow = {"id": 3, "time": "2026-01-01T00:00:00.000Z", "client": "10.0.0.1", "client_port": 5, "method": "GET",
            "url": "http://h/ws", "request": {"headers": []}, "response": {"status": 101, "headers": []},
            "timings": {}, "duration_ms": 5.0,
            "websocket": {"open": True, "message_count": 1, "close": None, "messages": [
                {"from_client": False, "type": "text", "content": "", "encoding": "utf-8", "size": 7,
                 "truncated": True, "omitted": True, "time": "2026-01-01T00:00:01.000Z"}]}}
    lines = cli_format.flow_detail(flow)
    assert lines[-1].endswith("< text: <7 bytes, not stored: responses are not captured>")
