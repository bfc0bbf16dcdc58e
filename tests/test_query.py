"""Tests for capture.sessiond.query: filters pushed down to SQL, exactly.

The translation is checked term by term, and then against the filter
language itself: over a few hundred awkward flows in a real store, what SQL
plus residual selects must be what ``filters.parse(expr)(flow)`` selects.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture import filters
from capture.filters import And, Const, Flag, Not, Or, Regex, StatusCode
from capture.flow import Flow, Message, pack_fields
from capture.messages import WebSocketMessage, pack_messages
from capture.sessiond import query as push_down
from capture.sessiond.query import MAX_PUSH_DEPTH, Query, QueryError, order_by
from capture.sessiond.store import SQLiteStore as Store
from capture.sessiond.store import open_store
from conftest import STORE_BACKENDS, fresh_database
from capture.sessiond.store.sqlite import DIALECT, SQL_FUNCTIONS

T0 = 1_700_000_000.0


def translate(tree: filters.Filter, max_params: int = 999) -> Query:
    """The push-down in SQLite's dialect, which these tests spell out."""
    return push_down.translate(tree, DIALECT, max_params)


def plan(expression: str) -> Query:
    return translate(filters.parse(expression))


# --- translation, term by term -------------------------------------------------

PUSHED = [
    "~m POST",
    "~u /api/",
    "~d example",
    "~d example.com",
    "~d 'example\\.com$'",
    "~src 10.0.0.5",
    "~dst :443",
    "~c 404",
    "~e",
    "~s",
    "~q",
    "~http",
    "~tcp",
    "~a",
    "~t json",
    "~tq form",
    "~ts 'image/.*'",
    "~all",
    "!~all",
    "api",
    "!~m GET",
    "~m POST | ~c 500",
    "!(~d cdn | ~a) & ~s",
]


@pytest.mark.parametrize("expression", PUSHED)
def test_pushable_terms_have_no_residual(expression):
    """Method, URL, host, client, destination, status, flags, content type, and ! & | of them go wholly to SQL."""
    query = plan(expression)
    assert query.residual is None
    assert query.where != "TRUE" or filters.parse(expression) == Const(True)


@pytest.mark.parametrize("name", ["h", "hq", "hs", "b", "bq", "bs"])
def test_header_and_body_filters_stay_residual(name):
    """Header and body filters need the decoded flow: the whole term is the residual."""
    tree = filters.parse(f"~{name} token")
    assert translate(tree) == Query("TRUE", (), tree)


def test_plain_literal_is_a_lowercase_instr():
    """A plain literal searches lower(column) with instr, the literal lower-cased; others go to the pattern."""
    query = plan("~m PoSt")
    assert "instr(lower(f.method), ?)" in query.where
    assert query.params == ("post", "m", "PoSt")


def test_escaped_metacharacters_are_literal():
    r"""``example\.com`` is the literal ``example.com``."""
    query = plan("~d example\\.com")
    assert "instr(lower(f.host), ?)" in query.where
    assert query.params[0] == "example.com"


def test_dot_becomes_like_underscore_with_escapes():
    """An unescaped '.' is LIKE's '_'; a literal % _ or backslash is escaped."""
    query = plan(r'~u "50%_off.\\\\"')
    assert "f.url LIKE ? ESCAPE" in query.where
    assert query.params == (r"%50\%\_off_\\%", "u", r"50%_off.\\")


@pytest.mark.parametrize(
    "expression", ["~u 'a+'", "~d '^api'", "~m 'GET|POST'", "~d caf\u00e9", "~u 'x\\d'", "~u '\ta'"]
)
def test_regexes_and_non_ascii_call_the_pattern(expression):
    """Real regexes and non-ASCII literals are run by capture_search, the filter's own pattern."""
    tree = filters.parse(expression)
    query = translate(tree)
    assert query.where.startswith("capture_search(")
    assert query.params == (tree.name, tree.pattern_text)


def test_empty_pattern_matches_any_present_text():
    """An empty pattern matches every value, but not a missing header."""
    assert plan("~u ''").where == "(f.url IS NOT NULL)"
    assert plan("~ts ''").where == "(f.response_type IS NOT NULL)"


def test_status_code_out_of_range_matches_nothing():
    """A status code no 64-bit column can hold is false, not an overflow."""
    assert plan("~c 99999999999999999999").where == "FALSE"
    assert plan("~c 404") == Query("(f.status = ?)", (404,), None)


