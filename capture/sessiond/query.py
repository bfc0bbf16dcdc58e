"""Filter push-down: a parsed filter as a SQL condition plus what SQL cannot decide.

``translate(tree, dialect)`` turns a tree from :func:`capture.filters.parse`
into a :class:`Query`: a boolean SQL expression over the store's ``flows``
table (alias ``f``), its parameters, and a *residual* filter that must still
be run on the decoded flow.  Rows that pass the SQL and then the residual are
exactly the flows the tree selects; the property tests hold us to that.

The :class:`Dialect` says how one backend writes the few things that differ:
its parameter mark, a case-insensitive substring test, a LIKE, whether it can
run the filter's own regex (a SQL function registered on the connection),
and the ``~a`` test.  What goes to SQL, and why it is exact:

* ``~m ~u ~d ~src ~dst ~t ~tq ~ts ~via`` search columns holding exactly the
  text the filter searches (``~src`` is ``client || ':' || client_port``;
  ``~tq`` and ``~ts`` the first Content-Type header of each side, NULL when
  absent).  A plain ASCII literal becomes the dialect's substring test, and
  one with an unescaped ``.`` its LIKE, on the rows the store marks
  ``f.plain`` (every searched text printable ASCII), where ASCII-only case
  folding is Python's and no newline can stop a ``.``.  Other rows, and every
  real regex, go to the dialect's regex function, or, for a backend without
  one, stay residual.
* ``~c ~e ~s ~q ~http ~tcp ~websocket`` compare columns; ``~a`` is the dialect's test.
* ``!``, ``|`` when every part is exact; ``&`` pushes the exact parts of each
  side and leaves the rest as residual.

Header and body filters (``~h ~hq ~hs ~b ~bq ~bs``), and anything this module
does not know, stay residual.  On a WebSocket flow the body filters also
search its messages, which the store hands the residual through
:class:`capture.sessiond.store.rows.FilterView` only when the filter has such
a term; the SQL part first narrows the rows, so ``~c 404 & ~bs x`` reads the
messages of 404s only (none: a socket is a 101).  Nothing here does I/O.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

from capture.filters import And, Const, Filter, Flag, Not, Or, Regex, StatusCode

__all__ = ["ORDERS", "SORTS", "Dialect", "Query", "QueryError", "order_by", "searcher", "translate"]

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
_NULLABLE_SORTS = frozenset({"f.duration_ms"})
_TEXT_SORTS = frozenset({"f.method", "lower(f.host)", "f.path", "f.client", "lower(f.content_type)"})

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
    "via": "f.appliance",
}
_NULLABLE = frozenset({"f.request_type", "f.response_type"})

_FLAGS = {
    "q": "(f.has_response = 0 AND f.kind = 'http')",
    "s": "(f.has_response != 0)",
    "e": "(f.error != '')",
    "http": "(f.kind IN ('http', 'websocket'))",
    "tcp": "(f.kind = 'tunnel')",
    "websocket": "(f.kind = 'websocket')",
}


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one backend's SQL says what differs between backends.

    ``contains`` and ``like`` are templates over ``{column}`` and ``{param}``;
    ``contains`` is given the literal lower-cased, ``like`` a LIKE pattern
    with ``\\`` as its escape, and both must fold ASCII case.  ``search``
    runs the filter's own regex, ``{param}, {param}, {column}`` being the
    filter's name, the pattern and the text; None when the backend cannot, so
    those terms stay residual.  ``asset`` is the ``~a`` test.  ``nulls``:
    ORDER BY must say NULLS FIRST/LAST to put NULL before every value, as
    SQLite does.  ``text_order`` follows a text sort key (a COLLATE clause)
    so that text sorts by code point, as SQLite's does.
    """

    param: str
    contains: str
    like: str
    search: str | None
    asset: str
    nulls: bool = False
    text_order: str = ""


