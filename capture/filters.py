"""The filter language (SPEC 7): mitmproxy-compatible flow expressions.

``parse(text)`` turns an expression such as ``~m POST & !(~d cdn | ~a)`` into
a tree of small callable dataclasses; calling the tree with a
:class:`~capture.flow.Flow` says whether it matches.  Nothing here does I/O.

Grammar, loosest binding first::

    expr    := and ( "|" and )*
    and     := unary ( "&"? unary )*          juxtaposition is AND
    unary   := "!"* primary
    primary := "(" expr ")" | "~" name [argument] | argument
    argument:= bare word | "double quoted" | 'single quoted'

A bare word runs up to whitespace or ``)`` and may not begin with one of
``( ) ! & | ~`` or a quote; inside quotes a backslash escapes the quote
character and itself, and any other backslash is kept (so ``"\\d+"`` is the
regex ``\\d+``).  An argument on its own is a URL match, like ``~u``.

Chains of ``&`` (and of ``|``) are associative, so the parser flattens them
and builds balanced binary trees: a filter of a thousand alternatives is ten
levels deep, not a thousand, which keeps evaluation, ``str()`` and any tree
walker (the store's SQL push-down) clear of Python's recursion limit.
Nesting by parentheses and ``!`` is bounded by :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import abc
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

from capture.decoding import decode_message
from capture.flow import Flow, Headers, Message

__all__ = [
    "And",
    "Const",
    "Filter",
    "FilterError",
    "Flag",
    "MAX_DEPTH",
    "Not",
    "Or",
    "Regex",
    "StatusCode",
    "parse",
]

MAX_DEPTH = 100
"""Most parentheses and ``!`` that may be open at once in an expression."""

_STR_REGEXES = ("m", "u", "d", "t", "tq", "ts", "src", "dst", "via")
# Header and body filters search the captured bytes with a *bytes* pattern
# compiled from the UTF-8 encoding of the regex: no per-call decode of large
# bodies, and a non-ASCII literal (``~b "café"``) finds the UTF-8 text that
# bodies nearly always carry.  The cost: such patterns work on bytes, so
# ``.`` and ``[...]`` see bytes, IGNORECASE folds ASCII only, and the
# str-only escapes ``\u``, ``\U`` and ``\N{...}`` are a bad regex there.
_BYTES_REGEXES = ("h", "hq", "hs", "b", "bq", "bs")
# Header blocks are "Name: value" lines joined by "\n" and searched with
# MULTILINE, as mitmproxy does, so ``~h "^host: .*example$"`` works.
_HEADER_REGEXES = ("h", "hq", "hs")
_REGEXES = _STR_REGEXES + _BYTES_REGEXES
_SPECIAL = "()!&|"
_QUOTES = "\"'"


class FilterError(ValueError):
    """A filter expression that cannot be parsed.

    ``position`` is the 0-based character offset of the problem; the message
    names it too, e.g. ``unexpected ')' at position 7``.
    """

    def __init__(self, problem: str, position: int, detail: str | None = None):
        message = f"{problem} at position {position}"
        if detail:
            message = f"{message}: {detail}"
        super().__init__(message)
        self.position = position


class Filter(abc.ABC):
    """A parsed filter (one node of the tree): call it with a flow."""

    __slots__ = ()

    @abc.abstractmethod
    def __call__(self, flow: Flow) -> bool:
        """Does the flow match?"""

    @abc.abstractmethod
    def __str__(self) -> str:
        """The expression again, in a form parse() reads back to the same filter."""


@dataclass(frozen=True, slots=True)
class Const(Filter):
    """``~all`` (True), or a filter matching nothing (False)."""

    value: bool = True

    def __call__(self, flow: Flow) -> bool:
        return self.value

    def __str__(self) -> str:
        return "~all" if self.value else "!~all"


def _is_asset(flow: Flow) -> bool:
    content_type = flow.content_type.lower()
    if content_type:
        return content_type in _ASSET_TYPES or content_type.startswith(_ASSET_PREFIXES)
    path = flow.path.partition("?")[0].partition("#")[0]
    dot = path.rfind(".")
    return dot > path.rfind("/") and path[dot:].lower() in _ASSET_EXTENSIONS


_ASSET_TYPES = frozenset(
    {"text/css", "application/javascript", "text/javascript", "application/x-javascript"}
)
_ASSET_PREFIXES = ("image/", "font/", "application/font-", "application/x-font-")
_ASSET_EXTENSIONS = frozenset(
    ".png .jpg .jpeg .gif .webp .svg .ico .bmp .avif .css .js .mjs"
    " .woff .woff2 .ttf .otf .eot".split()
)

_FLAG_TESTS: dict[str, Callable[[Flow], bool]] = {
    "q": lambda flow: flow.response is None and flow.kind == "http",
    "s": lambda flow: flow.response is not None,
    "e": lambda flow: bool(flow.error),
    # A WebSocket is an HTTP exchange that upgraded, as in mitmproxy: ~http matches it too.
    "http": lambda flow: flow.kind in ("http", "websocket"),
    "tcp": lambda flow: flow.kind == "tunnel",
    "websocket": lambda flow: flow.kind == "websocket",
    "a": _is_asset,
}


@dataclass(frozen=True, slots=True)
class Flag(Filter):
    """A filter without argument: ``~q ~s ~e ~http ~tcp ~websocket ~a`` (name without ``~``)."""

    name: str
    _test: Callable[[Flow], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in _FLAG_TESTS:
            raise ValueError(f"not a flag filter: {self.name!r}")
        object.__setattr__(self, "_test", _FLAG_TESTS[self.name])

    def __call__(self, flow: Flow) -> bool:
        return self._test(flow)

    def __str__(self) -> str:
        return f"~{self.name}"


def _render_headers(headers: Headers) -> bytes:
    return b"\n".join([name + b": " + value for name, value in headers])


def _regex_matcher(name: str, search: Callable) -> Callable[[Flow], bool]:
    """The test for regex filter ``name``, given its pattern's ``search``."""
    if name == "m":
        return lambda flow: search(flow.method) is not None
    if name == "u":
        return lambda flow: search(flow.url) is not None
    if name == "d":
        return lambda flow: search(flow.host) is not None
    if name == "src":
        return lambda flow: search(f"{flow.client}:{flow.client_port}") is not None
    if name == "dst":
        return lambda flow: search(f"{flow.host}:{flow.port}") is not None
    if name == "via":
        # The appliance that captured the flow: the store knows it, a bare Flow does not.
        return lambda flow: search(getattr(flow, "appliance", "")) is not None

    side = name[1:]
    matcher = _sides_matcher(side, _message_matcher(name[0], search))
    if name[0] != "b":
        return matcher
    # ~b and ~bq/~bs also search a WebSocket's messages: all, the client's, the origin's.
    senders = {"": (True, False), "q": (True,), "s": (False,)}[side]
    return lambda flow: matcher(flow) or (
        flow.kind == "websocket" and _socket_matches(flow, senders, search)
    )


