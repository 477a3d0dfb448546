"""Figure 4: notifications applied per second by the daemon while readers query its cache.

The daemon's reader syncs a Prosody node (Nagle off). Then, in each run,
``plan.notify_readers`` threads of the benchmark process, each with its
own bridge connection, request the node's 20 newest items from the cache
in a loop, while the in-process publisher publishes ``plan.notify_items``
items (32 requests in flight). A watcher connection counts the daemon's
``ps_event`` signals of the node: the daemon sends one after the cache has
applied a notification, so the time of the last one ends the run.

The readers run until every notification is applied, or for at most
``plan.notify_window_s`` seconds: the rate is the number of notifications
applied while they ran, divided by that time. A run without readers comes
first, as the baseline. The rate cannot exceed the rate at which the
server accepts publications, which the results give too.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import threads

from libervia.backend.plugins.plugin_xep_0060 import items_from_xml
from libervia.cli.bridge_client import BridgeClient

from bench import bridge_timing
from bench.daemon import Daemon, reader_profile
from bench.harness import Harness
from bench.items import PostGenerator
from bench.plan import Plan
from bench.servers import PUBLISHER, Server
from bench.stats import summarise

log = logging.getLogger(__name__)

INITIAL_ITEMS = 100
#: Seconds the watcher waits for the next ps_event signal before giving up.
SIGNAL_TIMEOUT = 120.0
READ_MAX_ITEMS = 20


@dataclass
class Watcher:
    """Thread counting the items of the ps_event signals of one node."""

    socket_path: Path
    profile: str
    node: str
    expected: int
    connected: threading.Event = field(default_factory=threading.Event)
    times: list[float] = field(default_factory=list)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            with BridgeClient(self.socket_path, timeout=SIGNAL_TIMEOUT) as client:
                client.call("ping")
                self.connected.set()
                for name, args in client.iter_signals(timeout=SIGNAL_TIMEOUT):
                    if name != "ps_event" or args.get("node") != self.node:
                        continue
                    if args.get("profile") != self.profile:
                        continue
                    now = time.perf_counter()
                    self.times.extend(now for _ in args.get("items") or [])
                    if len(self.times) >= self.expected:
                        return
        except BaseException as exc:  # reported by the figure
            self.error = exc
            self.connected.set()


@dataclass
class Reader:
    """Thread requesting cached items in a loop until ``stop`` is set."""

    socket_path: Path
    params: dict[str, Any]
    stop: threading.Event
    samples: list[tuple[float, float]] = field(default_factory=list)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            with BridgeClient(self.socket_path, timeout=60.0) as client:
                while not self.stop.is_set():
                    start = time.perf_counter()
                    client.call("ps_items_get", **self.params)
                    end = time.perf_counter()
                    self.samples.append((start, (end - start) * 1000))
        except BaseException as exc:  # reported by the figure
            self.error = exc


def _start_thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


async def _run_once(harness: Harness, daemon: Daemon, server: Server, node: str,
                    generator: PostGenerator, count: int, readers: int, window: float,
                    prefix: str) -> dict[str, Any]:
    """Publish ``count`` items while ``readers`` threads read; return the run's measures.

    The readers stop when every notification is applied or ``window``
    seconds after the first publish, whichever comes first. The rate is the
    number of notifications applied by then, divided by that time.
    """
    profile = reader_profile(server.name)
    watcher = Watcher(daemon.socket_path, profile, node, count)
    watcher_thread = _start_thread(watcher.run)
    await threads.deferToThread(watcher.connected.wait)
    if watcher.error is not None:
        raise watcher.error

    stop = threading.Event()
    params = {
        "service": server.pubsub_service, "node": node, "max_items": READ_MAX_ITEMS,
        "profile": profile,
    }
    reader_objects = [Reader(daemon.socket_path, params, stop) for _ in range(readers)]
    reader_threads = [_start_thread(reader.run) for reader in reader_objects]
    start = time.perf_counter()
    try:
        publish_seconds = await harness.publish(
            server, node, generator.posts(count, prefix=prefix)
        )
        remaining = max(0.0, start + window - time.perf_counter())
        await threads.deferToThread(watcher_thread.join, remaining)
    finally:
        stop.set()
        window_end = time.perf_counter()
        for thread in reader_threads:
            await threads.deferToThread(thread.join)
    applied_in_window = sum(1 for moment in watcher.times if moment <= window_end)
    # The notifications left are applied without readers; the next run
    # starts once they are.
    await threads.deferToThread(watcher_thread.join)
    if watcher.error is not None:
        raise watcher.error
    for reader in reader_objects:
        if reader.error is not None:
            raise reader.error

    end = watcher.times[-1] if applied_in_window == count else window_end
    latencies = [
        duration for reader in reader_objects for started, duration in reader.samples
        if start <= started <= end
    ]
    result: dict[str, Any] = {
        "readers": readers,
        "items": count,
        "applied": applied_in_window,
        "seconds": end - start,
        "applied_per_s": applied_in_window / (end - start),
        "published_per_s": count / publish_seconds,
    }
    if latencies:
        result["read_latency_ms"] = summarise(latencies)
        result["reads_per_s"] = len(latencies) / (end - start)
    log.info(
        "%d readers: %d of %d notifications applied in %.2f s (%.0f/s), published at %.0f/s",
        readers, applied_in_window, count, end - start, result["applied_per_s"],
        result["published_per_s"],
    )
    return result


async def run(harness: Harness, daemon: Daemon, servers: dict[str, Server],
              plan: Plan) -> dict[str, Any]:
    """Measure figure 4; return the baseline run and the runs with readers."""
    server = servers["prosody"]
    generator = PostGenerator(server.jid(PUBLISHER), seed=4)
    total = INITIAL_ITEMS + plan.notify_items * (plan.notify_runs + 1)
    node = await harness.create_node(server, "notify", total)
    await harness.publish(server, node, generator.posts(INITIAL_ITEMS))
    outcome = await threads.deferToThread(
        bridge_timing.sync_through_bridge, daemon.socket_path, reader_profile(server.name),
        server.pubsub_service, node, 300.0,
    )
    if outcome.state != "COMPLETED":
        raise RuntimeError(f"the daemon did not sync node {node}: {outcome.error}")

    baseline = await _run_once(
        harness, daemon, server, node, generator, plan.notify_items, 0,
        plan.notify_window_s, "baseline",
    )
    runs = []
    for index in range(plan.notify_runs):
        runs.append(await _run_once(
            harness, daemon, server, node, generator, plan.notify_items,
            plan.notify_readers, plan.notify_window_s, f"run{index}",
        ))

    # The cache must now serve the last item published.
    last_id = f"run{plan.notify_runs - 1}-{plan.notify_items - 1:07d}"
    result = await threads.deferToThread(
        _newest_cached_id, daemon.socket_path, server, node
    )
    if result != last_id:
        raise AssertionError(f"newest cached item of {node} is {result}, not {last_id}")

    return {
        "server": server.name,
        "window_s": plan.notify_window_s,
        "baseline": baseline,
        "runs": runs,
        "applied_per_s": summarise([entry["applied_per_s"] for entry in runs]),
    }


def _newest_cached_id(socket_path: Path, server: Server, node: str) -> str | None:
    with BridgeClient(socket_path, timeout=60.0) as client:
        result = client.call(
            "ps_items_get", service=server.pubsub_service, node=node, max_items=1,
            profile=reader_profile(server.name),
        )
    if not result["metadata"].get("from_cache"):
        raise AssertionError(f"the last get of {node} was not served from the cache")
    items = items_from_xml(result["items"])
    return items[0]["id"] if items else None
