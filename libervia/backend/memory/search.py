"""Search of cached pubsub items: full text, filters on parsed data, ordering, paging.

:meth:`~libervia.backend.memory.sqla.Storage.search_pubsub_items` checks its
arguments with :func:`check_request` and builds its queries with
:func:`build_queries`. Both engines return the same items in the same order
for the same request, except for the order by relevance, whose scores differ
(see :data:`RELEVANCE`).

JSON paths
    A path is a sequence of object keys (str) and list indexes (int,
    negative ones counting from the end). User text never becomes SQL: on
    PostgreSQL each step of a path is a ``->`` with a bound key or index. On
    SQLite a path is a JSON path string, itself a bound parameter, but that
    syntax cannot name every key. SQLite 3.40 compares the key of a path
    with the raw JSON text of the document, still escaped, so ``"é"``
    (stored as ``"\\u00e9"``) never matches, and it has no escape for ``"``.
    Later versions, which read JSONB, decode backslash escapes in a quoted
    key instead. A key outside printable ASCII or containing ``"`` or
    ``\\`` is therefore looked up with ``json_each()``, whose ``key`` column
    is the decoded key.
Types
    A value matches only a JSON value of its own type: numbers compare as
    numbers (integers and floats together), strings as strings in code point
    order (``COLLATE "C"`` on PostgreSQL, SQLite's default binary collation),
    booleans as booleans. The number 5 never matches the string "5".
Case-insensitive operators
    ``ioverlap``, ``idisjoint``, ``ilike`` and ``not_ilike`` lowercase both
    sides in SQL, with ``lower()`` on PostgreSQL. SQLite's ``lower()`` only
    folds ASCII letters, so there they call :data:`SQLITE_LOWER_FUNCTION`,
    which ``sqla`` registers on each connection and which runs Python's
    ``str.lower()``.
"""

from __future__ import annotations

import json
import math
import operator as python_operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Float,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    table,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.sql.operators import custom_op

from libervia.backend.core.exceptions import InvalidValue, StorageError
from libervia.backend.memory import fulltext
from libervia.backend.memory.sqla_mapping import Profile, PubsubItem, PubsubNode

#: Operators comparing the value at a path with one value (``between``: two).
COMPARISON_OPERATORS = ("eq", "ne", "lt", "le", "gt", "ge", "between")
#: Operators taking a list of values.
LIST_OPERATORS = ("in", "not_in", "overlap", "ioverlap", "disjoint", "idisjoint")
#: Operators taking an SQL LIKE pattern.
PATTERN_OPERATORS = ("like", "ilike", "not_like", "not_ilike")
OPERATORS = (*COMPARISON_OPERATORS, *LIST_OPERATORS, *PATTERN_OPERATORS, "exists")

#: Negative operators and the operator they negate. A negative operator
#: matches exactly the items that the positive one does not match, so items
#: without a value at the path match it too.
NEGATED_OPERATORS = {
    "ne": "eq",
    "not_in": "in",
    "disjoint": "overlap",
    "idisjoint": "ioverlap",
    "not_like": "like",
    "not_ilike": "ilike",
}

# SQL comparison of each comparison operator, applied to SQLAlchemy expressions.
COMPARISONS = {
    "eq": python_operator.eq,
    "lt": python_operator.lt,
    "le": python_operator.le,
    "gt": python_operator.gt,
    "ge": python_operator.ge,
}

#: Modes of the full-text search: every word, one phrase, or word prefixes.
FTS_MODES = ("words", "phrase", "prefix")

#: Order keys that are columns of the cached item.
ORDER_COLUMNS = ("created", "updated", "item_id")
#: Order key sorting full-text matches by relevance. The scores come from
#: SQLite's FTS5 ``bm25()`` and PostgreSQL's ``ts_rank()``, which weigh
#: document length differently, so the two engines agree on clearly
#: different matches but may order close ones differently.
RELEVANCE = "relevance"
ORDER_DIRECTIONS = ("asc", "desc")

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
#: Number of matches up to which a search counts them by default. Counting
#: stops there because the cost of a count grows with the number of matches.
DEFAULT_COUNT_LIMIT = 1000
#: Maximum number of matches that a search orders by relevance. Scoring
#: takes about 10 microseconds per match (measured at 1,000,000 items with
#: SQLite 3.40's FTS5 and PostgreSQL 15), so above this number the relevance
#: keys of the order are replaced by the storage order (see
#: :data:`STORAGE_ORDER`) and the result says so.
RELEVANCE_MAX_MATCHES = 1000
#: Internal order key: the row id, which follows the order in which the
#: cache stored the items. It replaces relevance for searches matching more
#: than :data:`RELEVANCE_MAX_MATCHES` items.
STORAGE_ORDER = "storage"
MAX_PATH_LENGTH = 32
#: Maximum number of values of a list operator.
MAX_LIST_VALUES = 1000
# List indexes are bound as PostgreSQL integers (4 bytes).
MAX_INDEX = 2**31 - 1

#: Paths of parsed data whose value has an index on both engines (see the
#: migration "Index the searches of pubsub items"). Queries write these paths
#: as SQL constants, not bound parameters, because an index on an expression
#: serves only queries with the same expression, constants included.
INDEXED_PATHS = frozenset({("published",)})

#: SQL function lowercasing text with Python's str.lower() on SQLite connections.
SQLITE_LOWER_FUNCTION = "libervia_lower"

# The character that escapes %, _ and itself in LIKE patterns.
LIKE_ESCAPE = "\\"
# Characters of SQLite GLOB patterns that are not wildcards of LIKE.
GLOB_SPECIAL = frozenset("*?[")

