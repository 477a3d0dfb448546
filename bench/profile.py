"""``python -m bench.profile TARGET``: profile where the time or memory of a missed target goes.

Targets (each writes text reports into ``--output``, by default
bench/results/profiles):

``cached-get``
    cProfile of in-process cached gets of 20 items (Prosody node of 1,000
    items), and the same for the sqlite3 floor with XML parsing.
``bridge-get``
    py-spy samples of the daemon while one bridge client requests cached
    gets in a loop.
``sync``
    py-spy samples of the daemon while it syncs a 10,000-item ejabberd node,
    then tracemalloc's largest allocation sites at the moment the in-process
    backend stores the items of the same sync.
``notify``
    py-spy samples of the daemon applying notifications while 10 readers
    query its cache.
``search``
    The query plans of SQLite (``EXPLAIN QUERY PLAN``) and PostgreSQL
    (``EXPLAIN ANALYZE``) for the search figure's queries, at 100,000 items.

py-spy must be installed (``pip install py-spy``) for the daemon targets.
Reports group samples by function: "inclusive" counts the samples whose
stack contains the function, "self" those where it is the innermost frame.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.profile")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "results" / "profiles"
TARGETS = ("cached-get", "bridge-get", "sync", "notify", "search")

#: Seconds of py-spy sampling, and samples per second.
SAMPLE_SECONDS = 15
SAMPLE_RATE = 250
TOP_FUNCTIONS = 30


# py-spy.

def py_spy_record(pid: int, output: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Start py-spy sampling ``pid`` into ``output`` (collapsed stacks); return the process."""
    executable = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen(
        [executable, "record", "--pid", str(pid), "--duration", str(int(seconds)),
         "--rate", str(SAMPLE_RATE), "--format", "raw", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def summarise_stacks(raw: Path, title: str) -> str:
    """Return the functions that take most samples in a py-spy raw (collapsed stacks) file."""
    inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [_function_name(frame) for frame in stack.split(";")]
        for name in set(frames):
            inclusive[name] += count
        innermost[frames[-1]] += count
    lines = [title, f"{total} samples at {SAMPLE_RATE} per second while the daemon's thread "
             f"was active (py-spy leaves idle samples out)", "", "inclusive %  function"]
    lines += [f"{100 * count / total:10.1f}  {name}"
              for name, count in inclusive.most_common(TOP_FUNCTIONS)]
    lines += ["", "self %  function"]
    lines += [f"{100 * count / total:6.1f}  {name}"
              for name, count in innermost.most_common(TOP_FUNCTIONS)]
    return "\n".join(lines) + "\n"


def _function_name(frame: str) -> str:
    """Turn py-spy's ``func (path/to/module.py:12)`` into ``func (module.py)``."""
    name, _, location = frame.partition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


# In-process targets.

def _cprofile_report(profiler: cProfile.Profile, title: str) -> str:
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats("cumulative").print_stats(TOP_FUNCTIONS)
    stats.sort_stats("tottime").print_stats(TOP_FUNCTIONS)
    return f"{title}\n\n{stream.getvalue()}"


async def _profile_cached_get(harness: Any, servers: dict[str, Any], output: Path) -> None:
    import sqlite3

    from twisted.words.protocols.jabber.jid import JID

    from libervia.backend.plugins.plugin_xep_0060 import items_from_xml

    from bench.fig_get import FLOOR_QUERY
    from bench.items import PostGenerator

    server = servers["prosody"]
    generator = PostGenerator(server.jid("pub"), seed=1)
    node = await harness.create_node(server, "profile", 1000)
    await harness.publish(server, node, generator.posts(1000))
    await harness.sync_as_reader(server, node)
    client = harness.client("reader", server)
    service = JID(server.pubsub_service)
    rounds = 2000
    for _ in range(50):
        await harness.pubsub.get_items(client, service, node, max_items=20)

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(rounds):
        await harness.pubsub.get_items(client, service, node, max_items=20)
    profiler.disable()
    elapsed = (time.perf_counter() - start) / rounds * 1000
    report = _cprofile_report(
        profiler, f"{rounds} in-process cached gets of 20 items: {elapsed:.3f} ms each "
                  f"under cProfile",
    )

    node_row = await harness.backend.storage.get_pubsub_node(
        client.profile_id, server.pubsub_service, node
    )
    connection = sqlite3.connect(harness.db_path)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(rounds):
        items_from_xml([row[0] for row in connection.execute(FLOOR_QUERY, (node_row.id, 20))])
    profiler.disable()
    elapsed = (time.perf_counter() - start) / rounds * 1000
    connection.close()
    report += "\n\n" + _cprofile_report(
        profiler, f"{rounds} sqlite3 reads of the same rows + items_from_xml: {elapsed:.3f} ms "
                  f"each under cProfile",
    )
    (output / "cached-get.txt").write_text(report)


async def _fetch_pages(harness: Any, server: Any, node: str) -> str:
    """Fetch every item of an RSM node by sync pages without storing them; return a report line.

    This is the network and server share of a sync, measured in-process.
    """
    from twisted.words.protocols.jabber.jid import JID

    from libervia.backend.plugins.plugin_xep_0059 import RSMRequest

    client = harness.client("reader", server)
    service = JID(server.pubsub_service)
    extra = {"use_cache": False}
    page_size = harness.backend.plugins["PUBSUB_CACHE"].sync_page_size
    start = time.perf_counter()
    fetched = pages = 0
    after = None
    while True:
        items, metadata = await harness.pubsub.get_items(
            client, service, node, extra=extra, rsm_request=RSMRequest(max=page_size, after=after)
        )
        pages += 1
        fetched += len(items)
        after = (metadata.get("rsm") or {}).get("last")
        if not items or not after:
            break
    elapsed = time.perf_counter() - start
    return (f"fetching {fetched} items in {pages} RSM pages of {page_size}, without storing them: "
            f"{elapsed:.2f} s ({fetched / elapsed:,.0f} items/s)")


async def _sync_memory(harness: Any, servers: dict[str, Any], node: str, output: Path) -> None:
    """Snapshot the in-process backend's allocations when a 10,000-item sync uses the most memory.

    The sync stores each page as it arrives: a snapshot is taken at each
    storage call, and the report shows the one with the most memory traced.
    """
    storage = harness.backend.storage
    original = storage.cache_pubsub_items
    snapshots: list[tuple[int, Any]] = []

    def cache_pubsub_items(node_id: int, items: Any) -> Any:
        traced = tracemalloc.get_traced_memory()[0]
        if not snapshots or traced > snapshots[0][0]:
            snapshots[:] = [(traced, tracemalloc.take_snapshot())]
        return original(node_id, items)

    storage.cache_pubsub_items = cache_pubsub_items
    tracemalloc.start(5)
    try:
        await harness.sync_as_reader(servers["ejabberd"], node)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        storage.cache_pubsub_items = original
    if not snapshots:
        raise RuntimeError("the sync stored no item")
    snapshot = snapshots[0][1].filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
    ])
    lines = ["Allocations alive when the sync of a 10,000-item ejabberd node calls "
             "Storage.cache_pubsub_items with the most memory traced (tracemalloc, 5 "
             "frames):", ""]
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    lines.append(f"total traced at that call: {total / 1e6:.1f} MB; peak traced during the "
                 f"sync: {peak / 1e6:.1f} MB")
    lines.append("")
    for stat in snapshot.statistics("lineno")[:TOP_FUNCTIONS]:
        frame = stat.traceback[0]
        lines.append(f"{stat.size / 1e6:8.1f} MB {stat.count:9d} blocks  "
                     f"{Path(frame.filename).name}:{frame.lineno}")
    (output / "sync-memory.txt").write_text("\n".join(lines) + "\n")


