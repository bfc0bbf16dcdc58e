"""Tests for capture.filters: the filter language of SPEC 7."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.filters import (
    MAX_DEPTH,
    And,
    Const,
    Filter,
    FilterError,
    Flag,
    Not,
    Or,
    Regex,
    StatusCode,
    parse,
)
from capture.flow import Flow, Message
from capture.messages import WebSocketMessage


def make_flow(**overrides) -> Flow:
    """A completed HTTPS GET with a JSON response, changed by ``overrides``."""
    values = dict(
        client="10.0.0.7",
        client_port=51234,
        scheme="https",
        host="api.example.com",
        port=443,
        method="GET",
        path="/v1/items?page=2",
        request=Message(
            headers=((b"Host", b"api.example.com"), (b"Accept", b"application/json")),
            body=b"",
            size=0,
        ),
        status=200,
        reason="OK",
        response=Message(
            headers=(
                (b"Content-Type", b"application/json; charset=utf-8"),
                (b"X-Served-By", b"cache-7"),
            ),
            body=b'{"items": ["caf\xc3\xa9"]}',
            size=22,
        ),
        start=1.0,
        end=1.5,
    )
    values.update(overrides)
    return Flow(**values)


FLOW = make_flow()
POST = make_flow(
    method="POST",
    scheme="http",
    port=8080,
    host="upload.test",
    path="/form",
    request=Message(
        headers=((b"Content-Type", b"application/x-www-form-urlencoded"),),
        body=b"name=alice&token=s3cret",
        size=23,
    ),
    status=201,
    response=Message(headers=(), body=b"created", size=7),
)
PENDING = make_flow(status=0, reason="", response=None, end=None)
FAILED = make_flow(status=0, reason="", response=None, error="connection refused")
TUNNEL = make_flow(kind="tunnel", method="CONNECT", path="", status=0, response=None)
SAMPLES = [FLOW, POST, PENDING, FAILED, TUNNEL]


def with_response_type(content_type: bytes | None, path: str = "/x") -> Flow:
    headers = () if content_type is None else ((b"Content-Type", content_type),)
    return make_flow(path=path, response=Message(headers=headers, body=b"."))


def matching(expression: str) -> list[Flow]:
    """The sample flows that ``expression`` matches."""
    selected = parse(expression)
    return [flow for flow in SAMPLES if selected(flow)]


# --- no-argument filters ------------------------------------------------------


@pytest.mark.parametrize("expression", ["", " ", "\t\n  "])
def test_blank_expression_matches_everything(expression):
    """An empty or blank expression is ~all and matches every flow."""
    selected = parse(expression)
    assert selected == Const(True)
    assert all(selected(flow) for flow in SAMPLES)
    assert str(selected) == "~all"


def test_all():
    """~all matches every flow."""
    assert matching("~all") == SAMPLES
    assert parse("~all") == Const(True)


def test_const_false():
    """Const(False) matches nothing and renders as an expression meaning the same."""
    assert not any(Const(False)(flow) for flow in SAMPLES)
    assert matching(str(Const(False))) == []


def test_q_is_http_request_without_response():
    """~q matches HTTP flows that have no response; tunnels are not requests."""
    assert matching("~q") == [PENDING, FAILED]


def test_s_has_response():
    """~s matches flows that have a response."""
    assert matching("~s") == [FLOW, POST]


def test_e_has_error():
    """~e matches flows whose error is non-empty."""
    assert matching("~e") == [FAILED]


def test_http_and_tcp():
    """~http matches parsed exchanges, ~tcp matches relayed tunnels."""
    assert matching("~http") == [FLOW, POST, PENDING, FAILED]
    assert matching("~tcp") == [TUNNEL]


def test_websocket():
    """~websocket matches upgraded exchanges only; ~http matches them too (as mitmproxy's does); ~q does not."""
    socket = make_flow(kind="websocket", status=101, reason="Switching Protocols",
                       response=Message(headers=((b"Upgrade", b"websocket"),)))
    assert parse("~websocket")(socket) and parse("~http")(socket)
    assert not parse("~q")(socket) and not parse("~tcp")(socket)
    assert not any(parse("~websocket")(flow) for flow in SAMPLES)


@pytest.mark.parametrize(
    "content_type",
    [
        b"image/png",
        b"image/svg+xml",
        b"IMAGE/JPEG",
        b"text/css; charset=utf-8",
        b"application/javascript",
        b"text/javascript",
        b"application/x-javascript",
        b"font/woff2",
        b"application/font-woff",
        b"application/x-font-ttf",
    ],
)
def test_asset_by_content_type(content_type):
    """~a matches responses whose content type is an image, CSS, script or font."""
    assert parse("~a")(with_response_type(content_type))


@pytest.mark.parametrize(
    "content_type", [b"text/html", b"application/json", b"text/plain", b"application/fontish"]
)
def test_not_asset_by_content_type(content_type):
    """~a does not match other content types, whatever the URL's extension."""
    assert not parse("~a")(with_response_type(content_type, path="/logo.png"))


@pytest.mark.parametrize(
    "extension",
    ".png .jpg .jpeg .gif .webp .svg .ico .bmp .avif .css .js .mjs"
    " .woff .woff2 .ttf .otf .eot".split(),
)
def test_asset_by_extension(extension):
    """Without a content type, ~a looks at the URL path's extension."""
    assert parse("~a")(with_response_type(None, path=f"/static/app{extension}"))
    assert parse("~a")(with_response_type(None, path=f"/static/APP{extension.upper()}?v=3"))
    assert parse("~a")(make_flow(response=None, path=f"/x{extension}#top"))


@pytest.mark.parametrize(
    "path", ["/", "/index.html", "/v1.2/items", "/api?file=a.png", "/js", "/x.json", ""]
)
def test_not_asset_by_extension(path):
    """~a does not match other paths, nor an extension in the query or a directory."""
    assert not parse("~a")(with_response_type(None, path=path))


# --- regex filters ------------------------------------------------------------


def test_method():
    """~m searches the method."""
    assert matching("~m GET") == [FLOW, PENDING, FAILED]
    assert matching("~m ^p") == [POST]
    assert matching("~m connect") == [TUNNEL]


def test_url():
    """~u searches the full URL, default ports omitted; a tunnel's URL is host:port."""
    assert matching("~u ^https://api\\.example\\.com/v1/items\\?page=2$") == [
        FLOW,
        PENDING,
        FAILED,
    ]
    assert matching("~u http://upload.test:8080/form") == [POST]
    assert matching("~u ^api.example.com$") == [TUNNEL]


def test_url_search_is_unanchored():
    """Regexes use search semantics: a match anywhere counts."""
    assert parse("~u items")(FLOW)
    assert parse("~u page=\\d")(FLOW)
    assert not parse("~u ^items")(FLOW)


def test_domain():
    """~d searches the host."""
    assert matching("~d example\\.com$") == [FLOW, PENDING, FAILED, TUNNEL]
    assert matching("~d upload") == [POST]
    assert not parse("~d example.org")(FLOW)


def test_headers_either_side():
    """~h searches request and response headers rendered as 'Name: value' lines."""
    assert parse("~h 'Accept: application/json'")(FLOW)
    assert parse("~h x-served-by:\\s*cache")(FLOW)
    assert parse("~h 'Host: api\\.example\\.com\\nAccept'")(FLOW)
    assert not parse("~h cookie")(FLOW)


def test_headers_lines_anchor_with_multiline():
    """Header filters are MULTILINE, as in mitmproxy: ^ and $ anchor each header line."""
    assert parse("~h '^Host: api\\.example\\.com$'")(FLOW)
    assert parse("~hq ^accept:")(FLOW)
    assert parse("~hs '^x-served-by: cache-7$'")(FLOW)
    assert not parse("~hq '^example'")(FLOW)
    assert not parse("~bs ^two")(make_flow(response=Message(body=b"one\ntwo")))


def test_headers_request_side():
    """~hq searches request headers only."""
    assert parse("~hq accept")(FLOW)
    assert not parse("~hq x-served-by")(FLOW)
    assert parse("~hq 'Host: api'")(PENDING)


def test_headers_response_side():
    """~hs searches response headers only, and never matches without a response."""
    assert parse("~hs x-served-by")(FLOW)
    assert not parse("~hs accept")(FLOW)
    assert not parse("~hs .")(PENDING)
    assert not parse("~hs ''")(PENDING)


def test_headers_do_not_match_across_sides():
    """The request and response header blocks are searched separately."""
    assert not parse("~h 'Accept: application/json\\nContent-Type'")(FLOW)


def test_body_either_side():
    """~b searches request and response bodies."""
    assert parse("~b token=")(POST)
    assert parse("~b created")(POST)
    assert not parse("~b nothing-like-this")(POST)


def test_body_request_and_response_sides():
    """~bq searches the request body, ~bs the response body."""
    assert parse("~bq alice")(POST)
    assert not parse("~bq created")(POST)
    assert parse("~bs created")(POST)
    assert not parse("~bs alice")(POST)
    assert not parse("~bs .")(PENDING)
    assert parse("~bq ^$")(PENDING)


def test_body_utf8_pattern():
    """A non-ASCII pattern for a byte-valued field matches its UTF-8 encoding."""
    assert parse("~b café")(FLOW)
    assert parse('~bs "\\"items\\": \\[\\"caf"')(FLOW)


def test_body_escape_for_raw_byte():
    """A \\xNN escape in a body pattern matches that raw byte."""
    flow = make_flow(response=Message(body=b"\x00\xff\x10"))
    assert parse("~bs \\xff")(flow)
    assert parse("~bs ^\\x00")(flow)
    assert not parse("~bs \\xfe")(flow)


class Socket:
    """A WebSocket flow with its messages, as a store hands it to a filter (``websocket_messages()``)."""

    def __init__(self, flow: Flow, messages: list[WebSocketMessage]) -> None:
        self._flow = flow
        self.messages = messages
        self.read = 0

    def websocket_messages(self):
        for message in self.messages:
            self.read += 1
            yield message

    def __getattr__(self, name: str):
        return getattr(self._flow, name)


SOCKET = make_flow(kind="websocket", status=101, reason="Switching Protocols",
                   response=Message(headers=((b"Upgrade", b"websocket"),)))


def socket_with(*messages: tuple[bool, str, bytes]) -> Socket:
    return Socket(SOCKET, [WebSocketMessage(c, kind, data, len(data), False, 1.0) for c, kind, data in messages])


def test_body_filters_search_websocket_messages_by_sender():
    """On a WebSocket ~b searches every message, ~bq the client's, ~bs the origin's, case-insensitively."""
    socket = socket_with((True, "text", b"greet"), (False, "text", "Héllo there".encode()))
    assert parse("~b greet")(socket) and parse("~bq greet")(socket) and not parse("~bs greet")(socket)
    assert parse("~bs 'HÉLLO|xyz'")(socket) is False  # IGNORECASE folds ASCII only, as for bodies
    assert parse("~bs 'héllo'")(socket) and parse("~b THERE$")(socket) and not parse("~bq there")(socket)
    assert parse("!~bq there")(socket) and parse("~websocket & ~bs there")(socket)


def test_binary_messages_match_on_their_bytes():
    """A binary message is searched as bytes, as a body is: raw byte escapes and text inside it match."""
    socket = socket_with((False, "binary", b"\x00\xffhello\x80"))
    assert parse("~bs \\xff")(socket) and parse("~bs hello")(socket) and not parse("~bq hello")(socket)


def test_websocket_without_messages_matches_on_bodies_only():
    """A bare WebSocket flow (the proxy's, at the upgrade) has no message a body filter could match."""
    assert not parse("~b .")(SOCKET) and parse("!~bs .")(SOCKET)
    assert not parse("~b .")(socket_with()) and not parse("~bs .")(socket_with((False, "text", b"")))


def test_messages_are_read_only_as_far_as_the_first_match():
    """The first matching message ends the reading; a filter that fails before ~b reads none."""
    socket = socket_with((True, "text", b"one"), (False, "text", b"two"), (False, "text", b"three"))
    assert parse("~bs two")(socket) and socket.read == 2
    socket.read = 0
    assert not parse("~c 404 & ~b two")(socket) and socket.read == 0
    assert parse("~b .")(POST) and socket.read == 0  # not a socket: bodies only


def test_body_case_insensitive():
    """Body patterns ignore ASCII case."""
    assert parse("~b ALICE")(POST)
    assert parse("~b Created")(POST)


def test_content_type_filters():
    """~t searches either side's Content-Type, ~tq the request's, ~ts the response's."""
    assert matching("~t json") == [FLOW]
    assert matching("~t form-urlencoded") == [POST]
    assert matching("~tq form") == [POST]
    assert matching("~tq json") == []
    assert matching("~ts charset=utf-8") == [FLOW]
    assert matching("~ts form") == []


def test_content_type_filters_need_the_header():
    """A flow without a Content-Type header never matches ~t, even for an empty regex."""
    bare = make_flow(request=Message(), response=Message())
    assert not parse("~t ''")(bare)
    assert not parse("~tq .*")(bare)
    assert not parse("~ts .*")(bare)
    assert not parse("~ts .*")(PENDING)


def test_source_address():
    """~src searches the client address as 'ip:port'."""
    assert parse("~src ^10\\.0\\.0\\.7:51234$")(FLOW)
    assert not parse("~src :80$")(FLOW)
    assert parse("~src ::1:5")(make_flow(client="::1", client_port=5))


def test_destination_address():
    """~dst searches the server address as 'host:port'."""
    assert matching("~dst :443$") == [FLOW, PENDING, FAILED, TUNNEL]
    assert matching("~dst ^upload.test:8080$") == [POST]


def test_status_code():
    """~c matches the response status exactly."""
    assert matching("~c 200") == [FLOW]
    assert matching("~c 201") == [POST]
    assert matching("~c 20") == []
    assert matching("~c 0200") == [FLOW]
    assert parse("~c 0200") == StatusCode(200)
    assert parse("~c '404'") == StatusCode(404)


@pytest.mark.parametrize(
    "expression",
    ["~M get", "~m get", "~m GeT", "~U API.EXAMPLE", "~D EXAMPLE", "~HS X-SERVED", "~BS ITEMS",
     "~TS JSON", "~Src 10.0.0.7", "~DST API", "~ALL", "~S", "~Http", "~C 200", "API.example"],
)
def test_case_insensitive(expression):
    """Filter names and regexes ignore case."""
    assert parse(expression)(FLOW)


def test_filter_names_render_lowercase():
    """The canonical form writes filter names in lower case."""
    assert str(parse("~M GET & ~HTTP")) == "~m GET & ~http"


# --- bare strings, arguments and quoting --------------------------------------


def test_bare_string_is_url_match():
    """A bare word or quoted string on its own matches the URL, as ~u does."""
    assert parse("example") == Regex("u", "example")
    assert parse("'page=2'") == Regex("u", "page=2")
    assert matching("upload\\.test") == [POST]
    assert matching('"/v1/items"') == [FLOW, PENDING, FAILED]


def test_bare_word_runs_to_whitespace_or_close_paren():
    """A bare argument may hold operator characters; only whitespace and ')' end it."""
    assert parse("~m GET|POST") == Regex("m", "GET|POST")
    assert matching("~m GET|POST") == [FLOW, POST, PENDING, FAILED]
    assert parse("~u a&b!c\\(d") == Regex("u", "a&b!c\\(d")
    assert parse("(~d test)") == Regex("d", "test")
    assert parse("~u a~b") == Regex("u", "a~b")


def test_bare_word_keeps_backslashes():
    """Backslashes in a bare word reach the regex unchanged."""
    assert parse("~u \\d+\\.\\w") == Regex("u", "\\d+\\.\\w")


def test_operators_need_no_spaces_around_filters():
    """Operator characters end a filter name, so '~q&~s' and '!~e' parse."""
    assert parse("~q&~s") == And(Flag("q"), Flag("s"))
    assert parse("~q|~s") == Or(Flag("q"), Flag("s"))
    assert parse("!~e") == Not(Flag("e"))
    assert parse("(~q)(~s)") == And(Flag("q"), Flag("s"))
    assert parse("~q~s") == And(Flag("q"), Flag("s"))
    assert parse('~m"GET"') == Regex("m", "GET")


@pytest.mark.parametrize(
    "expression, text",
    [
        ('~u "a b"', "a b"),
        ("~u 'a b'", "a b"),
        ('~u "it\'s"', "it's"),
        ("~u 'say \"hi\"'", 'say "hi"'),
        ('~u "say \\"hi\\""', 'say "hi"'),
        ("~u 'it\\'s'", "it's"),
        ('~u "back\\\\slash"', "back\\slash"),
        ('~u "\\d+"', "\\d+"),
        ("~u '\\\"'", '\\"'),
        ('~u "a\\)b"', "a\\)b"),
        ('~u "(a|b)"', "(a|b)"),
        ('~u ""', ""),
        ('~u "~q & !~s"', "~q & !~s"),
        ('~u "tab\there"', "tab\there"),
    ],
)
def test_quoted_arguments(expression, text):
    """Quotes hold any text; a backslash escapes only the quote character and itself."""
    assert parse(expression) == Regex("u", text)


def test_quote_inside_bare_word_is_literal():
    """A quote that does not begin a token is an ordinary character."""
    assert parse("~u it's") == Regex("u", "it's")


def test_argument_may_be_a_filter_like_quoted_string():
    """A quoted argument that looks like a filter is still just the argument."""
    assert parse("~m '~q'") == Regex("m", "~q")


# --- operators and precedence -------------------------------------------------


def test_not():
    """! inverts a filter."""
    assert matching("!~s") == [PENDING, FAILED, TUNNEL]
    assert matching("!!~s") == [FLOW, POST]


def test_and():
    """& needs both sides to match."""
    assert matching("~s & ~m POST") == [POST]
    assert matching("~http & ~d example") == [FLOW, PENDING, FAILED]


def test_or():
    """| needs either side to match."""
    assert matching("~e | ~tcp") == [FAILED, TUNNEL]


def test_juxtaposition_is_and():
    """Two terms side by side are joined by AND."""
    assert parse("~m GET ~d example") == parse("~m GET & ~d example")
    assert matching("~m GET ~d example ~s") == [FLOW]
    assert parse("~q ~s ~e") == parse("~q & ~s & ~e")


def test_precedence_not_and_or():
    """! binds tighter than &, which binds tighter than |."""
    assert parse("!~q & ~s | ~e") == Or(And(Not(Flag("q")), Flag("s")), Flag("e"))
    assert parse("~e | !~q & ~s") == Or(Flag("e"), And(Not(Flag("q")), Flag("s")))
    assert parse("~e | ~q ~s") == Or(Flag("e"), And(Flag("q"), Flag("s")))
    assert parse("!~q ~s") == And(Not(Flag("q")), Flag("s"))
    assert matching("!~q & ~s | ~e") == [FLOW, POST, FAILED]


def test_parentheses_override_precedence():
    """Parentheses group before the operators around them apply."""
    assert parse("!(~q & ~s)") == Not(And(Flag("q"), Flag("s")))
    assert parse("~e & (~q | ~s)") == And(Flag("e"), Or(Flag("q"), Flag("s")))
    assert matching("!(~s | ~e)") == [PENDING, TUNNEL]
    assert matching("((~tcp))") == [TUNNEL]


def test_chains_are_flattened_and_balanced():
    """Runs of & and | (through parentheses too) become balanced trees, order kept."""
    a, b, c, d = (Regex("u", x) for x in "abcd")
    assert parse("a | b | c | d") == Or(Or(a, b), Or(c, d))
    assert parse("(a | b) | (c | d)") == parse("a | (b | (c | d))") == Or(Or(a, b), Or(c, d))
    assert parse("a & b c & d") == And(And(a, b), And(c, d))
    assert parse("a b c") == And(a, And(b, c))


def test_long_chain_stays_shallow():
    """Thousands of alternatives parse, evaluate and render without deep recursion."""
    expression = " | ".join(f"~d host{i}$" for i in range(5000))
    selected = parse(expression)
    assert selected(make_flow(host="host4999"))
    assert not selected(make_flow(host="other"))
    assert parse(str(selected)) == selected

    depth, stack = 0, [(selected, 1)]
    while stack:
        node, level = stack.pop()
        depth = max(depth, level)
        if isinstance(node, (And, Or)):
            stack += [(node.left, level + 1), (node.right, level + 1)]
    assert depth <= 14


def test_nesting_up_to_the_limit():
    """MAX_DEPTH nested parentheses or negations are allowed."""
    assert parse("(" * MAX_DEPTH + "~s" + ")" * MAX_DEPTH)(FLOW)
    assert parse("!" * MAX_DEPTH + "~s")(FLOW)
    assert parse("(!" * (MAX_DEPTH // 2) + "~s" + ")" * (MAX_DEPTH // 2))(FLOW)


class _Counting(Filter):
    """A filter that records that it was called."""

    def __init__(self, result: bool):
        self.result = result
        self.calls = 0

    def __call__(self, flow):
        self.calls += 1
        return self.result

    def __str__(self):
        return "~all" if self.result else "!~all"


def test_and_or_short_circuit():
    """And skips its right side when the left fails; Or when the left matches."""
    right = _Counting(True)
    assert not And(_Counting(False), right)(FLOW)
    assert Or(_Counting(True), right)(FLOW)
    assert right.calls == 0
    assert And(_Counting(True), right)(FLOW)
    assert right.calls == 1


# --- the tree -----------------------------------------------------------------


def test_nodes_are_plain_frozen_dataclasses():
    """The tree is made of frozen dataclasses whose fields say what they test."""
    tree = parse("~m POST & !~c 404 | ~a")
    assert tree == Or(And(Regex("m", "POST"), Not(StatusCode(404))), Flag("a"))
    for node in (tree, tree.left, tree.left.right, tree.right):
        assert dataclasses.is_dataclass(node)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(node, dataclasses.fields(node)[0].name, None)
    assert [f.name for f in dataclasses.fields(Regex) if f.compare] == ["name", "pattern_text"]
    assert hash(parse("~m POST")) == hash(Regex("m", "POST"))


def test_regex_node_compiles_its_pattern():
    """A Regex node holds its compiled, case-insensitive pattern; bytes for headers and bodies."""
    assert parse("~d Example").pattern.search("api.EXAMPLE.com")
    assert parse("~b Example").pattern.search(b"an example")
    assert isinstance(parse("~h x").pattern.pattern, bytes)
    assert isinstance(parse("~t x").pattern.pattern, str)
    assert parse("~hq x").pattern.flags & re.MULTILINE
    assert not parse("~bq x").pattern.flags & re.MULTILINE
    assert not parse("~u x").pattern.flags & re.MULTILINE


def test_nodes_reject_unknown_names():
    """Building a node by hand with a name it does not know is a ValueError."""
    with pytest.raises(ValueError):
        Regex("zz", "x")
    with pytest.raises(ValueError):
        Regex("c", "200")
    with pytest.raises(ValueError):
        Flag("m")


def test_hand_built_trees_evaluate():
    """Trees built from the node classes evaluate like parsed ones."""
    tree = And(Regex("d", "example"), Or(StatusCode(200), Flag("e")))
    assert [flow for flow in SAMPLES if tree(flow)] == [FLOW, FAILED]


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression, position, message",
    [
        ("~zz", 0, "unknown filter '~zz' at position 0"),
        ("~q & ~Nope x", 5, "unknown filter '~Nope' at position 5"),
        ("~", 0, "unknown filter '~' at position 0"),
        ("~m", 2, "missing argument for ~m at position 2"),
        ("~m ", 3, "missing argument for ~m at position 3"),
        ("(~m)", 3, "missing argument for ~m at position 3"),
        ("~u & ~q", 3, "missing argument for ~u at position 3"),
        ("~d ~q", 3, "missing argument for ~d at position 3"),
        ("~c !", 3, "missing argument for ~c at position 3"),
        ("~u (a|b)", 3, "missing argument for ~u at position 3"),
        ("~M", 2, "missing argument for ~M at position 2"),
        ("~q )", 3, "unexpected ')' at position 3"),
        ("(~q))", 4, "unexpected ')' at position 4"),
        (")", 0, "unexpected ')' at position 0"),
        ("~q & )", 5, "unexpected ')' at position 5"),
        ("(~q", 0, "unclosed '(' at position 0"),
        ("~s & ((~q)", 5, "unclosed '(' at position 5"),
        ("(", 0, "unclosed '(' at position 0"),
        ("()", 0, "empty parentheses at position 0"),
        ("~q ( )", 3, "empty parentheses at position 3"),
        ("~q &", 3, "trailing operator '&' at position 3"),
        ("~q |  ", 3, "trailing operator '|' at position 3"),
        ("~q & !", 5, "trailing operator '!' at position 5"),
        ("!", 0, "trailing operator '!' at position 0"),
        ("(~q |", 4, "trailing operator '|' at position 4"),
        ("& ~q", 0, "unexpected '&' at position 0"),
        ("| ~q", 0, "unexpected '|' at position 0"),
        ("~q & | ~s", 5, "unexpected '|' at position 5"),
        ("~q && ~s", 4, "unexpected '&' at position 4"),
        ("!& ~q", 1, "unexpected '&' at position 1"),
        ("(& ~q)", 1, "unexpected '&' at position 1"),
        ('~u "abc', 3, "unterminated quote at position 3"),
        ("~q 'abc\\'", 3, "unterminated quote at position 3"),
        ("'", 0, "unterminated quote at position 0"),
        ('~c 2"00', 3, "bad number for ~c at position 3: '2\"00'"),
        ("~c abc", 3, "bad number for ~c at position 3: 'abc'"),
        ("~c -1", 3, "bad number for ~c at position 3: '-1'"),
        ("~c 2.5", 3, "bad number for ~c at position 3: '2.5'"),
        ("~c '200 '", 3, "bad number for ~c at position 3: '200 '"),
        ("~c \u0663", 3, "bad number for ~c at position 3: '\u0663'"),
        ("~u [", 3, "bad regex for ~u at position 3: unterminated character set"),
        ("~q ~h '(x'", 6, "bad regex for ~h at position 6: missing ), unterminated subpattern"),
        ("~B *", 3, "bad regex for ~B at position 3: nothing to repeat"),
        ("a+++", 0, "bad regex for ~u at position 0: multiple repeat"),
        ("~bs \\u00e9", 4, "bad regex for ~bs at position 4: bad escape \\u"),
    ],
)
def test_errors_name_the_position(expression, position, message):
    """Each kind of bad expression raises FilterError naming where the problem is."""
    with pytest.raises(FilterError) as caught:
        parse(expression)
    assert caught.value.position == position
    assert str(caught.value) == message


def test_error_is_a_value_error():
    """FilterError is a ValueError, so callers catching ValueError still catch it."""
    with pytest.raises(ValueError):
        parse("~zz")


def test_errors_are_reported_in_reading_order():
    """The first problem from the left is reported, even if a later one is lexical."""
    with pytest.raises(FilterError) as caught:
        parse(') "unterminated')
    assert caught.value.position == 0


def test_too_deep_nesting_is_an_error():
    """Nesting deeper than MAX_DEPTH is a FilterError at the token that went too deep."""
    for expression in (
        "(" * (MAX_DEPTH + 1) + "~s" + ")" * (MAX_DEPTH + 1),
        "!" * (MAX_DEPTH + 1) + "~s",
        "!(" * 60 + "~s" + ")" * 60,
    ):
        with pytest.raises(FilterError) as caught:
            parse(expression)
        assert caught.value.position == MAX_DEPTH
        assert "nested too deeply" in str(caught.value)


def test_huge_status_code_is_an_error():
    """A status code too long for int() is a bad number, not a crash."""
    with pytest.raises(FilterError) as caught:
        parse("~c " + "9" * 5000)
    assert caught.value.position == 3
    assert len(str(caught.value)) < 80


# --- canonical rendering ------------------------------------------------------

ROUND_TRIP = [
    "~all",
    "~q",
    "~m GET ~d example",
    "!~q & ~s | ~e",
    "~e | !~q & ~s",
    "!(~q | ~s) & ~e",
    "(~q | ~s) (~e | ~tcp)",
    "!!~a",
    "~c 200 | ~c 404",
    "~u 'a b' & ~b \"q\\\"uote\" & ~h 'back\\\\slash'",
    "~u '' | ~u '\\)' | ~u '\\(x' | ~u '!x' | ~u '&' | ~u '~q' | ~u \"'\"",
    "~hq ^Host: ~hs x-served ~bq alice ~bs created ~tq form ~ts json ~t x",
    "~src 10.0.0.7 | ~dst :443$",
    "example.com | 'page=2'",
    "~u \\d+ & ~u a|b",
    "((((~s))))",
    "~M GET ~ALL",
]


@pytest.mark.parametrize("expression", ROUND_TRIP)
def test_str_round_trip(expression):
    """str() gives an expression that parses to the same tree and selects the same flows."""
    selected = parse(expression)
    again = parse(str(selected))
    assert again == selected
    assert str(again) == str(selected)
    assert [again(flow) for flow in SAMPLES] == [selected(flow) for flow in SAMPLES]


@pytest.mark.parametrize(
    "tree, text",
    [
        (Or(And(Not(Flag("q")), Flag("s")), Flag("e")), "!~q & ~s | ~e"),
        (And(Or(Flag("q"), Flag("s")), Flag("e")), "(~q | ~s) & ~e"),
        (And(Flag("e"), Or(Flag("q"), Flag("s"))), "~e & (~q | ~s)"),
        (Not(And(Flag("q"), Flag("s"))), "!(~q & ~s)"),
        (Not(Not(Flag("q"))), "!!~q"),
        (And(Flag("q"), And(Flag("s"), Flag("e"))), "~q & ~s & ~e"),
        (Or(Or(Flag("q"), Flag("s")), Flag("e")), "~q | ~s | ~e"),
        (Regex("m", "GET"), "~m GET"),
        (Regex("u", "a b"), '~u "a b"'),
        (Regex("u", 'say "hi" \\./'), '~u "say \\"hi\\" \\\\./"'),
        (Regex("d", ""), '~d ""'),
        (Regex("u", "x\\)"), '~u "x\\\\)"'),
        (Regex("u", "!x"), '~u "!x"'),
        (StatusCode(404), "~c 404"),
        (Const(True), "~all"),
    ],
)
def test_str_renders_minimal_parentheses(tree, text):
    """str() writes operators with spaces, parentheses only where precedence needs them."""
    assert str(tree) == text
    assert parse(text) == parse(str(tree))


# --- property tests -----------------------------------------------------------

PATTERNS = [
    "get", "POST", "example", "com$", "^https", "json", "html", "/api", "200",
    "a", "x-y", ".", "cafe|hello", "10\\.0", "443", "image/", "a b", "(x)",
    "caf\u00e9", "^$", "",
]
REGEX_NAMES = ["m", "u", "d", "h", "hq", "hs", "b", "bq", "bs", "t", "tq", "ts", "src", "dst"]
FLAG_NAMES = ["all", "q", "s", "e", "http", "tcp", "websocket", "a"]


def _quote(text: str, quote: str) -> str:
    return quote + text.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


@st.composite
def arguments(draw) -> str:
    """An argument as written: bare when it can be, otherwise (or at whim) quoted."""
    text = draw(st.sampled_from(PATTERNS))
    can_be_bare = text and not any(c.isspace() or c in "()" for c in text)
    if can_be_bare and draw(st.booleans()):
        return text
    return _quote(text, draw(st.sampled_from(["'", '"'])))


def _case(draw, name: str) -> str:
    return draw(st.sampled_from([name, name.upper(), name.capitalize()]))


@st.composite
def leaves(draw) -> str:
    """One filter term as text."""
    kind = draw(st.sampled_from(["flag", "regex", "code", "bare"]))
    if kind == "flag":
        return "~" + _case(draw, draw(st.sampled_from(FLAG_NAMES)))
    if kind == "regex":
        return f"~{_case(draw, draw(st.sampled_from(REGEX_NAMES)))} {draw(arguments())}"
    if kind == "code":
        return f"~c {draw(st.sampled_from([0, 200, 201, 204, 404, 500]))}"
    return draw(arguments())


# A tree is ("leaf", text) | ("not", tree) | ("and", left, right, juxtapose) | ("or", left, right)
trees = st.recursive(
    leaves().map(lambda text: ("leaf", text)),
    lambda inner: st.one_of(
        inner.map(lambda tree: ("not", tree)),
        st.tuples(st.just("and"), inner, inner, st.booleans()),
        st.tuples(st.just("or"), inner, inner),
    ),
    max_leaves=8,
)

_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "leaf": 4}


def render_full(tree) -> str:
    """The tree with every compound operand in parentheses."""
    kind = tree[0]
    if kind == "leaf":
        return tree[1]
    if kind == "not":
        return f"!({render_full(tree[1])})"
    joiner = " " if kind == "and" and tree[3] else f" {'&' if kind == 'and' else '|'} "
    return f"({render_full(tree[1])}){joiner}({render_full(tree[2])})"


def render_minimal(tree) -> str:
    """The tree relying on precedence, with parentheses only where it needs them."""
    kind = tree[0]
    if kind == "leaf":
        return tree[1]

    def operand(child, level):
        text = render_minimal(child)
        return f"({text})" if _PRECEDENCE[child[0]] < level else text

    if kind == "not":
        return "!" + operand(tree[1], 3)
    level = _PRECEDENCE[kind]
    joiner = " " if kind == "and" and tree[3] else f" {'&' if kind == 'and' else '|'} "
    return operand(tree[1], level) + joiner + operand(tree[2], level)


def model(tree, flow) -> bool:
    """The meaning of a tree, evaluated directly from its structure."""
    kind = tree[0]
    if kind == "leaf":
        return parse(tree[1])(flow)
    if kind == "not":
        return not model(tree[1], flow)
    if kind == "and":
        return model(tree[1], flow) and model(tree[2], flow)
    return model(tree[1], flow) or model(tree[2], flow)


expressions = st.one_of(trees.map(render_full), trees.map(render_minimal))


@st.composite
def messages(draw) -> Message:
    headers = draw(
        st.lists(
            st.sampled_from(
                [
                    (b"Host", b"api.example.com"),
                    (b"Content-Type", b"application/json"),
                    (b"Content-Type", b"text/html; charset=utf-8"),
                    (b"content-type", b"image/png"),
                    (b"Accept", b"*/*"),
                    (b"X-Y", b"a b"),
                ]
            ),
            max_size=3,
        )
    )
    body = draw(st.sampled_from([b"", b"hello", b'{"a": 200}', "caf\u00e9".encode(), b"\xff\x00"]))
    return Message(headers=tuple(headers), body=body, size=len(body))


@st.composite
def flows(draw) -> Flow:
    response = draw(st.none() | messages())
    return Flow(
        client=draw(st.sampled_from(["10.0.0.1", "192.168.1.20", "::1"])),
        client_port=draw(st.sampled_from([443, 50000])),
        scheme=draw(st.sampled_from(["http", "https"])),
        host=draw(st.sampled_from(["example.com", "api.example.org", "cdn.test", "10.1.2.3"])),
        port=draw(st.sampled_from([80, 443, 8080])),
        method=draw(st.sampled_from(["GET", "POST", "put", "CONNECT"])),
        path=draw(st.sampled_from(["/", "/index.html", "/app.js?v=1", "/img/LOGO.PNG", "/api/x"])),
        request=draw(messages()),
        status=0 if response is None else draw(st.sampled_from([200, 201, 404, 500])),
        response=response,
        error=draw(st.sampled_from(["", "connection refused"])),
        kind=draw(st.sampled_from(["http", "tunnel", "websocket"])),
    )


PROPERTY = settings(max_examples=200, deadline=None)


@PROPERTY
@given(trees, st.lists(flows(), min_size=1, max_size=5))
def test_property_parser_agrees_with_model(tree, sample):
    """Fully parenthesised and precedence-reliant renderings both mean what the tree means."""
    full, minimal = parse(render_full(tree)), parse(render_minimal(tree))
    for flow in sample:
        expected = model(tree, flow)
        assert full(flow) is expected
        assert minimal(flow) is expected


@PROPERTY
@given(expressions, st.lists(flows(), min_size=1, max_size=5))
def test_property_negation_never_agrees(expression, sample):
    """'!(e)' and 'e' give opposite answers on every flow."""
    selected, negated = parse(expression), parse("!(" + expression + ")")
    for flow in sample:
        assert selected(flow) is not negated(flow)


@PROPERTY
@given(expressions, expressions, st.lists(flows(), min_size=1, max_size=5))
def test_property_and_implies_each_side(a, b, sample):
    """When 'a & b' (or 'a b') matches, so do a and b."""
    both = parse(f"({a}) & ({b})")
    side_by_side = parse(f"({a}) ({b})")
    left, right = parse(a), parse(b)
    for flow in sample:
        assert both(flow) is side_by_side(flow)
        if both(flow):
            assert left(flow) and right(flow)


@PROPERTY
@given(expressions, expressions, st.lists(flows(), min_size=1, max_size=5))
def test_property_either_side_implies_or(a, b, sample):
    """When a (or b) matches, 'a | b' matches."""
    either = parse(f"({a}) | ({b})")
    left, right = parse(a), parse(b)
    for flow in sample:
        if left(flow) or right(flow):
            assert either(flow)
        else:
            assert not either(flow)


@PROPERTY
@given(expressions, st.lists(flows(), min_size=1, max_size=5))
def test_property_str_round_trips(expression, sample):
    """parse(str(f)) is the same tree as f, renders the same, and selects the same flows."""
    selected = parse(expression)
    again = parse(str(selected))
    assert again == selected
    assert str(again) == str(selected)
    for flow in sample:
        assert again(flow) is selected(flow)


_GRAMMAR_ALPHABET = "~mudhqsbtcaelrp!&|()\"'\\ \t.*[]{}+?^$0123456789xyzGET"


@PROPERTY
@given(st.one_of(st.text(), st.text(alphabet=_GRAMMAR_ALPHABET)))
def test_property_any_text_parses_or_raises_filter_error(text):
    """Arbitrary text gives a Filter or a FilterError within the text, never another exception."""
    try:
        selected = parse(text)
    except FilterError as e:
        assert 0 <= e.position <= len(text)
        assert f"at position {e.position}" in str(e)
        return
    assert isinstance(selected, Filter)
    assert parse(str(selected)) == selected
    for flow in SAMPLES:
        assert selected(flow) in (True, False)
