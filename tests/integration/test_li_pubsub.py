"""``li pubsub`` against real Prosody 0.12 and ejabberd 23.01, run the way a user runs it.

One backend daemon per server runs with two profiles: ``alice``, admin of the
server's ``pubsub.localhost`` component (on Prosody only admins create nodes
there), and ``bob``, a reader and subscriber. Each command is checked in its
readable output (the key facts, not the layout) and in its ``-O json``
output (the values). Failing commands must print one ``li: error: ...`` line
naming the service, the node and the condition.

Server differences checked here:

- ejabberd pages items with RSM; its ``first``/``last`` ids are timestamps.
  Prosody ignores the ``<set/>`` and returns every item, which ``li`` reports
  as "RSM ignored by the service".
- Prosody lets only its admins create nodes on the component; ejabberd lets
  every local account create them.
- Prosody responds to the entity affiliations request with
  service-unavailable, while ejabberd lists the affiliations.
- ejabberd rejects an owner's subscriptions list on a PEP node with
  feature-not-implemented; Prosody lists it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from libervia.testing.backend import BackendRunner, Result
from libervia.testing.ejabberd import EjabberdServer

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
PASSWORD_ENV = "LI_PUBSUB_TEST_PASSWORD"
PROFILES = ("alice", "bob")
NODE_OPTIONS = ("-o", "pubsub#access_model=open", "-o", "pubsub#max_items=10")


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def server(request: pytest.FixtureRequest) -> Any:
    """Return the session's Prosody, then its ejabberd."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory, server: Any) -> Iterator[BackendRunner]:
    """Yield a daemon with the profiles ``alice`` and ``bob`` connected to ``server``."""
    runner = BackendRunner(tmp_path_factory.mktemp("li-pubsub"))
    try:
        for profile in PROFILES:
            runner.li(
                "profile", "create", profile, "-j", f"{profile}@{server.domain}",
                "--host", server.host, "--port", str(server.port),
                "--ca-file", str(server.ca_file), "--password-env", PASSWORD_ENV,
                env={PASSWORD_ENV: server.accounts[profile]},
            )
            runner.li("profile", "connect", profile)
        runner.server_kind = "ejabberd" if isinstance(server, EjabberdServer) else "prosody"
        runner.service = server.pubsub_service
        runner.domain = server.domain
        yield runner
    finally:
        runner.stop()


def new_node(backend: BackendRunner, *options: str) -> str:
    """Create a node on the pubsub service as alice and return its name."""
    node = f"li-{uuid.uuid4().hex[:8]}"
    backend.li("pubsub", "node", "create", "-s", backend.service, "-n", node, "-p", "alice",
               *NODE_OPTIONS, *options)
    return node


def publish(backend: BackendRunner, node: str, item_ids: list[str]) -> None:
    """Publish one small item per id on ``node`` of the pubsub service, as alice."""
    for item_id in item_ids:
        backend.li(
            "pubsub", "set", "-s", backend.service, "-n", node, "-p", "alice", "-i", item_id,
            input=f"<entry xmlns='urn:example:li'>{item_id}</entry>",
        )


def item_ids(result: dict[str, Any]) -> list[str]:
    """Return the ids of the ``<item/>`` XML strings of a ``pubsub get`` JSON output."""
    ids = []
    for xml in result["items"]:
        start = xml.index(" id='") + len(" id='")
        ids.append(xml[start:xml.index("'", start)])
    return ids


def error_line(result: Result) -> str:
    """Return the single stderr line of a failed command; fail unless it is one ``li: error:`` line."""
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("li: error: "), result.stderr
    return lines[0]


