"""Microblogging through li against real Prosody 0.12 and ejabberd 23.01.

One daemon per server runs four profiles. ``author`` publishes a blog on its
PEP service, ``owner`` has a blog node created beforehand, and ``reader``
reads and comments. ``admin`` uses the account allowed to create nodes on
the server's pubsub service, because on Prosody only admins may. Posts are
published, edited, commented and retracted with ``li blog``, read live and
from the cache, and checked both as microblog data and as the Atom XML
stored on the server.

Server differences checked here:

- ejabberd puts the publisher's JID on the items of a node configured with
  ``pubsub#itemreply=publisher`` (as comments nodes are), so a comment's
  author is verified. Prosody sends no publisher and the author stays
  unverified.
- Both reject the retraction of a post that does not exist with
  item-not-found.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from libervia.testing.backend import BackendRunner
from libervia.testing.ejabberd import EjabberdServer

NODE = "urn:xmpp:microblog:0"
COMMENTS_PREFIX = "urn:xmpp:microblog:0:comments/"
NS_ATOM = "http://www.w3.org/2005/Atom"
PASSWORD_ENV = "BLOG_TEST_PASSWORD"
# The account that the session's servers make admin of their pubsub service.
PUBSUB_ADMIN = "alice"


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def server(request):
    """Return the session's Prosody, then its ejabberd."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def backend(tmp_path_factory, server):
    runner = BackendRunner(tmp_path_factory.mktemp("blog"))
    suffix = uuid.uuid4().hex[:6]
    jids = {}
    try:
        for profile in ("author", "owner", "reader"):
            user = f"{profile}{suffix}"
            server.register(user, "blog-password")
            jids[profile] = f"{user}@{server.domain}"
            runner.li(
                "profile", "create", profile, "-j", jids[profile],
                "--host", server.host, "--port", str(server.port),
                "--ca-file", str(server.ca_file), "--password-env", PASSWORD_ENV,
                env={PASSWORD_ENV: "blog-password"},
            )
            runner.li("profile", "connect", profile)
        runner.li(
            "profile", "create", "admin", "-j", f"{PUBSUB_ADMIN}@{server.domain}",
            "--host", server.host, "--port", str(server.port),
            "--ca-file", str(server.ca_file), "--password-env", PASSWORD_ENV,
            env={PASSWORD_ENV: server.accounts[PUBSUB_ADMIN]},
        )
        runner.li("profile", "connect", "admin")
        runner.jids = jids
        runner.server_kind = "ejabberd" if isinstance(server, EjabberdServer) else "prosody"
        yield runner
    finally:
        runner.stop()


def _titles(result: dict) -> list[str]:
    return [post.get("title") for post in result["items"]]


def _post(backend: BackendRunner, item_id: str, profile: str = "reader") -> dict[str, Any]:
    """Return the author's post ``item_id`` as microblog data, read from the service."""
    result = backend.li_json(
        "blog", "get", "-s", backend.jids["author"], "-i", item_id, "-C", "-p", profile
    )
    posts = [post for post in result["items"] if post["id"] == item_id]
    assert len(posts) == 1, result
    return posts[0]


def _raw_item(backend: BackendRunner, service: str, node: str, item_id: str) -> str:
    """Return the XML of one item as the service stores it."""
    result = backend.li_json(
        "pubsub", "get", "-s", service, "-n", node, "-i", item_id, "--no-cache", "-p", "reader"
    )
    assert len(result["items"]) == 1, result
    return result["items"][0]


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
        # The cache stores the parsed data: the posts it serves are the same.
        assert result["items"] == live["items"]

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


