"""Timed bridge calls and daemon-side helpers, run from a thread of the benchmark process.

The functions here block on the bridge socket, so the figures call them
through ``twisted.internet.threads.deferToThread``: the in-process backend
keeps its XMPP streams served meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libervia.cli.bridge_client import BridgeClient, BridgeTimeout

#: States of the ps_cache_sync signal that end a sync.
SYNC_END_STATES = frozenset({"COMPLETED", "ERROR", "REMOVED", "LOCKED"})


@dataclass
class Series:
    """A bridge call repeated ``rounds`` times; ``samples`` receives the durations in ms."""

    label: str
    method: str
    params: dict[str, Any]
    rounds: int
    samples: list[float] = field(default_factory=list)
    last_result: Any = None


def time_series(socket_path: Path, series: Sequence[Series], warmup: int) -> None:
    """Time the calls of each series over one connection, interleaving the series.

    Round i calls every series that has more than i rounds, so a slow
    period of the machine affects each series alike. ``warmup`` unrecorded
    rounds come first.
    """
    with BridgeClient(socket_path, timeout=120.0) as client:
        for _ in range(warmup):
            for entry in series:
                client.call(entry.method, **entry.params)
        for index in range(max(entry.rounds for entry in series)):
            for entry in series:
                if index >= entry.rounds:
                    continue
                start = time.perf_counter()
                entry.last_result = client.call(entry.method, **entry.params)
                entry.samples.append((time.perf_counter() - start) * 1000)


def drain_signals(client: BridgeClient) -> None:
    """Drop the signals that the client has received so far."""
    try:
        for _ in client.iter_signals(timeout=0):
            pass
    except BridgeTimeout:
        pass


@dataclass
class SyncOutcome:
    """End of a sync started through the bridge."""

    seconds: float
    state: str
    error: str | None
    items: int | None


def sync_through_bridge(
    socket_path: Path, profile: str, service: str, node: str, timeout: float,
) -> SyncOutcome:
    """Start a node's sync with a first get through the bridge; return when it ends.

    The time runs from the get request until the daemon's ``ps_cache_sync``
    signal with an end state (COMPLETED, ERROR...). Raises BridgeTimeout
    when no signal comes for ``timeout`` seconds.
    """
    with BridgeClient(socket_path, timeout=timeout) as client:
        drain_signals(client)
        start = time.perf_counter()
        client.call("ps_items_get", service=service, node=node, max_items=1, profile=profile)
        for name, args in client.iter_signals(timeout=timeout):
            if name != "ps_cache_sync" or args.get("node") != node:
                continue
            if args.get("profile") != profile or args.get("state") not in SYNC_END_STATES:
                continue
            return SyncOutcome(
                seconds=time.perf_counter() - start, state=args["state"],
                error=args.get("error"), items=args.get("items"),
            )
    raise AssertionError("iter_signals returned without a signal or a timeout")


def reset_node(socket_path: Path, profile: str, service: str, node: str) -> None:
    """Remove a node from the daemon's cache (the next get analyses and syncs it again)."""
    with BridgeClient(socket_path, timeout=120.0) as client:
        client.call("ps_cache_reset", service=service, node=node, profile=profile)
