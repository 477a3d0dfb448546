"""Tests of the search of cached pubsub items: storage and the ps_cache_search bridge method.

Every test runs on SQLite and on PostgreSQL, and the expected results are
the same for both engines. Most tests read one data set, loaded once per
engine into a database shared by the module (``cache``). Its parsed data
looks like what the XEP-0277 parser produces (dates as POSIX seconds, tags
as a list of strings), with extra keys containing dots, quotes, backslashes
and accents. Tests that need a database of their own use ``storage``.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from xml.sax.saxutils import escape

import pytest
import pytest_twisted
from sqlalchemy import update

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core.exceptions import InvalidValue, ProfileNotFound
from libervia.backend.core.plugin_manager import discover, load_order
from libervia.backend.memory import search
from libervia.backend.memory.search import like_to_glob
from libervia.backend.memory.sqla import Storage
from libervia.backend.memory.sqla_mapping import PubsubItem
from libervia.backend.tools.aio import as_deferred
from libervia.backend.plugins.plugin_pubsub_cache_search import PubsubCacheSearch

ATOM = "http://www.w3.org/2005/Atom"
SERVICE = "pubsub.example.org"
PEP_SERVICE = "alice@example.org"
BLOG = "urn:xmpp:microblog:0"
COMMENTS = "urn:xmpp:microblog:0:comments/post-1"
#: 2024-05-01T10:00:00+00:00, the reference publication date of the data set.
T0 = 1714557600.0
DAY = 86400.0

POST_1 = {
    "title": "Café society",
    "content": "Un café à Noël with the pubsub-cache plugin",
    "published": T0,
    "updated": T0 + 3600,
    "author": "Alice",
    "tags": ["xmpp", "Café"],
    "rating": 5,
    "score": 4.5,
    "draft": False,
    "links": [
        {"rel": "alternate", "href": "https://example.org/1"},
        {"rel": "enclosure", "href": "https://example.org/1.ogg", "size": 1000},
    ],
    "a.b": "dotted",
    "it's": "quoted",
    'say "hi"': "double",
    "back\\slash": "slash",
    "é": "accented",
    "0": "zero key",
    "x.y": {"z": 1},
    'q"k': {"inner": [1, 2]},
    "nothing": None,
}
POST_2 = {
    "title": "Apple harvest",
    "content": "apple apple apple banana, release v1.2 is out",
    "published": T0 + DAY,
    "updated": T0 + DAY,
    "author": "Bob Builder",
    "tags": ["python", "XMPP"],
    "rating": 10,
    "score": 4.5,
    "draft": True,
    "links": [{"rel": "alternate", "href": "https://example.org/2"}],
    "a.b": "other",
}
POST_3 = {
    "title": "Zebra",
    "content": "it's NEAR AND far (really) *stars*",
    "published": T0 - 30 * DAY,
    "updated": T0 - 30 * DAY,
    "author": "alice",
    "tags": ["misc"],
    "rating": 9,
    "score": "high",
    "draft": False,
}
POST_4 = {
    "title": "éclair",
    "content": "apple pie recipe",
    "published": T0 + 2 * DAY,
    "updated": T0 + 2 * DAY,
    "author": "Émile",
    # Not a list: list operators never match it.
    "tags": "not a list",
    "rating": 9.5,
    "note": "50% off? [sic] *wow*",
}
POST_5 = {"content": "banana bread"}
COMMENT_1 = {
    "title": "Re: Café society",
    "content": "nice apple",
    "published": T0 + 3600,
    "updated": T0 + 3600,
    "author": "Carol",
    "tags": [],
}
PEP_1 = {
    "title": "PEP note",
    "content": "apple notes",
    "published": T0 + 600,
    "updated": T0 + 600,
    "author": "Alice",
    "tags": ["xmpp"],
}
BOB_1 = {
    "title": "Bob's apple",
    "content": "apple",
    "published": T0,
    "updated": T0,
    "author": "Bob",
    "tags": ["xmpp"],
    "rating": 5,
}

#: Alice's items in the order they are cached (created), which is also row id order.
ALICE_ITEMS = ["post-1", "post-2", "post-3", "post-4", "post-5", "c-1", "pep-1", "tune-1"]

# Words typed by users that are query syntax or punctuation for FTS5 or
# PostgreSQL's tsquery, or text without any word.
HOSTILE_INPUTS = [
    "pubsub-cache", "v1.2", "it's", '"', '"unbalanced', "*", "word*", "NEAR", "NEAR(a b)",
    "AND", "OR", "NOT", "a AND", "(", ")", "text:word", "-", "^start", "a & b | !c", "'",
    ":*", "\\", "%", "_", "", "   ", "café OR 1=1; --", "'; DROP TABLE pubsub_items; --",
]


def entry_xml(item_id: str, data: dict[str, Any]) -> str:
    """Return the XML of an ``<item/>`` with an Atom entry holding the title and content."""
    parts = [f'<item id="{item_id}"><entry xmlns="{ATOM}">']
    for key in ("title", "content"):
        if key in data:
            parts.append(f"<{key}>{escape(data[key])}</{key}>")
    parts.append("</entry></item>")
    return "".join(parts)


@dataclass
class Cache:
    """Storage holding the data set, and the ids of its profiles."""

    storage: Storage
    alice_id: int
    bob_id: int

    @property
    def engine(self) -> str:
        """Name of the database engine: sqlite or postgresql."""
        return self.storage.engine.dialect.name

    async def search(self, *, everyone: bool = False, **kwargs: Any) -> search.SearchResult:
        """Search alice's items (every profile's with ``everyone``)."""
        if not everyone:
            kwargs.setdefault("profile_ids", [self.alice_id])
        return await self.storage.search_pubsub_items(**kwargs)

    async def ids(self, **kwargs: Any) -> list[str]:
        """Return the item ids found, in the order of the result."""
        return [hit.item_id for hit in (await self.search(**kwargs)).hits]

    async def id_set(self, **kwargs: Any) -> set[str]:
        """Return the set of item ids found."""
        return set(await self.ids(**kwargs))

    async def where(self, path: Any, operator: str, value: Any) -> list[str]:
        """Return the ids of alice's items matching one filter, by item id."""
        return await self.ids(filters=[(path, operator, value)], order_by=[("item_id", "asc")])