# Daemon targets.

def _record_daemon(daemon: Any, output: Path, name: str, title: str, load: Any) -> None:
    """Sample the daemon with py-spy while ``load()`` runs; write ``NAME.txt``."""
    raw = output / f"{name}.raw"
    recorder = py_spy_record(daemon.pid, raw, SAMPLE_SECONDS)
    time.sleep(0.5)
    load()
    _, error = recorder.communicate(timeout=SAMPLE_SECONDS + 60)
    if recorder.returncode != 0:
        raise RuntimeError(f"py-spy failed (exit {recorder.returncode}): {error.decode()}")
    (output / f"{name}.txt").write_text(summarise_stacks(raw, title))
    raw.unlink()


def _bridge_get_load(daemon: Any, server: Any, node: str) -> None:
    from libervia.cli.bridge_client import BridgeClient

    from bench.daemon import reader_profile

    deadline = time.monotonic() + SAMPLE_SECONDS - 1
    with BridgeClient(daemon.socket_path) as client:
        while time.monotonic() < deadline:
            client.call("ps_items_get", service=server.pubsub_service, node=node, max_items=20,
                        profile=reader_profile(server.name))


def _notify_load(daemon: Any, server: Any, node: str, publish: Any) -> None:
    from bench.daemon import reader_profile
    from bench.fig_notify import Reader

    stop = threading.Event()
    params = {"service": server.pubsub_service, "node": node, "max_items": 20,
              "profile": reader_profile(server.name)}
    readers = [Reader(daemon.socket_path, params, stop) for _ in range(10)]
    threads = [threading.Thread(target=reader.run, daemon=True) for reader in readers]
    for thread in threads:
        thread.start()
    publish()
    time.sleep(SAMPLE_SECONDS - 1)
    stop.set()
    for thread in threads:
        thread.join()


