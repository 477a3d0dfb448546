"""``li pubsub`` commands down to the stanzas the XEP-0060 plugin sends.

``li`` runs in a thread against a real BridgeServer serving the real XEP-0060
plugin, whose client is a FakeClient: each IQ the plugin sends is recorded
and answered at once with the payload the test gives.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import reactor, threads
from twisted.words.xish import domish
from wokkel.generic import parseXml

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core.trigger import TriggerManager
from libervia.backend.plugins.plugin_xep_0060 import NS_PUBSUB, NS_PUBSUB_OWNER, XEP_0060
from libervia.cli.main import main
from libervia.testing.fake_stream import FakeClient, FakeXmlStream

Answer = Callable[[domish.Element], domish.Element | None]


class AnsweringStream(FakeXmlStream):
    """Fake stream answering each IQ with ``answer(iq)`` as payload of a result."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: Answer = lambda iq: None

    def send(self, obj: domish.Element | str) -> None:
        super().send(obj)
        if isinstance(obj, domish.Element) and obj.name == "iq":
            reactor.callLater(0, self.respond, obj, self.answer(obj))  # type: ignore[attr-defined]


class Host:
    def __init__(self, bridge: BridgeServer, client: FakeClient) -> None:
        self.trigger = TriggerManager()
        self.bridge = bridge
        self.plugins: dict[str, Any] = {}
        self.client = client

    def get_client(self, profile: str | None) -> FakeClient:
        return self.client


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> AnsweringStream:
    base = Path(tempfile.mkdtemp(prefix="lbp", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    for variable in ("LIBERVIA_PROFILE", "LIBERVIA_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    yield AnsweringStream()
    shutil.rmtree(base, ignore_errors=True)


@pytest_twisted.async_yield_fixture
async def bridge(stream: AnsweringStream) -> AsyncIterator[BridgeServer]:
    server = BridgeServer()
    host = Host(server, FakeClient(xmlstream=stream))
    host.plugins["XEP-0060"] = XEP_0060(host)
    await server.start()
    yield server
    await server.stop()


async def li(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
             *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    capsys.readouterr()
    code = await threads.deferToThread(main, ["--no-autostart", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def xml(text: str) -> domish.Element:
    element = parseXml(text.encode("utf-8"))
    assert element is not None
    return element


def sent_payload(stream: AnsweringStream) -> domish.Element:
    """Return the ``<pubsub/>`` (or other) child of the last IQ sent."""
    iq = [obj for obj in stream.sent if isinstance(obj, domish.Element)][-1]
    return next(iq.elements())


def items_page(item_ids: list[str], set_xml: str = "") -> Answer:
    def answer(iq: domish.Element) -> domish.Element:
        items = "".join(f"<item id='{item_id}'/>" for item_id in item_ids)
        return xml(f"<pubsub xmlns='{NS_PUBSUB}'><items node='n'>{items}</items>{set_xml}</pubsub>")
    return answer


class GetRsmTests:
    @pytest_twisted.ensureDeferred
    async def test_rsm_options_sent(self, bridge, stream, capsys, monkeypatch) -> None:
        stream.answer = items_page(["a", "b"], (
            "<set xmlns='http://jabber.org/protocol/rsm'><first index='0'>a</first>"
            "<last>b</last><count>9</count></set>"
        ))
        code, out, err = await li(
            capsys, monkeypatch, "pubsub", "get", "-s", "pubsub.example.org", "-n", "n",
            "--rsm-max", "2", "--after", "x", "--sub-id", "s1",
        )
        assert code == 0, err
        set_elt = next(sent_payload(stream).elements("http://jabber.org/protocol/rsm", "set"))
        assert [(child.name, str(child)) for child in set_elt.elements()] == [
            ("max", "2"), ("after", "x"),
        ]
        assert sent_payload(stream).items["subid"] == "s1"
        assert out.splitlines()[-1].endswith("RSM first=a index=0 last=b count=9")

    @pytest_twisted.ensureDeferred
    async def test_last_page(self, bridge, stream, capsys, monkeypatch) -> None:
        stream.answer = items_page(["a"])
        code, out, err = await li(
            capsys, monkeypatch, "pubsub", "get", "-n", "n", "--rsm-max", "1", "--before",
        )
        assert code == 0, err
        set_elt = next(sent_payload(stream).elements("http://jabber.org/protocol/rsm", "set"))
        assert [(child.name, str(child)) for child in set_elt.elements()] == [
            ("max", "1"), ("before", ""),
        ]
        assert "RSM ignored by the service" in out

    @pytest_twisted.ensureDeferred
    async def test_rsm_json(self, bridge, stream, capsys, monkeypatch) -> None:
        stream.answer = items_page(["a"])
        code, out, _ = await li(
            capsys, monkeypatch, "pubsub", "get", "-n", "n", "--index", "3", "-O", "json",
        )
        assert code == 0
        assert json.loads(out)["metadata"]["rsm_ignored"] is True

    @pytest_twisted.ensureDeferred
    async def test_after_and_before_rejected(self, bridge, stream, capsys, monkeypatch) -> None:
        code, _, err = await li(
            capsys, monkeypatch, "pubsub", "get", "-n", "n", "--after", "a", "--before", "b",
        )
        assert code != 0
        assert "not allowed with argument" in err

    @pytest_twisted.ensureDeferred
    async def test_negative_max_rejected(self, bridge, stream, capsys, monkeypatch) -> None:
        code, _, err = await li(capsys, monkeypatch, "pubsub", "get", "-n", "n", "--rsm-max", "-1")
        assert code != 0
        assert "must be 0 or more" in err


class SubscriptionCommandTests:
    @pytest_twisted.ensureDeferred
    async def test_subscribe(self, bridge, stream, capsys, monkeypatch) -> None:
        stream.answer = lambda iq: xml(
            f"<pubsub xmlns='{NS_PUBSUB}'><subscription node='n' jid='alice@example.org' "
            "subscription='subscribed' subid='s9'/></pubsub>"
        )
        code, out, err = await li(
            capsys, monkeypatch, "pubsub", "subscribe", "-n", "n", "-o", "pubsub#deliver=1",
        )
        assert code == 0, err
        assert out == "subscribed to node n (subscription id s9)\n"
        assert sent_payload(stream).subscribe["jid"] == "alice@example.org"
        assert sent_payload(stream).options is not None

    @pytest_twisted.ensureDeferred
    async def test_unsubscribe(self, bridge, stream, capsys, monkeypatch) -> None:
        code, out, _ = await li(
            capsys, monkeypatch, "pubsub", "unsubscribe", "-n", "n", "--sub-id", "s9",
        )
        assert code == 0
        assert sent_payload(stream).unsubscribe["subid"] == "s9"
        assert out == "unsubscribed from node n\n"

    @pytest_twisted.ensureDeferred
    async def test_subscriptions_table(self, bridge, stream, capsys, monkeypatch) -> None:
        stream.answer = lambda iq: xml(
            f"<pubsub xmlns='{NS_PUBSUB}'><subscriptions>"
            "<subscription node='n1' jid='alice@example.org' subscription='subscribed'/>"
            "<subscription node='n2' jid='alice@example.org' subscription='pending'/>"
            "</subscriptions></pubsub>"
        )
        code, out, _ = await li(capsys, monkeypatch, "pubsub", "subscriptions")
        assert code == 0
        assert out.splitlines()[1:] == ["n1    subscribed", "n2    pending"]

    @pytest_twisted.ensureDeferred
    async def test_affiliations_json(self, bridge, stream, capsys, monkeypatch) -> None:
        stream.answer = lambda iq: xml(
            f"<pubsub xmlns='{NS_PUBSUB}'><affiliations>"
            "<affiliation node='n1' affiliation='owner'/></affiliations></pubsub>"
        )
        code, out, _ = await li(capsys, monkeypatch, "pubsub", "affiliations", "-O", "json")
        assert code == 0
        assert json.loads(out) == {"n1": "owner"}

    @pytest_twisted.ensureDeferred
    async def test_features(self, bridge, stream, capsys, monkeypatch) -> None:
        stream.answer = lambda iq: xml(
            "<query xmlns='http://jabber.org/protocol/disco#info'>"
            f"<feature var='{NS_PUBSUB}'/><feature var='{NS_PUBSUB}#publish'/></query>"
        )
        code, out, _ = await li(capsys, monkeypatch, "pubsub", "features", "-s", "ps.example")
        assert code == 0
        assert out.splitlines() == [NS_PUBSUB, NS_PUBSUB + "#publish"]


class NodeCommandTests:
    @pytest_twisted.ensureDeferred
    async def test_delete_redirect(self, bridge, stream, capsys, monkeypatch) -> None:
        code, out, _ = await li(
            capsys, monkeypatch, "pubsub", "node", "delete", "-n", "n",
            "--redirect", "xmpp:a@b?;node=c",
        )
        assert code == 0
        payload = sent_payload(stream)
        assert (payload.uri, payload.delete.redirect["uri"]) == (
            NS_PUBSUB_OWNER, "xmpp:a@b?;node=c"
        )
        assert out == "node n deleted\n"

    @pytest_twisted.ensureDeferred
    async def test_purge(self, bridge, stream, capsys, monkeypatch) -> None:
        code, out, _ = await li(capsys, monkeypatch, "pubsub", "node", "purge", "-n", "n")
        assert code == 0
        assert sent_payload(stream).purge["node"] == "n"

    @pytest_twisted.ensureDeferred
    async def test_config_get(self, bridge, stream, capsys, monkeypatch) -> None:
        stream.answer = lambda iq: xml(
            f"<pubsub xmlns='{NS_PUBSUB_OWNER}'><configure node='n'>"
            "<x xmlns='jabber:x:data' type='form'>"
            "<field var='FORM_TYPE' type='hidden'>"
            "<value>http://jabber.org/protocol/pubsub#node_config</value></field>"
            "<field var='pubsub#title' type='text-single' label='Title'><value>News</value></field>"
            "</x></configure></pubsub>"
        )
        code, out, _ = await li(capsys, monkeypatch, "pubsub", "node", "config", "get", "-n", "n")
        assert code == 0
        assert out.splitlines()[1] == "pubsub#title  News   Title"

    @pytest_twisted.ensureDeferred
    async def test_config_set(self, bridge, stream, capsys, monkeypatch) -> None:
        code, out, _ = await li(
            capsys, monkeypatch, "pubsub", "node", "config", "set", "-n", "n",
            "-o", "pubsub#title=News",
        )
        assert code == 0
        form = next(sent_payload(stream).configure.elements("jabber:x:data", "x"))
        assert form["type"] == "submit"
        assert out == "node n: 1 option(s) set\n"

    @pytest_twisted.ensureDeferred
    async def test_subscriptions_set(self, bridge, stream, capsys, monkeypatch) -> None:
        code, _, _ = await li(
            capsys, monkeypatch, "pubsub", "node", "subscriptions", "-n", "n",
            "-S", "bob@example.org=none",
        )
        assert code == 0
        entry = sent_payload(stream).subscriptions.subscription
        assert (entry["jid"], entry["subscription"]) == ("bob@example.org", "none")

    @pytest_twisted.ensureDeferred
    async def test_invalid_affiliation(self, bridge, stream, capsys, monkeypatch) -> None:
        code, _, err = await li(
            capsys, monkeypatch, "pubsub", "node", "affiliations", "-n", "n",
            "-A", "bob@example.org=boss",
        )
        assert code == 1
        assert "invalid affiliation 'boss'" in err

    @pytest_twisted.ensureDeferred
    async def test_affiliations_list(self, bridge, stream, capsys, monkeypatch) -> None:
        stream.answer = lambda iq: xml(
            f"<pubsub xmlns='{NS_PUBSUB_OWNER}'><affiliations node='n'>"
            "<affiliation jid='alice@example.org' affiliation='owner'/>"
            "</affiliations></pubsub>"
        )
        code, out, _ = await li(
            capsys, monkeypatch, "pubsub", "node", "affiliations", "-n", "n"
        )
        assert code == 0
        assert out.splitlines()[1:] == ["alice@example.org  owner"]


class SyncWaitTests:
    """``li pubsub cache sync`` waiting for the end of a sync among the daemon's signals."""

    class Bridge:
        def __init__(self, signals: list[tuple[str, dict[str, Any]]]) -> None:
            self.signals = signals

        def iter_signals(self, timeout: float | None = None) -> Any:
            yield from self.signals

    def test_progress_then_end(self) -> None:
        from types import SimpleNamespace

        from libervia.cli.cmd_pubsub import wait_sync_end

        node = {"profile": "bob", "service": "pubsub.example.org", "node": "blog"}
        signals = [
            ("ps_cache_sync", {**node, "state": "IN_PROGRESS", "items": 0, "count": None}),
            ("ps_event", {**node, "type": "items"}),
            ("ps_cache_sync", {**node, "node": "other", "state": "COMPLETED", "items": 1}),
            ("ps_cache_sync", {**node, "state": "IN_PROGRESS", "items": 100, "count": 150}),
            ("ps_cache_sync", {**node, "state": "COMPLETED", "items": 150}),
        ]
        ctx = SimpleNamespace(bridge=self.Bridge(signals), timeout=5.0)
        progress: list[tuple[int, int | None]] = []

        end = wait_sync_end(ctx, node, lambda s: progress.append((s["items"], s["count"])))

        assert end["state"] == "COMPLETED"
        assert end["items"] == 150
        assert progress == [(0, None), (100, 150)]
