"""Figures 1 and 2: getting 20 items of a 1,000-item node, cached against live and the floor.

One node of ``plan.get_node_items`` posts is published through XMPP on each
server, then synced by the in-process reader and by the daemon's reader.

In-process series (``Harness``, no bridge): the reader's ``get_items`` for
the newest ``plan.get_max_items`` items, served by the cache or sent to the
server (``use_cache: False``), and ``get_items_xml``, which returns the
stored XML strings as the bridge sends them. The floor reads the same rows
from the same SQLite file with the standard ``sqlite3`` module, alone and
followed by the XML parsing that ``get_items`` does to return elements.

Bridge series (the daemon, over its Unix socket): the same gets through
``ps_items_get``, and ``ping`` for the bridge's own round trip.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from twisted.internet import threads
from twisted.words.protocols.jabber.jid import JID

from libervia.backend.plugins.plugin_xep_0060 import items_from_xml

from bench import bridge_timing
from bench.bridge_timing import Series
from bench.daemon import Daemon, reader_profile
from bench.harness import Harness
from bench.items import PostGenerator
from bench.plan import GET_WARMUP, Plan
from bench.servers import Server
from bench.stats import summarise

log = logging.getLogger(__name__)

#: Seconds a daemon sync of the get figure's node may go without a signal.
SYNC_TIMEOUT = 300.0

FLOOR_QUERY = (
    "SELECT data FROM pubsub_items WHERE node_id = ? ORDER BY created DESC, id DESC LIMIT ?"
)


async def prepare_nodes(
    harness: Harness, daemon: Daemon, servers: dict[str, Server], plan: Plan,
) -> dict[str, Any]:
    """Publish one node per server and have both readers sync it.

    Returns, by server name, the node name, the publish rate and the two
    sync durations (the first syncs of nodes published through XMPP).
    """
    nodes: dict[str, Any] = {}
    for server in servers.values():
        generator = PostGenerator(server.jid("pub"), seed=1)
        node = await harness.create_node(server, "get", plan.get_node_items)
        seconds = await harness.publish(server, node, generator.posts(plan.get_node_items))
        log.info("%s: %d items published in %.1f s", server.name, plan.get_node_items, seconds)

        start = time.perf_counter()
        await harness.sync_as_reader(server, node)
        in_process_sync = time.perf_counter() - start

        outcome = await threads.deferToThread(
            bridge_timing.sync_through_bridge, daemon.socket_path, reader_profile(server.name),
            server.pubsub_service, node, SYNC_TIMEOUT,
        )
        if outcome.state != "COMPLETED":
            raise RuntimeError(
                f"the daemon did not sync node {node} of {server.name}: {outcome.state} "
                f"({outcome.error})"
            )
        nodes[server.name] = {
            "node": node,
            "publish_items_per_s": plan.get_node_items / seconds,
            "in_process_sync_s": in_process_sync,
            "daemon_sync_s": outcome.seconds,
        }
    return nodes


async def _time_in_process(harness: Harness, servers: dict[str, Server],
                           nodes: dict[str, Any], plan: Plan) -> dict[str, list[float]]:
    """Time the in-process series, interleaved; return their samples in ms by label."""
    storage = harness.backend.storage
    prosody = servers["prosody"]
    reader = harness.client("reader", prosody)
    node_row = await storage.get_pubsub_node(
        reader.profile_id, prosody.pubsub_service, nodes["prosody"]["node"]
    )
    connection = sqlite3.connect(harness.db_path)
    max_items = plan.get_max_items

    def floor() -> list[str]:
        return [row[0] for row in connection.execute(FLOOR_QUERY, (node_row.id, max_items))]

    def floor_and_parse() -> list[Any]:
        return items_from_xml(floor())

    def getter(server: Server, use_cache: bool, as_xml: bool = False) -> Any:
        client = harness.client("reader", server)
        service = JID(server.pubsub_service)
        node = nodes[server.name]["node"]
        method = harness.pubsub.get_items_xml if as_xml else harness.pubsub.get_items

        def get() -> Any:
            return method(
                client, service, node, max_items=max_items, extra={"use_cache": use_cache}
            )
        return get

    series: list[tuple[str, Any, int, bool]] = [
        ("cache, Prosody node", getter(prosody, True), plan.get_rounds, True),
        ("cache, ejabberd node", getter(servers["ejabberd"], True), plan.get_rounds, True),
        ("cache as XML, Prosody node", getter(prosody, True, True), plan.get_rounds, True),
        ("cache as XML, ejabberd node", getter(servers["ejabberd"], True, True), plan.get_rounds,
         True),
        ("sqlite3 floor (rows)", floor, plan.get_rounds, False),
        ("sqlite3 floor + XML parsing", floor_and_parse, plan.get_rounds, False),
        ("live, Prosody Nagle off", getter(prosody, False), plan.get_rounds, True),
        ("live, Prosody Nagle on", getter(servers["prosody-nagle"], False), plan.nagle_rounds,
         True),
        ("live, ejabberd", getter(servers["ejabberd"], False), plan.get_rounds, True),
    ]
    samples: dict[str, list[float]] = {label: [] for label, *_ in series}
    try:
        for index in range(-GET_WARMUP, max(rounds for _, _, rounds, _ in series)):
            for label, call, rounds, awaited in series:
                if index >= rounds or (index < 0 and rounds < GET_WARMUP):
                    continue
                start = time.perf_counter()
                result = call()
                if awaited:
                    result = await result
                elapsed = (time.perf_counter() - start) * 1000
                if index >= 0:
                    samples[label].append(elapsed)
    finally:
        connection.close()
    return samples


def _check_same_items(harness_results: dict[str, Any]) -> None:
    """Raise AssertionError when a cached result differs from the live one."""
    for server_name, (cached, live) in harness_results.items():
        if cached != live:
            raise AssertionError(
                f"cached and live gets of the {server_name} node differ: {cached} != {live}"
            )


async def _compare_in_process(harness: Harness, servers: dict[str, Server],
                              nodes: dict[str, Any], plan: Plan) -> None:
    """Check that cached and live gets return the same item ids, in the same order."""
    results = {}
    for server in servers.values():
        client = harness.client("reader", server)
        ids = []
        for use_cache in (True, False):
            items, metadata = await harness.pubsub.get_items(
                client, JID(server.pubsub_service), nodes[server.name]["node"],
                max_items=plan.get_max_items, extra={"use_cache": use_cache},
            )
            if metadata["from_cache"] is not use_cache:
                raise AssertionError(
                    f"get of the {server.name} node with use_cache={use_cache} came "
                    f"{'from the cache' if metadata['from_cache'] else 'from the server'}"
                )
            ids.append([item["id"] for item in items])
        results[server.name] = ids
    _check_same_items(results)


def _bridge_series(servers: dict[str, Server], nodes: dict[str, Any], plan: Plan) -> list[Series]:
    def get(server: Server, use_cache: bool) -> dict[str, Any]:
        return {
            "service": server.pubsub_service, "node": nodes[server.name]["node"],
            "max_items": plan.get_max_items, "extra": {"use_cache": use_cache},
            "profile": reader_profile(server.name),
        }

    prosody, ejabberd = servers["prosody"], servers["ejabberd"]
    return [
        Series("bridge ping", "ping", {}, plan.get_rounds),
        Series("cache, Prosody node", "ps_items_get", get(prosody, True), plan.get_rounds),
        Series("cache, ejabberd node", "ps_items_get", get(ejabberd, True), plan.get_rounds),
        Series("live, Prosody Nagle off", "ps_items_get", get(prosody, False), plan.get_rounds),
        Series("live, Prosody Nagle on", "ps_items_get", get(servers["prosody-nagle"], False),
               plan.nagle_rounds),
        Series("live, ejabberd", "ps_items_get", get(ejabberd, False), plan.get_rounds),
    ]


async def run(harness: Harness, daemon: Daemon, servers: dict[str, Server],
              plan: Plan) -> dict[str, Any]:
    """Measure figures 1 and 2; return their results (samples in ms)."""
    nodes = await prepare_nodes(harness, daemon, servers, plan)
    await _compare_in_process(harness, servers, nodes, plan)

    log.info("timing in-process gets")
    in_process = await _time_in_process(harness, servers, nodes, plan)

    log.info("timing gets through the bridge")
    series = _bridge_series(servers, nodes, plan)
    await threads.deferToThread(bridge_timing.time_series, daemon.socket_path, series, GET_WARMUP)
    for entry in series:
        if entry.method != "ps_items_get":
            continue
        from_cache = entry.last_result["metadata"].get("from_cache")
        if from_cache is not entry.params["extra"]["use_cache"]:
            raise AssertionError(f"bridge series {entry.label!r}: from_cache is {from_cache}")
        if len(entry.last_result["items"]) != plan.get_max_items:
            raise AssertionError(
                f"bridge series {entry.label!r} returned {len(entry.last_result['items'])} items"
            )

    return {
        "node_items": plan.get_node_items,
        "max_items": plan.get_max_items,
        "nodes": nodes,
        "in_process": {
            label: {**summarise(values), "samples": values} for label, values in in_process.items()
        },
        "bridge": {
            entry.label: {**summarise(entry.samples), "samples": entry.samples}
            for entry in series
        },
    }