def _sides_matcher(side: str, test: Callable[[Message], bool]) -> Callable[[Flow], bool]:
    """``test`` on the request (side ``q``), the response (``s``) or either (``""``)."""
    if side == "q":
        return lambda flow: test(flow.request)
    if side == "s":
        return lambda flow: flow.response is not None and test(flow.response)
    return lambda flow: test(flow.request) or (
        flow.response is not None and test(flow.response)
    )


def _socket_matches(flow: Flow, senders: tuple[bool, ...], search: Callable) -> bool:
    """Does a WebSocket message from one of ``senders`` (``from_client`` values) match?

    A WebSocket's bodies are empty: its content is its messages, which the
    store hands in as ``flow.websocket_messages()``, read lazily so the first
    match ends the reading.  A flow without them (the proxy's, at the
    upgrade) has no message to match.  Text and binary are searched alike,
    as the bytes that were sent (text as UTF-8), like bodies are.
    """
    messages = getattr(flow, "websocket_messages", None)
    if messages is None:
        return False
    return any(m.from_client in senders and search(m.content) is not None for m in messages())


def _message_matcher(family: str, search: Callable) -> Callable[[Message], bool]:
    """The test of one side of the exchange for ~t, ~h or ~b."""
    if family == "t":

        def test(message: Message) -> bool:
            value = message.header("content-type")
            return value is not None and search(value) is not None

        return test
    if family == "h":
        return lambda message: search(_render_headers(message.headers)) is not None
    # Bodies are searched as a person reads them: with their Content-Encoding undone (bounded).
    return lambda message: search(decode_message(message.headers, message.body).body) is not None