async def load_data_set(storage: Storage) -> Cache:
    """Fill ``storage`` with the data set of the module."""
    alice = await storage.create_profile("alice", "alice@example.org", "pw")
    bob = await storage.create_profile("bob", "bob@example.org", "pw")
    blog = await storage.set_pubsub_node(alice.id, SERVICE, BLOG, type_="blog")
    comments = await storage.set_pubsub_node(
        alice.id, SERVICE, COMMENTS, type_="blog", subtype="comment"
    )
    pep = await storage.set_pubsub_node(alice.id, PEP_SERVICE, BLOG, type_="blog")
    tunes = await storage.set_pubsub_node(alice.id, SERVICE, "tunes", type_="tune")
    bob_blog = await storage.set_pubsub_node(bob.id, SERVICE, BLOG, type_="blog")

    posts = [
        ("post-1", POST_1), ("post-2", POST_2), ("post-3", POST_3), ("post-4", POST_4),
        ("post-5", POST_5),
    ]
    await storage.cache_pubsub_items(
        blog.id, [(item_id, entry_xml(item_id, data), data, None) for item_id, data in posts]
    )
    await storage.cache_pubsub_items(
        comments.id, [("c-1", entry_xml("c-1", COMMENT_1), COMMENT_1, "carol@example.org")]
    )
    await storage.cache_pubsub_items(pep.id, [("pep-1", entry_xml("pep-1", PEP_1), PEP_1, None)])
    tune_xml = (
        '<item id="tune-1"><tune xmlns="http://jabber.org/protocol/tune">'
        "<title>Banana Boat Song</title></tune></item>"
    )
    await storage.cache_pubsub_items(tunes.id, [("tune-1", tune_xml, None, None)])
    await storage.cache_pubsub_items(
        bob_blog.id, [("bob-1", entry_xml("bob-1", BOB_1), BOB_1, None)]
    )
    # An edit: post-3 keeps its creation time and becomes the last updated item.
    await storage.cache_pubsub_items(
        blog.id, [("post-3", entry_xml("post-3", POST_3), POST_3, None)]
    )
    return Cache(storage, alice.id, bob.id)


@pytest_twisted.async_yield_fixture(scope="module")
async def cache(module_db_url: str) -> AsyncIterator[Cache]:
    """Yield the storage of the module's data set, once per engine."""
    storage = Storage(module_db_url)
    await storage.initialise()
    try:
        yield await load_data_set(storage)
    finally:
        await storage.close()


# --- node and item filters ---------------------------------------------------------


class NodeFilterTests:
    @pytest_twisted.ensureDeferred
    async def test_every_profile(self, cache: Cache) -> None:
        result = await cache.search(everyone=True)
        assert result.total == 9
        assert {hit.item_id for hit in result.hits} == {*ALICE_ITEMS, "bob-1"}

    @pytest_twisted.ensureDeferred
    async def test_one_profile(self, cache: Cache) -> None:
        result = await cache.search(profile_ids=[cache.bob_id])
        assert [(hit.profile, hit.item_id) for hit in result.hits] == [("bob", "bob-1")]

    @pytest_twisted.ensureDeferred
    async def test_service(self, cache: Cache) -> None:
        assert await cache.ids(services=[PEP_SERVICE]) == ["pep-1"]

    @pytest_twisted.ensureDeferred
    async def test_node(self, cache: Cache) -> None:
        assert await cache.ids(nodes=["tunes"]) == ["tune-1"]

    @pytest_twisted.ensureDeferred
    async def test_type(self, cache: Cache) -> None:
        assert await cache.ids(types=["tune"]) == ["tune-1"]

    @pytest_twisted.ensureDeferred
    async def test_subtype(self, cache: Cache) -> None:
        assert await cache.ids(subtypes=["comment"]) == ["c-1"]

    @pytest_twisted.ensureDeferred
    async def test_item_ids(self, cache: Cache) -> None:
        assert await cache.id_set(item_ids=["post-2", "c-1", "unknown"]) == {"post-2", "c-1"}

    @pytest_twisted.ensureDeferred
    async def test_empty_list_selects_nothing(self, cache: Cache) -> None:
        result = await cache.search(services=[])
        assert result.hits == []
        assert result.total == 0

    @pytest_twisted.ensureDeferred
    async def test_filters_combined(self, cache: Cache) -> None:
        ids = await cache.id_set(services=[SERVICE], nodes=[BLOG], everyone=True)
        assert ids == {"post-1", "post-2", "post-3", "post-4", "post-5", "bob-1"}


# --- operators ---------------------------------------------------------------------


class EqualityTests:
    @pytest_twisted.ensureDeferred
    async def test_string(self, cache: Cache) -> None:
        assert await cache.where(["title"], "eq", "Zebra") == ["post-3"]

    @pytest_twisted.ensureDeferred
    async def test_string_is_case_sensitive(self, cache: Cache) -> None:
        assert await cache.where(["author"], "eq", "alice") == ["post-3"]

    @pytest_twisted.ensureDeferred
    async def test_integer_equals_float(self, cache: Cache) -> None:
        assert await cache.where(["rating"], "eq", 5) == ["post-1"]
        assert await cache.where(["rating"], "eq", 5.0) == ["post-1"]

    @pytest_twisted.ensureDeferred
    async def test_number_never_equals_string(self, cache: Cache) -> None:
        assert await cache.where(["rating"], "eq", "5") == []

    @pytest_twisted.ensureDeferred
    async def test_boolean(self, cache: Cache) -> None:
        assert await cache.where(["draft"], "eq", True) == ["post-2"]
        assert await cache.where(["draft"], "eq", False) == ["post-1", "post-3"]

    @pytest_twisted.ensureDeferred
    async def test_boolean_never_equals_number(self, cache: Cache) -> None:
        assert await cache.where(["draft"], "eq", 0) == []
        assert await cache.where(["draft"], "eq", 1) == []

    @pytest_twisted.ensureDeferred
    async def test_ne_includes_missing_field(self, cache: Cache) -> None:
        found = await cache.where(["draft"], "ne", True)
        assert found == ["c-1", "pep-1", "post-1", "post-3", "post-4", "post-5", "tune-1"]


