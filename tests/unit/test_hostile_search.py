"""Search input that tries to change the query: SQL, FTS5 and tsquery injection.

Every request goes through the ``ps_cache_search`` bridge method of a real
bridge on a Unix socket, to a real database (SQLite and PostgreSQL,
``storage`` fixture) holding the cache of two profiles. A search must either
be rejected with InvalidValue (or ProfileNotFound), or return exactly what
an oracle written in Python returns for the same text. The oracle keeps the
items of the searched profile whose words contain, for each word of the
text, its tokens in a row. User text is searched as words, so operators of SQL, FTS5 or
tsquery syntax never widen, narrow or break the query. After each test the
database still contains every item, and the SQLite full-text index passes its
integrity check.

The property-based test uses hypothesis with ``derandomize=True``;
``LIBERVIA_HYPOTHESIS_EXAMPLES`` sets the number of examples (default 60).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import threads
from twisted.words.xish import domish

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.memory import fulltext
from libervia.backend.memory.sqla import Storage
from libervia.backend.memory.sqla_mapping import SyncState
from libervia.backend.plugins.plugin_pubsub_cache_search import PubsubCacheSearch
from libervia.backend.plugins.plugin_xep_0060 import NS_PUBSUB
from libervia.backend.tools.aio import as_deferred
from libervia.cli.bridge_client import BridgeClient, BridgeError
from libervia.testing.databases import DatabaseUnavailable, database_url

HYPOTHESIS_EXAMPLES = int(os.environ.get("LIBERVIA_HYPOTHESIS_EXAMPLES") or 60)
PROPERTY_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=HYPOTHESIS_EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SERVICE = "pubsub.example.org"
NODE = "urn:xmpp:microblog:0"
NS_TEST = "urn:example:search"

#: Items of each profile: item id to (text, parsed data).
ITEMS = {
    "alice": {
        "a1": ("alpha bravo", {"title": "first", "tags": ["x"]}),
        "a2": ("secret charlie", {"title": "x' OR '1'='1", "tags": ["y"]}),
        "a3": ("drop table pubsub_items", {"title": "third", "a.b": "dotted"}),
        "a4": ("near text or 1 alpha", {"title": 'quote " and \\ backslash'}),
        "a5": ("Café crème", {"title": "fifth", "count": 5}),
    },
    "bob": {
        "b1": ("alpha bravo secret charlie drop table", {"title": "first", "tags": ["x"]}),
    },
}


def item_xml(item_id: str, text_value: str) -> str:
    item = domish.Element((NS_PUBSUB, "item"))
    item["id"] = item_id
    item.addElement((NS_TEST, "entry"), content=text_value)
    return item.toXml()


def plain_query(text_value: str) -> str:
    """Return the text the search runs for ``text_value``: its words, nothing else."""
    words = [fulltext.search_words(word) for word in text_value.split()]
    return " ".join("-".join(tokens) for tokens in words if tokens)


def contains(tokens: list[str], phrase: list[str], prefix: bool) -> bool:
    """Tell whether ``phrase`` appears in ``tokens``, its last token as a prefix with ``prefix``."""
    size = len(phrase)
    for start in range(len(tokens) - size + 1):
        window = tokens[start:start + size]
        if window[:-1] != phrase[:-1]:
            continue
        if window[-1] == phrase[-1] or (prefix and window[-1].startswith(phrase[-1])):
            return True
    return False


def oracle(profile: str, text_value: str, mode: str = "words") -> set[str]:
    """Return the ids of the items of ``profile`` that a search of ``text_value`` matches.

    Blank text applies no condition, and text without a word matches
    nothing. In "words" and "prefix" modes each whitespace-separated word is
    a phrase of its tokens; in "phrase" mode all the tokens form one phrase.
    """
    if not text_value.strip():
        return set(ITEMS[profile])
    if mode == "phrase":
        phrases = [fulltext.search_words(text_value)]
    else:
        phrases = [fulltext.search_words(word) for word in text_value.split()]
    phrases = [tokens for tokens in phrases if tokens]
    if not phrases:
        return set()
    return {
        item_id for item_id, (item_text, _) in ITEMS[profile].items()
        if all(
            contains(fulltext.search_words(item_text), phrase, mode == "prefix")
            for phrase in phrases
        )
    }


class MinimalHost:
    """The parts of the backend host that the search plugin uses."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.bridge = BridgeServer()
        self.plugins: dict[str, Any] = {}

    def resolve_profile(self, profile: str | None) -> str:
        return profile or "alice"


