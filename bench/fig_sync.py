"""Figure 3: sync throughput and the daemon's peak memory, by node size and server.

For each server and size, a node is created through XMPP and filled by
writing the server's storage (see :mod:`bench.server_fill`). Then the
daemon's reader syncs it ``plan.sync_runs[size]`` times. A first get
through the bridge starts each sync, and the time runs until the daemon's
``ps_cache_sync`` signal reports COMPLETED. ``ps_cache_reset`` drops the node
between two runs, so each run is a first sync. ejabberd pages the sync
with RSM (the default page size, 500 items). Prosody 0.12 has no RSM, so
the daemon lists the node's item ids with disco#items and fetches the items
by id, 500 per request.

Each node is synced by a new daemon, with a reader profile on that server
only. Peak RSS is the daemon's ``VmHWM``, reset to the current RSS before
each run, so it is the highest resident memory of the daemon during that
sync.

A Prosody size whose sync fails with the unchanged daemon (a listing over
the stream's per-stanza limits, ``[xmpp] max_stanza_size`` and
``max_stanza_elements``) is recorded with its error, and measured again with
a second daemon whose Twisted limits are raised (:mod:`bench.lifted_daemon`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from twisted.internet import threads
from twisted.words.protocols.jabber.jid import JID

from libervia.backend.plugins.plugin_pubsub_cache import DEFAULT_SYNC_PAGE_SIZE
from libervia.backend.plugins.plugin_xep_0059 import RSMRequest

from bench import bridge_timing
from bench.daemon import Daemon, add_reader_profiles, reader_profile
from bench.harness import BACKEND_CONFIG, Harness
from bench.items import PostGenerator
from bench.plan import Plan
from bench.server_fill import fill_node
from bench.servers import PUBLISHER, Server
from bench.stats import summarise

log = logging.getLogger(__name__)

#: Seconds a sync may go without a ps_cache_sync signal. A Prosody full
#: fetch of 100,000 items sends one signal before a fetch of minutes.
SYNC_SIGNAL_TIMEOUT = 900.0

MIB = 1024 * 1024


async def _check_filled(harness: Harness, server: Server, node: str, size: int,
                        last_id: str) -> None:
    """Check through XMPP that the server serves the ``size`` items written to its storage."""
    client = harness.client(PUBLISHER, server)
    service = JID(server.pubsub_service)
    extra = {"use_cache": False}
    if server.pages_with_rsm:
        _, metadata = await harness.pubsub.get_items(
            client, service, node, extra=extra, rsm_request=RSMRequest(max=0)
        )
        count = (metadata.get("rsm") or {}).get("count")
        if count != size:
            raise AssertionError(f"{server.name} node {node} has {count} items, not {size}")
    items, _ = await harness.pubsub.get_items(client, service, node, max_items=1, extra=extra)
    newest = [item["id"] for item in items]
    if newest != [last_id]:
        raise AssertionError(f"{server.name} node {node}: newest item {newest}, not {last_id}")


async def _filled_node(harness: Harness, server: Server, size: int) -> str:
    """Create a node of ``size`` items on ``server``; return its name."""
    node = await harness.create_node(server, f"sync-{size}", size)
    generator = PostGenerator(server.jid(PUBLISHER), seed=size)
    posts = (generator.post(index) for index in range(size))
    written = await threads.deferToThread(fill_node, server, node, posts)
    await _check_filled(harness, server, node, written, generator.post(size - 1).item_id)
    return node


def _sync_runs(daemon: Daemon, server: Server, node: str, runs: int) -> list[dict[str, Any]]:
    """Sync a node ``runs`` times with the daemon (blocking); return each run's outcome.

    Stops after a run that does not complete.
    """
    profile = reader_profile(server.name)
    outcomes = []
    for _ in range(runs):
        rss_before = daemon.rss_bytes()
        daemon.reset_peak_rss()
        outcome = bridge_timing.sync_through_bridge(
            daemon.socket_path, profile, server.pubsub_service, node, SYNC_SIGNAL_TIMEOUT,
        )
        peak = daemon.peak_rss_bytes()
        # Dropping the node stops the retries of a failed sync, and makes
        # the next run a first sync.
        bridge_timing.reset_node(daemon.socket_path, profile, server.pubsub_service, node)
        outcomes.append({
            "seconds": outcome.seconds,
            "state": outcome.state,
            "error": outcome.error,
            "items": outcome.items,
            "rss_before_mib": rss_before / MIB,
            "peak_rss_mib": peak / MIB,
        })
        log.info(
            "%s, %s: sync %s in %.2f s, peak RSS %.0f MiB%s", server.name, node,
            outcome.state, outcome.seconds, peak / MIB,
            f" ({outcome.error})" if outcome.error else "",
        )
        if outcome.state != "COMPLETED":
            break
    return outcomes


def _row(server: Server, daemon_name: str, size: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    completed = [run for run in runs if run["state"] == "COMPLETED"]
    row: dict[str, Any] = {
        "server": server.name,
        "daemon": daemon_name,
        "items": size,
        "runs": runs,
        "completed": len(completed) == len(runs),
        "error": next((run["error"] for run in runs if run["error"]), None),
    }
    if completed:
        row["seconds"] = summarise([run["seconds"] for run in completed])
        row["items_per_s"] = summarise([size / run["seconds"] for run in completed])
        row["peak_rss_mib"] = summarise([run["peak_rss_mib"] for run in completed])
    return row


def _sync_with_new_daemon(
    server: Server, node: str, runs: int, workdir: Path, module: str,
) -> list[dict[str, Any]]:
    """Start a daemon with one reader profile on ``server``, sync ``node``, stop the daemon.

    A new daemon per node keeps each peak RSS free of the memory that an
    earlier, larger sync left in the process.
    """
    daemon = Daemon(workdir, BACKEND_CONFIG, module=module)
    try:
        daemon.start()
        add_reader_profiles(daemon, {server.name: server})
        return _sync_runs(daemon, server, node, runs)
    finally:
        daemon.stop()


async def run(harness: Harness, servers: dict[str, Server], plan: Plan,
              workdir: Path) -> dict[str, Any]:
    """Measure figure 3; return one row per server, daemon and node size."""
    rows = []
    prosody_nodes = {}
    for server in (servers["ejabberd"], servers["prosody"]):
        failed_size = None
        for size in plan.sync_sizes:
            node = await _filled_node(harness, server, size)
            if server.name == "prosody":
                prosody_nodes[size] = node
            if failed_size is not None:
                # A larger node fails the same way, after the server spent
                # minutes building its response: not attempted.
                rows.append({
                    "server": server.name, "daemon": "unchanged", "items": size, "runs": [],
                    "completed": False,
                    "error": f"not attempted: the sync of {failed_size:,} items failed",
                })
                continue
            runs = await threads.deferToThread(
                _sync_with_new_daemon, server, node, plan.sync_runs[size],
                workdir / f"sync-{server.name}-{size}", "libervia.backend",
            )
            row = _row(server, "unchanged", size, runs)
            rows.append(row)
            if not row["completed"]:
                failed_size = size

    # The Prosody nodes that the unchanged daemon failed to sync, synced by
    # daemons without Twisted's stanza limits.
    prosody = servers["prosody"]
    failed_sizes = {
        row["items"] for row in rows if row["server"] == "prosody" and not row["completed"]
    }
    for size, node in prosody_nodes.items():
        if size not in failed_sizes:
            continue
        runs = await threads.deferToThread(
            _sync_with_new_daemon, prosody, node, plan.sync_runs[size],
            workdir / f"sync-lifted-{size}", "bench.lifted_daemon",
        )
        rows.append(_row(prosody, "stanza limits raised", size, runs))
    return {"page_size": DEFAULT_SYNC_PAGE_SIZE, "rows": rows}