class ComparisonTests:
    @pytest_twisted.ensureDeferred
    async def test_lt_is_strict(self, cache: Cache) -> None:
        assert await cache.where(["rating"], "lt", 9) == ["post-1"]

    @pytest_twisted.ensureDeferred
    async def test_le_includes_value(self, cache: Cache) -> None:
        assert await cache.where(["rating"], "le", 9) == ["post-1", "post-3"]

    @pytest_twisted.ensureDeferred
    async def test_gt_is_strict(self, cache: Cache) -> None:
        assert await cache.where(["rating"], "gt", 9.5) == ["post-2"]

    @pytest_twisted.ensureDeferred
    async def test_ge_includes_value(self, cache: Cache) -> None:
        assert await cache.where(["rating"], "ge", 9.5) == ["post-2", "post-4"]

    @pytest_twisted.ensureDeferred
    async def test_numbers_compare_as_numbers(self, cache: Cache) -> None:
        # As strings, "10" would sort before "9".
        assert await cache.where(["rating"], "ge", 9) == ["post-2", "post-3", "post-4"]

    @pytest_twisted.ensureDeferred
    async def test_dates_as_timestamps(self, cache: Cache) -> None:
        assert await cache.where(["published"], "gt", T0) == ["c-1", "pep-1", "post-2", "post-4"]
        assert await cache.where(["published"], "ge", T0) == [
            "c-1", "pep-1", "post-1", "post-2", "post-4",
        ]

    @pytest_twisted.ensureDeferred
    async def test_strings_in_code_point_order(self, cache: Cache) -> None:
        # Every capital letter sorts before "a", and "é" after "z".
        assert await cache.where(["title"], "lt", "a") == [
            "c-1", "pep-1", "post-1", "post-2", "post-3",
        ]
        assert await cache.where(["title"], "gt", "z") == ["post-4"]

    @pytest_twisted.ensureDeferred
    async def test_type_of_value_selects_values(self, cache: Cache) -> None:
        # score is 4.5 in two items and "high" in one.
        assert await cache.where(["score"], "gt", 1) == ["post-1", "post-2"]
        assert await cache.where(["score"], "gt", "a") == ["post-3"]

    @pytest_twisted.ensureDeferred
    async def test_between_includes_bounds(self, cache: Cache) -> None:
        assert await cache.where(["rating"], "between", [9, 9.5]) == ["post-3", "post-4"]
        assert await cache.where(["published"], "between", [T0, T0 + 3600]) == [
            "c-1", "pep-1", "post-1",
        ]

    @pytest_twisted.ensureDeferred
    async def test_between_strings(self, cache: Cache) -> None:
        assert await cache.where(["title"], "between", ["A", "Zebra"]) == [
            "c-1", "pep-1", "post-1", "post-2", "post-3",
        ]


class ListOperatorTests:
    @pytest_twisted.ensureDeferred
    async def test_in(self, cache: Cache) -> None:
        assert await cache.where(["author"], "in", ["Alice", "Carol", 5]) == [
            "c-1", "pep-1", "post-1",
        ]

    @pytest_twisted.ensureDeferred
    async def test_in_compares_types(self, cache: Cache) -> None:
        assert await cache.where(["rating"], "in", [5, 9.5, "10"]) == ["post-1", "post-4"]

    @pytest_twisted.ensureDeferred
    async def test_not_in_includes_missing_field(self, cache: Cache) -> None:
        assert await cache.where(["author"], "not_in", ["Alice"]) == [
            "c-1", "post-2", "post-3", "post-4", "post-5", "tune-1",
        ]

    @pytest_twisted.ensureDeferred
    async def test_empty_lists(self, cache: Cache) -> None:
        assert await cache.where(["author"], "in", []) == []
        assert await cache.where(["author"], "not_in", []) == sorted(ALICE_ITEMS)
        assert await cache.where(["tags"], "overlap", []) == []

    @pytest_twisted.ensureDeferred
    async def test_overlap_is_case_sensitive(self, cache: Cache) -> None:
        assert await cache.where(["tags"], "overlap", ["xmpp"]) == ["pep-1", "post-1"]

    @pytest_twisted.ensureDeferred
    async def test_ioverlap_ignores_case(self, cache: Cache) -> None:
        assert await cache.where(["tags"], "ioverlap", ["xmpp"]) == ["pep-1", "post-1", "post-2"]

    @pytest_twisted.ensureDeferred
    async def test_ioverlap_folds_accented_letters(self, cache: Cache) -> None:
        assert await cache.where(["tags"], "ioverlap", ["CAFÉ"]) == ["post-1"]

    @pytest_twisted.ensureDeferred
    async def test_overlap_several_types(self, cache: Cache) -> None:
        assert await cache.where(["tags"], "overlap", [1, "python", True]) == ["post-2"]

    @pytest_twisted.ensureDeferred
    async def test_overlap_needs_a_list(self, cache: Cache) -> None:
        # post-4's tags is a string, and rating a number.
        assert await cache.where(["tags"], "overlap", ["not a list"]) == []
        assert await cache.where(["rating"], "overlap", [5]) == []

    @pytest_twisted.ensureDeferred
    async def test_disjoint(self, cache: Cache) -> None:
        assert await cache.where(["tags"], "disjoint", ["xmpp"]) == [
            "c-1", "post-2", "post-3", "post-4", "post-5", "tune-1",
        ]

    @pytest_twisted.ensureDeferred
    async def test_idisjoint(self, cache: Cache) -> None:
        assert await cache.where(["tags"], "idisjoint", ["XMPP", "misc"]) == [
            "c-1", "post-4", "post-5", "tune-1",
        ]


