"""End to end: the daemon caches a real microblog from Prosody and serves it from storage.

Everything goes through the user's tools: ``li`` commands and
``libervia-backend``, a real Prosody on 127.0.0.1, and the database: the
default SQLite file, then a PostgreSQL database selected with LIBERVIA_DB_URL.
"""

from __future__ import annotations

import uuid

import pytest

from libervia.testing.backend import BackendRunner
from libervia.testing.samples import blog_items

NODE = "urn:xmpp:microblog:0"
PASSWORD_ENV = "E2E_PASSWORD"


def _item_ids(result: dict) -> list[str]:
    from twisted.words.xish import domish  # noqa: F401

    from libervia.backend.plugins.plugin_xep_0060 import item_from_xml

    return [item_from_xml(xml)["id"] for xml in result["items"]]


@pytest.fixture(scope="module")
def accounts(prosody, module_db_url):
    # New accounts for each database engine, so each run starts from an empty blog.
    suffix = uuid.uuid4().hex[:6]
    names = {"pub": f"pub{suffix}", "reader": f"reader{suffix}"}
    passwords = {key: f"pw-{key}-{suffix}" for key in names}
    for key, user in names.items():
        prosody.register(user, passwords[key])
    return {
        key: {"jid": f"{user}@{prosody.domain}", "password": passwords[key]}
        for key, user in names.items()
    }


@pytest.fixture(scope="module")
def backend(tmp_path_factory, prosody, accounts, module_db_url):
    extra_env = {}
    if not module_db_url.startswith("sqlite"):
        extra_env["LIBERVIA_DB_URL"] = module_db_url
    runner = BackendRunner(tmp_path_factory.mktemp("e2e"), extra_env=extra_env)
    try:
        for profile, account in accounts.items():
            runner.li(
                "profile", "create", profile, "-j", account["jid"],
                "--host", prosody.host, "--port", str(prosody.port),
                "--ca-file", str(prosody.ca_file), "--password-env", PASSWORD_ENV,
                env={PASSWORD_ENV: account["password"]},
            )
            runner.li("profile", "connect", profile)
        yield runner
    finally:
        runner.stop()


@pytest.fixture(scope="module")
def blog(backend, accounts):
    """Publish the sample blog on the publisher's PEP node; return its item ids."""
    service = accounts["pub"]["jid"]
    backend.li(
        "pubsub", "node", "create", "-s", service, "-n", NODE,
        "-o", "pubsub#access_model=open", "-o", "pubsub#max_items=100", "-p", "pub",
    )
    ids = []
    for xml in blog_items():
        out = backend.li_json("pubsub", "set", "-s", service, "-n", NODE, "-p", "pub", input=xml)
        ids.extend(out["item_ids"])
    return ids


def _stats(backend: BackendRunner) -> dict:
    return backend.li_json("debug", "stats", "-p", "reader")


def _get(backend: BackendRunner, service: str, *args: str) -> dict:
    return backend.li_json("pubsub", "get", "-s", service, "-n", NODE, "-p", "reader", *args)


def _wait_synced(backend: BackendRunner, service: str) -> dict:
    def synced():
        result = backend.li(
            "pubsub", "cache", "get", "-s", service, "-n", NODE, "-p", "reader",
            "-O", "json", expect=None,
        )
        if result.returncode != 0:
            return None
        data = result.json()
        return data if data["node"]["sync_state"] == "COMPLETED" else None

    return backend.wait_for(synced, what="the node to be synchronised")


