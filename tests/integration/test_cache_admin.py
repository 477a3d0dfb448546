"""Administration of the pubsub cache through li against the session's Prosody.

One daemon (BackendRunner) with two profiles: "pub" publishes a microblog on
its PEP service, "reader" reads it, which caches it.
"""

from __future__ import annotations

import uuid

import pytest

from libervia.testing.backend import BackendRunner

NODE = "urn:xmpp:microblog:0"
PASSWORD_ENV = "CACHE_ADMIN_PASSWORD"
POSTS = ("One", "Two", "Three")


@pytest.fixture(scope="module")
def backend(tmp_path_factory, prosody):
    runner = BackendRunner(tmp_path_factory.mktemp("cache-admin"))
    suffix = uuid.uuid4().hex[:6]
    runner.jids = {}
    try:
        for profile in ("pub", "reader"):
            user = f"{profile}{suffix}"
            prosody.register(user, "admin-password")
            runner.jids[profile] = f"{user}@{prosody.domain}"
            runner.li(
                "profile", "create", profile, "-j", runner.jids[profile],
                "--host", prosody.host, "--port", str(prosody.port),
                "--ca-file", str(prosody.ca_file), "--password-env", PASSWORD_ENV,
                env={PASSWORD_ENV: "admin-password"},
            )
            runner.li("profile", "connect", profile)
        for title in POSTS:
            runner.li("blog", "set", "-p", "pub", "-t", title, "-c", f"{title} post")
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


@pytest.fixture
def synced(backend):
    """Make sure the reader has the publisher's blog synchronised."""
    if _cache_state(backend) != "COMPLETED":
        backend.li("pubsub", "get", "-s", backend.jids["pub"], "-n", NODE, "-p", "reader")
        backend.wait_for(
            lambda: _cache_state(backend) == "COMPLETED", what="the blog to be synchronised"
        )
    return backend


class CacheAdminTests:
    def test_stats_after_sync(self, synced):
        stats = synced.li_json("pubsub", "cache", "stats", "-p", "reader")
        assert stats["profiles"] == ["reader"]
        assert stats["nodes"]["by_state"] == {"COMPLETED": 1}
        assert stats["nodes"]["by_type"] == {"blog": 1}
        assert stats["items"]["total"] == len(POSTS)
        assert stats["database"]["size"] > 0

    def test_stats_counts_hits(self, synced):
        before = synced.li_json("pubsub", "cache", "stats", "-p", "reader")
        synced.li("pubsub", "get", "-s", synced.jids["pub"], "-n", NODE, "-p", "reader")
        after = synced.li_json("pubsub", "cache", "stats", "-p", "reader")
        assert after["hits"] == before["hits"] + 1

    def test_stats_readable(self, synced):
        out = synced.li("pubsub", "cache", "stats", "-a").stdout
        assert "COMPLETED" in out
        assert "database size:" in out
        assert "cache hits:" in out

    def test_stats_type_filter(self, synced):
        stats = synced.li_json("pubsub", "cache", "stats", "-p", "reader", "-t", "no-such-type")
        assert stats["nodes"]["total"] == 0

    def test_purge_by_node(self, synced):
        out = synced.li_json("pubsub", "cache", "purge", "-p", "reader", "-n", NODE)
        assert out["node_count"] == 1
        assert out["item_count"] == len(POSTS)
        assert _cache_state(synced) is None

    def test_purge_by_type(self, synced):
        out = synced.li("pubsub", "cache", "purge", "-p", "reader", "-t", "blog").stdout
        assert f"1 node(s) and {len(POSTS)} item(s) deleted" in out
        assert _cache_state(synced) is None

    def test_purge_other_type_keeps(self, synced):
        out = synced.li_json("pubsub", "cache", "purge", "-p", "reader", "-t", "no-such-type")
        assert out["node_count"] == 0
        assert _cache_state(synced) == "COMPLETED"

    def test_purge_older_than(self, synced):
        week_ago = synced.li_json(
            "pubsub", "cache", "purge", "-a", "--created-before", "-7 days"
        )
        assert week_ago["node_count"] == 0
        now = synced.li_json("pubsub", "cache", "purge", "-a", "--created-before", "now")
        assert [node["node"] for node in now["nodes"]] == [NODE]
        assert _cache_state(synced) is None

    def test_purged_node_served_again(self, synced):
        synced.li("pubsub", "cache", "purge", "-p", "reader", "-n", NODE)
        live = synced.li_json("pubsub", "get", "-s", synced.jids["pub"], "-n", NODE,
                              "-p", "reader")
        assert live["metadata"]["from_cache"] is False

    def test_sync_after_reset(self, synced):
        service = synced.jids["pub"]
        synced.li("pubsub", "cache", "reset", "-s", service, "-n", NODE, "-p", "reader")
        out = synced.li("pubsub", "cache", "sync", "-s", service, "-n", NODE, "-p", "reader")
        assert f"synchronised: {len(POSTS)} item(s) cached" in out.stdout
        assert _cache_state(synced) == "COMPLETED"

    def test_sync_json(self, synced):
        result = synced.li_json(
            "pubsub", "cache", "sync", "-s", synced.jids["pub"], "-n", NODE, "-p", "reader"
        )
        assert result["sync_state"] == "COMPLETED"
        assert result["items"] == len(POSTS)
        assert result["type"] == "blog"

    def test_sync_no_wait(self, synced):
        result = synced.li_json(
            "pubsub", "cache", "sync", "-s", synced.jids["pub"], "-n", NODE, "-p", "reader",
            "--no-wait",
        )
        assert result["sync_state"] == "IN_PROGRESS"
        synced.wait_for(lambda: _cache_state(synced) == "COMPLETED", what="the sync")

    def test_reset_needs_node_or_filter(self, backend):
        result = backend.li("pubsub", "cache", "reset", "-p", "reader", expect=1)
        assert "name the node to reset with -n NODE" in result.stderr

    def test_invalid_date(self, backend):
        result = backend.li(
            "pubsub", "cache", "purge", "-a", "--created-before", "last tuesday", expect=1
        )
        assert "invalid date 'last tuesday'" in result.stderr