class PatternTests:
    @pytest_twisted.ensureDeferred
    async def test_like_percent(self, cache: Cache) -> None:
        assert await cache.where(["title"], "like", "%Café%") == ["c-1", "post-1"]

    @pytest_twisted.ensureDeferred
    async def test_like_is_case_sensitive(self, cache: Cache) -> None:
        # SQLite's own LIKE would ignore the case of "C".
        assert await cache.where(["title"], "like", "%café%") == []
        assert await cache.where(["title"], "like", "ÉCLAIR") == []

    @pytest_twisted.ensureDeferred
    async def test_like_underscore(self, cache: Cache) -> None:
        assert await cache.where(["title"], "like", "_ebra") == ["post-3"]
        assert await cache.where(["title"], "like", "_clair") == ["post-4"]

    @pytest_twisted.ensureDeferred
    async def test_like_whole_value(self, cache: Cache) -> None:
        assert await cache.where(["title"], "like", "Zebr") == []
        assert await cache.where(["title"], "like", "%") == [
            "c-1", "pep-1", "post-1", "post-2", "post-3", "post-4",
        ]

    @pytest_twisted.ensureDeferred
    async def test_like_escapes(self, cache: Cache) -> None:
        assert await cache.where(["note"], "like", "50\\%%") == ["post-4"]
        assert await cache.where(["note"], "like", "%\\_%") == []
        assert await cache.where(["note"], "like", "50_ off%") == ["post-4"]

    @pytest_twisted.ensureDeferred
    async def test_like_glob_characters_are_literal(self, cache: Cache) -> None:
        assert await cache.where(["note"], "like", "%off? [sic]%") == ["post-4"]
        assert await cache.where(["note"], "like", "%*wow*") == ["post-4"]
        assert await cache.where(["note"], "like", "%off?x%") == []
        assert await cache.where(["note"], "like", "*") == []

    @pytest_twisted.ensureDeferred
    async def test_ilike(self, cache: Cache) -> None:
        assert await cache.where(["title"], "ilike", "%CAFÉ%") == ["c-1", "post-1"]
        assert await cache.where(["title"], "ilike", "ÉCLAIR") == ["post-4"]

    @pytest_twisted.ensureDeferred
    async def test_not_like_includes_missing_field(self, cache: Cache) -> None:
        assert await cache.where(["title"], "not_like", "%Café%") == [
            "pep-1", "post-2", "post-3", "post-4", "post-5", "tune-1",
        ]

    @pytest_twisted.ensureDeferred
    async def test_not_ilike(self, cache: Cache) -> None:
        assert await cache.where(["title"], "not_ilike", "%café%") == [
            "pep-1", "post-2", "post-3", "post-4", "post-5", "tune-1",
        ]

    @pytest_twisted.ensureDeferred
    async def test_like_ignores_other_types(self, cache: Cache) -> None:
        assert await cache.where(["rating"], "like", "%") == []

    def test_glob_translation(self) -> None:
        assert like_to_glob("a%b_c") == "a*b?c"
        assert like_to_glob("*?[]") == "[*][?][[]]"
        assert like_to_glob("\\%\\_\\\\\\*") == "%_\\[*]"


class ExistsTests:
    @pytest_twisted.ensureDeferred
    async def test_json_null_exists(self, cache: Cache) -> None:
        assert await cache.where(["nothing"], "exists", True) == ["post-1"]

    @pytest_twisted.ensureDeferred
    async def test_missing(self, cache: Cache) -> None:
        assert await cache.where(["title"], "exists", False) == ["post-5", "tune-1"]

    @pytest_twisted.ensureDeferred
    async def test_list_index(self, cache: Cache) -> None:
        assert await cache.where(["links", 1], "exists", True) == ["post-1"]
        assert await cache.where(["tags", 5], "exists", True) == []


class PathTests:
    @pytest_twisted.ensureDeferred
    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("a.b", "dotted"),
            ("it's", "quoted"),
            ('say "hi"', "double"),
            ("back\\slash", "slash"),
            ("é", "accented"),
            ("0", "zero key"),
        ],
    )
    async def test_key(self, cache: Cache, key: str, value: str) -> None:
        assert await cache.where([key], "eq", value) == ["post-1"]

    @pytest_twisted.ensureDeferred
    async def test_nested_keys(self, cache: Cache) -> None:
        assert await cache.where(["x.y", "z"], "eq", 1) == ["post-1"]

    @pytest_twisted.ensureDeferred
    async def test_after_quoted_key(self, cache: Cache) -> None:
        # A key with a double quote is read with json_each() on SQLite,
        # then the path goes on.
        assert await cache.where(['q"k', "inner", 1], "eq", 2) == ["post-1"]
        assert await cache.where(['q"k', "inner"], "overlap", [1]) == ["post-1"]
        assert await cache.where(['say "hi"', "more"], "exists", True) == []

    @pytest_twisted.ensureDeferred
    async def test_list_index(self, cache: Cache) -> None:
        assert await cache.where(["links", 0, "href"], "eq", "https://example.org/2") == [
            "post-2"
        ]

    @pytest_twisted.ensureDeferred
    async def test_negative_index(self, cache: Cache) -> None:
        assert await cache.where(["links", -1, "rel"], "eq", "enclosure") == ["post-1"]
        assert await cache.where(["tags", -1], "eq", "XMPP") == ["post-2"]

    @pytest_twisted.ensureDeferred
    async def test_index_and_key_differ(self, cache: Cache) -> None:
        # A string key never reads a list, nor an index an object.
        assert await cache.where(["links", "0"], "exists", True) == []
        assert await cache.where([0], "exists", True) == []

    @pytest_twisted.ensureDeferred
    async def test_nested_number(self, cache: Cache) -> None:
        assert await cache.where(["links", 1, "size"], "ge", 1000) == ["post-1"]