#: The condition every row meets: what a filter with nothing in SQL pushes down.
TRUE = "TRUE"


class QueryError(ValueError):
    """A sort or order that listings do not offer."""


@dataclass(frozen=True, slots=True)
class Query:
    """``where`` (never NULL for any row) and ``params``, then ``residual`` on the decoded flow.

    ``residual`` is None when the SQL alone is exact.  ``plain_exact``: the
    SQL is exact on every row marked ``f.plain``, and the residual is needed
    only for the others (a backend without the regex function), so where the
    candidates are all plain, the store may skip it.
    """

    where: str
    params: tuple[Any, ...] = ()
    residual: Filter | None = None
    plain_exact: bool = False


def translate(tree: Filter, dialect: Dialect, max_params: int = 999) -> Query:
    """Split ``tree`` into exact SQL (in ``dialect``) and a residual filter.

    ``max_params`` is the connection's limit on bound parameters; a filter
    that would need more (or nests deeper than :data:`MAX_PUSH_DEPTH`) is
    left to Python whole rather than fail in the database.
    """
    if _depth(tree) > MAX_PUSH_DEPTH:
        return Query(TRUE, (), tree)
    query = _translate(tree, dialect)
    if query.where is None:
        return Query(TRUE, (), tree)
    if len(query.params) > max_params:
        return Query(TRUE, (), tree)
    return Query(query.where, query.params, query.residual, query.residual is not None and query.plain_exact)


def order_by(sort: str, order: str, dialect: Dialect | None = None) -> str:
    """The ORDER BY list for a listing: the key, then time and id, all in ``order``.

    ``desc`` is exactly the reverse of ``asc``.  A flow still in progress has
    no duration: NULL sorts first ascending, last descending (said outright
    for a ``dialect`` whose default differs).
    """
    if not isinstance(sort, str) or sort not in SORTS:
        raise QueryError(f"sort must be one of {', '.join(SORTS)}")
    if not isinstance(order, str) or order not in ORDERS:
        raise QueryError(f"order must be one of {', '.join(ORDERS)}")
    direction = order.upper()
    keys = [SORTS[sort]] if sort != "time" else []
    keys += ["sf.time", "sf.flow_id"]
    nulls = ""
    if dialect is not None and dialect.nulls:
        nulls = " NULLS FIRST" if order == "asc" else " NULLS LAST"
    # Only a column that holds NULL says so: on the others it would keep an index from giving the order.
    text = dialect.text_order if dialect is not None else ""
    return ", ".join(
        f"{key}{text if key in _TEXT_SORTS else ''} {direction}{nulls if key in _NULLABLE_SORTS else ''}"
        for key in keys
    )


@dataclass(frozen=True, slots=True)
class _Part:
    where: str | None  # None: nothing of this node is in SQL
    params: tuple[Any, ...]
    residual: Filter | None
    # With a residual: ``where`` is exact on plain rows and true on the others.
    plain_exact: bool = False


def _translate(node: Filter, dialect: Dialect) -> _Part:
    if isinstance(node, And):
        left, right = _translate(node.left, dialect), _translate(node.right, dialect)
        if left.where is None:
            where, params = right.where, right.params
        elif right.where is None:
            where, params = left.where, left.params
        else:
            where, params = f"({left.where} AND {right.where})", left.params + right.params
        residuals = [part.residual for part in (left, right) if part.residual is not None]
        residual = And(*residuals) if len(residuals) == 2 else (residuals[0] if residuals else None)
        plain_exact = all(_exact(part) or part.plain_exact for part in (left, right))
        return _Part(where, params, residual, plain_exact)
    if isinstance(node, Or):
        left, right = _translate(node.left, dialect), _translate(node.right, dialect)
        if _exact(left) and _exact(right):
            return _Part(f"({left.where} OR {right.where})", left.params + right.params, None)
        if all(_exact(part) or part.plain_exact for part in (left, right)):
            # On a row that is not plain the inexact side is true, so the OR is too.
            return _Part(f"({left.where} OR {right.where})", left.params + right.params, node, True)
        return _Part(None, (), node)
    if isinstance(node, Not):
        inner = _translate(node.inner, dialect)
        if _exact(inner):
            return _Part(f"(NOT {inner.where})", inner.params, None)
        if inner.plain_exact:
            return _Part(f"(f.plain = 0 OR NOT {inner.where})", inner.params, node, True)
        return _Part(None, (), node)
    return _leaf(node, dialect)