class PostDataTests:
    def test_fields_read_back(self, backend):
        item_id = f"fields-{uuid.uuid4().hex[:8]}"
        backend.li(
            "blog", "set", "-p", "author", "-i", item_id, "-t", "Caf\u00e9 r\u00e9sum\u00e9",
            "-T", "xmpp", "-T", "caf\u00e9", "-l", "fr", "-x",
            "-c", '<p style="color: red; background: url(http://tracker.example/)" '
            'onclick="steal()">Bonjour <b>monde</b></p><script>steal()</script>'
            '<a href="javascript:steal()">lien</a>',
        )
        post = _post(backend, item_id)
        assert post["title"] == "Caf\u00e9 r\u00e9sum\u00e9"
        assert post["content_xhtml"] == (
            '<p style="color: red">Bonjour <b>monde</b></p><a>lien</a>'
        )
        assert post["content"] == "Bonjour monde\nlien"
        assert post["tags"] == ["xmpp", "caf\u00e9"]
        assert post["language"] == "fr"
        assert post["author_jid"] == backend.jids["author"]
        assert post["published"] == post["updated"]
        assert abs(post["published"] - time.time()) < 120
        assert post["date_source"] == "entry"

    def test_server_stores_sanitised_atom(self, backend):
        item_id = f"atom-{uuid.uuid4().hex[:8]}"
        backend.li(
            "blog", "set", "-p", "author", "-i", item_id, "-x",
            "-c", '<img src="x" onerror="steal()"><iframe src="http://evil.example/"></iframe>ok',
        )
        xml = _raw_item(backend, backend.jids["author"], NODE, item_id)
        assert f"<entry xmlns='{NS_ATOM}'" in xml
        assert "type='xhtml'" in xml
        assert "onerror" not in xml
        assert "iframe" not in xml
        assert "evil.example" not in xml
        assert f"<uri>xmpp:{backend.jids['author']}</uri>" in xml

    def test_edit_keeps_published_date(self, backend):
        item_id = f"edit-{uuid.uuid4().hex[:8]}"
        backend.li("blog", "set", "-p", "author", "-i", item_id, "-t", "Draft", "-c", "v1")
        first = _post(backend, item_id)
        time.sleep(1.1)
        backend.li("blog", "set", "-p", "author", "-i", item_id, "-t", "Final", "-c", "v2")
        edited = _post(backend, item_id)
        assert edited["title"] == "Final"
        assert edited["content"] == "v2"
        assert edited["published"] == first["published"]
        assert edited["updated"] > first["updated"]
        assert edited["atom_id"] == first["atom_id"]

    def test_delete_post(self, backend):
        item_id = f"gone-{uuid.uuid4().hex[:8]}"
        backend.li("blog", "set", "-p", "author", "-i", item_id, "-c", "short-lived")
        out = backend.li("blog", "delete", "-p", "author", "-i", item_id)
        assert out.stdout.startswith(f"post {item_id} retracted from node {NODE} of ")
        author = backend.jids["author"]
        posts = backend.li_json("blog", "get", "-s", author, "-C", "-p", "reader")
        assert item_id not in [post["id"] for post in posts["items"]]

    def test_delete_missing_post(self, backend):
        missing = f"never-{uuid.uuid4().hex[:8]}"
        backend.li("blog", "set", "-p", "author", "-c", "the node exists")
        result = backend.li("blog", "delete", "-p", "author", "-i", missing, expect=1)
        assert result.stderr.startswith("li: error: retracting items on ")
        assert "item-not-found" in result.stderr