def test_and_pushes_each_exact_side():
    """In a conjunction the exact terms go to SQL and only the rest is residual."""
    query = plan("~m POST & ~b secret")
    assert query.residual == Regex("b", "secret")
    assert "f.method" in query.where and "secret" not in query.params
    query = plan("(~c 200 & ~hs x) & (~d api & ~bq y)")
    assert query.residual == And(Regex("hs", "x"), Regex("bq", "y"))
    assert 200 in query.params and "api" in query.params


def test_or_and_not_with_a_residual_part_stay_whole():
    """| and ! push only when every part is exact; otherwise the whole node is residual."""
    tree = filters.parse("~m POST | ~b secret")
    assert translate(tree) == Query("TRUE", (), tree)
    tree = filters.parse("!(~m POST & ~b secret)")
    assert translate(tree) == Query("TRUE", (), tree)
    query = plan("~c 200 & !(~m POST & ~b secret)")
    assert query.where == "(f.status = ?)"
    assert query.residual == Not(And(Regex("m", "POST"), Regex("b", "secret")))


def test_unknown_nodes_stay_residual():
    """A node type this module does not know is left to Python, not guessed at."""

    class Custom(filters.Filter):
        def __call__(self, flow):
            return True

        def __str__(self):
            return "~custom"

    node = Custom()
    assert translate(node) == Query("TRUE", (), node)
    assert translate(And(StatusCode(200), node)) == Query("(f.status = ?)", (200,), node)


def test_deep_trees_and_many_parameters_go_to_python():
    """Trees deeper than MAX_PUSH_DEPTH, or needing more parameters than allowed, are all residual."""
    tree = StatusCode(200)
    for _ in range(MAX_PUSH_DEPTH):
        tree = Not(tree)
    assert translate(tree) == Query("TRUE", (), tree)
    assert translate(tree.inner).residual is None
    wide = filters.parse(" | ".join(f"~c {code}" for code in range(100, 120)))
    assert translate(wide, max_params=10) == Query("TRUE", (), wide)
    assert translate(wide, max_params=20).residual is None


def test_order_by():
    """Sort keys map to columns, ties go by time then id, desc reverses everything; others are QueryError."""
    assert order_by("time", "asc") == "sf.time ASC, sf.flow_id ASC"
    assert order_by("status", "desc") == "f.status DESC, sf.time DESC, sf.flow_id DESC"
    assert order_by("duration", "asc").startswith("f.duration_ms ASC")
    assert order_by("size", "asc").startswith("f.response_size ASC")
    assert order_by("request_size", "asc").startswith("f.request_size ASC")
    assert order_by("host", "asc").startswith("lower(f.host) ASC")
    for sort, order in [("colour", "asc"), ("time", "up"), ("TIME", "asc"), ("", "")]:
        with pytest.raises(QueryError):
            order_by(sort, order)


def test_sql_functions():
    """capture_search runs the filter's pattern (NULL is no match); capture_asset the ~a test."""
    search = SQL_FUNCTIONS["capture_search"][1]
    asset = SQL_FUNCTIONS["capture_asset"][1]
    assert search("d", "^EX", "example.com") == 1
    assert search("d", "^EX", "api.example.com") == 0
    assert search("ts", "json", None) == 0
    assert search("d", "k", "\u212aelvin") == 1  # Python folds the Kelvin sign to k
    assert asset("image/png", "/x") == 1
    assert asset("", "/app.JS?v=1") == 1
    assert asset("application/json", "/app.js") == 0


# --- the same answers as the filter language ------------------------------------

HOSTS = [
    "example.com", "EXAMPLE.COM", "api.example.org", "exampleXcom.test", "cdn.test",
    "10.0.0.5", "\u212aelvin.test", "\u017ftatic.test", "caf\u00e9.test", "CAF\u00c9.test",
    "nul\x00host", "::1",
]
METHODS = ["GET", "get", "POST", "Post", "PUT", "CONNECT", "P\u00d6ST"]
CLIENTS = ["10.0.0.5", "10.0.0.50", "10x0y0z5", "192.168.1.20", "::1"]
PATHS = [
    "/", "/api/v1/items", "/API/items?x=1", "/img/logo.PNG", "/a\nb", "/a.b", "/50%_off",
    "/caf\u00e9", "/\u017ftyle.css", "/app.js?v=2", "/back\\slash", "/fonts/x.woff2",
]
TYPES = [
    None, "application/json", "Application/JSON; charset=utf-8", "", "image/png", "text/css",
    "text/html;charset=\u212a", "application/x-www-form-urlencoded", "font/woff2",
]
BODIES = [b"", b"hello", b'{"token": "s3cret"}', "caf\u00e9".encode(), b"\xff\x00"]


