"""``li pubsub cache search`` in a real daemon, on posts published to the session's Prosody.

One daemon per database engine (SQLite, then PostgreSQL) runs three profiles:
"pub" publishes a microblog with ``li blog set``, "reader" reads it, which
makes the cache synchronise it, and "other" never reads it. The searches run
on the parsed data that the daemon's XEP-0277 parser stored, so they check
the search against real microblog data and the plugin as the daemon loads it.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from libervia.testing.backend import BackendRunner

NODE = "urn:xmpp:microblog:0"
PASSWORD_ENV = "CACHE_SEARCH_PASSWORD"
# Title, content and tags of the posts, published in this order.
POSTS = (
    ("Cheese tasting", "A café in Lyon serves comté and beaufort", ["food", "France"]),
    ("Release notes", "Version v1.2 of the pubsub-cache plugin is out", ["xmpp", "python"]),
    ("Garden diary", "The tomatoes are late this year", ["garden"]),
)


@pytest.fixture(scope="module")
def backend(tmp_path_factory, prosody, module_db_url):
    extra_env = {}
    if not module_db_url.startswith("sqlite"):
        extra_env["LIBERVIA_DB_URL"] = module_db_url
    runner = BackendRunner(tmp_path_factory.mktemp("cache-search"), extra_env=extra_env)
    suffix = uuid.uuid4().hex[:6]
    runner.jids = {}
    try:
        for profile in ("pub", "reader", "other"):
            user = f"{profile}{suffix}"
            prosody.register(user, "search-password")
            runner.jids[profile] = f"{user}@{prosody.domain}"
            runner.li(
                "profile", "create", profile, "-j", runner.jids[profile],
                "--host", prosody.host, "--port", str(prosody.port),
                "--ca-file", str(prosody.ca_file), "--password-env", PASSWORD_ENV,
                env={PASSWORD_ENV: "search-password"},
            )
            runner.li("profile", "connect", profile)
        runner.li(
            "pubsub", "node", "create", "-s", runner.jids["pub"], "-n", NODE,
            "-o", "pubsub#access_model=open", "-o", "pubsub#max_items=100", "-p", "pub",
        )
        for title, content, tags in POSTS:
            tag_options = [option for tag in tags for option in ("-T", tag)]
            runner.li("blog", "set", "-p", "pub", "-t", title, "-c", content, *tag_options)
        yield runner
    finally:
        runner.stop()


def _cache_state(backend: BackendRunner) -> str | None:
    result = backend.li(
        "pubsub", "cache", "get", "-s", backend.jids["pub"], "-n", NODE, "-p", "reader",
        "-O", "json", expect=None,
    )
    if result.returncode != 0:
        return None
    return result.json()["node"]["sync_state"]


@pytest.fixture(scope="module")
def synced(backend):
    """Return the daemon once the reader has the publisher's blog synchronised."""
    backend.li("pubsub", "get", "-s", backend.jids["pub"], "-n", NODE, "-p", "reader")
    backend.wait_for(
        lambda: _cache_state(backend) == "COMPLETED", what="the blog to be synchronised"
    )
    return backend


def search(backend: BackendRunner, *args: str, profile: str = "reader") -> dict[str, Any]:
    """Run ``li pubsub cache search ARGS -O json`` as ``profile``; return its result."""
    return backend.li_json("pubsub", "cache", "search", "-p", profile, *args)


def titles(result: dict[str, Any]) -> list[str]:
    return [item["parsed"].get("title") for item in result["items"]]


class DaemonSearchTests:
    def test_full_text(self, synced):
        result = search(synced, "-f", "cafe comte")
        assert titles(result) == ["Cheese tasting"]
        (item,) = result["items"]
        assert item["service"] == synced.jids["pub"]
        assert item["node"] == NODE
        assert item["node_type"] == "blog"

    def test_punctuated_words(self, synced):
        assert titles(search(synced, "-f", "pubsub-cache v1.2")) == ["Release notes"]
        assert search(synced, "-f", '"')["total"] == 0

    def test_tags(self, synced):
        assert titles(search(synced, "-F", "tags", "ioverlap", '["FRANCE", "garden"]',
                             "-o", "title")) == ["Cheese tasting", "Garden diary"]

    def test_published_relative(self, synced):
        assert search(synced, "-F", "published", "gt", "-1 hour")["total"] == 3
        assert search(synced, "-F", "published", "lt", "-1 day")["total"] == 0

    def test_order_by_publication(self, synced):
        result = search(synced, "-o", "published", "desc")
        assert titles(result) == [title for title, _, _ in reversed(POSTS)]

    def test_page_and_payload(self, synced):
        result = search(synced, "-o", "published", "-l", "1", "-i", "1", "-P")
        assert result["total"] == 3
        (item,) = result["items"]
        assert item["parsed"]["title"] == "Release notes"
        assert "<title" in item["payload"]
        assert "Release notes" in item["payload"]

    def test_profile_isolation(self, synced):
        assert search(synced, "-f", "tomatoes", profile="other")["total"] == 0
        result = search(synced, "-f", "tomatoes", "--profiles", "reader", "other",
                        profile="other")
        assert [item["profile"] for item in result["items"]] == ["reader"]

    def test_invalid_filter(self, synced):
        result = synced.li(
            "pubsub", "cache", "search", "-p", "reader", "-F", "title", "near", "x",
            expect=1,
        )
        assert result.stderr.startswith("li: error: unknown operator 'near'")
