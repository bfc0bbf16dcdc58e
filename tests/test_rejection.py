"""capture.rejection: when a client has rejected our certificate, decided without sockets."""

from __future__ import annotations

from capture.rejection import CLOSES_IN_A_ROW, PassthroughTable, client_alert

KEY = ("10.0.0.7", "api.example")


def test_alerts_are_told_from_cuts():
    """OpenSSL's words for a received alert name it; an EOF, a reset or a local error are no alert."""
    assert client_alert("tlsv1 alert unknown ca") == "unknown ca"
    assert client_alert("sslv3 alert bad certificate") == "bad certificate"
    assert client_alert("SSLV3_ALERT_CERTIFICATE_UNKNOWN, sslv3 alert certificate unknown") == "certificate unknown"
    assert client_alert("tlsv13 alert certificate required") == "certificate required"
    assert client_alert("unexpected eof while reading") is None
    assert client_alert("Connection to the other side was lost in a non-clean fashion: Connection lost.") is None
    assert client_alert("") is None


def test_an_alert_passes_the_host_through_at_once():
    """One alert is a rejection: the pair is passed through, and only once."""
    table = PassthroughTable()
    assert table.rejected(KEY, 100.0) is True
    assert table.hosts == {KEY: 100.0}
    assert table.rejected(KEY, 200.0) is False
    assert table.hosts == {KEY: 100.0}


def test_three_closes_in_a_row_pass_the_host_through():
    """Connections closed before a request, one after another: the third passes the host through."""
    table = PassthroughTable()
    assert table.closed_early(KEY, 0.0, 1.0) == 1
    assert table.closed_early(KEY, 2.0, 3.0) == 2
    assert KEY not in table.hosts and table.suspects == [KEY]
    assert table.closed_early(KEY, 4.0, 5.0) == 0
    assert table.hosts == {KEY: 5.0} and table.suspects == []
    assert CLOSES_IN_A_ROW == 3


def test_two_closes_leave_interception_on():
    """Two cut connections are not a rejection."""
    table = PassthroughTable()
    table.closed_early(KEY, 0.0, 1.0)
    table.closed_early(KEY, 2.0, 3.0)
    assert table.hosts == {}


def test_a_successful_exchange_resets_the_count():
    """A request between closes starts the count again: close, close, request, close, close is no rejection."""
    table = PassthroughTable()
    table.closed_early(KEY, 0.0, 1.0)
    table.closed_early(KEY, 2.0, 3.0)
    assert table.succeeded(KEY) is True
    assert table.succeeded(KEY) is False  # nothing counted any more: nothing to reset
    assert table.closed_early(KEY, 4.0, 5.0) == 1
    assert table.closed_early(KEY, 6.0, 7.0) == 2
    assert table.hosts == {}


def test_connections_cut_together_count_once():
    """Ten connections open at once and cut at once (a load generator stopping) add one to the count, not ten."""
    table = PassthroughTable()
    for i in range(10):
        table.closed_early(KEY, 10.0 + i * 0.01, 20.0 + i * 0.001)
    assert table.hosts == {}
    assert table.closed_early(KEY, 21.0, 22.0) == 2  # a later attempt does count


def test_pairs_are_counted_apart():
    """Another client, or another host, has its own count."""
    table = PassthroughTable()
    for start in (0.0, 2.0):
        table.closed_early(KEY, start, start + 1)
        table.closed_early(("10.0.0.8", "api.example"), start, start + 1)
        table.closed_early(("10.0.0.7", "cdn.example"), start, start + 1)
    assert table.closed_early(KEY, 4.0, 5.0) == 0
    assert list(table.hosts) == [KEY]


def test_forget_and_seed():
    """forget drops all, a client's or a host's entries (and their counts); seed takes back what a proxy held."""
    table = PassthroughTable()
    table.rejected(KEY, 1.0)
    table.rejected(("10.0.0.8", "api.example"), 2.0)
    table.rejected(("10.0.0.8", "cdn.example"), 3.0)
    table.closed_early(("10.0.0.8", "img.example"), 0.0, 1.0)
    assert table.forget(client="10.0.0.8", host="cdn.example") == 1
    assert table.forget(host="api.example") == 2
    assert table.forget(client="10.0.0.8") == 0 and table.suspects == []
    assert table.seed([("10.0.0.9", "x.example", 5.0), ("10.0.0.9", "x.example", 6.0)]) is True
    assert table.seed([("10.0.0.9", "x.example", 7.0)]) is False
    assert table.hosts == {("10.0.0.9", "x.example"): 5.0}
    assert table.forget() == 1 and table.hosts == {}


def test_the_tables_are_bounded():
    """Past the limit the oldest entries go, so a flood of clients cannot grow the table without end."""
    table = PassthroughTable(limit=3)
    for i in range(10):
        table.rejected((f"10.0.0.{i}", "h"), float(i))
        table.closed_early((f"10.0.1.{i}", "h"), 0.0, 1.0)
    assert list(table.hosts) == [("10.0.0.7", "h"), ("10.0.0.8", "h"), ("10.0.0.9", "h")]
    assert len(table.suspects) == 3
