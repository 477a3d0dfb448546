"""Tests of ``li blog get|set|delete`` against a bridge with stub microblog methods.

The stubs have the signatures of the XEP-0277 plugin's bridge methods, so a
parameter the CLI sends wrongly fails as invalid params. ``main`` runs in a
thread because the bridge client is blocking.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core import paths
from libervia.cli.main import main

AUTHOR = "juliet@capulet.lit"
COMMENTS_NODE = "urn:xmpp:microblog:0:comments/p1"
COMMENTS_URI = "xmpp:juliet@capulet.lit?;node=urn%3Axmpp%3Amicroblog%3A0%3Acomments%2Fp1"


class StubBlog:
    """The microblog bridge methods; records every call and serves fixed posts."""

    def __init__(self, bridge: BridgeServer) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        for name in ("mb_get", "mb_send", "mb_retract"):
            bridge.register_method(name, getattr(self, name))

    def params(self, method: str) -> list[dict[str, Any]]:
        """Return the params of every call to ``method``, in order."""
        return [params for name, params in self.calls if name == method]

    def mb_get(
        self, service: str | None = None, node: str | None = None,
        max_items: int | None = None, item_ids: list[str] | None = None,
        extra: dict | None = None, profile: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("mb_get", {
            "service": service, "node": node, "max_items": max_items, "item_ids": item_ids,
            "extra": extra, "profile": profile,
        }))
        if node == COMMENTS_NODE:
            posts = [{
                "id": "c1", "title": "Nice", "content": "I agree",
                "author_jid": "romeo@montague.lit", "author_jid_verified": False,
                "published": 1_700_000_100.0, "updated": 1_700_000_100.0,
            }]
        else:
            posts = [{
                "id": "p1", "title": "Hello", "content": "line one\nline two",
                "author": "Juliet", "author_jid": AUTHOR, "author_jid_verified": True,
                "published": 1_700_000_000.0, "updated": 1_700_003_600.0,
                "tags": ["xmpp"],
                "comments": [{"uri": COMMENTS_URI, "service": AUTHOR, "node": COMMENTS_NODE}],
            }]
        return {"items": posts, "metadata": {"service": service or AUTHOR, "node": node}}

    def mb_send(
        self, service: str | None = None, node: str | None = None,
        data: dict | None = None, profile: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("mb_send", {
            "service": service, "node": node, "data": data, "profile": profile,
        }))
        result: dict[str, Any] = {"item_id": (data or {}).get("id", "new-post")}
        if (data or {}).get("allow_comments"):
            result["comments"] = [
                {"uri": COMMENTS_URI, "service": AUTHOR, "node": COMMENTS_NODE}
            ]
        return result

    def mb_retract(
        self, service: str | None = None, node: str | None = None, item_id: str = "",
        delete_comments: bool = False, profile: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append(("mb_retract", {
            "service": service, "node": node, "item_id": item_id,
            "delete_comments": delete_comments, "profile": profile,
        }))
        return {
            "service": service or AUTHOR, "node": node or "urn:xmpp:microblog:0",
            "item_id": item_id, "deleted_comments": [COMMENTS_URI] if delete_comments else [],
        }


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point XDG_RUNTIME_DIR at a short temporary folder and clear li's variables."""
    base = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    for variable in ("LIBERVIA_PROFILE", "LIBERVIA_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    yield paths.runtime_dir()
    shutil.rmtree(base, ignore_errors=True)


@pytest_twisted.async_yield_fixture
async def blog(runtime_dir: Path) -> AsyncIterator[StubBlog]:
    """Yield the stub methods behind a started BridgeServer."""
    bridge = BridgeServer()
    stub = StubBlog(bridge)
    await bridge.start()
    yield stub
    await bridge.stop()


async def run_li(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    """Run ``li argv`` in a thread; return its exit code, stdout and stderr."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    code = await threads.deferToThread(main, ["--no-autostart", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


class BlogGetTests:
    @pytest_twisted.ensureDeferred
    async def test_item_ids(self, blog, capsys, monkeypatch) -> None:
        code, _, _ = await run_li(capsys, monkeypatch, "blog", "get", "-i", "p1", "p2")
        assert code == 0
        assert blog.params("mb_get")[0]["item_ids"] == ["p1", "p2"]

    @pytest_twisted.ensureDeferred
    async def test_post_lines(self, blog, capsys, monkeypatch) -> None:
        code, out, _ = await run_li(capsys, monkeypatch, "blog", "get")
        assert code == 0
        lines = out.splitlines()
        assert lines[2] == "Hello"
        assert " | edited " in lines[3]
        assert "by Juliet" in lines[3]
        assert "(not verified)" not in lines[3]
        assert lines[4] == f"comments: {COMMENTS_URI}"
        assert lines[5:7] == ["line one", "line two"]

    @pytest_twisted.ensureDeferred
    async def test_comments_fetched(self, blog, capsys, monkeypatch) -> None:
        code, out, _ = await run_li(capsys, monkeypatch, "blog", "get", "--comments", "-C")
        assert code == 0
        comments_call = blog.params("mb_get")[1]
        assert comments_call["service"] == AUTHOR
        assert comments_call["node"] == COMMENTS_NODE
        assert comments_call["extra"] == {"use_cache": False}
        assert "    Nice" in out.splitlines()
        assert "    I agree" in out.splitlines()
        assert any(
            line.startswith("    ") and "by romeo@montague.lit (not verified)" in line
            for line in out.splitlines()
        )

    @pytest_twisted.ensureDeferred
    async def test_comments_json(self, blog, capsys, monkeypatch) -> None:
        code, out, _ = await run_li(capsys, monkeypatch, "blog", "get", "--comments", "-O", "json")
        assert code == 0
        comments = json.loads(out)["items"][0]["comments"][0]
        assert [comment["id"] for comment in comments["items"]] == ["c1"]

    @pytest_twisted.ensureDeferred
    async def test_no_comments_by_default(self, blog, capsys, monkeypatch) -> None:
        await run_li(capsys, monkeypatch, "blog", "get")
        assert len(blog.params("mb_get")) == 1


class BlogSetTests:
    @pytest_twisted.ensureDeferred
    async def test_all_options(self, blog, capsys, monkeypatch) -> None:
        code, out, _ = await run_li(
            capsys, monkeypatch, "blog", "set", "-s", AUTHOR, "-t", "Title", "-T", "a",
            "-T", "b", "-i", "p1", "-x", "-l", "fr", "--comments",
            "--comments-service", "pubsub.capulet.lit", "-c", "<p>Hi</p>",
        )
        assert code == 0
        assert blog.params("mb_send")[0]["data"] == {
            "content_xhtml": "<p>Hi</p>", "title": "Title", "tags": ["a", "b"], "id": "p1",
            "language": "fr", "allow_comments": True, "comments_service": "pubsub.capulet.lit",
        }
        assert out.splitlines() == ["p1", f"comments: {COMMENTS_URI}"]

    @pytest_twisted.ensureDeferred
    async def test_plain_text_default(self, blog, capsys, monkeypatch) -> None:
        code, out, _ = await run_li(capsys, monkeypatch, "blog", "set", stdin="Text\n")
        assert code == 0
        assert blog.params("mb_send")[0]["data"] == {"content": "Text\n"}
        assert out == "new-post\n"

    @pytest_twisted.ensureDeferred
    async def test_comments_service_needs_comments(self, blog, capsys, monkeypatch) -> None:
        code, _, err = await run_li(
            capsys, monkeypatch, "blog", "set", "-c", "x", "--comments-service", "pubsub.x"
        )
        assert code == 1
        assert err == "li: error: --comments-service needs --comments\n"
        assert blog.params("mb_send") == []

    @pytest_twisted.ensureDeferred
    async def test_empty_content_rejected(self, blog, capsys, monkeypatch) -> None:
        code, _, err = await run_li(capsys, monkeypatch, "blog", "set", "-c", "  ")
        assert code == 1
        assert "the post content is empty" in err


class BlogDeleteTests:
    @pytest_twisted.ensureDeferred
    async def test_delete(self, blog, capsys, monkeypatch) -> None:
        code, out, _ = await run_li(capsys, monkeypatch, "blog", "delete", "-i", "p1")
        assert code == 0
        assert blog.params("mb_retract") == [{
            "service": None, "node": None, "item_id": "p1", "delete_comments": False,
            "profile": None,
        }]
        assert out == f"post p1 retracted from node urn:xmpp:microblog:0 of {AUTHOR}\n"

    @pytest_twisted.ensureDeferred
    async def test_delete_comments(self, blog, capsys, monkeypatch) -> None:
        code, out, _ = await run_li(
            capsys, monkeypatch, "blog", "delete", "-i", "p1", "--delete-comments", "-O", "json"
        )
        assert code == 0
        assert blog.params("mb_retract")[0]["delete_comments"] is True
        assert json.loads(out)["deleted_comments"] == [COMMENTS_URI]

    @pytest_twisted.ensureDeferred
    async def test_item_required(self, blog, capsys, monkeypatch) -> None:
        code, _, err = await run_li(capsys, monkeypatch, "blog", "delete")
        assert code != 0
        assert "-i/--item" in err
        assert blog.params("mb_retract") == []
