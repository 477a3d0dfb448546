"""Sizes and repetitions of the full run and of the ``--quick`` run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions of one benchmark run."""

    name: str
    #: Items of the node read by the get figures, and items per get.
    get_node_items: int
    get_max_items: int
    #: Requests per series of the get figures, after GET_WARMUP unrecorded ones.
    get_rounds: int
    #: Requests for the series that wait for Prosody's Nagle delay (about 40 ms each).
    nagle_rounds: int
    #: Node sizes of the sync figure, and syncs of each size.
    sync_sizes: tuple[int, ...]
    sync_runs: dict[int, int]
    #: Items published per run of the notification figure, runs, readers
    #: querying the cache meanwhile, and the maximum seconds the readers
    #: run (the rate is measured over that window when it ends first).
    notify_items: int
    notify_runs: int
    notify_readers: int
    notify_window_s: float
    #: Cached items of the search figure, and searches per query.
    search_sizes: tuple[int, ...]
    search_rounds: int
    #: Daemon starts per database in the start figure.
    start_runs: int


GET_WARMUP = 20

#: Maximum seconds spent on the repetitions of one search query; slow
#: queries get fewer repetitions (at least SEARCH_MIN_ROUNDS).
SEARCH_QUERY_BUDGET = 10.0
SEARCH_MIN_ROUNDS = 3

FULL = Plan(
    name="full",
    get_node_items=1000,
    get_max_items=20,
    get_rounds=500,
    nagle_rounds=60,
    sync_sizes=(1000, 10_000, 100_000),
    # A sync of 100,000 items takes about two minutes on 2 cores: one run
    # keeps the full run under 30 minutes.
    sync_runs={1000: 5, 10_000: 3, 100_000: 1},
    notify_items=1000,
    notify_runs=3,
    notify_readers=10,
    notify_window_s=30.0,
    search_sizes=(100_000, 1_000_000),
    search_rounds=30,
    start_runs=5,
)

QUICK = Plan(
    name="quick",
    get_node_items=1000,
    get_max_items=20,
    get_rounds=100,
    nagle_rounds=15,
    sync_sizes=(1000, 10_000),
    sync_runs={1000: 2, 10_000: 1},
    notify_items=300,
    notify_runs=1,
    notify_readers=10,
    notify_window_s=10.0,
    search_sizes=(10_000, 50_000),
    search_rounds=10,
    start_runs=3,
)