@dataclass(frozen=True, slots=True)
class Regex(Filter):
    """A regex filter: ``name`` is one of m u d h hq hs b bq bs t tq ts src dst via.

    ``pattern_text`` is the regex as written; it is compiled once, here,
    case-insensitively (``re.error`` for a bad one) and used with ``search``;
    for headers and bodies as a bytes pattern, for headers also MULTILINE.
    """

    name: str
    pattern_text: str
    pattern: re.Pattern = field(init=False, repr=False, compare=False)
    _test: Callable[[Flow], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name not in _REGEXES:
            raise ValueError(f"not a regex filter: {self.name!r}")
        source: str | bytes = self.pattern_text
        if self.name in _BYTES_REGEXES:
            source = self.pattern_text.encode("utf-8", "surrogatepass")
        with warnings.catch_warnings():
            # "Possible nested set" and the like are advice, not errors; they
            # must not escape parse() (nor become exceptions under -W error).
            warnings.simplefilter("ignore")
            flags = re.IGNORECASE | (re.MULTILINE if self.name in _HEADER_REGEXES else 0)
            pattern = re.compile(source, flags)
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "_test", _regex_matcher(self.name, pattern.search))

    def __call__(self, flow: Flow) -> bool:
        return self._test(flow)

    def __str__(self) -> str:
        return f"~{self.name} {_render_argument(self.pattern_text)}"


@dataclass(frozen=True, slots=True)
class StatusCode(Filter):
    """``~c CODE``: the response status is ``code``."""

    code: int

    def __call__(self, flow: Flow) -> bool:
        return flow.status == self.code

    def __str__(self) -> str:
        return f"~c {self.code}"


@dataclass(frozen=True, slots=True)
class Not(Filter):
    """``!inner``."""

    inner: Filter

    def __call__(self, flow: Flow) -> bool:
        return not self.inner(flow)

    def __str__(self) -> str:
        if isinstance(self.inner, (And, Or)):
            return f"!({self.inner})"
        return f"!{self.inner}"


@dataclass(frozen=True, slots=True)
class And(Filter):
    """``left & right``; ``right`` is not evaluated when ``left`` fails."""

    left: Filter
    right: Filter

    def __call__(self, flow: Flow) -> bool:
        return self.left(flow) and self.right(flow)

    def __str__(self) -> str:
        return " & ".join(
            f"({term})" if isinstance(term, Or) else str(term) for term in _chain(self, And)
        )


@dataclass(frozen=True, slots=True)
class Or(Filter):
    """``left | right``; ``right`` is not evaluated when ``left`` matches."""

    left: Filter
    right: Filter

    def __call__(self, flow: Flow) -> bool:
        return self.left(flow) or self.right(flow)

    def __str__(self) -> str:
        return " | ".join(str(term) for term in _chain(self, Or))


def _chain(node: Filter, kind: type) -> Iterator[Filter]:
    """The operands of a run of ``kind`` (And or Or) nodes, left to right."""
    stack = [node]
    while stack:
        node = stack.pop()
        if type(node) is kind:
            stack.append(node.right)
            stack.append(node.left)
        else:
            yield node


def _balanced(kind: type, terms: list[Filter]) -> Filter:
    if len(terms) == 1:
        return terms[0]
    middle = len(terms) // 2
    return kind(_balanced(kind, terms[:middle]), _balanced(kind, terms[middle:]))


def _bare_ok(text: str) -> bool:
    if not text or text[0] in _SPECIAL or text[0] in _QUOTES or text[0] == "~":
        return False
    return not any(char == ")" or char.isspace() for char in text)


