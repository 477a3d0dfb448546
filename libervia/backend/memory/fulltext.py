"""Full-text indexing of cached pubsub items.

The index covers the text of an item's payload, never its markup:
:func:`item_text` extracts it when an item is stored, into the ``text`` column
of ``pubsub_items``. Each engine indexes it in its own way:

SQLite
    An FTS5 table, ``pubsub_items_fts``, with external content: it stores
    only the index and reads the text from ``pubsub_items``. Triggers on
    ``pubsub_items`` keep it exact on insert, update and delete, including
    rows deleted by a foreign key cascade. The ``unicode61`` tokenizer removes
    diacritics and folds case.
PostgreSQL
    A generated ``tsvector`` column, ``text_vector``, with a GIN index. It is
    built from ``search_text``, which the backend fills with
    :func:`search_text`, and not from ``text``. See :func:`search_text` for
    the reason.

A batch migration on SQLite recreates ``pubsub_items`` and so drops the
triggers: such a migration must call :func:`create_sqlite_fts_triggers`
afterwards. The FTS5 table survives the rebuild because the copy keeps the
``id`` of every row.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import unicodedata
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Protocol
from xml.parsers import expat

log = logging.getLogger(__name__)

#: FTS5 table of the SQLite index. Its shadow tables share this prefix.
SQLITE_FTS_TABLE = "pubsub_items_fts"
#: Generated ``tsvector`` column of the PostgreSQL index, not in the ORM mapping.
PG_VECTOR_COLUMN = "text_vector"
#: GIN index on :data:`PG_VECTOR_COLUMN`.
PG_VECTOR_INDEX = "ix_pubsub_items_text_vector"
#: Indexes of the search on parsed data, created by a migration and not in
#: the ORM mapping, because they index expressions of one engine.
UNMAPPED_SEARCH_INDEXES = ("ix_pubsub_items_parsed_published", "ix_pubsub_items_parsed")
#: Text search configuration of the PostgreSQL index. "simple" only lowercases
#: and does no stemming, which is closest to what the SQLite index does.
PG_TS_CONFIG = "simple"

SQLITE_FTS_TRIGGERS = (
    "pubsub_items_fts_insert",
    "pubsub_items_fts_update",
    "pubsub_items_fts_delete",
)

# FTS5 "external content" pattern: an index entry is removed with the
# 'delete' command, which must receive the values that were indexed (the old
# row), then the new values are inserted.
SQLITE_FTS_DDL = (
    f"CREATE VIRTUAL TABLE {SQLITE_FTS_TABLE} USING fts5("
    f"text, content='pubsub_items', content_rowid='id', "
    f"tokenize=\"unicode61 remove_diacritics 2\")"
)
SQLITE_FTS_TRIGGERS_DDL = (
    f"CREATE TRIGGER pubsub_items_fts_insert AFTER INSERT ON pubsub_items BEGIN "
    f"INSERT INTO {SQLITE_FTS_TABLE}(rowid, text) VALUES (new.id, new.text); "
    f"END",
    # An upsert that stores the same text again changes nothing in the index.
    f"CREATE TRIGGER pubsub_items_fts_update AFTER UPDATE OF id, text ON pubsub_items "
    f"WHEN old.id IS NOT new.id OR old.text IS NOT new.text BEGIN "
    f"INSERT INTO {SQLITE_FTS_TABLE}({SQLITE_FTS_TABLE}, rowid, text) "
    f"VALUES ('delete', old.id, old.text); "
    f"INSERT INTO {SQLITE_FTS_TABLE}(rowid, text) VALUES (new.id, new.text); "
    f"END",
    f"CREATE TRIGGER pubsub_items_fts_delete AFTER DELETE ON pubsub_items BEGIN "
    f"INSERT INTO {SQLITE_FTS_TABLE}({SQLITE_FTS_TABLE}, rowid, text) "
    f"VALUES ('delete', old.id, old.text); "
    f"END",
)

#: Maximum size in UTF-8 bytes of :func:`search_text`. PostgreSQL rejects a
#: ``tsvector`` above 1 MiB, and a vector can take about 3 times the size of
#: its text (with many distinct short words), so longer text is cut here.
PG_MAX_SEARCH_TEXT_BYTES = 300_000

ATOM_NS = "http://www.w3.org/2005/Atom"
XHTML_NS = "http://www.w3.org/1999/xhtml"
# XHTML elements that do not separate words: "<b>bold</b>er" is one word.
XHTML_INLINE = frozenset(
    {
        "a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "del", "dfn", "em",
        "i", "ins", "kbd", "mark", "q", "s", "samp", "small", "span", "strong",
        "sub", "sup", "time", "u", "var",
    }
)  # fmt: skip

# Characters of a word for the PostgreSQL index: letters and numbers, as in
# the default "unicode61" tokenizer of FTS5 (Unicode categories L* and N*).
WORD_PATTERN = re.compile(r"[^\W_]+")


class ExecutesSQL(Protocol):
    """Alembic ``op`` or anything else with an ``execute(sql)`` method."""

    def execute(self, sql: str) -> object:
        """Execute one SQL statement."""


class _UnsafeXML(ValueError):
    """Item XML with a document type declaration, which items never contain."""


class _HTMLText(HTMLParser):
    """Collector of the text of an HTML fragment, without scripts and styles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip_depth += 1
        self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip_depth:
            self._skip_depth -= 1
        self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)