async def _profile_daemon_targets(targets: set[str], workdir: Path, output: Path) -> None:
    from twisted.internet import threads

    from bench import bridge_timing
    from bench.daemon import Daemon, add_reader_profiles, reader_profile
    from bench.fig_sync import _filled_node
    from bench.harness import BACKEND_CONFIG, Harness
    from bench.items import PostGenerator
    from bench.servers import running_servers

    with running_servers(workdir / "servers") as servers:
        harness = Harness(servers, workdir / "harness")
        daemon = Daemon(workdir / "daemon", BACKEND_CONFIG)
        try:
            await harness.start()
            await threads.deferToThread(daemon.start)
            await threads.deferToThread(add_reader_profiles, daemon, servers)
            prosody = servers["prosody"]

            if "cached-get" in targets:
                await _profile_cached_get(harness, servers, output)

            if "bridge-get" in targets or "notify" in targets:
                generator = PostGenerator(prosody.jid("pub"), seed=1)
                node = await harness.create_node(prosody, "profile-daemon", 10_000)
                await harness.publish(prosody, node, generator.posts(1000))
                await threads.deferToThread(
                    bridge_timing.sync_through_bridge, daemon.socket_path,
                    reader_profile("prosody"), prosody.pubsub_service, node, 300.0,
                )
                if "bridge-get" in targets:
                    await threads.deferToThread(
                        _record_daemon, daemon, output, "bridge-get",
                        "daemon during cached gets of 20 items through the bridge "
                        "(one client, no pause)",
                        lambda: _bridge_get_load(daemon, prosody, node),
                    )
                if "notify" in targets:
                    from twisted.internet import defer, reactor

                    def publish() -> None:
                        posts = generator.posts(3000, start=1000)
                        reactor.callFromThread(
                            lambda: defer.ensureDeferred(harness.publish(prosody, node, posts))
                        )

                    await threads.deferToThread(
                        _record_daemon, daemon, output, "notify",
                        "daemon applying notifications while 10 readers request cached gets",
                        lambda: _notify_load(daemon, prosody, node, publish),
                    )

            if "sync" in targets:
                ejabberd = servers["ejabberd"]
                node = await _filled_node(harness, ejabberd, 10_000)

                def sync_load() -> None:
                    bridge_timing.sync_through_bridge(
                        daemon.socket_path, reader_profile("ejabberd"),
                        ejabberd.pubsub_service, node, 300.0,
                    )

                await threads.deferToThread(
                    _record_daemon, daemon, output, "sync",
                    "daemon syncing a 10,000-item ejabberd node (RSM pages of the default size)", sync_load,
                )
                fetch_line = await _fetch_pages(harness, ejabberd, node)
                with (output / "sync.txt").open("a") as report:
                    report.write("\n" + fetch_line + "\n")
                await _sync_memory(harness, servers, node, output)
        finally:
            daemon.stop()
            await harness.stop()