JsonPath = tuple[str | int, ...]
Scalar = str | int | float | bool

PATH_EXAMPLE = '["links", 0, "href"]'


def _sql_string(text: str) -> ColumnElement[Any]:
    """Return an SQL string constant: for constants of the code only, never for user text."""
    return literal_column("'" + text.replace("'", "''") + "'")


def sqlite_lower(value: Any) -> Any:
    """Lowercase text with str.lower(), as the SQLite function :data:`SQLITE_LOWER_FUNCTION`."""
    return value.lower() if isinstance(value, str) else value


# --- checking requests ------------------------------------------------------------


@dataclass(frozen=True)
class FieldFilter:
    """Condition on the value found at ``path`` in an item's parsed data."""

    path: JsonPath
    operator: str
    value: Any


@dataclass(frozen=True)
class OrderKey:
    """One key of the result order: a name of :data:`ORDER_COLUMNS`, relevance, or a path."""

    name: str | None
    path: JsonPath | None
    descending: bool


@dataclass(frozen=True)
class SearchRequest:
    """Checked arguments of a search, in which a None filter selects everything."""

    fts: str | None
    fts_mode: str
    profile_ids: tuple[int, ...] | None
    services: tuple[str, ...] | None
    nodes: tuple[str, ...] | None
    types: tuple[str, ...] | None
    subtypes: tuple[str, ...] | None
    item_ids: tuple[str, ...] | None
    filters: tuple[FieldFilter, ...]
    order: tuple[OrderKey, ...]
    offset: int
    limit: int
    with_payload: bool
    #: Matches counted at most, None to count them all, 0 to skip the count.
    count_limit: int | None = DEFAULT_COUNT_LIMIT


@dataclass
class SearchHit:
    """One cached item found by a search, with the node and profile it belongs to."""

    profile: str
    service: str
    node: str
    node_type: str | None
    node_subtype: str | None
    item_id: str
    created: datetime
    updated: datetime
    publisher: str | None
    #: Parsed data of the item, an empty dict when the node has no parser.
    parsed: dict[str, Any]
    #: Serialised ``<item/>`` XML, only when the search asked for it.
    payload: str | None = None


@dataclass
class SearchResult:
    """One page of search results and the number of matches over all pages."""

    hits: list[SearchHit] = field(default_factory=list)
    #: Number of matches over all pages: exact when ``total_exact`` is set,
    #: else a lower bound (the count stopped at its limit). None when the
    #: search was asked not to count.
    total: int | None = 0
    total_exact: bool = True
    #: Whether the search matched more than :data:`RELEVANCE_MAX_MATCHES`
    #: items, so that the storage order replaced the relevance keys.
    relevance_ignored: bool = False


