"""``li pubsub cache search`` against a real bridge, search plugin and database.

``li`` runs in a thread and talks to a BridgeServer of the test, on which the
PUBSUB_CACHE_SEARCH plugin searches a real database (SQLite, then
PostgreSQL, through the ``storage`` fixture). Publication dates of the data
set are relative to the time of the test, so that the relative dates of the
command line ("-7 days") select known items.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.memory.sqla import Storage
from libervia.backend.plugins.plugin_pubsub_cache_search import PubsubCacheSearch
from libervia.cli.main import main
from libervia.cli.output import format_date

ATOM = "http://www.w3.org/2005/Atom"
SERVICE = "pubsub.example.org"
BLOG = "urn:xmpp:microblog:0"
DAY = 86400.0
#: 2024-05-01T10:00:00+00:00
FIXED_DATE = 1714557600.0


class Host:
    """The parts of the backend host that the search plugin uses."""

    def __init__(self, storage: Storage, bridge: BridgeServer) -> None:
        self.storage = storage
        self.bridge = bridge
        self.default_profile = "alice"

    def resolve_profile(self, profile: str | None) -> str:
        return profile or self.default_profile


def entry(item_id: str, title: str) -> str:
    return f'<item id="{item_id}"><entry xmlns="{ATOM}"><title>{title}</title></entry></item>'


class DataSet:
    """Publication dates of the items, fixed when the data set is stored."""

    def __init__(self) -> None:
        now = time.time()
        self.recent = {
            "title": "Recent apple",
            "published": now - DAY,
            "seen": now - DAY,
            "author": "Alice",
            "tags": ["xmpp", "news"],
            "a.b": 1,
            "links": [{"href": "https://example.org/r"}],
        }
        self.old = {
            "title": "Old pear",
            "published": now - 20 * DAY,
            "seen": now - 20 * DAY,
            "author": "Alice",
            "tags": ["misc"],
            "a.b": 2,
            "0": "zero",
        }
        self.fixed = {
            "title": "May day",
            "published": FIXED_DATE,
            "author": "Carol",
            "tags": ["XMPP"],
            "draft": True,
            "rating": 5,
        }
        self.bob = {"title": "Bob apple", "published": now - DAY, "tags": ["xmpp"]}

    async def store(self, storage: Storage) -> None:
        alice = await storage.create_profile("alice", "alice@example.org", "pw")
        bob = await storage.create_profile("bob", "bob@example.org", "pw")
        blog = await storage.set_pubsub_node(alice.id, SERVICE, BLOG, type_="blog")
        bob_blog = await storage.set_pubsub_node(bob.id, SERVICE, BLOG, type_="blog")
        await storage.cache_pubsub_items(
            blog.id,
            [(item_id, entry(item_id, data["title"]), data, None)
             for item_id, data in (("recent", self.recent), ("old", self.old),
                                   ("fixed", self.fixed))],
        )
        await storage.cache_pubsub_items(
            bob_blog.id, [("bob-1", entry("bob-1", self.bob["title"]), self.bob, None)]
        )


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    # The bridge socket path must stay short (107 bytes), hence /tmp.
    base = Path(tempfile.mkdtemp(prefix="lbs", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    for variable in ("LIBERVIA_PROFILE", "LIBERVIA_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest_twisted.async_yield_fixture
async def data(storage: Storage, runtime_dir: Path) -> AsyncIterator[DataSet]:
    """Yield the data set, stored and searchable through a running bridge."""
    data_set = DataSet()
    await data_set.store(storage)
    bridge = BridgeServer()
    PubsubCacheSearch(Host(storage, bridge))
    await bridge.start()
    yield data_set
    await bridge.stop()


async def li(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str
) -> tuple[int, str, str]:
    """Run ``li pubsub cache search ARGV`` in a thread; return exit code, stdout and stderr."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    capsys.readouterr()
    code = await threads.deferToThread(
        main, ["--no-autostart", "pubsub", "cache", "search", *argv]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def found(capsys: Any, monkeypatch: Any, *argv: str) -> list[str]:
    """Return the item ids printed by ``li pubsub cache search ARGV -O json``."""
    code, out, err = await li(capsys, monkeypatch, *argv, "-O", "json")
    assert code == 0, err
    return [item["item_id"] for item in json.loads(out)["items"]]


async def error(capsys: Any, monkeypatch: Any, *argv: str) -> str:
    """Return the error line of a failing ``li pubsub cache search ARGV``."""
    code, out, err = await li(capsys, monkeypatch, *argv)
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("li: error: ")
    return lines[0]


class ReadableOutputTests:
    @pytest_twisted.ensureDeferred
    async def test_table(self, data, capsys, monkeypatch) -> None:
        code, out, err = await li(capsys, monkeypatch)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["service", "node", "item", "id", "created", "title"]
        assert [line.split()[2] for line in lines[1:4]] == ["fixed", "old", "recent"]
        assert lines[1].endswith("May day")
        assert lines[-1] == "-- items 1 to 3 of 3"

    @pytest_twisted.ensureDeferred
    async def test_keys(self, data, capsys, monkeypatch) -> None:
        code, out, err = await li(
            capsys, monkeypatch, "-k", "author", "tags", "published", "--item-id", "fixed",
        )
        assert code == 0, err
        header, row = out.splitlines()[:2]
        assert header.split()[-3:] == ["author", "tags", "published"]
        assert row.endswith(f"Carol   XMPP  {format_date(FIXED_DATE)}")

    @pytest_twisted.ensureDeferred
    async def test_payload(self, data, capsys, monkeypatch) -> None:
        code, out, err = await li(capsys, monkeypatch, "-P", "--item-id", "old")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == f"{SERVICE} {BLOG} old"
        assert lines[2] == "title:   Old pear"
        assert '<item id="old">' in out
        assert "<title>Old pear</title>" in out

    @pytest_twisted.ensureDeferred
    async def test_page(self, data, capsys, monkeypatch) -> None:
        code, out, _ = await li(capsys, monkeypatch, "-l", "1", "-i", "1")
        assert code == 0
        assert out.splitlines()[1].split()[2] == "old"
        assert out.splitlines()[-1] == "-- items 2 to 2 of 3"

    @pytest_twisted.ensureDeferred
    async def test_count_only(self, data, capsys, monkeypatch) -> None:
        code, out, _ = await li(capsys, monkeypatch, "-l", "0")
        assert code == 0
        assert out == "-- 3 item(s) match\n"

    @pytest_twisted.ensureDeferred
    async def test_no_match(self, data, capsys, monkeypatch) -> None:
        code, out, _ = await li(capsys, monkeypatch, "-f", "nothing-like-this")
        assert code == 0
        assert out == "-- no cached item matches\n"

    @pytest_twisted.ensureDeferred
    async def test_profiles_column(self, data, capsys, monkeypatch) -> None:
        code, out, _ = await li(capsys, monkeypatch, "-f", "apple", "--profiles", "alice", "bob")
        assert code == 0
        assert out.splitlines()[0].split()[0] == "profile"
        assert sorted(line.split()[0] for line in out.splitlines()[1:3]) == ["alice", "bob"]


class JsonOutputTests:
    @pytest_twisted.ensureDeferred
    async def test_json_option(self, data, capsys, monkeypatch) -> None:
        code, out, _ = await li(capsys, monkeypatch, "--json", "--item-id", "fixed")
        assert code == 0
        result = json.loads(out)
        assert result["total"] == 1
        assert result["items"][0]["parsed"] == data.fixed
        assert result["profiles"] == ["alice"]

    @pytest_twisted.ensureDeferred
    async def test_payload_in_json(self, data, capsys, monkeypatch) -> None:
        code, out, _ = await li(capsys, monkeypatch, "-O", "json", "-P", "--item-id", "fixed")
        assert code == 0
        assert json.loads(out)["items"][0]["payload"] == entry("fixed", "May day")


class SearchOptionTests:
    @pytest_twisted.ensureDeferred
    async def test_full_text(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-f", "APPLE") == ["recent"]

    @pytest_twisted.ensureDeferred
    async def test_phrase(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-f", "may day", "--phrase") == ["fixed"]
        assert await found(capsys, monkeypatch, "-f", "day may", "--phrase") == []

    @pytest_twisted.ensureDeferred
    async def test_prefix(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-f", "pe", "--prefix") == ["old"]

    @pytest_twisted.ensureDeferred
    async def test_hostile_text(self, data, capsys, monkeypatch) -> None:
        for text in ('"', "*", "NEAR", "AND", "(", "it's", "v1.2", "pubsub-cache", ""):
            code, _, err = await li(capsys, monkeypatch, "-f", text)
            assert code == 0, (text, err)

    @pytest_twisted.ensureDeferred
    async def test_other_profile(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-f", "apple", "-p", "bob") == ["bob-1"]
        assert await found(capsys, monkeypatch, "--profiles", "bob") == ["bob-1"]

    @pytest_twisted.ensureDeferred
    async def test_node_filters(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-s", SERVICE, "-n", BLOG, "-t", "blog",
                           "--item-id", "old") == ["old"]
        assert await found(capsys, monkeypatch, "-t", "tune") == []
        assert await found(capsys, monkeypatch, "-S", "comment") == []

    @pytest_twisted.ensureDeferred
    async def test_order(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-o", "published", "desc") == [
            "recent", "old", "fixed",
        ]
        assert await found(capsys, monkeypatch, "-o", "title") == ["fixed", "old", "recent"]
        assert await found(capsys, monkeypatch, "-o", "created", "asc") == [
            "recent", "old", "fixed",
        ]

    @pytest_twisted.ensureDeferred
    async def test_order_by_relevance(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-f", "apple", "-o", "relevance") == ["recent"]


class FilterOptionTests:
    @pytest_twisted.ensureDeferred
    async def test_relative_dates(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-F", "published", "gt", "-7 days") == ["recent"]
        assert await found(
            capsys, monkeypatch, "-F", "published", "lt", "2 weeks ago", "-o", "item_id"
        ) == ["fixed", "old"]
        assert await found(capsys, monkeypatch, "-F", "published", "gt", "-2 h") == []
        assert await found(capsys, monkeypatch, "-F", "published", "ge", "now") == []

    @pytest_twisted.ensureDeferred
    async def test_relative_date_bounds(self, data, capsys, monkeypatch) -> None:
        assert await found(
            capsys, monkeypatch, "-F", "published", "between", '["-30 days", "-10 days"]'
        ) == ["old"]

    @pytest_twisted.ensureDeferred
    async def test_iso_dates(self, data, capsys, monkeypatch) -> None:
        assert await found(
            capsys, monkeypatch, "-F", "published", "lt", "2024-05-02T00:00:00+00:00"
        ) == ["fixed"]
        assert await found(
            capsys, monkeypatch, "-F", "published", "eq", "2024-05-01T12:00:00+02:00"
        ) == ["fixed"]

    @pytest_twisted.ensureDeferred
    async def test_posix_seconds(self, data, capsys, monkeypatch) -> None:
        assert await found(
            capsys, monkeypatch, "-F", "published", "le", str(FIXED_DATE)
        ) == ["fixed"]

    @pytest_twisted.ensureDeferred
    async def test_date_key_option(self, data, capsys, monkeypatch) -> None:
        # Without --date-key, "-2 days" is text, which no number equals.
        assert await found(capsys, monkeypatch, "-F", "seen", "gt", "-2 days") == []
        assert await found(
            capsys, monkeypatch, "-F", "seen", "gt", "-2 days", "--date-key", "seen"
        ) == ["recent"]

    @pytest_twisted.ensureDeferred
    async def test_paths(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-F", '["a.b"]', "eq", "1") == ["recent"]
        assert await found(capsys, monkeypatch, "-F", "a.b", "eq", "1") == []
        assert await found(
            capsys, monkeypatch, "-F", "links.0.href", "eq", "https://example.org/r"
        ) == ["recent"]
        assert await found(capsys, monkeypatch, "-F", '["0"]', "exists", "true") == ["old"]

    @pytest_twisted.ensureDeferred
    async def test_values(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-F", "draft", "eq", "true") == ["fixed"]
        assert await found(capsys, monkeypatch, "-F", "rating", "eq", "5") == ["fixed"]
        assert await found(capsys, monkeypatch, "-F", "rating", "eq", '"5"') == []
        assert await found(capsys, monkeypatch, "-F", "title", "eq", "May day") == ["fixed"]
        # Python's json module reads NaN as a float, which is not JSON.
        assert await found(capsys, monkeypatch, "-F", "title", "eq", "NaN") == []

    @pytest_twisted.ensureDeferred
    async def test_list_values(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-F", "tags", "overlap", "xmpp") == ["recent"]
        assert await found(
            capsys, monkeypatch, "-F", "tags", "ioverlap", '["XMPP", "misc"]', "-o", "item_id"
        ) == ["fixed", "old", "recent"]
        assert await found(
            capsys, monkeypatch, "-F", "author", "in", '["Carol", "Dave"]'
        ) == ["fixed"]

    @pytest_twisted.ensureDeferred
    async def test_like_takes_text(self, data, capsys, monkeypatch) -> None:
        assert await found(capsys, monkeypatch, "-F", "title", "like", "May%") == ["fixed"]
        assert await found(capsys, monkeypatch, "-F", "title", "ilike", "%APPLE") == ["recent"]

    @pytest_twisted.ensureDeferred
    async def test_several_filters(self, data, capsys, monkeypatch) -> None:
        assert await found(
            capsys, monkeypatch, "-F", "author", "eq", "Alice", "-F", "published", "lt", "-7 days"
        ) == ["old"]


class ErrorTests:
    @pytest_twisted.ensureDeferred
    async def test_unknown_operator(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "-F", "title", "contains", "x")
        assert "unknown operator 'contains'" in line
        assert "ilike" in line

    @pytest_twisted.ensureDeferred
    async def test_invalid_json_path(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "-F", '["a.b"', "eq", "1")
        assert "invalid path '[\"a.b\"'" in line

    @pytest_twisted.ensureDeferred
    async def test_empty_key(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "-F", "a..b", "eq", "1")
        assert "empty key" in line

    @pytest_twisted.ensureDeferred
    async def test_invalid_date(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "-F", "published", "gt", "someday")
        assert "invalid date 'someday'" in line
        assert "-F published gt someday" in line

    @pytest_twisted.ensureDeferred
    async def test_invalid_date_unit(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "-F", "published", "gt", "-3 fortnights")
        assert "unknown unit 'fortnights'" in line

    @pytest_twisted.ensureDeferred
    async def test_between_needs_two_bounds(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "-F", "rating", "between", "5")
        assert "list of two bounds" in line

    @pytest_twisted.ensureDeferred
    async def test_exists_needs_boolean(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "-F", "title", "exists", "maybe")
        assert "use true or false" in line

    @pytest_twisted.ensureDeferred
    async def test_invalid_order(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "-o", "title", "sideways")
        assert "invalid order -o title sideways" in line

    @pytest_twisted.ensureDeferred
    async def test_relevance_needs_full_text(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "-o", "relevance")
        assert "needs a full-text search" in line

    @pytest_twisted.ensureDeferred
    async def test_phrase_and_prefix_exclusive(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "-f", "a", "--phrase", "--prefix")
        assert "not allowed with argument" in line

    @pytest_twisted.ensureDeferred
    async def test_limit_above_maximum(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "-l", "5000")
        assert "above the maximum of 1000" in line

    @pytest_twisted.ensureDeferred
    async def test_unknown_profile(self, data, capsys, monkeypatch) -> None:
        line = await error(capsys, monkeypatch, "--profiles", "nobody")
        assert "profile(s) not found: nobody" in line