async def _profile_search(output: Path) -> None:
    from libervia.backend.memory import search as search_module
    from libervia.backend.tools.aio import as_deferred

    from bench.fig_search import SEARCH_LIMIT, SearchDatabases, make_queries

    size = 100_000
    workdir = Path(tempfile.mkdtemp(prefix="libervia-bench-profile-", dir="/tmp"))
    lines = [f"Query plans of the search figure's queries at {size:,} items", ""]
    try:
        async with SearchDatabases(workdir) as databases:
            await databases.fill_to(size)
            for query in make_queries(databases.generator, size):
                for engine in ("sqlite", "postgresql"):
                    storage = databases.storages[engine]
                    request = search_module.check_request(
                        **{"fts_mode": "words", **query.arguments},
                        profile_ids=[databases.profile_ids[engine]], limit=SEARCH_LIMIT,
                    )
                    page = search_module.build_page_query(engine, request)
                    count = search_module.build_count_query(
                        engine, request, search_module.DEFAULT_COUNT_LIMIT + 1
                    )
                    for label, statement in (("page", page), ("count", count)):
                        plan = await as_deferred(_explain(storage, engine, statement))
                        lines += [f"== {query.name} ({query.description}), {engine}, {label}",
                                  plan, ""]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    (output / "search-plans.txt").write_text("\n".join(lines) + "\n")


async def _explain(storage: Any, engine: str, statement: Any) -> str:
    """Return the plan of ``statement``, executed on PostgreSQL (EXPLAIN ANALYZE)."""
    compiled = statement.compile(
        dialect=storage.engine.dialect, compile_kwargs={"literal_binds": True}
    )
    prefix = "EXPLAIN QUERY PLAN " if engine == "sqlite" else "EXPLAIN (ANALYZE, BUFFERS) "
    async with storage.engine.connect() as connection:
        rows = (await connection.exec_driver_sql(prefix + str(compiled))).all()
    if engine == "sqlite":
        return "\n".join(f"{row[0]:>4} {row[1]:>4} {row[3]}" for row in rows)
    return "\n".join(row[0] for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="+", choices=TARGETS, metavar="TARGET",
                        help=f"what to profile: {', '.join(TARGETS)}")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="folder of the reports (default: bench/results/profiles)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("libervia").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    arguments.output.mkdir(parents=True, exist_ok=True)
    targets = set(arguments.targets)

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer, reactor

    workdir = Path(tempfile.mkdtemp(prefix="libervia-bench-profile-", dir="/tmp"))
    outcome: dict[str, Any] = {}

    async def run() -> None:
        if targets - {"search"}:
            await _profile_daemon_targets(targets, workdir, arguments.output)
        if "search" in targets:
            await _profile_search(arguments.output)

    def start() -> None:
        d = defer.ensureDeferred(run())
        d.addErrback(lambda failure: outcome.update(failure=failure))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    shutil.rmtree(workdir, ignore_errors=True)
    if "failure" in outcome:
        outcome["failure"].raiseException()
    log.info("reports in %s", arguments.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