def _message(rnd: random.Random) -> Message:
    headers = [(b"Host", b"example.com")]
    content_type = rnd.choice(TYPES)
    if content_type is not None:
        name = rnd.choice([b"Content-Type", b"content-type"])
        headers.insert(rnd.randint(0, 1), (name, content_type.encode("utf-8")))
    if rnd.random() < 0.2:
        headers.append((b"Content-Type", b"text/plain"))  # only the first counts
    body = rnd.choice(BODIES)
    return Message(headers=tuple(headers), body=body, size=len(body) + rnd.choice([0, 0, 100]))


def random_flow(rnd: random.Random, i: int) -> Flow:
    response = None if rnd.random() < 0.25 else _message(rnd)
    kind = "tunnel" if rnd.random() < 0.1 else "http"
    return Flow(
        client=rnd.choice(CLIENTS),
        client_port=rnd.choice([443, 5000, 50000]),
        scheme=rnd.choice(["http", "https"]),
        host=rnd.choice(HOSTS),
        port=rnd.choice([80, 443, 8080]),
        method=rnd.choice(METHODS),
        path=rnd.choice(PATHS),
        request=_message(rnd),
        # A status without a response (and the reverse) must not fool ~s / ~q.
        status=rnd.choice([0, 200, 201, 204, 404, 500]),
        response=response,
        start=T0 + rnd.randint(0, 50),
        end=None if rnd.random() < 0.1 else T0 + 60 + rnd.random(),
        error=rnd.choice(["", "", "connection refused"]),
        kind=kind,
    )


@pytest.fixture(scope="module", params=STORE_BACKENDS)
def sample(request, tmp_path_factory):
    """A store of each backend holding 400 random flows in one session (and a few in another), and those flows by id."""
    store = open_store(fresh_database(request.param, tmp_path_factory.mktemp("query"), request))
    session_id = store.create_session("s")["id"]
    other = store.create_session("other")["id"]
    rnd = random.Random(20240601)
    batch = [(i + 1, [session_id], random_flow(rnd, i).pack()) for i in range(400)]
    batch += [(401 + i, [other], random_flow(rnd, i).pack()) for i in range(20)]
    store.ingest("p", batch)
    flows = list(store.iter_flows(session_id))
    assert len(flows) == 400
    yield store, session_id, flows
    store.close()


PATTERNS = [
    "get", "POST", "p\u00f6st", "example", "example.com", "example\\.com", "com$", "^http", "json",
    "/api", "api/", "10.0.0.5", "10\\.0\\.0\\.5", ":443", "5000$", "k", "K", "s", "S", "i",
    "caf\u00e9", "CAF\u00c9", "a.b", "a\\.b", "%", "_", "50%_", "\\\\", "", "x|y", "[0-9]+", "image/",
    "charset", "a b", "nul", "host", ".", "..", "json;", "html;charset=k", "woff", "\\d{3}",
]
REGEX_NAMES = ["m", "u", "d", "h", "hq", "hs", "b", "bq", "bs", "t", "tq", "ts", "src", "dst", "via"]
FLAG_NAMES = ["all", "q", "s", "e", "http", "tcp", "a"]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def leaves(draw) -> str:
    kind = draw(st.sampled_from(["flag", "regex", "regex", "code", "bare"]))
    if kind == "flag":
        return "~" + draw(st.sampled_from(FLAG_NAMES))
    if kind == "code":
        return f"~c {draw(st.sampled_from([0, 200, 201, 404, 500, 99999999999999999999]))}"
    argument = _quote(draw(st.sampled_from(PATTERNS)))
    if kind == "bare":
        return argument
    return f"~{draw(st.sampled_from(REGEX_NAMES))} {argument}"