@dataclass
class Target:
    """A filled cache and the socket of the bridge that searches it."""

    storage: Storage
    socket_path: Path


async def fill(storage: Storage) -> None:
    for profile, items in ITEMS.items():
        profile_row = await storage.create_profile(profile, f"{profile}@example.org", "secret")
        node_row = await storage.set_pubsub_node(
            profile_row.id, SERVICE, NODE, analyser="test", type_="blog",
            sync_state=SyncState.COMPLETED,
        )
        await storage.cache_pubsub_items(node_row.id, [
            (item_id, item_xml(item_id, item_text), parsed, None)
            for item_id, (item_text, parsed) in items.items()
        ])


@asynccontextmanager
async def search_target(url: str) -> AsyncIterator[Target]:
    """Fill a new cache on ``url`` and serve its search on a bridge; check it at the end."""
    # Unix socket paths are limited to 107 bytes: a short folder of its own.
    folder = Path(tempfile.mkdtemp(prefix="lbs", dir="/tmp"))
    storage = Storage(url)
    await storage.initialise()
    try:
        await fill(storage)
        host = MinimalHost(storage)
        PubsubCacheSearch(host)
        await host.bridge.start(folder / "bridge.sock")
        try:
            yield Target(storage, folder / "bridge.sock")
        finally:
            await host.bridge.stop()
        await check_intact(storage)
    finally:
        await storage.close()
        shutil.rmtree(folder, ignore_errors=True)


# The searches only read: the tests of a module share one cache per engine.
@pytest_twisted.async_yield_fixture(scope="module")
async def bridge(module_db_url: str) -> AsyncIterator[Target]:
    async with search_target(module_db_url) as target:
        yield target


@contextmanager
def engine_storage_url(engine: str, folder: Path) -> Iterator[str]:
    try:
        with database_url(engine, folder) as url:
            yield url
    except DatabaseUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


# pytest-twisted 1.14 wraps the examples of a hypothesis test each time the
# test function runs, so a parametrized hypothesis test fails from its second
# parameter on: the property tests get one fixture per engine instead.
@pytest_twisted.async_yield_fixture(scope="module")
async def sqlite_bridge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Target]:
    with engine_storage_url("sqlite", tmp_path_factory.mktemp("search")) as url:
        async with search_target(url) as target:
            yield target


@pytest_twisted.async_yield_fixture(scope="module")
async def postgresql_bridge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Target]:
    with engine_storage_url("postgresql", tmp_path_factory.mktemp("search")) as url:
        async with search_target(url) as target:
            yield target


async def search(target: Target, **params: Any) -> dict[str, Any]:
    """Call ps_cache_search through the bridge socket, from a thread.

    With ``profiles``, ps_cache_search_all_profiles is called instead, the
    method that searches several profiles.
    """
    method = "ps_cache_search"
    if "profiles" in params:
        method = "ps_cache_search_all_profiles"
        params.pop("profile", None)

    def call() -> Any:
        with BridgeClient(target.socket_path, timeout=30) as client:
            return client.call(method, **params)

    return await threads.deferToThread(call)


async def exchange(target: Target, line: bytes) -> dict[str, Any]:
    """Send one raw request line to the bridge and return the decoded response."""

    def blocking() -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(target.socket_path))
            sock.sendall(line)
            received = b""
            while not received.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        return json.loads(received)

    return await threads.deferToThread(blocking)


async def found(target: Target, profile: str = "alice", **params: Any) -> set[str]:
    result = await search(target, profile=profile, limit=100, **params)
    assert {hit["profile"] for hit in result["items"]} <= {profile}
    return {hit["item_id"] for hit in result["items"]}


async def rejected(target: Target, **params: Any) -> BridgeError:
    """Return the error of a search that must be rejected as invalid input."""
    with pytest.raises(BridgeError) as info:
        await search(target, profile="alice", **params)
    assert info.value.type in ("InvalidValue", "ProfileNotFound"), info.value.message
    return info.value