def html_text(html: str) -> str:
    """Return the text of an HTML fragment (scripts and styles excluded)."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


class _ItemTextCollector:
    """Expat handlers that collect the text nodes of an item."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        # Text of the current Atom element with type="html", or None.
        self._html: list[str] | None = None

    def start_element(self, name: str, attributes: dict[str, str]) -> None:
        namespace, _, local_name = name.rpartition(" ")
        if namespace == XHTML_NS and local_name in XHTML_INLINE:
            return
        self.parts.append(" ")
        # Atom text constructs with type="html" hold escaped HTML, whose tags
        # would otherwise reach the index as words.
        if namespace == ATOM_NS and attributes.get("type") == "html":
            self._html = []

    def end_element(self, name: str) -> None:
        namespace, _, local_name = name.rpartition(" ")
        if namespace == XHTML_NS and local_name in XHTML_INLINE:
            return
        if self._html is not None:
            self.parts.append(html_text("".join(self._html)))
            self._html = None
        self.parts.append(" ")

    def character_data(self, data: str) -> None:
        if self._html is not None:
            self._html.append(data)
        else:
            self.parts.append(data)


def _reject_doctype(*args: object) -> None:
    raise _UnsafeXML("document type declaration")


def item_text(xml: str) -> str:
    """Extract the text of an item: every text node, no tag or attribute, spaces collapsed.

    Elements separate words, except inline XHTML elements (``<b>``,
    ``<a>``...). The escaped HTML of Atom elements with ``type="html"`` is
    reduced to its text too. Returns "" for malformed XML and for XML with a
    document type declaration (entities could expand it a lot), never raises.
    """
    collector = _ItemTextCollector()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartElementHandler = collector.start_element
    parser.EndElementHandler = collector.end_element
    parser.CharacterDataHandler = collector.character_data
    parser.StartDoctypeDeclHandler = _reject_doctype
    parser.buffer_text = True
    try:
        parser.Parse(xml, True)
    except (expat.ExpatError, _UnsafeXML, ValueError, TypeError) as exc:
        log.debug("Item not indexed, its XML cannot be parsed: %s", exc)
        return ""
    return " ".join("".join(collector.parts).split())


@functools.cache
def _nonspacing_marks() -> dict[int, None]:
    """Return a str.translate() table deleting every nonspacing mark (Unicode category Mn)."""
    return {
        code: None
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) == "Mn"
    }


def search_words(text: str) -> list[str]:
    """Split ``text`` into lowercase words without diacritics.

    This mirrors the FTS5 tokenizer "unicode61 remove_diacritics 2" of the
    SQLite index: canonical decomposition then removal of the nonspacing
    marks (so "é" becomes "e" but "ø" stays, as in FTS5), lowercase, and
    words made of letters and digits. Both engines then split text into the
    same words for the common cases.
    """
    if text.isascii():
        folded = text.lower()
    else:
        folded = unicodedata.normalize("NFD", text.lower()).translate(_nonspacing_marks())
    return WORD_PATTERN.findall(folded)