class InvalidFilterTests:
    @pytest_twisted.ensureDeferred
    @pytest.mark.parametrize(
        ("path", "operator", "value", "message"),
        [
            (["title"], "contains", "x", "unknown operator 'contains'"),
            ([], "eq", "x", "non-empty list of keys"),
            ("title", "eq", "x", "non-empty list of keys"),
            ([True], "eq", "x", "invalid element True"),
            ([1.5], "eq", "x", "invalid element 1.5"),
            (["a\x00b"], "eq", "x", "NUL character"),
            ([2**40], "eq", "x", "invalid list index"),
            (["rating"], "lt", True, "use a string or a number"),
            (["title"], "eq", None, "use exists with false"),
            (["title"], "eq", ["a"], "use a string, a number or a boolean"),
            (["rating"], "eq", math.nan, "use a finite number"),
            (["rating"], "between", [1], "list of two bounds"),
            (["rating"], "between", [1, "a"], "two numbers or two strings"),
            (["rating"], "between", [5, 1], "swap them"),
            (["tags"], "in", "xmpp", "use a list of values"),
            (["tags"], "ioverlap", [1], "use a string"),
            (["title"], "like", 5, "LIKE pattern"),
            (["title"], "like", "abc\\", "ends with the escape character"),
            (["title"], "exists", "yes", "use true"),
            (["title"], "eq", "\ud800", "lone surrogate"),
        ],
    )
    async def test_rejected(
        self, cache: Cache, path: Any, operator: str, value: Any, message: str
    ) -> None:
        with pytest.raises(InvalidValue, match=message.replace("(", r"\(").replace("[", r"\[")):
            await cache.search(filters=[(path, operator, value)])

    @pytest_twisted.ensureDeferred
    async def test_filter_shape(self, cache: Cache) -> None:
        with pytest.raises(InvalidValue, match=r"use \[path, operator, value\]"):
            await cache.search(filters=[(["title"], "eq")])

    @pytest_twisted.ensureDeferred
    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ({"order_by": [("size", "asc")]}, "unknown order key 'size'"),
            ({"order_by": [("created", "up")]}, "invalid order direction 'up'"),
            ({"order_by": ["created"]}, "use \\[key, direction\\]"),
            ({"order_by": [("relevance", None)]}, "needs a full-text search"),
            ({"limit": search.MAX_LIMIT + 1}, "above the maximum"),
            ({"limit": -1}, "limit must be an integer of 0 or more"),
            ({"offset": -1}, "offset must be an integer of 0 or more"),
            ({"fts": "x", "fts_mode": "regex"}, "unknown full-text mode 'regex'"),
            ({"nodes": "blog"}, "nodes must be a list"),
        ],
    )
    async def test_other_arguments(
        self, cache: Cache, arguments: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(InvalidValue, match=message):
            await cache.search(**arguments)


# --- order ------------------------------------------------------------------------


class OrderTests:
    @pytest_twisted.ensureDeferred
    async def test_default_newest_created_first(self, cache: Cache) -> None:
        assert await cache.ids() == list(reversed(ALICE_ITEMS))

    @pytest_twisted.ensureDeferred
    async def test_created_ascending(self, cache: Cache) -> None:
        assert await cache.ids(order_by=[("created", "asc")]) == ALICE_ITEMS

    @pytest_twisted.ensureDeferred
    async def test_updated(self, cache: Cache) -> None:
        # post-3 was cached again last.
        found = await cache.ids(order_by=[("updated", "desc")])
        assert found == ["post-3", "tune-1", "pep-1", "c-1", "post-5", "post-4", "post-2", "post-1"]

    @pytest_twisted.ensureDeferred
    async def test_item_id(self, cache: Cache) -> None:
        assert await cache.ids(order_by=[("item_id", "asc")]) == sorted(ALICE_ITEMS)
        assert await cache.ids(order_by=[("item_id", "desc")]) == sorted(ALICE_ITEMS)[::-1]

    @pytest_twisted.ensureDeferred
    async def test_date_field(self, cache: Cache) -> None:
        # Items without the field come last, in row id order.
        assert await cache.ids(order_by=[(["published"], "desc")]) == [
            "post-4", "post-2", "c-1", "pep-1", "post-1", "post-3", "tune-1", "post-5",
        ]
        assert await cache.ids(order_by=[(["published"], "asc")]) == [
            "post-3", "post-1", "pep-1", "c-1", "post-2", "post-4", "post-5", "tune-1",
        ]

    @pytest_twisted.ensureDeferred
    async def test_numbers_in_numeric_order(self, cache: Cache) -> None:
        assert await cache.ids(order_by=[(["rating"], "asc")]) == [
            "post-1", "post-3", "post-4", "post-2", "post-5", "c-1", "pep-1", "tune-1",
        ]

    @pytest_twisted.ensureDeferred
    async def test_strings_in_code_point_order(self, cache: Cache) -> None:
        assert await cache.ids(order_by=[(["title"], "asc")]) == [
            "post-2", "post-1", "pep-1", "c-1", "post-3", "post-4", "post-5", "tune-1",
        ]

    @pytest_twisted.ensureDeferred
    async def test_numbers_before_strings(self, cache: Cache) -> None:
        # score: 4.5 (post-1, post-2), "high" (post-3), none for the others.
        assert await cache.ids(order_by=[(["score"], "asc")]) == [
            "post-1", "post-2", "post-3", "post-4", "post-5", "c-1", "pep-1", "tune-1",
        ]
        assert await cache.ids(order_by=[(["score"], "desc")]) == [
            "post-2", "post-1", "post-3", "tune-1", "pep-1", "c-1", "post-5", "post-4",
        ]

    @pytest_twisted.ensureDeferred
    async def test_several_keys(self, cache: Cache) -> None:
        assert await cache.ids(order_by=[(["score"], "asc"), ("item_id", "desc")]) == [
            "post-2", "post-1", "post-3", "tune-1", "post-5", "post-4", "pep-1", "c-1",
        ]

    @pytest_twisted.ensureDeferred
    async def test_list_element(self, cache: Cache) -> None:
        assert await cache.ids(order_by=[(["tags", 0], "asc")]) == [
            "post-3", "post-2", "post-1", "pep-1", "post-4", "post-5", "c-1", "tune-1",
        ]

    @pytest_twisted.ensureDeferred
    async def test_relevance(self, cache: Cache) -> None:
        # post-2 has "apple" four times, the others once.
        found = await cache.ids(fts="apple")
        assert found[0] == "post-2"
        assert set(found) == {"post-2", "post-4", "c-1", "pep-1"}

    @pytest_twisted.ensureDeferred
    async def test_relevance_ascending(self, cache: Cache) -> None:
        found = await cache.ids(fts="apple", order_by=[("relevance", "asc")])
        assert found[-1] == "post-2"

    @pytest_twisted.ensureDeferred
    async def test_relevance_after_another_key(self, cache: Cache) -> None:
        found = await cache.ids(fts="apple", order_by=[("item_id", "asc"), ("relevance", None)])
        assert found == ["c-1", "pep-1", "post-2", "post-4"]

    @pytest_twisted.ensureDeferred
    async def test_relevance_with_filters_and_count(self, cache: Cache) -> None:
        result = await cache.search(
            fts="apple", filters=[(["tags"], "ioverlap", ["xmpp"])], limit=1,
            order_by=[("relevance", "desc")],
        )
        assert [hit.item_id for hit in result.hits] == ["post-2"]
        assert result.total == 2


# --- full text ---------------------------------------------------------------------


class FullTextTests:
    @pytest_twisted.ensureDeferred
    @pytest.mark.parametrize(
        ("mode", "text", "expected"),
        [
            ("words", "pubsub-cache", {"post-1"}),
            ("words", "v1.2", {"post-2"}),
            ("words", "it's", {"post-3"}),
            ("words", '"', set()),
            ("words", "*", set()),
            ("words", "NEAR", {"post-3"}),
            ("words", "AND", {"post-3"}),
            ("words", "(", set()),
            ("words", "(really)", {"post-3"}),
            ("words", "*stars*", {"post-3"}),
            ("words", "NEAR(a b)", set()),
            ("words", "cafe", {"post-1", "c-1"}),
            ("words", "CAFÉ noel", {"post-1"}),
            ("words", "banana", {"post-2", "post-5", "tune-1"}),
            ("words", "apple banana", {"post-2"}),
            ("words", "caf", set()),
            ("words", "", set(ALICE_ITEMS)),
            ("words", "   ", set(ALICE_ITEMS)),
            ("phrase", "pubsub-cache", {"post-1"}),
            ("phrase", "cache pubsub", set()),
            ("phrase", "apple banana", {"post-2"}),
            ("phrase", "banana apple", set()),
            ("phrase", "NEAR AND", {"post-3"}),
            ("phrase", '"near" and', {"post-3"}),
            ("phrase", '"', set()),
            ("phrase", "*", set()),
            ("phrase", "", set(ALICE_ITEMS)),
            ("prefix", "caf", {"post-1", "c-1"}),
            ("prefix", "appl", {"post-2", "post-4", "c-1", "pep-1"}),
            ("prefix", "pubsub-ca", {"post-1"}),
            ("prefix", "v1.2", {"post-2"}),
            ("prefix", "it's", {"post-3"}),
            ("prefix", "NEA", {"post-3"}),
            ("prefix", "ban bre", {"post-5"}),
            ("prefix", "*", set()),
            ("prefix", "(", set()),
            ("prefix", "", set(ALICE_ITEMS)),
        ],
    )
    async def test_modes(self, cache: Cache, mode: str, text: str, expected: set[str]) -> None:
        assert await cache.id_set(fts=text, fts_mode=mode) == expected

    @pytest_twisted.ensureDeferred
    @pytest.mark.parametrize("mode", search.FTS_MODES)
    async def test_hostile_input(self, cache: Cache, mode: str) -> None:
        # No input raises, in any mode, and each one finds alice's items only.
        for text in HOSTILE_INPUTS:
            for order in ([], [("item_id", "asc")]):
                result = await cache.search(fts=text, fts_mode=mode, order_by=order)
                found = {hit.item_id for hit in result.hits}
                assert found <= set(ALICE_ITEMS), text
                assert result.total == len(found), text

    @pytest_twisted.ensureDeferred
    async def test_hostile_text_in_filter_values(self, cache: Cache) -> None:
        for text in HOSTILE_INPUTS:
            assert await cache.where(["title"], "eq", text) == [], text
            # Only post-1 has unusual keys, "it's" among them.
            expected = ["post-1"] if text in POST_1 else []
            assert await cache.where([text], "exists", True) == expected, text

    @pytest_twisted.ensureDeferred
    async def test_other_profile_never_found(self, cache: Cache) -> None:
        assert "bob-1" not in await cache.id_set(fts="apple")
        assert await cache.id_set(fts="apple", profile_ids=[cache.bob_id]) == {"bob-1"}


# --- pages and hits ------------------------------------------------------------------


class PageTests:
    @pytest_twisted.ensureDeferred
    async def test_offset_and_limit(self, cache: Cache) -> None:
        result = await cache.search(order_by=[("item_id", "asc")], offset=2, limit=3)
        assert [hit.item_id for hit in result.hits] == ["post-1", "post-2", "post-3"]
        assert result.total == 8

    @pytest_twisted.ensureDeferred
    async def test_limit_zero_counts(self, cache: Cache) -> None:
        result = await cache.search(limit=0)
        assert result.hits == []
        assert result.total == 8

    @pytest_twisted.ensureDeferred
    async def test_offset_beyond_end(self, cache: Cache) -> None:
        result = await cache.search(offset=100)
        assert result.hits == []
        assert result.total == 8

    @pytest_twisted.ensureDeferred
    async def test_total_with_filters(self, cache: Cache) -> None:
        result = await cache.search(filters=[(["tags"], "ioverlap", ["xmpp"])], limit=1)
        assert len(result.hits) == 1
        assert result.total == 3


class HitTests:
    @pytest_twisted.ensureDeferred
    async def test_fields(self, cache: Cache) -> None:
        (hit,) = (await cache.search(item_ids=["c-1"])).hits
        assert (hit.profile, hit.service, hit.node) == ("alice", SERVICE, COMMENTS)
        assert (hit.node_type, hit.node_subtype) == ("blog", "comment")
        assert hit.publisher == "carol@example.org"
        assert hit.parsed == COMMENT_1
        assert hit.created.tzinfo is not None
        assert hit.updated >= hit.created

    @pytest_twisted.ensureDeferred
    async def test_parsed_data_kept_exactly(self, cache: Cache) -> None:
        (hit,) = (await cache.search(item_ids=["post-1"])).hits
        assert hit.parsed == POST_1

    @pytest_twisted.ensureDeferred
    async def test_no_parsed_data(self, cache: Cache) -> None:
        (hit,) = (await cache.search(item_ids=["tune-1"])).hits
        assert hit.parsed == {}

    @pytest_twisted.ensureDeferred
    async def test_no_payload_by_default(self, cache: Cache) -> None:
        (hit,) = (await cache.search(item_ids=["post-1"])).hits
        assert hit.payload is None

    @pytest_twisted.ensureDeferred
    async def test_payload_on_request(self, cache: Cache) -> None:
        (hit,) = (await cache.search(item_ids=["post-1"], with_payload=True)).hits
        assert hit.payload == entry_xml("post-1", POST_1)


class CountLimitTests:
    @pytest_twisted.ensureDeferred
    async def test_count_stops_at_limit(self, cache: Cache) -> None:
        result = await cache.search(count_limit=3, limit=2)
        assert result.total == 3
        assert result.total_exact is False

    @pytest_twisted.ensureDeferred
    async def test_count_below_limit_exact(self, cache: Cache) -> None:
        result = await cache.search(count_limit=8, limit=2)
        assert result.total == 8
        assert result.total_exact is True

    @pytest_twisted.ensureDeferred
    async def test_short_page_makes_total_exact(self, cache: Cache) -> None:
        result = await cache.search(count_limit=3, offset=6, limit=5)
        assert len(result.hits) == 2
        assert result.total == 8
        assert result.total_exact is True

    @pytest_twisted.ensureDeferred
    async def test_no_count(self, cache: Cache) -> None:
        result = await cache.search(count_limit=0, limit=2)
        assert len(result.hits) == 2
        assert result.total is None

    @pytest_twisted.ensureDeferred
    async def test_invalid_count_limit(self, cache: Cache) -> None:
        with pytest.raises(InvalidValue, match="count limit"):
            await cache.search(count_limit=-1)


class FrequentMatchTests:
    """Searches matching more than RELEVANCE_MAX_MATCHES items."""

    @pytest_twisted.ensureDeferred
    async def test_storage_order_replaces_relevance(self, storage: Storage) -> None:
        profile = await storage.create_profile("alice", "alice@example.org", "pw")
        node = await storage.set_pubsub_node(profile.id, SERVICE, BLOG)
        count = search.RELEVANCE_MAX_MATCHES + 5
        # The shortest text is the best bm25 match, but it is the oldest item.
        items = [("item-short", '<item id="item-short"><p>apple</p></item>', None, None)]
        items += [
            (f"item-{index:04}", f'<item id="item-{index:04}"><p>apple pie {index}</p></item>',
             None, None)
            for index in range(count)
        ]
        await storage.cache_pubsub_items(node.id, items)

        result = await storage.search_pubsub_items("apple", limit=3)

        assert result.relevance_ignored is True
        assert [hit.item_id for hit in result.hits] == [
            f"item-{count - 1:04}", f"item-{count - 2:04}", f"item-{count - 3:04}"
        ]
        assert result.total == search.DEFAULT_COUNT_LIMIT
        assert result.total_exact is False

    @pytest_twisted.ensureDeferred
    async def test_relevance_kept_below_maximum(self, storage: Storage) -> None:
        profile = await storage.create_profile("alice", "alice@example.org", "pw")
        node = await storage.set_pubsub_node(profile.id, SERVICE, BLOG)
        # The oldest item is the best match on both engines: the word three times.
        items = [("item-short", '<item id="item-short"><p>apple apple apple</p></item>',
                  None, None)]
        items += [
            (f"item-{index}", f'<item id="item-{index}"><p>apple pie and more {index}</p></item>',
             None, None)
            for index in range(20)
        ]
        await storage.cache_pubsub_items(node.id, items)

        result = await storage.search_pubsub_items("apple", limit=3)

        assert result.relevance_ignored is False
        assert result.hits[0].item_id == "item-short"

    @pytest_twisted.ensureDeferred
    async def test_newest_first_with_out_of_order_time(self, storage: Storage) -> None:
        # On SQLite the page comes from the highest row ids, then from the
        # (created, id) index for older rows whose time is later.
        profile = await storage.create_profile("alice", "alice@example.org", "pw")
        first = await storage.set_pubsub_node(profile.id, SERVICE, BLOG)
        second = await storage.set_pubsub_node(profile.id, SERVICE, "other")
        for node_id, prefix in ((first.id, "a"), (second.id, "b")):
            await storage.cache_pubsub_items(
                node_id,
                [(f"{prefix}-{index}", f'<item id="{prefix}-{index}"><p>apple</p></item>',
                  None, None) for index in range(10)],
            )
        future = datetime(2100, 1, 1, tzinfo=timezone.utc)

        async def move_to_future() -> None:
            async with storage.engine.begin() as connection:
                await connection.execute(
                    update(PubsubItem).where(PubsubItem.name == "a-3").values(created=future)
                )

        await as_deferred(move_to_future())

        result = await storage.search_pubsub_items(
            "apple", order_by=[("created", "desc")], limit=3
        )

        assert [hit.item_id for hit in result.hits] == ["a-3", "b-9", "b-8"]


class DefaultLimitTests:
    @pytest_twisted.ensureDeferred
    async def test_default_limit(self, storage: Storage) -> None:
        profile = await storage.create_profile("alice", "alice@example.org", "pw")
        node = await storage.set_pubsub_node(profile.id, SERVICE, BLOG)
        count = search.DEFAULT_LIMIT + 10
        await storage.cache_pubsub_items(
            node.id,
            [(f"item-{index:03}", f'<item id="item-{index:03}"/>', {"index": index}, None)
             for index in range(count)],
        )

        result = await storage.search_pubsub_items()

        assert len(result.hits) == search.DEFAULT_LIMIT
        assert result.total == count
        assert result.hits[0].item_id == f"item-{count - 1:03}"


# --- bridge method -------------------------------------------------------------------


class Host:
    """The parts of the backend host that the search plugin uses."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.bridge = BridgeServer()
        self.default_profile = "alice"

    def resolve_profile(self, profile: str | None) -> str:
        return profile or self.default_profile


@pytest.fixture
def plugin(cache: Cache) -> PubsubCacheSearch:
    return PubsubCacheSearch(Host(cache.storage))


def item_ids(result: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in result["items"]]


class PluginTests:
    def test_discovered_after_cache(self) -> None:
        order = load_order(discover())
        assert order.index("PUBSUB_CACHE") < order.index("PUBSUB_CACHE_SEARCH")

    def test_method_registered(self, plugin: PubsubCacheSearch) -> None:
        assert "ps_cache_search" in plugin.host.bridge.methods

    @pytest_twisted.ensureDeferred
    async def test_calling_profile_only(self, plugin: PubsubCacheSearch) -> None:
        result = await plugin._bridge_search(profile="bob")
        assert item_ids(result) == ["bob-1"]
        assert result["profiles"] == ["bob"]

    @pytest_twisted.ensureDeferred
    async def test_default_profile(self, plugin: PubsubCacheSearch) -> None:
        result = await plugin._bridge_search(fts="apple")
        assert "bob-1" not in item_ids(result)
        assert {item["profile"] for item in result["items"]} == {"alice"}
        assert result["total"] == 4

    @pytest_twisted.ensureDeferred
    async def test_named_profiles(self, plugin: PubsubCacheSearch) -> None:
        result = await plugin._bridge_search_all_profiles(
            fts="apple", profiles=["alice", "bob"]
        )
        assert "bob-1" in item_ids(result)
        assert result["total"] == 5
        assert result["profiles"] == ["alice", "bob"]

    @pytest_twisted.ensureDeferred
    async def test_all_profiles_by_default(self, plugin: PubsubCacheSearch) -> None:
        result = await plugin._bridge_search_all_profiles(fts="apple")
        assert result["profiles"] == ["alice", "bob"]

    @pytest_twisted.ensureDeferred
    async def test_single_profile_method_takes_no_profiles(
        self, plugin: PubsubCacheSearch
    ) -> None:
        # Searching other profiles goes through the method whose name says so.
        with pytest.raises(TypeError):
            await plugin._bridge_search(profiles=["bob"], profile="alice")
        with pytest.raises(InvalidValue, match="profiles"):
            await plugin._bridge_search_all_profiles(profile="alice")

    @pytest_twisted.ensureDeferred
    async def test_unknown_profile(self, plugin: PubsubCacheSearch) -> None:
        with pytest.raises(ProfileNotFound, match="nobody"):
            await plugin._bridge_search_all_profiles(profiles=["alice", "nobody"])
        with pytest.raises(ProfileNotFound, match="nobody"):
            await plugin._bridge_search(profile="nobody")

    @pytest_twisted.ensureDeferred
    async def test_filter_forms(self, plugin: PubsubCacheSearch) -> None:
        as_list = await plugin._bridge_search(
            filters=[[["tags"], "overlap", ["xmpp"]]], order_by=["item_id"]
        )
        as_object = await plugin._bridge_search(
            filters=[{"path": "tags", "operator": "overlap", "value": ["xmpp"]}],
            order_by=[{"key": "item_id"}],
        )
        assert item_ids(as_list) == ["pep-1", "post-1"]
        assert item_ids(as_object) == ["pep-1", "post-1"]

    @pytest_twisted.ensureDeferred
    async def test_exists_without_value(self, plugin: PubsubCacheSearch) -> None:
        result = await plugin._bridge_search(filters=[{"path": ["nothing"], "operator": "exists"}])
        assert item_ids(result) == ["post-1"]

    @pytest_twisted.ensureDeferred
    async def test_dates(self, plugin: PubsubCacheSearch) -> None:
        by_iso = await plugin._bridge_search(
            filters=[[["published"], "gt", {"date": "2024-05-01T12:00:00+02:00"}]],
            order_by=["item_id"],
        )
        by_number = await plugin._bridge_search(
            filters=[[["published"], "gt", {"date": T0}]], order_by=["item_id"]
        )
        assert item_ids(by_iso) == ["c-1", "pep-1", "post-2", "post-4"]
        assert item_ids(by_number) == item_ids(by_iso)

    @pytest_twisted.ensureDeferred
    async def test_dates_in_list(self, plugin: PubsubCacheSearch) -> None:
        result = await plugin._bridge_search(
            filters=[[["published"], "between",
                      [{"date": "2024-05-01T10:00:00Z"}, {"date": "2024-05-01T11:00:00Z"}]]],
            order_by=["item_id"],
        )
        assert item_ids(result) == ["c-1", "pep-1", "post-1"]

    @pytest_twisted.ensureDeferred
    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ({"date": "2024-05-01T12:00:00"}, "add a UTC offset"),
            ({"date": "last week"}, "use ISO 8601"),
            ({"date": True}, "invalid date True"),
            ({"day": "2024-05-01"}, "the only object accepted is a date"),
        ],
    )
    async def test_invalid_dates(
        self, plugin: PubsubCacheSearch, value: Any, message: str
    ) -> None:
        with pytest.raises(InvalidValue, match=message):
            await plugin._bridge_search(filters=[[["published"], "gt", value]])

    @pytest_twisted.ensureDeferred
    async def test_order_forms(self, plugin: PubsubCacheSearch) -> None:
        result = await plugin._bridge_search(
            order_by=[{"path": ["published"], "direction": "desc"}], limit=2
        )
        assert item_ids(result) == ["post-4", "post-2"]
        result = await plugin._bridge_search(
            order_by=[{"key": "created", "direction": "asc"}], limit=2
        )
        assert item_ids(result) == ["post-1", "post-2"]

    @pytest_twisted.ensureDeferred
    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ({"filters": "title"}, "filters must be a list"),
            ({"filters": [["title", "eq"]]}, "use \\[path, operator, value\\]"),
            ({"filters": [{"path": "title", "op": "eq"}]}, "use the keys path, operator"),
            ({"order_by": [{"key": "created", "path": ["x"]}]}, "invalid order key"),
            ({"order_by": [{"path": 5}]}, "invalid order path"),
            ({"limit": "5"}, "limit must be an integer"),
            ({"services": "pubsub.example.org"}, "services must be a list of strings"),
            ({"services": ["a@b@c"]}, "invalid service JID"),
            ({"payload": "yes"}, "payload must be true or false"),
        ],
    )
    async def test_invalid_arguments(
        self, plugin: PubsubCacheSearch, arguments: dict[str, Any], message: str
    ) -> None:
        with pytest.raises(InvalidValue, match=message):
            await plugin._bridge_search(**arguments)

    @pytest_twisted.ensureDeferred
    async def test_service_normalised(self, plugin: PubsubCacheSearch) -> None:
        result = await plugin._bridge_search(services=["PubSub.Example.ORG"], nodes=["tunes"])
        assert item_ids(result) == ["tune-1"]

    @pytest_twisted.ensureDeferred
    async def test_json_result(self, plugin: PubsubCacheSearch) -> None:
        result = await plugin._bridge_search(item_ids=["post-1"], payload=True)
        decoded = json.loads(json.dumps(result))
        (item,) = decoded["items"]
        assert item["payload"] == entry_xml("post-1", POST_1)
        assert item["parsed"] == POST_1
        assert datetime.fromisoformat(item["created"]).tzinfo == timezone.utc
        assert (decoded["total"], decoded["offset"], decoded["limit"]) == (
            1, 0, search.DEFAULT_LIMIT,
        )

    @pytest_twisted.ensureDeferred
    async def test_empty_parsed_data(self, plugin: PubsubCacheSearch) -> None:
        result = await plugin._bridge_search(item_ids=["tune-1"])
        assert result["items"][0]["parsed"] == {}
        assert "payload" not in result["items"][0]