def _exact(part: _Part) -> bool:
    return part.where is not None and part.residual is None


def _leaf(node: Filter, dialect: Dialect) -> _Part:
    """SQL for one term: exact, narrowing with the term kept as residual, or none at all."""
    if type(node) is Const:
        return _Part(TRUE if node.value else "FALSE", (), None)
    if type(node) is StatusCode:
        if not _INT64[0] <= node.code <= _INT64[1]:
            return _Part("FALSE", (), None)  # the status column holds 64-bit integers only
        return _Part(f"(f.status = {dialect.param})", (node.code,), None)
    if type(node) is Flag:
        sql = dialect.asset if node.name == "a" else _FLAGS.get(node.name)
        return _Part(sql, (), None if sql is not None else node)
    if type(node) is Regex:
        if node.name == "t":
            request = _search(node.name, node.pattern_text, _SEARCHED["tq"], dialect)
            response = _search(node.name, node.pattern_text, _SEARCHED["ts"], dialect)
            if request is None or response is None:
                return _Part(None, (), node)
            exact = request[2] and response[2]
            return _Part(f"({request[0]} OR {response[0]})", request[1] + response[1], None if exact else node,
                         not exact)
        column = _SEARCHED.get(node.name)
        found = None if column is None else _search(node.name, node.pattern_text, column, dialect)
        if found is None:
            return _Part(None, (), node)
        return _Part(found[0], found[1], None if found[2] else node, not found[2])
    return _Part(None, (), node)


def _search(name: str, pattern: str, column: str, dialect: Dialect) -> tuple[str, tuple[Any, ...], bool] | None:
    """SQL for "``pattern`` is found in ``column``", case-insensitively; false for NULL.

    Returns ``(sql, params, exact)``: not exact when rows that are not plain
    pass the SQL unchecked and the term must still run on them; None when
    SQL can say nothing useful.
    """
    mark = dialect.param
    pieces = _pieces(pattern)
    fallback = None if dialect.search is None else dialect.search.format(param=mark, column=column)
    if pieces is None:
        return None if fallback is None else (fallback, (name, pattern), True)
    if not pieces:
        return f"({column} IS NOT NULL)", (), True
    # On printable ASCII (f.plain) ASCII case folding is Python's and no
    # newline can stop a '.'; other rows are left to the pattern itself.
    # A missing header must be false, not NULL: NOT NULL would drop the row.
    absent = f"WHEN {column} IS NULL THEN FALSE " if column in _NULLABLE else ""
    other, other_params = ("TRUE", ()) if fallback is None else (fallback, (name, pattern))
    if _ANY_CHAR not in pieces:
        test = dialect.contains.format(column=column, param=mark)
        argument = "".join(pieces).lower()
    else:
        test = dialect.like.format(column=column, param=mark)
        argument = "%" + "".join("_" if piece is _ANY_CHAR else _like_escape(piece) for piece in pieces) + "%"
    sql = f"(CASE {absent}WHEN f.plain != 0 THEN {test} ELSE {other} END)"
    return sql, (argument, *other_params), fallback is not None


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


@functools.lru_cache(maxsize=256)
def searcher(name: str, pattern: str) -> Callable[[str], Any]:
    """The ``search`` method of ``pattern`` compiled exactly as the filter language does."""
    return Regex(name, pattern).pattern.search