class NodeTests:
    def test_create_prints_node(self, backend):
        node = f"li-{uuid.uuid4().hex[:8]}"
        result = backend.li(
            "pubsub", "node", "create", "-s", backend.service, "-n", node, "-p", "alice",
            *NODE_OPTIONS,
        )
        assert result.stdout.strip() == node

    def test_create_json(self, backend):
        node = f"li-{uuid.uuid4().hex[:8]}"
        result = backend.li_json(
            "pubsub", "node", "create", "-s", backend.service, "-n", node, "-p", "alice",
        )
        assert result == {"node": node}

    def test_config_get_readable(self, backend):
        node = new_node(backend, "-o", "pubsub#title=Readable title")
        out = backend.li(
            "pubsub", "node", "config", "get", "-s", backend.service, "-n", node, "-p", "alice",
        ).stdout
        rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
        assert rows["pubsub#max_items"][0] == "10"
        assert rows["pubsub#access_model"][0] == "open"
        assert rows["pubsub#title"][:2] == ["Readable", "title"]

    def test_config_get_json(self, backend):
        node = new_node(backend, "-o", "pubsub#title=Json title")
        config = backend.li_json(
            "pubsub", "node", "config", "get", "-s", backend.service, "-n", node, "-p", "alice",
        )
        assert config["values"]["pubsub#max_items"] == "10"
        assert config["values"]["pubsub#access_model"] == "open"
        assert config["values"]["pubsub#title"] == "Json title"
        fields = {field["var"]: field for field in config["fields"] if field.get("var")}
        assert fields["pubsub#access_model"]["type"] == "list-single"

    def test_config_set_read_back(self, backend):
        node = new_node(backend)
        out = backend.li(
            "pubsub", "node", "config", "set", "-s", backend.service, "-n", node, "-p", "alice",
            "-o", "pubsub#max_items=5",
        ).stdout
        assert f"node {node}: 1 option(s) set" in out
        config = backend.li_json(
            "pubsub", "node", "config", "get", "-s", backend.service, "-n", node, "-p", "alice",
        )
        assert config["values"]["pubsub#max_items"] == "5"

    def test_config_set_json(self, backend):
        node = new_node(backend)
        result = backend.li_json(
            "pubsub", "node", "config", "set", "-s", backend.service, "-n", node, "-p", "alice",
            "-o", "pubsub#max_items=7",
        )
        assert result == {
            "service": backend.service, "node": node, "options": {"pubsub#max_items": "7"},
        }

    def test_create_existing_error(self, backend):
        node = new_node(backend)
        result = backend.li(
            "pubsub", "node", "create", "-s", backend.service, "-n", node, "-p", "alice",
            expect=1,
        )
        line = error_line(result)
        assert f"on {backend.service} node '{node}'" in line
        assert "conflict" in line

    def test_create_by_non_admin(self, backend):
        node = f"li-{uuid.uuid4().hex[:8]}"
        args = ("pubsub", "node", "create", "-s", backend.service, "-n", node, "-p", "bob")
        if backend.server_kind == "prosody":
            line = error_line(backend.li(*args, expect=1))
            assert f"{backend.service} node '{node}'" in line
            assert "forbidden" in line
        else:
            assert backend.li(*args).stdout.strip() == node

    def test_purge_removes_items(self, backend):
        node = new_node(backend)
        publish(backend, node, ["a", "b"])
        out = backend.li(
            "pubsub", "node", "purge", "-s", backend.service, "-n", node, "-p", "alice",
        ).stdout
        assert f"node {node} purged" in out
        result = backend.li_json("pubsub", "get", "-s", backend.service, "-n", node, "-p", "bob")
        assert result["items"] == []

    def test_purge_json(self, backend):
        node = new_node(backend)
        result = backend.li_json(
            "pubsub", "node", "purge", "-s", backend.service, "-n", node, "-p", "alice",
        )
        assert result == {"service": backend.service, "node": node}

    def test_delete_then_get_fails(self, backend):
        node = new_node(backend)
        publish(backend, node, ["a"])
        out = backend.li(
            "pubsub", "node", "delete", "-s", backend.service, "-n", node, "-p", "alice",
        ).stdout
        assert f"node {node} deleted" in out
        result = backend.li(
            "pubsub", "get", "-s", backend.service, "-n", node, "-p", "bob", expect=1,
        )
        line = error_line(result)
        assert f"on {backend.service} node '{node}'" in line
        assert "item-not-found" in line

    def test_delete_json(self, backend):
        node = new_node(backend)
        result = backend.li_json(
            "pubsub", "node", "delete", "-s", backend.service, "-n", node, "-p", "alice",
        )
        assert result == {"service": backend.service, "node": node, "redirect": None}

    def test_delete_missing_error(self, backend):
        node = f"li-missing-{uuid.uuid4().hex[:8]}"
        result = backend.li(
            "pubsub", "node", "delete", "-s", backend.service, "-n", node, "-p", "alice",
            expect=1,
        )
        line = error_line(result)
        assert f"deleting node on {backend.service} node '{node}'" in line
        assert "item-not-found" in line