class EndToEndTests:
    """One scenario in order: first get, cached get, notifications, bypass, restart."""

    def test_first_get_from_network_starts_sync(self, backend, accounts, blog):
        service = accounts["pub"]["jid"]
        result = _get(backend, service)
        assert _item_ids(result) == blog
        assert result["metadata"]["from_cache"] is False
        cached = _wait_synced(backend, service)
        assert [item["id"] for item in cached["items"]] == blog

    def test_cached_get_sends_no_iq(self, backend, accounts, blog):
        service = accounts["pub"]["jid"]
        live = _get(backend, service, "-C")
        before = _stats(backend)
        cached = _get(backend, service)
        after = _stats(backend)
        assert after["iq_sent"] == before["iq_sent"]
        assert cached["metadata"]["from_cache"] is True
        assert cached["items"] == live["items"]

    def test_cached_get_max_items_and_ids(self, backend, accounts, blog):
        service = accounts["pub"]["jid"]
        live_max = _get(backend, service, "-C", "-M", "3")
        cached_max = _get(backend, service, "-M", "3")
        assert cached_max["items"] == live_max["items"]
        assert cached_max["metadata"]["from_cache"] is True
        wanted = [blog[1], blog[4], "no-such-item"]
        cached_ids = _get(backend, service, "-i", *wanted)
        assert _item_ids(cached_ids) == [blog[1], blog[4]]

    def test_cached_items_parsed_as_microblog(self, backend, accounts, blog):
        service = accounts["pub"]["jid"]
        cached = _wait_synced(backend, service)
        parsed = {item["id"]: item["parsed"] for item in cached["items"]}
        first = parsed["xep0277-ex1-0"]
        assert first["title"] == "hanging out at the Café Napolitano"
        assert first["published"] == 1210271402.0
        assert parsed["atom-entry_category_label"]["tags"] == ["atom10"]
        posts = backend.li_json("blog", "get", "-s", service, "-p", "reader")
        assert [post["id"] for post in posts["items"]] == blog

    def test_published_item_cached_from_notification(self, backend, accounts, blog):
        service = accounts["pub"]["jid"]
        item = (
            "<item id='late-post'><entry xmlns='http://www.w3.org/2005/Atom'>"
            "<title>Published after the sync</title><id>urn:uuid:late-post</id>"
            "<published>2024-01-02T03:04:05+02:00</published></entry></item>"
        )
        backend.li_json("pubsub", "set", "-s", service, "-n", NODE, "-p", "pub", input=item)
        before = _stats(backend)

        def cached_late_post():
            items = backend.li_json("pubsub", "cache", "get", "-s", service, "-n", NODE,
                                    "-p", "reader")["items"]
            return [i for i in items if i["id"] == "late-post"]

        found = backend.wait_for(cached_late_post, what="the notified item in the cache")
        assert found[0]["parsed"]["title"] == "Published after the sync"
        after = _stats(backend)
        # The payload came with the notification: no request was needed.
        assert after["iq_sent"] == before["iq_sent"]
        cached = _get(backend, service)
        assert _item_ids(cached)[-1] == "late-post"

    def test_retracted_item_removed_from_cache(self, backend, accounts, blog):
        service = accounts["pub"]["jid"]
        backend.li("pubsub", "retract", "-s", service, "-n", NODE, "-i", blog[0], "-p", "pub")

        def gone():
            items = backend.li_json("pubsub", "cache", "get", "-s", service, "-n", NODE,
                                    "-p", "reader")["items"]
            return blog[0] not in [i["id"] for i in items]

        backend.wait_for(gone, what="the retracted item to leave the cache")
        cached = _get(backend, service)
        live = _get(backend, service, "-C")
        assert blog[0] not in _item_ids(cached)
        assert cached["items"] == live["items"]

    def test_no_cache_always_asks_server(self, backend, accounts, blog):
        service = accounts["pub"]["jid"]
        for _ in range(2):
            before = _stats(backend)
            result = _get(backend, service, "--no-cache")
            after = _stats(backend)
            assert after["iq_sent"] == before["iq_sent"] + 1
            assert result["metadata"]["from_cache"] is False

    def test_cache_survives_restart(self, backend, accounts, blog):
        service = accounts["pub"]["jid"]
        expected = _get(backend, service)["items"]
        backend.backend("stop")
        status = backend.backend("status", expect=3)
        assert "not running" in status.stdout
        # li starts the daemon again by itself.
        backend.li("profile", "connect", "reader")
        backend.li("profile", "connect", "pub")
        before = _stats(backend)
        cached = _get(backend, service)
        after = _stats(backend)
        assert cached["items"] == expected
        assert cached["metadata"]["from_cache"] is True
        assert after["iq_sent"] == before["iq_sent"]


    def test_cache_reset_resyncs_node(self, backend, accounts, blog):
        service = accounts["pub"]["jid"]
        backend.li("pubsub", "cache", "reset", "-s", service, "-n", NODE, "-p", "reader")
        missing = backend.li(
            "pubsub", "cache", "get", "-s", service, "-n", NODE, "-p", "reader", expect=1
        )
        assert "is not in the cache" in missing.stderr
        live = _get(backend, service)
        assert live["metadata"]["from_cache"] is False
        _wait_synced(backend, service)
        cached = _get(backend, service)
        assert cached["metadata"]["from_cache"] is True
        assert cached["items"] == live["items"]


class BadInputTests:
    """Errors met on the end-to-end path are clear, and the daemon keeps running."""

    def _assert_running(self, backend: BackendRunner) -> None:
        assert backend.backend("status").returncode == 0

    def test_unknown_profile(self, backend):
        result = backend.li("pubsub", "get", "-s", "a@b", "-n", NODE, "-p", "nobody", expect=1)
        assert "profile 'nobody' not found" in result.stderr
        self._assert_running(backend)

    def test_wrong_password(self, backend, prosody, accounts):
        backend.li(
            "profile", "create", "wrongpw", "-j", accounts["reader"]["jid"],
            "--host", prosody.host, "--port", str(prosody.port),
            "--ca-file", str(prosody.ca_file), "--password-env", PASSWORD_ENV,
            env={PASSWORD_ENV: "not-the-password"},
        )
        result = backend.li("profile", "connect", "wrongpw", expect=1)
        assert "authentication" in result.stderr
        assert "not-the-password" not in result.stderr
        self._assert_running(backend)
        log = backend.log_file.read_text()
        assert "not-the-password" not in log

    def test_unreachable_server(self, backend, prosody, accounts):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed_port = sock.getsockname()[1]
        backend.li(
            "profile", "create", "unreachable", "-j", accounts["reader"]["jid"],
            "--host", "127.0.0.1", "--port", str(closed_port),
            "--password-env", PASSWORD_ENV, env={PASSWORD_ENV: "x"},
        )
        result = backend.li("profile", "connect", "unreachable", expect=1)
        assert "connection refused" in result.stderr
        assert str(closed_port) in result.stderr
        self._assert_running(backend)

    def test_unknown_node(self, backend, accounts):
        service = accounts["pub"]["jid"]
        result = backend.li(
            "pubsub", "get", "-s", service, "-n", "no-such-node", "-p", "reader", expect=1
        )
        assert "no-such-node" in result.stderr
        # Prosody returns forbidden for a PEP node that does not exist.
        assert "failed: forbidden" in result.stderr or "item-not-found" in result.stderr
        self._assert_running(backend)

    def test_untrusted_certificate(self, backend, prosody, accounts):
        backend.li(
            "profile", "create", "untrusted", "-j", accounts["reader"]["jid"],
            "--host", prosody.host, "--port", str(prosody.port),
            "--password-env", PASSWORD_ENV, env={PASSWORD_ENV: accounts["reader"]["password"]},
        )
        result = backend.li("profile", "connect", "untrusted", expect=1)
        assert "TLS" in result.stderr
        assert "certificate" in result.stderr
        self._assert_running(backend)
