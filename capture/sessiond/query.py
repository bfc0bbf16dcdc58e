"""Filter push-down: a parsed filter as a SQL condition plus what SQL cannot decide.

``translate(tree)`` turns a tree from :func:`capture.filters.parse` into a
:class:`Query`: a boolean SQL expression over the store's ``flows`` table
(alias ``f``), its parameters, and a *residual* filter that must still be
run on the decoded flow.  Rows that pass the SQL and then the residual are
exactly the flows the tree selects; the property tests hold us to that.

What goes to SQL, and why it is exact:

* ``~m ~u ~d ~src ~dst ~t ~tq ~ts`` search columns holding exactly the text
  the filter searches (``~src`` is ``client || ':' || client_port``; ``~tq`` and
  ``~ts`` the first Content-Type header of each side, NULL when absent).  A
  plain ASCII literal becomes ``instr(lower(col), ?)``, and one with an
  unescaped ``.`` a LIKE, on the rows the store marks ``f.plain`` (every
  searched text printable ASCII), where SQLite's ASCII-only case folding is
  Python's and no newline can stop a ``.``.  Other rows, and every real
  regex, go to ``capture_search``: a SQL function running the pattern the
  filter itself compiled.  Either way no record is decoded.
* ``~c ~e ~s ~q ~http ~tcp ~websocket`` compare columns; ``~a`` calls ``capture_asset``
  with the two columns the asset test reads.
* ``!``, ``|`` when every part is exact; ``&`` pushes the exact parts of each
  side and leaves the rest as residual.

Header and body filters (``~h ~hq ~hs ~b ~bq ~bs``), and anything this module
does not know, stay residual.  Nothing here does I/O: the store registers
:data:`SQL_FUNCTIONS` on its connection.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from capture.filters import And, Const, Filter, Flag, Not, Or, Regex, StatusCode

__all__ = ["ORDERS", "SORTS", "SQL_FUNCTIONS", "Query", "QueryError", "order_by", "translate"]

SORTS = {
    "time": "sf.time",
    "status": "f.status",
    "duration": "f.duration_ms",
    "size": "f.response_size",
    "request_size": "f.request_size",
    "method": "f.method",
    "host": "lower(f.host)",
    "path": "f.path",
    "client": "f.client",
    "type": "lower(f.content_type)",
}
"""Sort keys for listings, and the column each orders by (``sf`` is session_flows)."""

ORDERS = ("asc", "desc")

# Trees deeper than this are left to Python whole: it keeps the translation
# clear of Python's recursion limit and the SQL clear of SQLite's expression
# depth limit (1000 by default).  The parser's trees are balanced, so only
# deep nesting of parentheses and '!' gets here.
MAX_PUSH_DEPTH = 200

_INT64 = (-(2**63), 2**63 - 1)
_METACHARACTERS = frozenset(".^$*+?{}[]\\|()")

# The text each regex filter searches, as a SQL expression over ``flows f``.
_SEARCHED = {
    "m": "f.method",
    "u": "f.url",
    "d": "f.host",
    "src": "(f.client || ':' || f.client_port)",
    "dst": "(f.host || ':' || f.port)",
    "tq": "f.request_type",
    "ts": "f.response_type",
}
_NULLABLE = frozenset({"f.request_type", "f.response_type"})

_FLAGS = {
    "q": "(f.has_response = 0 AND f.kind = 'http')",
    "s": "(f.has_response != 0)",
    "e": "(f.error != '')",
    "http": "(f.kind IN ('http', 'websocket'))",
    "tcp": "(f.kind = 'tunnel')",
    "websocket": "(f.kind = 'websocket')",
    "a": "capture_asset(f.content_type, f.path)",
}


class QueryError(ValueError):
    """A sort or order that listings do not offer."""


@dataclass(frozen=True, slots=True)
class Query:
    """``where`` (never NULL for any row) and ``params``, then ``residual`` on the decoded flow.

    ``residual`` is None when the SQL alone is exact.
    """

    where: str
    params: tuple[Any, ...] = ()
    residual: Filter | None = None


def translate(tree: Filter, max_params: int = 999) -> Query:
    """Split ``tree`` into exact SQL and a residual filter.

    ``max_params`` is the connection's limit on bound parameters; a filter
    that would need more (or nests deeper than :data:`MAX_PUSH_DEPTH`) is
    left to Python whole rather than fail in SQLite.
    """
    if _depth(tree) > MAX_PUSH_DEPTH:
        return Query("1", (), tree)
    query = _translate(tree)
    if query.where is None:
        return Query("1", (), tree)
    if len(query.params) > max_params:
        return Query("1", (), tree)
    return Query(query.where, query.params, query.residual)


def order_by(sort: str, order: str) -> str:
    """The ORDER BY list for a listing: the key, then time and id, all in ``order``.

    ``desc`` is exactly the reverse of ``asc``.  A flow still in progress has
    no duration: NULL sorts first ascending, last descending.
    """
    if not isinstance(sort, str) or sort not in SORTS:
        raise QueryError(f"sort must be one of {', '.join(SORTS)}")
    if not isinstance(order, str) or order not in ORDERS:
        raise QueryError(f"order must be one of {', '.join(ORDERS)}")
    direction = order.upper()
    keys = [SORTS[sort]] if sort != "time" else []
    keys += ["sf.time", "sf.flow_id"]
    return ", ".join(f"{key} {direction}" for key in keys)


@dataclass(frozen=True, slots=True)
class _Part:
    where: str | None  # None: nothing of this node is in SQL
    params: tuple[Any, ...]
    residual: Filter | None


def _translate(node: Filter) -> _Part:
    if isinstance(node, And):
        left, right = _translate(node.left), _translate(node.right)
        if left.where is None:
            where, params = right.where, right.params
        elif right.where is None:
            where, params = left.where, left.params
        else:
            where, params = f"({left.where} AND {right.where})", left.params + right.params
        residuals = [part.residual for part in (left, right) if part.residual is not None]
        residual = And(*residuals) if len(residuals) == 2 else (residuals[0] if residuals else None)
        return _Part(where, params, residual)
    if isinstance(node, Or):
        left, right = _translate(node.left), _translate(node.right)
        if _exact(left) and _exact(right):
            return _Part(f"({left.where} OR {right.where})", left.params + right.params, None)
        return _Part(None, (), node)
    if isinstance(node, Not):
        inner = _translate(node.inner)
        if _exact(inner):
            return _Part(f"(NOT {inner.where})", inner.params, None)
        return _Part(None, (), node)
    leaf = _leaf(node)
    if leaf is None:
        return _Part(None, (), node)
    return _Part(leaf[0], leaf[1], None)


def _exact(part: _Part) -> bool:
    return part.where is not None and part.residual is None


def _leaf(node: Filter) -> tuple[str, tuple[Any, ...]] | None:
    """Exact SQL for one term, or None to leave it to Python."""
    if type(node) is Const:
        return ("1" if node.value else "0"), ()
    if type(node) is StatusCode:
        if not _INT64[0] <= node.code <= _INT64[1]:
            return "0", ()  # the status column holds 64-bit integers only
        return "(f.status = ?)", (node.code,)
    if type(node) is Flag:
        sql = _FLAGS.get(node.name)
        return None if sql is None else (sql, ())
    if type(node) is Regex:
        if node.name == "t":
            request = _search(node.name, node.pattern_text, _SEARCHED["tq"])
            response = _search(node.name, node.pattern_text, _SEARCHED["ts"])
            return f"({request[0]} OR {response[0]})", request[1] + response[1]
        column = _SEARCHED.get(node.name)
        return None if column is None else _search(node.name, node.pattern_text, column)
    return None


def _search(name: str, pattern: str, column: str) -> tuple[str, tuple[Any, ...]]:
    """SQL for "``pattern`` is found in ``column``", case-insensitively; false for NULL."""
    pieces = _pieces(pattern)
    if pieces is None:
        return f"capture_search(?, ?, {column})", (name, pattern)
    if not pieces:
        return f"({column} IS NOT NULL)", ()
    # On printable ASCII (f.plain) SQLite folds case as Python does and no
    # newline can stop a '.'; other rows are left to the pattern itself.
    # A missing header must be false, not NULL: NOT NULL would drop the row.
    absent = f"WHEN {column} IS NULL THEN 0 " if column in _NULLABLE else ""
    fallback = f"capture_search(?, ?, {column})"
    if _ANY_CHAR not in pieces:
        literal = "".join(pieces).lower()
        sql = f"(CASE {absent}WHEN f.plain THEN instr(lower({column}), ?) > 0 ELSE {fallback} END)"
        return sql, (literal, name, pattern)
    like = "".join("_" if piece is _ANY_CHAR else _like_escape(piece) for piece in pieces)
    sql = f"(CASE {absent}WHEN f.plain THEN {column} LIKE ? ESCAPE '\\' ELSE {fallback} END)"
    return sql, (f"%{like}%", name, pattern)


_ANY_CHAR = None
_MAX_LITERAL = 1000  # SQLite refuses LIKE patterns over 50,000 bytes


def _pieces(pattern: str) -> list[str | None] | None:
    r"""A pattern of plain ASCII characters (``\.`` and the like allowed) and ``.``.

    Returns its characters, with :data:`_ANY_CHAR` for each ``.``, or None for
    anything else: those patterns are real regexes.
    """
    pieces: list[str | None] = []
    escaped = False
    if len(pattern) > _MAX_LITERAL:
        return None
    for char in pattern:
        if not " " <= char <= "~":
            return None
        if escaped:
            if char not in _METACHARACTERS:
                return None  # \d, \b, \1 ...
            pieces.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            pieces.append(_ANY_CHAR)
        elif char in _METACHARACTERS:
            return None
        else:
            pieces.append(char)
    return None if escaped else pieces


def _like_escape(char: str) -> str:
    return "\\" + char if char in "%_\\" else char


def _depth(tree: Filter) -> int:
    """How deep the tree is, without recursion."""
    deepest = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, (And, Or)):
            stack.append((node.left, depth + 1))
            stack.append((node.right, depth + 1))
        elif isinstance(node, Not):
            stack.append((node.inner, depth + 1))
    return deepest


# --- SQL functions the WHERE clauses call -------------------------------------


@functools.lru_cache(maxsize=256)
def _searcher(name: str, pattern: str) -> Callable[[str], Any]:
    # Regex compiles the pattern exactly as the filter language does.
    return Regex(name, pattern).pattern.search


def _sql_search(name: str, pattern: str, text: str | None) -> int:
    if text is None:
        return 0
    return int(_searcher(name, pattern)(text) is not None)


class _AssetView:
    """The two columns ``~a`` reads, standing in for a Flow.

    Slots, so that should the asset test ever read anything else it fails
    loudly here instead of answering wrongly.
    """

    __slots__ = ("content_type", "path")

    def __init__(self, content_type: str, path: str) -> None:
        self.content_type = content_type
        self.path = path


_ASSET = Flag("a")


def _sql_asset(content_type: str, path: str) -> int:
    return int(_ASSET(_AssetView(content_type, path)))  # type: ignore[arg-type]


SQL_FUNCTIONS: dict[str, tuple[int, Callable[..., int]]] = {
    "capture_search": (3, _sql_search),
    "capture_asset": (2, _sql_asset),
}
"""``name: (number of arguments, function)`` to register on the connection."""