@pytest.fixture(scope="module")
def node(backend: BackendRunner) -> str:
    """Return a node of the pubsub service holding the items it0 to it3, read-only for tests."""
    name = new_node(backend)
    publish(backend, name, ["it0", "it1", "it2", "it3"])
    return name


class ItemTests:
    def test_set_prints_generated_id(self, backend):
        node = new_node(backend)
        result = backend.li(
            "pubsub", "set", "-s", backend.service, "-n", node, "-p", "alice",
            input="<entry xmlns='urn:example:li'>no id</entry>",
        )
        generated = result.stdout.strip()
        assert generated
        got = backend.li_json("pubsub", "get", "-s", backend.service, "-n", node, "-p", "bob")
        assert item_ids(got) == [generated]

    def test_set_json(self, backend):
        node = new_node(backend)
        result = backend.li_json(
            "pubsub", "set", "-s", backend.service, "-n", node, "-p", "alice", "-i", "one",
            input=f"<item xmlns='{NS_PUBSUB}'><entry xmlns='urn:example:li'/></item>",
        )
        assert result == {"item_ids": ["one"]}

    def test_get_all_readable(self, backend, node):
        out = backend.li("pubsub", "get", "-s", backend.service, "-n", node, "-p", "bob").stdout
        for item_id in ("it0", "it1", "it2", "it3"):
            assert f'id="{item_id}"' in out
        assert "<entry" in out
        assert f"-- 4 item(s), node {node}, service {backend.service}, complete" in out

    def test_get_all_json(self, backend, node):
        result = backend.li_json("pubsub", "get", "-s", backend.service, "-n", node, "-p", "bob")
        assert item_ids(result) == ["it0", "it1", "it2", "it3"]
        assert result["metadata"]["complete"] is True
        assert result["metadata"]["service"] == backend.service

    def test_get_max(self, backend, node):
        result = backend.li_json(
            "pubsub", "get", "-s", backend.service, "-n", node, "-p", "bob", "-M", "2",
        )
        # ejabberd with SQL storage sends the newest first, Prosody oldest first.
        assert sorted(item_ids(result)) == ["it2", "it3"]
        assert result["metadata"]["complete"] is False

    def test_get_item_ids(self, backend, node):
        result = backend.li_json(
            "pubsub", "get", "-s", backend.service, "-n", node, "-p", "bob", "-i", "it1", "it3",
        )
        assert sorted(item_ids(result)) == ["it1", "it3"]

    def test_rsm_first_page(self, backend, node):
        args = ("pubsub", "get", "-s", backend.service, "-n", node, "-p", "bob", "--rsm-max", "2")
        result = backend.li_json(*args)
        out = backend.li(*args).stdout
        if backend.server_kind == "prosody":
            assert result["metadata"]["rsm_ignored"] is True
            assert item_ids(result) == ["it0", "it1", "it2", "it3"]
            assert "RSM ignored by the service" in out
        else:
            assert result["metadata"]["rsm_ignored"] is False
            assert item_ids(result) == ["it0", "it1"]
            assert result["metadata"]["rsm"]["count"] == 4
            assert "RSM ignored" not in out
            assert "count=4" in out

    def test_rsm_after_walks(self, backend, node):
        base = ("pubsub", "get", "-s", backend.service, "-n", node, "-p", "bob", "--rsm-max", "2")
        first = backend.li_json(*base)
        if backend.server_kind == "prosody":
            assert "rsm" not in first["metadata"]
            return
        last = first["metadata"]["rsm"]["last"]
        second = backend.li_json(*base, "--after", last)
        assert item_ids(second) == ["it2", "it3"]
        out = backend.li(*base, "--after", last).stdout
        assert 'id="it2"' in out
        assert 'id="it0"' not in out

    def test_retract_notify(self, backend):
        node = new_node(backend)
        publish(backend, node, ["a", "b"])
        args = ("pubsub", "retract", "-s", backend.service, "-n", node, "-p", "alice")
        out = backend.li(*args, "-i", "a").stdout
        assert "retracted 1 item(s): a" in out
        result = backend.li_json(*args, "-i", "b")
        assert result == {
            "service": backend.service, "node": node, "item_ids": ["b"], "notify": True,
        }
        got = backend.li_json("pubsub", "get", "-s", backend.service, "-n", node, "-p", "bob")
        assert got["items"] == []

    def test_retract_no_notify(self, backend):
        node = new_node(backend)
        publish(backend, node, ["a", "b"])
        result = backend.li_json(
            "pubsub", "retract", "-s", backend.service, "-n", node, "-p", "alice", "-i", "a",
            "--no-notify",
        )
        assert result["notify"] is False
        got = backend.li_json("pubsub", "get", "-s", backend.service, "-n", node, "-p", "bob")
        assert item_ids(got) == ["b"]

    def test_retract_missing_error(self, backend):
        node = new_node(backend)
        result = backend.li(
            "pubsub", "retract", "-s", backend.service, "-n", node, "-p", "alice", "-i", "none",
            expect=1,
        )
        line = error_line(result)
        assert f"on {backend.service} node '{node}'" in line
        assert "item-not-found" in line