async def check_intact(storage: Storage) -> None:
    """Check that every item is still stored and the SQLite full-text index is sound."""
    for profile, items in ITEMS.items():
        profile_row = await storage.get_profile(profile)
        node_row = await storage.get_pubsub_node(profile_row.id, SERVICE, NODE)
        rows = await storage.get_pubsub_items(node_row.id)
        assert {row.name for row in rows} == set(items)
    if storage.engine.dialect.name == "sqlite":
        await as_deferred(check_sqlite_index(storage))


async def check_sqlite_index(storage: Storage) -> None:
    """Run FTS5's integrity check, which raises when the index differs from the items' text."""
    async with storage.engine.begin() as connection:
        await connection.execute(text(
            f"INSERT INTO {fulltext.SQLITE_FTS_TABLE}({fulltext.SQLITE_FTS_TABLE}, rank) "
            "VALUES ('integrity-check', 1)"
        ))


#: Full-text input written as SQL, FTS5 or tsquery syntax.
INJECTIONS = [
    "' OR 1=1 --",
    "' OR '1'='1",
    "\"; DROP TABLE pubsub_items; --",
    "x'); DELETE FROM pubsub_items; --",
    "alpha OR secret",
    "alpha AND NOT bravo",
    "NEAR(alpha bravo)",
    "NEAR(alpha bravo, 10)",
    "text:alpha",
    "{text}: alpha",
    "alpha*",
    "^alpha",
    "-bravo alpha",
    '"alpha',
    'alpha"bravo',
    "(alpha",
    "alpha | secret",
    "alpha & !bravo",
    "!bravo",
    "alpha:*",
    "alpha <-> bravo",
    "alpha <2> bravo",
    "'alpha' | 'secret'",
    "$$ alpha $$",
    "\\alpha",
    "%",
    "_",
    "*",
    "pubsub_items",
    "CAFE",
    "   ",
    "'",
]


class FullTextInjectionTests:
    @pytest.mark.parametrize("mode", ["words", "phrase", "prefix"])
    @pytest.mark.parametrize("fts", INJECTIONS)
    @pytest_twisted.ensureDeferred
    async def test_oracle(self, bridge: Target, fts: str, mode: str) -> None:
        assert await found(bridge, fts=fts, fts_mode=mode) == oracle("alice", fts, mode)

    @pytest.mark.parametrize("fts", [fts for fts in INJECTIONS if plain_query(fts)])
    @pytest_twisted.ensureDeferred
    async def test_same_as_plain_words(self, bridge: Target, fts: str) -> None:
        assert await found(bridge, fts=fts) == await found(bridge, fts=plain_query(fts))

    @pytest.mark.parametrize(
        "fts", ["alpha\\u0000", "\\ud800alpha"], ids=["NUL", "lone surrogate"],
    )
    @pytest_twisted.ensureDeferred
    async def test_unstorable_text(self, bridge: Target, fts: str) -> None:
        """Text neither database can store is rejected, not sent to the database."""
        # Written as a JSON escape: the bridge client cannot encode a lone surrogate.
        line = (
            '{"jsonrpc": "2.0", "id": 1, "method": "ps_cache_search", '
            f'"params": {{"fts": "{fts}", "profile": "alice"}}}}\n'
        ).encode()

        response = await exchange(bridge, line)

        assert response["error"]["data"]["type"] == "InvalidValue"

    @pytest_twisted.ensureDeferred
    async def test_other_profile_never_searched(self, bridge: Target) -> None:
        """bob's item contains every word of these searches: alice never gets it."""
        for fts in ("alpha bravo", "secret charlie", "drop table", "' OR 1=1 --"):
            assert "b1" not in await found(bridge, fts=fts)



#: Letters of the items' words, and the syntax characters of SQL, FTS5 and tsquery.
SEARCH_TEXT = st.text(
    alphabet=st.sampled_from(list("abcdeloprstxyz ABCDNORT'\"*()-+:^&|!<>%_;=\\{}$[]0123é")),
    max_size=30,
)