class CommentsTests:
    def test_comment_on_post(self, backend):
        author = backend.jids["author"]
        reader = backend.jids["reader"]
        item_id = f"commented-{uuid.uuid4().hex[:8]}"
        out = backend.li(
            "blog", "set", "-p", "author", "-i", item_id, "-t", "Talk to me", "-c", "...",
            "--comments",
        )
        comments_node = COMMENTS_PREFIX + item_id
        assert out.stdout.splitlines()[0] == item_id
        assert out.stdout.splitlines()[1].startswith(f"comments: xmpp:{author}?;node=")

        post = _post(backend, item_id)
        assert post["comments"] == [
            {
                "uri": f"xmpp:{author}?;node=urn%3Axmpp%3Amicroblog%3A0%3Acomments%2F{item_id}",
                "service": author,
                "node": comments_node,
            }
        ]

        # The reader comments on the author's node: the node is open to publishers.
        backend.li(
            "blog", "set", "-p", "reader", "-s", author, "-n", comments_node,
            "-t", "Nice post", "-c", "I agree",
        )
        result = backend.li_json(
            "blog", "get", "-s", author, "-i", item_id, "--comments", "-C", "-p", "reader"
        )
        comments = result["items"][0]["comments"][0]["items"]
        assert [comment["title"] for comment in comments] == ["Nice post"]
        assert comments[0]["author_jid"] == reader
        # ejabberd names the publisher on items of a node with itemreply set
        # to publisher. Prosody 0.12 does not, so nothing can be verified.
        assert comments[0]["author_jid_verified"] is (backend.server_kind == "ejabberd")

        text = backend.li(
            "blog", "get", "-s", author, "-i", item_id, "--comments", "-C", "-p", "reader"
        ).stdout
        assert "\n    Nice post\n" in text
        assert "\n    I agree\n" in text

    def test_comments_node_classified(self, backend):
        author = backend.jids["author"]
        item_id = f"classified-{uuid.uuid4().hex[:8]}"
        backend.li("blog", "set", "-p", "author", "-i", item_id, "-c", "x", "--comments")
        comments_node = COMMENTS_PREFIX + item_id
        backend.li(
            "blog", "set", "-p", "reader", "-s", author, "-n", comments_node, "-c", "first!"
        )
        # A first read lets the cache analyse the node.
        backend.li("blog", "get", "-s", author, "-n", comments_node, "-p", "reader")
        cached = backend.li_json(
            "pubsub", "cache", "get", "-s", author, "-n", comments_node, "-p", "reader"
        )
        assert cached["node"]["type"] == "blog"
        assert cached["node"]["subtype"] == "comment"

    def test_edit_keeps_comments_node(self, backend):
        item_id = f"kept-{uuid.uuid4().hex[:8]}"
        backend.li("blog", "set", "-p", "author", "-i", item_id, "-c", "v1", "--comments")
        first = _post(backend, item_id)
        backend.li("blog", "set", "-p", "author", "-i", item_id, "-c", "v2")
        edited = _post(backend, item_id)
        assert edited["content"] == "v2"
        assert edited["comments"] == first["comments"]

    def test_delete_with_comments(self, backend):
        author = backend.jids["author"]
        item_id = f"cleanup-{uuid.uuid4().hex[:8]}"
        backend.li("blog", "set", "-p", "author", "-i", item_id, "-c", "x", "--comments")
        comments_node = COMMENTS_PREFIX + item_id
        result = backend.li_json(
            "blog", "delete", "-p", "author", "-i", item_id, "--delete-comments"
        )
        assert result["item_id"] == item_id
        assert len(result["deleted_comments"]) == 1
        assert result["deleted_comments"][0].endswith("%2F" + item_id)
        deleted_node_read = backend.li(
            "pubsub", "get", "-s", author, "-n", comments_node, "--no-cache", "-p", "author",
            expect=1,
        )
        assert "item-not-found" in deleted_node_read.stderr

    def test_comments_on_pubsub_service(self, backend, server):
        item_id = f"service-{uuid.uuid4().hex[:8]}"
        out = backend.li_json(
            "blog", "set", "-p", "admin", "-i", item_id, "-c", "x", "--comments",
            "--comments-service", server.pubsub_service,
        )
        assert out["comments"][0]["service"] == server.pubsub_service
        assert out["comments"][0]["node"] == COMMENTS_PREFIX + item_id
        backend.li(
            "blog", "set", "-p", "reader", "-s", server.pubsub_service,
            "-n", COMMENTS_PREFIX + item_id, "-c", "on the service",
        )
        comments = backend.li_json(
            "blog", "get", "-s", server.pubsub_service, "-n", COMMENTS_PREFIX + item_id,
            "-C", "-p", "admin",
        )
        assert [comment["content"] for comment in comments["items"]] == ["on the service"]