def _render_argument(text: str) -> str:
    if _bare_ok(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- tokenizer ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # one of ( ) ! & | "filter" "word" "quoted" "end"
    text: str  # the filter name as written, or the argument's value
    position: int


def _tokens(text: str) -> Iterator[_Token]:
    """Tokens of ``text``, lazily, so errors surface in reading order."""
    length = len(text)
    i = 0
    while True:
        while i < length and text[i].isspace():
            i += 1
        if i == length:
            yield _Token("end", "", length)
            return
        start = i
        char = text[i]
        if char in _SPECIAL:
            i += 1
            yield _Token(char, char, start)
        elif char in _QUOTES:
            value = []
            i += 1
            while True:
                if i >= length:
                    raise FilterError("unterminated quote", start)
                c = text[i]
                if c == char:
                    i += 1
                    break
                if c == "\\" and i + 1 < length and text[i + 1] in (char, "\\"):
                    c = text[i + 1]
                    i += 1
                value.append(c)
                i += 1
            yield _Token("quoted", "".join(value), start)
        elif char == "~":
            i += 1
            while i < length and not (
                text[i].isspace() or text[i] in _SPECIAL or text[i] in _QUOTES or text[i] == "~"
            ):
                i += 1
            yield _Token("filter", text[start:i], start)
        else:
            while i < length and not (text[i].isspace() or text[i] == ")"):
                i += 1
            yield _Token("word", text[start:i], start)


# --- parser ------------------------------------------------------------------

_OPERAND_STARTS = frozenset({"filter", "word", "quoted", "(", "!"})


class _Parser:
    def __init__(self, text: str):
        self._tokens = _tokens(text)
        self._next = next(self._tokens)
        self._previous: _Token | None = None
        self._depth = 0

    def _advance(self) -> _Token:
        token = self._previous = self._next
        if token.kind != "end":
            self._next = next(self._tokens)
        return token

    def parse(self) -> Filter:
        if self._next.kind == "end":
            return Const(True)
        node = self._expression()
        token = self._next
        if token.kind != "end":  # only a ')' can be left over
            raise FilterError(f"unexpected '{token.text}'", token.position)
        return node

    def _expression(self) -> Filter:
        terms: list[Filter] = []
        while True:
            term = self._conjunction()
            terms.extend(_chain(term, Or) if type(term) is Or else (term,))
            if self._next.kind != "|":
                return _balanced(Or, terms)
            self._advance()

    def _conjunction(self) -> Filter:
        terms: list[Filter] = []
        while True:
            term = self._unary()
            terms.extend(_chain(term, And) if type(term) is And else (term,))
            if self._next.kind == "&":
                self._advance()
            elif self._next.kind not in _OPERAND_STARTS:
                return _balanced(And, terms)

    def _unary(self) -> Filter:
        nots = 0
        while self._next.kind == "!":
            self._enter(self._advance())
            nots += 1
        node = self._primary()
        for _ in range(nots):
            node = Not(node)
        self._depth -= nots
        return node

    def _enter(self, token: _Token) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise FilterError("expression nested too deeply", token.position)

    def _primary(self) -> Filter:
        token = self._next
        kind = token.kind
        if kind == "filter":
            self._advance()
            return self._filter(token)
        if kind in ("word", "quoted"):
            self._advance()
            return self._regex("u", token, token)
        if kind == "(":
            self._enter(self._advance())
            if self._next.kind == ")":
                raise FilterError("empty parentheses", token.position)
            node = self._expression()
            if self._next.kind != ")":  # the expression ran to the end
                raise FilterError("unclosed '('", token.position)
            self._advance()
            self._depth -= 1
            return node
        previous = self._previous
        if kind == "end":
            if previous is not None and previous.kind == "(":
                raise FilterError("unclosed '('", previous.position)
            if previous is not None:
                raise FilterError(f"trailing operator '{previous.text}'", previous.position)
        raise FilterError(f"unexpected '{token.text}'", token.position)

    def _filter(self, token: _Token) -> Filter:
        name = token.text[1:].lower()
        if name == "all":
            return Const(True)
        if name in _FLAG_TESTS:
            return Flag(name)
        if name != "c" and name not in _REGEXES:
            raise FilterError(f"unknown filter '{token.text}'", token.position)
        argument = self._next
        if argument.kind not in ("word", "quoted"):
            raise FilterError(f"missing argument for {token.text}", argument.position)
        self._advance()
        if name == "c":
            return self._status(token, argument)
        return self._regex(name, token, argument)

    def _status(self, token: _Token, argument: _Token) -> StatusCode:
        if re.fullmatch(r"[0-9]+", argument.text, re.ASCII):
            try:
                return StatusCode(int(argument.text))
            except ValueError:  # more digits than int() will convert
                pass
        shown = argument.text if len(argument.text) <= 20 else argument.text[:20] + "..."
        raise FilterError(f"bad number for {token.text}", argument.position, repr(shown))

    def _regex(self, name: str, token: _Token, argument: _Token) -> Regex:
        try:
            return Regex(name, argument.text)
        except (re.error, OverflowError, RecursionError, ValueError) as e:
            # re.error's own offset counts from the regex, not the expression.
            detail = e.msg if isinstance(e, re.error) else str(e)
            label = token.text if token.kind == "filter" else "~u"
            raise FilterError(f"bad regex for {label}", argument.position, detail) from None


def parse(expression: str) -> Filter:
    """Parse a filter expression; a blank one matches every flow.

    Raises :class:`FilterError` naming the position of the problem.
    """
    return _Parser(expression).parse()