def _check_text(text: str, label: str) -> None:
    """Raise InvalidValue for text that neither database can store."""
    if "\x00" in text:
        raise InvalidValue(
            f"{label} {text!r} contains a NUL character, which the database cannot store: "
            f"remove it"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue(
            f"{label} {text!r} is not valid Unicode (it contains a lone surrogate): "
            f"send UTF-8 text"
        ) from None


def check_path(path: Any, label: str = "path") -> JsonPath:
    """Check a path of parsed data: a non-empty list of keys (str) and list indexes (int).

    Raises InvalidValue naming the path and the expected form.
    """
    if isinstance(path, str) or not isinstance(path, (list, tuple)) or not path:
        raise InvalidValue(
            f"invalid {label} {path!r}: use a non-empty list of keys (strings) and list "
            f"indexes (integers), e.g. {PATH_EXAMPLE}"
        )
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidValue(
            f"invalid {label} {list(path)!r}: it has {len(path)} elements, the maximum is "
            f"{MAX_PATH_LENGTH}"
        )
    for element in path:
        if isinstance(element, bool) or not isinstance(element, (str, int)):
            raise InvalidValue(
                f"invalid element {element!r} in {label} {list(path)!r}: use strings for keys "
                f"and integers for list indexes, e.g. {PATH_EXAMPLE}"
            )
        if isinstance(element, str):
            _check_text(element, f"key of {label}")
        elif abs(element) > MAX_INDEX:
            raise InvalidValue(
                f"invalid list index {element} in {label} {list(path)!r}: use an index between "
                f"{-MAX_INDEX} and {MAX_INDEX}"
            )
    return tuple(path)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_scalar(value: Any, operator: str, kinds: str) -> None:
    """Check one value of ``operator``; ``kinds`` is "any", "ordered" or "string"."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidValue(f"invalid value {value!r} for {operator}: use a finite number")
    if isinstance(value, str):
        _check_text(value, f"value of {operator}")
        return
    if kinds == "string":
        raise InvalidValue(
            f"invalid value {value!r} for {operator}: it compares text, use a string"
        )
    if _is_number(value):
        return
    if isinstance(value, bool) and kinds == "any":
        return
    expected = "a string, a number or a boolean" if kinds == "any" else "a string or a number"
    hint = ""
    if value is None:
        hint = "; to select items without this field, use exists with false"
    raise InvalidValue(f"invalid value {value!r} for {operator}: use {expected}{hint}")


def _check_list(value: Any, operator: str) -> list[Any]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidValue(
            f"invalid value {value!r} for {operator}: use a list of values, e.g. "
            f'["xmpp", "python"]'
        )
    if len(value) > MAX_LIST_VALUES:
        raise InvalidValue(
            f"invalid value for {operator}: {len(value)} values, the maximum is "
            f"{MAX_LIST_VALUES}"
        )
    return list(value)


def check_like_pattern(pattern: str, operator: str) -> None:
    """Raise InvalidValue for a LIKE pattern ending with a lone escape character."""
    trailing = len(pattern) - len(pattern.rstrip(LIKE_ESCAPE))
    if trailing % 2:
        raise InvalidValue(
            f"invalid pattern {pattern!r} for {operator}: it ends with the escape character "
            f"{LIKE_ESCAPE}; write {LIKE_ESCAPE * 2} for a literal backslash"
        )


def _check_value(operator: str, value: Any) -> Any:
    """Check the value of a filter operator; return it with lists as tuples."""
    if operator in ("eq", "ne"):
        _check_scalar(value, operator, "any")
        return value
    if operator in ("lt", "le", "gt", "ge"):
        _check_scalar(value, operator, "ordered")
        return value
    if operator == "between":
        bounds = _check_list(value, operator)
        if len(bounds) != 2:
            raise InvalidValue(
                f"invalid value {value!r} for between: use a list of two bounds, "
                f"[low, high], both included"
            )
        for bound in bounds:
            _check_scalar(bound, operator, "ordered")
        low, high = bounds
        if _is_number(low) != _is_number(high):
            raise InvalidValue(
                f"invalid value {value!r} for between: use two numbers or two strings"
            )
        if low > high:
            raise InvalidValue(
                f"invalid value {value!r} for between: the low bound is greater than the "
                f"high bound, swap them"
            )
        return (low, high)
    if operator in LIST_OPERATORS:
        kinds = "string" if operator in ("ioverlap", "idisjoint") else "any"
        values = _check_list(value, operator)
        for entry in values:
            _check_scalar(entry, operator, kinds)
        return tuple(values)
    if operator in PATTERN_OPERATORS:
        if not isinstance(value, str):
            raise InvalidValue(
                f"invalid value {value!r} for {operator}: use an SQL LIKE pattern string "
                f"(% any text, _ one character, \\ escapes them)"
            )
        _check_text(value, f"pattern of {operator}")
        check_like_pattern(value, operator)
        return value
    # exists
    if not isinstance(value, bool):
        raise InvalidValue(
            f"invalid value {value!r} for exists: use true (the path has a value) or "
            f"false (it has none)"
        )
    return value


def check_filter(path: Any, operator: Any, value: Any) -> FieldFilter:
    """Check one parsed-data filter. Raises InvalidValue naming what to change."""
    json_path = check_path(path)
    if operator not in OPERATORS:
        raise InvalidValue(
            f"unknown operator {operator!r} in the filter on {list(json_path)!r}: use one of "
            f"{', '.join(OPERATORS)}"
        )
    return FieldFilter(json_path, operator, _check_value(operator, value))


def check_order_key(key: Any, direction: Any = None) -> OrderKey:
    """Check one order key: a name, or a parsed-data path, and "asc" or "desc".

    Without a direction, relevance sorts the best matches first and every
    other key sorts in ascending order.
    """
    if direction is None:
        direction = "desc" if key == RELEVANCE else "asc"
    if direction not in ORDER_DIRECTIONS:
        raise InvalidValue(f"invalid order direction {direction!r}: use asc or desc")
    descending = direction == "desc"
    if isinstance(key, str):
        if key not in (*ORDER_COLUMNS, RELEVANCE):
            raise InvalidValue(
                f"unknown order key {key!r}: use {', '.join(ORDER_COLUMNS)}, {RELEVANCE}, "
                f"or a path of parsed data such as [\"published\"]"
            )
        return OrderKey(key, None, descending)
    return OrderKey(None, check_path(key, "order path"), descending)


def _check_values(values: Sequence[Any] | None, label: str) -> tuple[Any, ...] | None:
    if values is None:
        return None
    if isinstance(values, str) or not isinstance(values, (list, tuple, set, frozenset)):
        raise InvalidValue(f"{label} must be a list, not {values!r}")
    for value in values:
        if not isinstance(value, str):
            raise InvalidValue(f"{label} must contain strings, not {value!r}")
        _check_text(value, label)
    return tuple(values)


def check_request(
    fts: str | None = None,
    fts_mode: str = "words",
    profile_ids: Sequence[int] | None = None,
    services: Sequence[str] | None = None,
    nodes: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    subtypes: Sequence[str] | None = None,
    item_ids: Sequence[str] | None = None,
    filters: Sequence[Sequence[Any] | FieldFilter] | None = (),
    order_by: Sequence[Sequence[Any] | OrderKey] | None = (),
    offset: int = 0,
    limit: int = DEFAULT_LIMIT,
    with_payload: bool = False,
    count_limit: int | None = DEFAULT_COUNT_LIMIT,
) -> SearchRequest:
    """Check the arguments of a search (see Storage.search_pubsub_items).

    Raises InvalidValue naming the invalid argument and what to use instead.
    """
    if fts is not None and not isinstance(fts, str):
        raise InvalidValue(f"full-text search must be a string, not {fts!r}")
    if fts is not None:
        _check_text(fts, "full-text search")
        if not fts.strip():
            fts = None
    if fts_mode not in FTS_MODES:
        raise InvalidValue(
            f"unknown full-text mode {fts_mode!r}: use one of {', '.join(FTS_MODES)}"
        )
    for name, number in (("offset", offset), ("limit", limit)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise InvalidValue(f"{name} must be an integer of 0 or more, not {number!r}")
    if limit > MAX_LIMIT:
        raise InvalidValue(
            f"limit {limit} is above the maximum of {MAX_LIMIT}: get further pages with "
            f"offset"
        )
    if count_limit is not None and (
        isinstance(count_limit, bool) or not isinstance(count_limit, int) or count_limit < 0
    ):
        raise InvalidValue(
            f"count limit must be an integer of 0 or more (0: no count), or None for an "
            f"exact count, not {count_limit!r}"
        )

    if profile_ids is not None:
        profile_ids = tuple(profile_ids)
        if not all(isinstance(value, int) and not isinstance(value, bool) for value in profile_ids):
            raise InvalidValue(f"profile ids must be integers, not {profile_ids!r}")

    checked_filters = []
    for entry in filters or ():
        if isinstance(entry, FieldFilter):
            entry = (entry.path, entry.operator, entry.value)
        if isinstance(entry, str) or not isinstance(entry, (list, tuple)) or len(entry) != 3:
            raise InvalidValue(
                f"invalid filter {entry!r}: use [path, operator, value], e.g. "
                f'[["tags"], "overlap", ["xmpp"]]'
            )
        checked_filters.append(check_filter(*entry))

    order = []
    for entry in order_by or ():
        if isinstance(entry, OrderKey):
            order.append(entry)
            continue
        if isinstance(entry, str) or not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise InvalidValue(
                f"invalid order key {entry!r}: use [key, direction], e.g. "
                f'["created", "desc"] or [["published"], "asc"]'
            )
        order.append(check_order_key(*entry))
    if not order:
        # Without an order, the best matches first, or else the newest items.
        order = [OrderKey(RELEVANCE, None, True) if fts else OrderKey("created", None, True)]
    if fts is None and any(key.name == RELEVANCE for key in order):
        raise InvalidValue(
            "ordering by relevance needs a full-text search: give words to search, or "
            "order by created, updated, item_id or a path"
        )

    return SearchRequest(
        fts=fts,
        fts_mode=fts_mode,
        profile_ids=profile_ids,
        services=_check_values(services, "services"),
        nodes=_check_values(nodes, "nodes"),
        types=_check_values(types, "types"),
        subtypes=_check_values(subtypes, "subtypes"),
        item_ids=_check_values(item_ids, "item ids"),
        filters=tuple(checked_filters),
        order=tuple(order),
        offset=offset,
        limit=limit,
        with_payload=with_payload,
        count_limit=count_limit,
    )


# --- full-text matches ------------------------------------------------------------


def fts5_match(words: str, mode: str) -> str | None:
    """Build the FTS5 query of user text in a full-text mode, or None when it has no word.

    Every string of the query is built from :func:`~fulltext.search_words`
    tokens, which contain only letters and digits, so user text never
    becomes FTS5 syntax.
    """
    if mode == "words":
        return fulltext.fts5_query(words)
    if mode == "phrase":
        tokens = fulltext.search_words(words)
        return f'"{" ".join(tokens)}"' if tokens else None
    # A "*" after a string makes its last token a prefix.
    strings = [
        f'"{" ".join(tokens)}"*' for tokens in map(fulltext.search_words, words.split()) if tokens
    ]
    return " ".join(strings) or None


def _pg_tsquery(words: str, mode: str) -> ColumnElement[Any] | None:
    """Build the PostgreSQL tsquery of user text in a full-text mode, or None without a word."""
    config = literal_column(f"'{fulltext.PG_TS_CONFIG}'::regconfig")
    if mode == "words":
        phrases = fulltext.pg_query_words(words)
        if not phrases:
            return None
        ts_query = func.phraseto_tsquery(config, bindparam(None, phrases[0], type_=Text))
        for phrase in phrases[1:]:
            ts_query = ts_query.op("&&")(
                func.phraseto_tsquery(config, bindparam(None, phrase, type_=Text))
            )
        return ts_query
    if mode == "phrase":
        tokens = fulltext.search_words(words)
        if not tokens:
            return None
        return func.phraseto_tsquery(config, bindparam(None, " ".join(tokens), type_=Text))
    # to_tsquery() parses its argument as tsquery syntax, which is safe here
    # because search_words() tokens contain only letters and digits, never a
    # quote or an operator.
    terms = [
        " <-> ".join(f"'{token}'" for token in tokens) + ":*"
        for tokens in map(fulltext.search_words, words.split())
        if tokens
    ]
    if not terms:
        return None
    return func.to_tsquery(config, bindparam(None, " & ".join(terms), type_=Text))


# --- JSON values of parsed data ---------------------------------------------------


@dataclass
class JsonValue:
    """SQL views of one JSON value (a field of parsed data, or a list element).

    Each view is SQL NULL when the value is absent or of another type.
    ``json`` is the value itself (JSON text on SQLite, jsonb on PostgreSQL)
    and is NULL only when the value is absent: a JSON null is present.
    """

    json: ColumnElement[Any]
    json_type: ColumnElement[Any]
    number: ColumnElement[Any]
    string: ColumnElement[Any]
    boolean: ColumnElement[Any]


# Keys that an SQLite JSON path can name: printable ASCII without " and \.
def _sqlite_path_key(key: str) -> bool:
    return all(" " <= char <= "~" and char not in '"\\' for char in key)


def _sqlite_path(elements: Sequence[str | int]) -> str:
    parts = ["$"]
    for element in elements:
        if isinstance(element, int):
            parts.append(f"[{element}]" if element >= 0 else f"[#{element}]")
        else:
            parts.append(f'."{element}"')
    return "".join(parts)


class _SQLiteJson:
    """JSON access and text operations of SQLite (JSON1 functions, FTS5)."""

    name = "sqlite"

    def value(self, path: JsonPath) -> JsonValue:
        # NOTE: the JSON text is parsed again by each function reading it, a
        # cost per item and per filter that only the documents' size bounds.
        document: ColumnElement[Any] = type_coerce(PubsubItem.parsed, Text)
        if path in INDEXED_PATHS:
            return self._value_at(document, _sql_string(_sqlite_path(path)))
        pending: list[str | int] = []
        for element in path:
            if isinstance(element, str) and not _sqlite_path_key(element):
                document = self._member(document, _sqlite_path(pending), element)
                pending = []
            else:
                pending.append(element)
        return self._value_at(document, bindparam(None, _sqlite_path(pending), type_=Text))

    @staticmethod
    def _member(document: ColumnElement[Any], parent_path: str, key: str) -> ColumnElement[Any]:
        """Return the JSON text of member ``key`` of the object at ``parent_path``, or NULL."""
        members = func.json_each(document, bindparam(None, parent_path, type_=Text)).table_valued(
            "key", "value", "type"
        )
        # json_each() returns strings without quotes and booleans as 1 and 0,
        # so the JSON text of the member is rebuilt for the next steps.
        member_json = case(
            (members.c.type.in_(("object", "array")), members.c.value),
            (members.c.type == "true", literal("true")),
            (members.c.type == "false", literal("false")),
            (members.c.type == "null", literal("null")),
            else_=func.json_quote(members.c.value),
        )
        return (
            select(member_json)
            .select_from(members)
            .where(members.c.key == bindparam(None, key, type_=Text))
            .scalar_subquery()
        )

    @staticmethod
    def _value_at(document: ColumnElement[Any], path: ColumnElement[Any]) -> JsonValue:
        """Return the views of the value at ``path``, a bound parameter or a constant."""
        json_type = func.json_type(document, path)
        scalar = document.op("->>")(path)
        return JsonValue(
            json=document.op("->", return_type=Text)(path),
            json_type=json_type,
            # Constant type names, as in the expression indexes of INDEXED_PATHS.
            number=case((json_type.in_([_sql_string("integer"), _sql_string("real")]), scalar)),
            string=case((json_type == _sql_string("text"), scalar)),
            boolean=case((json_type == "true", 1), (json_type == "false", 0)),
        )

    @staticmethod
    def elements_match(
        value: JsonValue, condition: Callable[[JsonValue], ColumnElement[bool]]
    ) -> ColumnElement[bool]:
        """Return whether ``value`` is a list with an element matching ``condition``."""
        elements = func.json_each(value.json).table_valued("value", "type")
        element_type = elements.c.type
        element = JsonValue(
            json=elements.c.value,
            json_type=element_type,
            number=case((element_type.in_(("integer", "real")), elements.c.value)),
            string=case((element_type == "text", elements.c.value)),
            boolean=case((element_type == "true", 1), (element_type == "false", 0)),
        )
        matching = select(literal(1)).select_from(elements).where(condition(element)).exists()
        return and_(value.json_type == "array", matching)

    @staticmethod
    def number(value: int | float) -> ColumnElement[Any]:
        # SQLite integers have 8 bytes, so larger ones are bound as floats.
        if isinstance(value, int) and abs(value) >= 2**63:
            value = float(value)
        return bindparam(None, value)

    @staticmethod
    def boolean(value: bool) -> ColumnElement[Any]:
        return bindparam(None, int(value), type_=Integer)

    @staticmethod
    def text_key(expression: ColumnElement[Any]) -> ColumnElement[Any]:
        return expression

    @staticmethod
    def lower(expression: ColumnElement[Any]) -> ColumnElement[Any]:
        return getattr(func, SQLITE_LOWER_FUNCTION)(expression)

    def like(
        self, text: ColumnElement[Any], pattern: str, case_sensitive: bool
    ) -> ColumnElement[bool]:
        # SQLite's LIKE ignores the case of ASCII letters, while GLOB is
        # case-sensitive, so the LIKE pattern is translated to GLOB.
        glob: ColumnElement[Any] = bindparam(None, like_to_glob(pattern), type_=Text)
        if not case_sensitive:
            text, glob = self.lower(text), self.lower(glob)
        return text.op("GLOB", is_comparison=True)(glob)

    @staticmethod
    def containment(field_filter: FieldFilter) -> None:
        """Return None: SQLite has no index serving containment, so the exact condition stays."""
        return None

    @staticmethod
    def fts_condition(words: str, mode: str) -> ColumnElement[bool] | None:
        match = fts5_match(words, mode)
        if match is None:
            return None
        # A subquery rather than a join: SQLite then runs the FTS5 query
        # once instead of probing the FTS5 table once per item.
        fts_table = table(fulltext.SQLITE_FTS_TABLE, column("rowid"))
        matching_ids = select(fts_table.c.rowid).where(
            literal_column(fulltext.SQLITE_FTS_TABLE).bool_op("MATCH")(
                bindparam(None, match, type_=Text)
            )
        )
        return PubsubItem.id.in_(matching_ids)


class _PostgresJson:
    """JSON access and text operations of PostgreSQL (jsonb, tsvector)."""

    name = "postgresql"

    def value(self, path: JsonPath) -> JsonValue:
        document: ColumnElement[Any] = type_coerce(PubsubItem.parsed, JSONB)
        indexed = path in INDEXED_PATHS
        for element in path:
            # -> with a text key reads objects only, so a key "0" never reads
            # a list.
            if isinstance(element, str):
                key = _sql_string(element) if indexed else bindparam(None, element, type_=Text)
                document = document.op("->", return_type=JSONB)(key)
                continue
            # -> with an integer reads lists, but PostgreSQL 15 also returns a
            # scalar for the index 0 or -1 ('"a"'::jsonb -> 0 is "a"), hence
            # the type check.
            item = document.op("->", return_type=JSONB)(bindparam(None, element, type_=Integer))
            document = type_coerce(case((func.jsonb_typeof(document) == "array", item)), JSONB)
        return self._json_value(document)

    @staticmethod
    def _json_value(document: ColumnElement[Any]) -> JsonValue:
        json_type = func.jsonb_typeof(document)
        # CASE evaluates a cast only for values of the right type, which a
        # plain AND would not guarantee.
        # Constant type names, as in the expression indexes of INDEXED_PATHS.
        return JsonValue(
            json=document,
            json_type=json_type,
            number=case((json_type == _sql_string("number"), cast(document, Float))),
            string=case(
                (json_type == _sql_string("string"),
                 document.op("#>>", return_type=Text)(literal_column("'{}'::text[]")))
            ),
            boolean=case((json_type == _sql_string("boolean"), cast(document, Boolean))),
        )

    @staticmethod
    def containment(field_filter: FieldFilter) -> ColumnElement[bool] | None:
        """Return a containment test (``parsed @> ...``) equivalent to ``field_filter``, or None.

        The GIN index on ``parsed`` serves ``@>``, and ANALYZE statistics
        of ``parsed`` give the planner the share of items that contain the
        document. The test therefore replaces the exact condition, whose
        expressions have no statistics. With both, the planner estimated
        hundreds of times fewer matches for a frequent value, and read every
        match from the GIN index where a few rows of an ordered index or of
        the table were enough.

        The test is equivalent only for paths made of keys and for strings
        and booleans, so other filters return None. Numbers are left out
        because jsonb compares them as numeric, while filters compare them
        as floats, and the two disagree on numbers that a float cannot
        represent exactly. For ``eq``, jsonb lets a list contain a scalar
        only at the top level of the document, which a non-empty path never
        reaches. Strings compare byte by byte on both sides, as with
        collation "C".
        """
        if field_filter.operator not in ("eq", "in", "overlap"):
            return None
        if not all(isinstance(key, str) for key in field_filter.path):
            return None
        operands = [field_filter.value] if field_filter.operator == "eq" else field_filter.value
        if not operands or not all(isinstance(operand, (str, bool)) for operand in operands):
            return None
        parsed = type_coerce(PubsubItem.parsed, JSONB)
        tests = []
        for operand in operands:
            document: Any = [operand] if field_filter.operator == "overlap" else operand
            for key in reversed(field_filter.path):
                document = {key: document}
            # Bound as text and cast, so the query also renders with literal values.
            bound = cast(bindparam(None, json.dumps(document), type_=Text), JSONB)
            tests.append(parsed.op("@>")(bound))
        return or_(*tests)

    def elements_match(
        self, value: JsonValue, condition: Callable[[JsonValue], ColumnElement[bool]]
    ) -> ColumnElement[bool]:
        """Return whether ``value`` is a list with an element matching ``condition``."""
        # jsonb_array_elements() raises on anything but a list.
        elements = func.jsonb_array_elements(
            case((value.json_type == "array", value.json), else_=literal_column("'[]'::jsonb"))
        ).table_valued("value")
        element = self._json_value(type_coerce(elements.c.value, JSONB))
        matching = select(literal(1)).select_from(elements).where(condition(element)).exists()
        return and_(value.json_type == "array", matching)

    @staticmethod
    def number(value: int | float) -> ColumnElement[Any]:
        return bindparam(None, float(value), type_=Float)

    @staticmethod
    def boolean(value: bool) -> ColumnElement[Any]:
        return bindparam(None, value, type_=Boolean)

    @staticmethod
    def text_key(expression: ColumnElement[Any]) -> ColumnElement[Any]:
        # Code point order, as with SQLite's binary collation, instead of the
        # database's collation, which may be linguistic.
        return expression.collate("C")

    @staticmethod
    def lower(expression: ColumnElement[Any]) -> ColumnElement[Any]:
        # NOTE: lower() follows the database's LC_CTYPE. With a C or POSIX
        # ctype it folds ASCII letters only, unlike SQLite here.
        return func.lower(expression)

    def like(
        self, text: ColumnElement[Any], pattern: str, case_sensitive: bool
    ) -> ColumnElement[bool]:
        bound: ColumnElement[Any] = bindparam(None, pattern, type_=Text)
        if not case_sensitive:
            text, bound = self.lower(text), self.lower(bound)
        return text.like(bound, escape=LIKE_ESCAPE)

    @staticmethod
    def fts_condition(words: str, mode: str) -> ColumnElement[bool] | None:
        ts_query = _pg_tsquery(words, mode)
        if ts_query is None:
            return None
        return _pg_vector().bool_op("@@")(ts_query)


def _pg_vector() -> ColumnElement[Any]:
    return literal_column(f"{PubsubItem.__tablename__}.{fulltext.PG_VECTOR_COLUMN}")


def like_to_glob(pattern: str) -> str:
    """Translate an SQL LIKE pattern (``\\`` escape) into an SQLite GLOB pattern.

    ``%`` becomes ``*`` and ``_`` becomes ``?``. Characters that are
    wildcards of GLOB only (``*``, ``?``, ``[``) and escaped characters
    become literal, ``[*]`` for instance.
    """
    parts = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == LIKE_ESCAPE and index + 1 < len(pattern):
            index += 1
            char = pattern[index]
            parts.append(f"[{char}]" if char in GLOB_SPECIAL else char)
        elif char == "%":
            parts.append("*")
        elif char == "_":
            parts.append("?")
        else:
            parts.append(f"[{char}]" if char in GLOB_SPECIAL else char)
        index += 1
    return "".join(parts)


# --- building queries -------------------------------------------------------------


def _engine_json(dialect_name: str) -> _SQLiteJson | _PostgresJson:
    if dialect_name == "sqlite":
        return _SQLiteJson()
    if dialect_name == "postgresql":
        return _PostgresJson()
    raise StorageError(
        f"the database uses {dialect_name}, which has no JSON search or full-text index "
        f"here: use SQLite or PostgreSQL"
    )


def full_text_condition(dialect_name: str, words: str, mode: str) -> ColumnElement[bool] | None:
    """Return the condition matching items whose text has ``words``, or None without a word."""
    return _engine_json(dialect_name).fts_condition(words, mode)


class _QueryBuilder:
    """Conditions and order of a search request, for one database engine."""

    def __init__(self, dialect_name: str) -> None:
        self.json = _engine_json(dialect_name)

    # conditions

    def conditions(
        self, request: SearchRequest, full_text: bool = True
    ) -> list[ColumnElement[bool]]:
        """Return the WHERE conditions of ``request``, with the full-text match if ``full_text``."""
        conditions: list[ColumnElement[bool]] = []
        profile_id: ColumnElement[Any] = PubsubNode.profile_id
        if self.json.name == "sqlite":
            # A unary + keeps SQLite, which has no statistics here, from
            # reading the items through the profile's nodes and sorting them
            # all. A profile usually owns most items, so the indexes on
            # time, dates and full text select far fewer rows.
            profile_id = UnaryExpression(
                PubsubNode.profile_id.expression,
                operator=custom_op("+"),
                type_=Integer(),
            )
        columns: list[tuple[ColumnElement[Any], tuple[Any, ...] | None]] = [
            (profile_id, request.profile_ids),
            (PubsubNode.service, request.services),
            (PubsubNode.name, request.nodes),
            (PubsubNode.type_, request.types),
            (PubsubNode.subtype, request.subtypes),
            (PubsubItem.name, request.item_ids),
        ]
        for column_, values in columns:
            if values is not None:
                # An empty list selects nothing (SQLAlchemy renders a false IN).
                conditions.append(column_.in_(list(values)))
        for field_filter in request.filters:
            containment = self.json.containment(field_filter)
            if containment is not None:
                conditions.append(containment)
            else:
                conditions.append(self.filter_condition(field_filter))
        if full_text and request.fts is not None:
            match = self.json.fts_condition(request.fts, request.fts_mode)
            # User text without any word (only punctuation) matches nothing.
            conditions.append(false() if match is None else match)
        return conditions

    def filter_condition(self, field_filter: FieldFilter) -> ColumnElement[bool]:
        """Return the condition of one parsed-data filter, which is never NULL for negations."""
        value = self.json.value(field_filter.path)
        positive = NEGATED_OPERATORS.get(field_filter.operator)
        if positive is not None:
            # NULL (no value at the path, or another type) must count as "no
            # match" before the negation, or NOT NULL would drop the item.
            condition = self._positive_condition(value, positive, field_filter.value)
            return not_(func.coalesce(condition, false()))
        return self._positive_condition(value, field_filter.operator, field_filter.value)

    def _positive_condition(
        self, value: JsonValue, operator: str, operand: Any
    ) -> ColumnElement[bool]:
        if operator == "exists":
            return value.json.isnot(None) if operand else value.json.is_(None)
        if operator == "between":
            low, high = operand
            return and_(
                self._compare(value, "ge", low), self._compare(value, "le", high)
            )
        if operator in ("eq", "lt", "le", "gt", "ge"):
            return self._compare(value, operator, operand)
        if operator == "in":
            return self._one_of(value, operand)
        if operator == "overlap":
            return self.json.elements_match(value, lambda element: self._one_of(element, operand))
        if operator == "ioverlap":
            return self.json.elements_match(
                value, lambda element: self._one_of_ignoring_case(element, operand)
            )
        if operator in ("like", "ilike"):
            return self.json.like(value.string, operand, case_sensitive=operator == "like")
        raise AssertionError(f"operator {operator!r} passed check_filter() but has no condition")

    def _typed(
        self, value: JsonValue, operand: Scalar
    ) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
        """Return the view of ``value`` of the operand's type and the bound operand."""
        if isinstance(operand, bool):
            return value.boolean, self.json.boolean(operand)
        if isinstance(operand, str):
            return self.json.text_key(value.string), bindparam(None, operand, type_=Text)
        return value.number, self.json.number(operand)

    def _compare(self, value: JsonValue, operator: str, operand: Scalar) -> ColumnElement[bool]:
        expression, bound = self._typed(value, operand)
        return COMPARISONS[operator](expression, bound)

    def _one_of(self, value: JsonValue, operands: Sequence[Scalar]) -> ColumnElement[bool]:
        """Return whether ``value`` equals one of ``operands``, each compared in its own type."""
        if not operands:
            return false()
        groups: dict[str, list[ColumnElement[Any]]] = {}
        expressions: dict[str, ColumnElement[Any]] = {}
        for operand in operands:
            kind = "boolean" if isinstance(operand, bool) else (
                "string" if isinstance(operand, str) else "number"
            )
            expression, bound = self._typed(value, operand)
            expressions[kind] = expression
            groups.setdefault(kind, []).append(bound)
        return or_(*(expressions[kind].in_(bounds) for kind, bounds in groups.items()))

    def _one_of_ignoring_case(
        self, value: JsonValue, operands: Sequence[str]
    ) -> ColumnElement[bool]:
        if not operands:
            return false()
        lowered = [self.json.lower(bindparam(None, operand, type_=Text)) for operand in operands]
        return self.json.lower(value.string).in_(lowered)

    # order

    def order(
        self,
        order: Sequence[OrderKey],
        score: ColumnElement[Any] | None,
        row_id: ColumnElement[Any],
    ) -> list[ColumnElement[Any]]:
        """Return the ORDER BY clauses, ending with ``row_id`` in the last key's direction."""
        clauses: list[ColumnElement[Any]] = []
        for key in order:
            expressions: list[ColumnElement[Any]]
            if key.path is not None:
                value = self.json.value(key.path)
                # Numbers first, then strings, and items without either last.
                expressions = [value.number, self.json.text_key(value.string)]
            elif key.name == RELEVANCE:
                assert score is not None
                expressions = [score]
            elif key.name == STORAGE_ORDER:
                expressions = [row_id]
            elif key.name == "item_id":
                expressions = [self.json.text_key(PubsubItem.name)]
            else:
                expressions = [getattr(PubsubItem, str(key.name))]
            for expression in expressions:
                ordered = expression.desc() if key.descending else expression.asc()
                # Only values of parsed data can be NULL. NULLS LAST on the
                # other keys would keep PostgreSQL from reading a (time, id)
                # index backwards, and SQLite from taking FTS5 matches in row
                # id order.
                clauses.append(ordered.nulls_last() if key.path is not None else ordered)
        if order and order[-1].name == STORAGE_ORDER:
            return clauses
        last_descending = order[-1].descending if order else True
        clauses.append(row_id.desc() if last_descending else row_id.asc())
        return clauses

    # queries

    def matches(
        self, request: SearchRequest, columns: Sequence[Any], with_score: bool = False
    ) -> tuple[Select, ColumnElement[Any] | None, ColumnElement[Any]]:
        """Select ``columns`` of the items matching ``request``, without order or limit.

        Returns the query, the relevance score (higher: better) when
        ``with_score`` is set, and the row id column to order by. On SQLite
        a full-text search reads the FTS5 table first and joins the items to
        it, so that FTS5 returns its matches in row id order when the query
        orders by row id, and scores only the rows that pass every condition.
        """
        score: ColumnElement[Any] | None = None
        row_id: ColumnElement[Any] = PubsubItem.id
        query = select(*columns)
        if request.fts is not None and self.json.name == "sqlite":
            fts_table = table(fulltext.SQLITE_FTS_TABLE, column("rowid"))
            fts_name = literal_column(fulltext.SQLITE_FTS_TABLE)
            row_id = fts_table.c.rowid
            query = query.select_from(fts_table).join(PubsubItem, PubsubItem.id == row_id)
            match = fts5_match(request.fts, request.fts_mode)
            if match is None:
                query = query.where(false())
            else:
                query = query.where(fts_name.bool_op("MATCH")(bindparam(None, match, type_=Text)))
            # bm25() is negative, and lower for better matches.
            score = -func.bm25(fts_name) if with_score else None
        else:
            query = query.select_from(PubsubItem)
            if request.fts is not None:
                ts_query = _pg_tsquery(request.fts, request.fts_mode)
                if ts_query is None:
                    # Text without any word matches nothing.
                    query = query.where(false())
                    score = literal(0) if with_score else None
                else:
                    vector = _pg_vector()
                    query = query.where(vector.bool_op("@@")(ts_query))
                    score = func.ts_rank(vector, ts_query) if with_score else None
        query = query.join(PubsubNode, PubsubNode.id == PubsubItem.node_id)
        query = query.where(*self.conditions(request, full_text=False))
        return query, score, row_id


def hit_columns(with_payload: bool) -> list[Any]:
    """Return the columns of a hit, labelled with the names of the SearchHit fields."""
    columns: list[Any] = [
        Profile.name.label("profile"),
        PubsubNode.service.label("service"),
        PubsubNode.name.label("node"),
        PubsubNode.type_.label("node_type"),
        PubsubNode.subtype.label("node_subtype"),
        PubsubItem.name.label("item_id"),
        PubsubItem.created.label("created"),
        PubsubItem.updated.label("updated"),
        PubsubItem.publisher.label("publisher"),
        PubsubItem.parsed.label("parsed"),
    ]
    if with_payload:
        columns.append(PubsubItem.data.label("payload"))
    return columns


def build_page_query(
    dialect_name: str,
    request: SearchRequest,
    order: Sequence[OrderKey] | None = None,
    extra_columns: Sequence[Any] = (),
) -> Select:
    """Build the query of one page of ``request``, in ``order`` (default: the request's).

    The columns have the names of the :class:`SearchHit` fields, ``payload``
    only when ``request.with_payload`` is set, followed by ``extra_columns``.
    """
    builder = _QueryBuilder(dialect_name)
    if order is None:
        order = request.order
    with_score = any(key.name == RELEVANCE for key in order)
    if with_score and request.fts is None:
        raise AssertionError("relevance order without full-text search passed check_request()")
    page, score, row_id = builder.matches(
        request, [*hit_columns(request.with_payload), *extra_columns], with_score
    )
    page = page.join(Profile, Profile.id == PubsubNode.profile_id)
    page = page.order_by(*builder.order(order, score, row_id))
    return page.offset(request.offset).limit(request.limit)


def build_count_query(dialect_name: str, request: SearchRequest, cap: int | None) -> Select:
    """Build the query counting the matches of ``request``, stopping at ``cap`` (None: all)."""
    builder = _QueryBuilder(dialect_name)
    if cap is None:
        query, _, _ = builder.matches(request, [func.count()])
        return query
    query, _, _ = builder.matches(request, [literal(1).label("match")])
    return select(func.count()).select_from(query.limit(cap).subquery("capped"))