def combined(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Expressions made of ``inner`` ones with !, & and |."""
    return st.one_of(
        inner.map(lambda e: f"!({e})"),
        st.tuples(inner, inner).map(lambda pair: f"({pair[0]}) & ({pair[1]})"),
        st.tuples(inner, inner).map(lambda pair: f"({pair[0]}) | ({pair[1]})"),
    )


expressions = st.recursive(leaves(), combined, max_leaves=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expression=expressions)
def test_property_pushdown_selects_what_the_filter_selects(sample, expression):
    """For any expression, SQL plus residual list exactly the flows the filter matches, in order, with the total."""
    store, session_id, flows = sample
    tree = filters.parse(expression)
    expected = [flow_id for flow_id, flow in flows if tree(flow)]
    page, total = store.list_flows(session_id, limit=1000, filter=expression)
    assert [summary["id"] for summary in page] == expected
    assert total == len(expected)
    # A page from the middle: the SQL paging and the Python paging agree too.
    page, total = store.list_flows(session_id, limit=7, offset=3, filter=expression)
    assert [summary["id"] for summary in page] == expected[3:10]
    assert total == len(expected)
    assert [flow_id for flow_id, _ in store.iter_flows(session_id, filter=expression)] == expected


def random_socket(rnd: random.Random, i: int) -> tuple[Flow, list[WebSocketMessage]]:
    """A WebSocket flow (bodies empty, as the proxy records them) and a few random messages."""
    flow = random_flow(rnd, i)._replace(kind="websocket", method="GET", status=101, path=f"/ws/{i}",
                                        request=_message(rnd)._replace(body=b"", size=0),
                                        response=_message(rnd)._replace(body=b"", size=0))
    messages = [WebSocketMessage(rnd.random() < 0.5, rnd.choice(["text", "binary"]), content, len(content),
                                 False, T0 + n, rnd.random() < 0.1)
                for n, content in enumerate(rnd.choice(BODIES) for _ in range(rnd.randint(0, 4)))]
    return flow, [m._replace(content=b"") if m.omitted else m for m in messages]


@pytest.fixture(scope="module", params=STORE_BACKENDS)
def sockets(request, tmp_path_factory):
    """A store of each backend with 150 flows, a third of them WebSockets with messages, and each
    flow's messages by id (for the Python side of the comparison)."""
    store = open_store(fresh_database(request.param, tmp_path_factory.mktemp("sockets"), request))
    session_id = store.create_session("s")["id"]
    rnd = random.Random(20261203)
    batch, by_path = [], {}
    for i in range(150):
        seq = len(batch) + 1
        if i % 3:
            batch.append((seq, [session_id], random_flow(rnd, i).pack()))
            continue
        flow, messages = random_socket(rnd, i)
        by_path[flow.path] = messages
        batch.append((seq, [session_id], pack_fields(flow), "open", 0))
        if messages:
            batch.append((seq + 1, [], pack_messages(messages), "messages", seq))
    store.ingest("p", batch)
    flows = list(store.iter_flows(session_id))
    messages = {flow_id: by_path.get(flow.path, []) for flow_id, flow in flows}
    assert sum(map(len, messages.values())) > 50
    yield store, session_id, flows, messages
    store.close()


class WithMessages:
    """A flow with its messages, as the filter language reads them (``flow.websocket_messages()``)."""

    def __init__(self, flow: Flow, messages: list[WebSocketMessage]) -> None:
        self._flow = flow
        self._messages = messages

    def websocket_messages(self):
        return iter(self._messages)

    def __getattr__(self, name: str):
        return getattr(self._flow, name)


BODY_EXPRESSIONS = st.recursive(
    st.one_of(leaves(), st.tuples(st.sampled_from(["b", "bq", "bs"]), st.sampled_from(PATTERNS)).map(
        lambda pair: f"~{pair[0]} {_quote(pair[1])}"), st.just("~websocket")),
    combined,
    max_leaves=5,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expression=BODY_EXPRESSIONS)
def test_property_body_filters_search_websocket_messages(sockets, expression):
    """With WebSockets among the flows, SQL plus residual select what the filter selects when it
    is handed each socket's messages: ~b any message, ~bq the client's, ~bs the origin's."""
    store, session_id, flows, messages = sockets
    tree = filters.parse(expression)
    expected = [flow_id for flow_id, flow in flows if tree(WithMessages(flow, messages[flow_id]))]
    page, total = store.list_flows(session_id, limit=1000, filter=expression)
    assert [summary["id"] for summary in page] == expected and total == len(expected)
    assert [flow_id for flow_id, _ in store.iter_flows(session_id, filter=expression)] == expected


def test_socket_sample_has_what_the_property_needs(sockets):
    """The sample holds sockets matched only by a client's message, only by the origin's, and omitted ones."""
    store, session_id, flows, messages = sockets
    every = [m for found in messages.values() for m in found]
    assert any(m.omitted for m in every) and any(m.type == "binary" for m in every)
    client_only = filters.parse("~websocket & ~bq hello & !~bs hello")
    server_only = filters.parse("~websocket & ~bs hello & !~bq hello")
    for tree in (client_only, server_only):
        listed = store.list_flows(session_id, filter=tree, limit=1000)[0]
        assert listed and all(messages[f["id"]] for f in listed)  # by messages: their bodies are empty


@pytest.mark.parametrize(
    "expression",
    [
        "~d k", "~d K", "~d s", "~d \u017f", "~d '\u212a'", "~m p\u00f6st", "~d caf\u00e9",
        "~u a.b", "~u 'a\\.b'", "~u %", "~u _", r"~u '\\\\'", "~d nul", "~d host", "~d 'nul.host'",
        "~ts json", "~tq 'json'", "~t json", "!~t json", "!~ts 'json.'", "!~tq ''", "!~ts 'a+'",
        "~ts ''", "~tq ''", "~ts charset=k", "~s", "~q", "!~s",
        "~a", "!~a", "~src 10.0.0.5", "~src '10\\.0\\.0\\.5:'", "~dst ':443$'", "~c 0", "!~c 0",
    ],
)
def test_awkward_terms_agree_with_the_filter(sample, expression):
    """Case folding beyond ASCII, NUL and newline in text, LIKE wildcards and missing headers: same answer as Python."""
    store, session_id, flows = sample
    tree = filters.parse(expression)
    expected = [flow_id for flow_id, flow in flows if tree(flow)]
    page, total = store.list_flows(session_id, limit=1000, filter=expression)
    assert [summary["id"] for summary in page] == expected
    assert total == len(expected)
    assert translate(tree).residual is None


def test_status_without_response_is_not_a_response(sample):
    """~s means a response was recorded, not that a status is set: the sample holds both mismatches."""
    store, session_id, flows = sample
    assert any(flow.status and flow.response is None for _, flow in flows)
    assert any(not flow.status and flow.response is not None for _, flow in flows)
    assert any(flow.response is not None and flow.response.size == 0 for _, flow in flows)
    expected = [flow_id for flow_id, flow in flows if flow.response is not None]
    assert [s["id"] for s in store.list_flows(session_id, limit=1000, filter="~s")[0]] == expected


def test_const_and_flag_nodes_pass_through(sample):
    """Parsed trees and hand-built ones are accepted alike by the store."""
    store, session_id, flows = sample
    tree = Or(Flag("e"), And(StatusCode(404), Regex("m", "get")))
    expected = [flow_id for flow_id, flow in flows if tree(flow)]
    assert [s["id"] for s in store.list_flows(session_id, limit=1000, filter=tree)[0]] == expected


def test_session_manager_passes_query_arguments(tmp_path):
    """flows.list takes filter, sort and order to the store, a bad one is a 400; sessions.stats answers stats."""
    from capture.sessiond.server import SessionManager

    def call(manager, method, args):
        """The answer of an inline (SQLite) call, which has come by the time call returns."""
        answers = []
        manager.call(method, args).addCallback(answers.append)
        return answers[0]

    with Store(str(tmp_path / "capture.sqlite")) as store:
        manager = SessionManager(store, pid=1)
        session_id = store.create_session("s")["id"]
        rnd = random.Random(3)
        store.ingest("p", [(i + 1, [session_id], random_flow(rnd, i).pack()) for i in range(30)])
        result, error = call(manager, 
            "flows.list", {"session_id": session_id, "filter": "~s", "sort": "status", "order": "desc", "limit": 5}
        )
        assert error is None
        assert result == dict(zip(("flows", "total"), store.list_flows(
            session_id, filter="~s", sort="status", order="desc", limit=5)))
        _, error = call(manager, "flows.list", {"session_id": session_id, "sort": "colour"})
        assert error["status"] == 400
        _, error = call(manager, "flows.list", {"session_id": session_id, "filter": "~m ("})
        assert error["status"] == 400 and "position" in error["message"]
        result, error = call(manager, "sessions.stats", {"session_id": session_id})
        assert error is None
        assert result == store.stats(session_id)
        assert call(manager, "sessions.stats", {"session_id": 999})[1]["status"] == 404