class FullTextPropertyTests:
    @PROPERTY_SETTINGS
    @given(fts=SEARCH_TEXT, mode=st.sampled_from(["words", "phrase", "prefix"]))
    @pytest_twisted.ensureDeferred
    async def test_sqlite(self, sqlite_bridge: Target, fts: str, mode: str) -> None:
        assert await found(sqlite_bridge, fts=fts, fts_mode=mode) == oracle("alice", fts, mode)

    @PROPERTY_SETTINGS
    @given(fts=SEARCH_TEXT, mode=st.sampled_from(["words", "phrase", "prefix"]))
    @pytest_twisted.ensureDeferred
    async def test_postgresql(self, postgresql_bridge: Target, fts: str, mode: str) -> None:
        assert await found(postgresql_bridge, fts=fts, fts_mode=mode) == oracle("alice", fts, mode)


class FilterInjectionTests:
    @pytest.mark.parametrize(
        "filters, expected",
        [
            ([[["title"], "eq", "x' OR '1'='1"]], {"a2"}),
            ([[["title"], "eq", "' OR 1=1 --"]], set()),
            ([[["title'); DROP TABLE pubsub_items; --"], "eq", "x"]], set()),
            ([[["title"], "in", ["first", "1) OR (1=1"]]], {"a1"}),
            ([[["title"], "like", "%' OR '1'='1"]], {"a2"}),
            ([[["title"], "like", "' OR 1=1 --%"]], set()),
            ([[["a.b"], "eq", "dotted"]], {"a3"}),
            ([[["a"], "exists", True]], set()),
            ([[["$"], "exists", True]], set()),
            ([[["$.title"], "exists", True]], set()),
            ([[["title[0]"], "exists", True]], set()),
            ([[["*"], "exists", True]], set()),
            ([[['title"'], "exists", True]], set()),
            ([[["title"], "eq", 'quote " and \\ backslash']], {"a4"}),
            ([[["tags", 0], "eq", "x"]], {"a1"}),
            ([[["count"], "eq", "5 OR 1=1"]], set()),
            ([[["count"], "gt", 4]], {"a5"}),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_literal(self, bridge: Target, filters: list[Any], expected: set[str]) -> None:
        assert await found(bridge, filters=filters) == expected

    @pytest.mark.parametrize(
        "params",
        [
            {"filters": [[["title"], "eq; DROP TABLE pubsub_items", "x"]]},
            {"filters": [[["title"], "eq", {"sql": "1=1"}]]},
            {"filters": [[[], "eq", "x"]]},
            {"filters": [[["title"] * 100, "eq", "x"]]},
            {"filters": "1=1"},
            {"order_by": [{"key": "created; DROP TABLE pubsub_items"}]},
            {"order_by": [{"key": "created", "direction": "desc; --"}]},
            {"order_by": ["1"]},
            {"fts_mode": "words; DROP TABLE pubsub_items"},
            {"limit": "10; DROP TABLE pubsub_items"},
            {"offset": -1},
            {"limit": 10**30},
            {"profiles": ["alice' OR '1'='1"]},
            {"services": ["pubsub.example.org' OR '1'='1"]},
            {"nodes": ["x' OR '1'='1", ""]},
        ],
        ids=lambda params: repr(params)[:60],
    )
    @pytest_twisted.ensureDeferred
    async def test_rejected(self, bridge: Target, params: dict[str, Any]) -> None:
        await rejected(bridge, **params)

    @pytest.mark.parametrize(
        "params",
        [
            {"nodes": ["x' OR '1'='1"]},
            {"types": ["blog' OR '1'='1"]},
            {"item_ids": ["a1' OR '1'='1", "a2') --"]},
            {"order_by": [{"path": ["title'); DROP TABLE pubsub_items; --"]}]},
        ],
        ids=lambda params: repr(params)[:60],
    )
    @pytest_twisted.ensureDeferred
    async def test_literal_lists(self, bridge: Target, params: dict[str, Any]) -> None:
        hits = await found(bridge, **params)

        assert hits == (set(ITEMS["alice"]) if "order_by" in params else set())

    @pytest_twisted.ensureDeferred
    async def test_invalid_service_jid(self, bridge: Target) -> None:
        await rejected(bridge, services=["a..b"])