def search_text(text: str) -> str:
    """Return the words of ``text`` as :func:`search_words` finds them, for the PostgreSQL index.

    PostgreSQL removes diacritics only with the ``unaccent`` extension, which
    needs CREATE EXTENSION (a privilege a deployment may not grant) and is not
    IMMUTABLE, so a generated column cannot call it. Folding in Python instead
    needs no extension and splits words as the SQLite index does. The result
    is cut to :data:`PG_MAX_SEARCH_TEXT_BYTES`.
    """
    folded = " ".join(search_words(text))
    encoded = folded.encode()
    if len(encoded) <= PG_MAX_SEARCH_TEXT_BYTES:
        return folded
    # NOTE: only the beginning of a very long item is searchable on
    # PostgreSQL. SQLite indexes the whole text.
    cut = encoded[:PG_MAX_SEARCH_TEXT_BYTES].decode(errors="ignore")
    return cut.rpartition(" ")[0]


def fts5_query(words: str) -> str | None:
    """Build an FTS5 query matching every word of the user text ``words``.

    Each word becomes an FTS5 string (double quotes doubled inside), so
    operators and punctuation typed by the user (``AND``, ``NEAR``, ``*``,
    ``"``, ``(``) are searched as text and cannot cause a syntax error. A word
    of several tokens (``pubsub-cache``, ``v1.2``) must match them in that
    order. Words without letters or digits are left out. Returns None when
    no word remains.
    """
    strings = [
        '"' + word.replace('"', '""') + '"' for word in words.split() if search_words(word)
    ]
    return " ".join(strings) or None


def pg_query_words(words: str) -> list[str]:
    """Return the phrases of the user text ``words`` for PostgreSQL's phraseto_tsquery().

    One phrase per word of ``words`` that contains letters or digits, split
    into tokens as :func:`fts5_query` does on SQLite.
    """
    phrases = []
    for word in words.split():
        tokens = search_words(word)
        if tokens:
            phrases.append(" ".join(tokens))
    return phrases


def create_sqlite_fts_triggers(target: ExecutesSQL) -> None:
    """Create the triggers that keep the SQLite full-text index up to date.

    ``target`` is Alembic's ``op`` or a connection whose ``execute()``
    accepts SQL text (``Connection.exec_driver_sql`` is used when present).
    A batch migration that recreates ``pubsub_items`` must call this after
    the table is rebuilt, because dropping the old table dropped its
    triggers.
    """
    execute = getattr(target, "exec_driver_sql", target.execute)
    for statement in SQLITE_FTS_TRIGGERS_DDL:
        execute(statement)


def drop_sqlite_fts_triggers(target: ExecutesSQL) -> None:
    """Drop the triggers of the SQLite full-text index, when they exist."""
    execute = getattr(target, "exec_driver_sql", target.execute)
    for name in SQLITE_FTS_TRIGGERS:
        execute(f"DROP TRIGGER IF EXISTS {name}")


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Tell Alembic whether to reflect a database object: False for the unmapped indexes.

    The FTS5 table and its shadow tables (SQLite), the ``tsvector`` column
    and its index (PostgreSQL), and :data:`UNMAPPED_SEARCH_INDEXES` are
    created by the migrations but are not in the ORM mapping, so
    autogenerate and schema comparisons must skip them. Use it as the
    ``include_name`` option of Alembic's context.
    """
    if name is None:
        return True
    if type_ == "table":
        return not name.startswith(SQLITE_FTS_TABLE)
    if type_ == "column":
        return not (name == PG_VECTOR_COLUMN and parent_names.get("table_name") == "pubsub_items")
    if type_ == "index":
        return name not in (PG_VECTOR_INDEX, *UNMAPPED_SEARCH_INDEXES)
    return True


def include_object(
    object_: object, name: str | None, type_: str, reflected: bool, compare_to: object | None
) -> bool:
    """Tell Alembic whether to compare a schema object: False for the unmapped indexes.

    The same filter as :func:`include_name`, as Alembic's ``include_object``
    option, for callers that compare already reflected objects.
    """
    table = getattr(object_, "table", None)
    parent_names = {"table_name": getattr(table, "name", None)}
    return include_name(name, type_, parent_names)