class SubscriptionTests:
    def test_subscribe_readable(self, backend):
        node = new_node(backend)
        out = backend.li(
            "pubsub", "subscribe", "-s", backend.service, "-n", node, "-p", "bob",
        ).stdout
        assert f"subscribed to node {node}" in out

    def test_subscribe_json(self, backend):
        node = new_node(backend)
        result = backend.li_json(
            "pubsub", "subscribe", "-s", backend.service, "-n", node, "-p", "bob",
            "-o", "pubsub#deliver=1",
        )
        assert result["subscription"] == "subscribed"
        assert result["node"] == node
        assert result["jid"] == f"bob@{backend.domain}"

    def test_subscriptions_cycle(self, backend):
        node = new_node(backend)
        sub = backend.li_json("pubsub", "subscribe", "-s", backend.service, "-n", node, "-p", "bob")

        out = backend.li("pubsub", "subscriptions", "-s", backend.service, "-p", "bob").stdout
        row = next(line for line in out.splitlines() if line.startswith(node))
        assert "subscribed" in row
        listed = backend.li_json(
            "pubsub", "subscriptions", "-s", backend.service, "-n", node, "-p", "bob",
        )
        assert listed == [{
            "node": node, "jid": f"bob@{backend.domain}", "subscription": "subscribed",
            "subid": sub["subid"],
        }]

        out = backend.li("pubsub", "unsubscribe", "-s", backend.service, "-n", node, "-p", "bob")
        assert f"unsubscribed from node {node}" in out.stdout
        after = backend.li_json("pubsub", "subscriptions", "-s", backend.service, "-p", "bob")
        assert node not in [entry["node"] for entry in after]

    def test_unsubscribe_json(self, backend):
        node = new_node(backend)
        backend.li("pubsub", "subscribe", "-s", backend.service, "-n", node, "-p", "bob")
        result = backend.li_json(
            "pubsub", "unsubscribe", "-s", backend.service, "-n", node, "-p", "bob",
        )
        assert result == {
            "service": backend.service, "node": node, "jid": f"bob@{backend.domain}",
            "subid": None,
        }

    def test_unsubscribe_not_subscribed(self, backend):
        node = new_node(backend)
        result = backend.li(
            "pubsub", "unsubscribe", "-s", backend.service, "-n", node, "-p", "bob", expect=1,
        )
        line = error_line(result)
        assert f"on {backend.service} node '{node}'" in line
        assert "not-subscribed" in line

    def test_owner_lists_subscribers(self, backend):
        node = new_node(backend)
        backend.li("pubsub", "subscribe", "-s", backend.service, "-n", node, "-p", "bob")
        args = ("pubsub", "node", "subscriptions", "-s", backend.service, "-n", node, "-p", "alice")
        out = backend.li(*args).stdout
        row = next(line for line in out.splitlines() if line.startswith(f"bob@{backend.domain}"))
        assert "subscribed" in row
        entries = backend.li_json(*args)
        assert [(e["jid"], e["subscription"]) for e in entries] == [
            (f"bob@{backend.domain}", "subscribed")
        ]


