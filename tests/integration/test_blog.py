"""Microblogging through li against real Prosody and ejabberd: publish, read live and cached."""

from __future__ import annotations

import uuid

import pytest

from libervia.testing.backend import BackendRunner

NODE = "urn:xmpp:microblog:0"
PASSWORD_ENV = "BLOG_TEST_PASSWORD"


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def server(request):
    """Return the session's Prosody, then its ejabberd."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def backend(tmp_path_factory, server):
    prosody = server
    runner = BackendRunner(tmp_path_factory.mktemp("blog"))
    suffix = uuid.uuid4().hex[:6]
    jids = {}
    try:
        for profile in ("author", "owner", "reader"):
            user = f"{profile}{suffix}"
            prosody.register(user, "blog-password")
            jids[profile] = f"{user}@{prosody.domain}"
            runner.li(
                "profile", "create", profile, "-j", jids[profile],
                "--host", prosody.host, "--port", str(prosody.port),
                "--ca-file", str(prosody.ca_file), "--password-env", PASSWORD_ENV,
                env={PASSWORD_ENV: "blog-password"},
            )
            runner.li("profile", "connect", profile)
        runner.jids = jids
        yield runner
    finally:
        runner.stop()


def _titles(result: dict) -> list[str]:
    return [post.get("title") for post in result["items"]]


class BlogTests:
    def test_posts_kept_on_new_node(self, backend):
        for title in ("First", "Second", "Third"):
            backend.li("blog", "set", "-p", "author", "-t", title, "-c", f"{title} post")
        author = backend.jids["author"]
        live = backend.li_json("blog", "get", "-s", author, "-p", "reader")
        assert _titles(live) == ["First", "Second", "Third"]
        assert live["metadata"]["from_cache"] is False

        def cached():
            result = backend.li_json("blog", "get", "-s", author, "-p", "reader")
            return result if result["metadata"]["from_cache"] else None

        result = backend.wait_for(cached, what="the blog served from the cache")
        assert _titles(result) == ["First", "Second", "Third"]

    def test_existing_node_config_kept(self, backend):
        owner = backend.jids["owner"]
        backend.li(
            "pubsub", "node", "create", "-s", owner, "-n", NODE, "-p", "owner",
            "-o", "pubsub#access_model=open", "-o", "pubsub#max_items=10",
        )
        out = backend.li_json("blog", "set", "-p", "owner", "-t", "Kept", "-c", "body")
        assert out["item_id"]
        # Prosody rejects publish options that differ from the node's
        # configuration, ejabberd the max_items field; the post goes out with
        # fewer options.
        assert "rejected publish options" in backend.log_file.read_text()
        posts = backend.li_json("blog", "get", "-s", owner, "-p", "reader", "-C")
        assert _titles(posts) == ["Kept"]

    def test_unknown_blog_error_explains(self, backend):
        result = backend.li(
            "blog", "get", "-s", f"nobody-{uuid.uuid4().hex[:6]}@localhost", "-p", "reader",
            expect=1,
        )
        assert "may not exist" in result.stderr