class AffiliationTests:
    def test_entity_affiliations(self, backend):
        node = new_node(backend)
        args = ("pubsub", "affiliations", "-s", backend.service, "-p", "alice")
        if backend.server_kind == "prosody":
            line = error_line(backend.li(*args, expect=1))
            assert f"getting affiliations on {backend.service} failed" in line
            assert "service-unavailable" in line
            assert "does not support this request" in line
            assert "node None" not in line
            return
        out = backend.li(*args).stdout
        row = next(line for line in out.splitlines() if line.startswith(node))
        assert "owner" in row
        assert backend.li_json(*args)[node] == "owner"

    def test_node_affiliations_owner(self, backend):
        node = new_node(backend)
        args = ("pubsub", "node", "affiliations", "-s", backend.service, "-n", node, "-p", "alice")
        out = backend.li(*args).stdout
        row = next(line for line in out.splitlines() if line.startswith(f"alice@{backend.domain}"))
        assert "owner" in row
        assert backend.li_json(*args) == {f"alice@{backend.domain}": "owner"}

    def test_node_affiliations_set(self, backend):
        node = new_node(backend)
        bob = f"bob@{backend.domain}"
        base = ("pubsub", "node", "affiliations", "-s", backend.service, "-n", node, "-p", "alice")
        result = backend.li_json(*base, "-A", f"{bob}=publisher")
        assert result == {
            "service": backend.service, "node": node, "affiliations": {bob: "publisher"},
        }
        assert backend.li_json(*base)[bob] == "publisher"
        publish_result = backend.li_json(
            "pubsub", "set", "-s", backend.service, "-n", node, "-p", "bob", "-i", "by-bob",
            input="<entry xmlns='urn:example:li'/>",
        )
        assert publish_result == {"item_ids": ["by-bob"]}


class PepTests:
    def test_publish_and_read(self, backend):
        node = f"urn:example:li:{uuid.uuid4().hex[:8]}"
        alice = f"alice@{backend.domain}"
        backend.li("pubsub", "node", "create", "-n", node, "-p", "alice", *NODE_OPTIONS)
        backend.li("pubsub", "set", "-n", node, "-p", "alice", "-i", "pep1",
                   input="<entry xmlns='urn:example:li'>pep</entry>")
        result = backend.li_json("pubsub", "get", "-s", alice, "-n", node, "-p", "bob")
        assert item_ids(result) == ["pep1"]
        assert result["metadata"]["service"] == alice

    def test_own_features(self, backend):
        features = backend.li_json("pubsub", "features", "-p", "alice")
        assert f"{NS_PUBSUB}#publish" in features

    def test_owner_subscriptions(self, backend):
        node = f"urn:example:li:{uuid.uuid4().hex[:8]}"
        alice = f"alice@{backend.domain}"
        backend.li("pubsub", "node", "create", "-n", node, "-p", "alice", *NODE_OPTIONS)
        backend.li("pubsub", "subscribe", "-s", alice, "-n", node, "-p", "bob")
        args = ("pubsub", "node", "subscriptions", "-n", node, "-p", "alice")
        if backend.server_kind == "ejabberd":
            line = error_line(backend.li(*args, expect=1))
            assert f"on {alice} node '{node}'" in line
            assert "feature-not-implemented" in line
            assert "manage-subscriptions" in line
            return
        entries = backend.li_json(*args)
        assert [e["jid"] for e in entries] == [f"bob@{backend.domain}"]


class FeatureTests:
    def test_service_features_readable(self, backend):
        out = backend.li("pubsub", "features", "-s", backend.service, "-p", "alice").stdout
        lines = out.splitlines()
        assert NS_PUBSUB in lines
        assert f"{NS_PUBSUB}#retrieve-items" in lines

    def test_service_features_json(self, backend):
        features = backend.li_json("pubsub", "features", "-s", backend.service, "-p", "alice")
        assert f"{NS_PUBSUB}#create-nodes" in features
        assert (f"{NS_PUBSUB}#retrieve-affiliations" in features) is (
            backend.server_kind == "ejabberd"
        )
        assert ("http://jabber.org/protocol/rsm" in features) is (
            backend.server_kind == "ejabberd"
        )
