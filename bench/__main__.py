"""``python -m bench``: run the benchmark suite and write its report.

Run it from the checkout (``make bench`` does). It starts two Prosody
servers and one ejabberd on 127.0.0.1, an in-process backend and a backend
daemon, uses the local PostgreSQL server for the search and start figures,
and stops or drops all of them at the end. doc/benchmarks.md describes the
figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.plan import FULL, QUICK, Plan

log = logging.getLogger("bench")

REPO_ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("get", "sync", "notify", "search", "start")
DEFAULT_RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_DOC = REPO_ROOT / "doc" / "benchmarks.md"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure the pubsub cache against live servers and the database floor.",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="smaller nodes, databases and repetitions (under 5 minutes on 2 cores)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=FIGURES, metavar="FIGURE",
        help=f"run only these figures ({', '.join(FIGURES)}); default: all",
    )
    parser.add_argument(
        "--results-dir", type=Path,
        help="folder for results.json and the plots (default: bench/results, or "
             "bench/results/quick with --quick)",
    )
    parser.add_argument(
        "--doc", type=Path,
        help="Markdown report to update (default: doc/benchmarks.md for a full run of "
             "every figure, none otherwise)",
    )
    parser.add_argument(
        "--keep-workdir", action="store_true",
        help="keep the temporary folder with the servers' and backends' data and logs",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    return parser.parse_args(argv)


async def run_suite(plan: Plan, figures: tuple[str, ...], workdir: Path) -> dict[str, Any]:
    """Run the figures of ``figures`` and return their results."""
    from bench import machine

    results: dict[str, Any] = {"machine": machine.describe()}
    if {"get", "sync", "notify"} & set(figures):
        await _run_xmpp_figures(plan, figures, workdir, results)
    if {"search", "start"} & set(figures):
        await _run_database_figures(plan, figures, workdir, results)
    return results


async def _measure(results: dict[str, Any], name: str, title: str, figure: Any) -> None:
    """Await one figure's coroutine and store its results under ``name``.

    A figure that fails is logged and recorded as ``{"error": ...}``, so the
    other figures still run; main() then exits with 1.
    """
    log.info("%s", title)
    try:
        results[name] = await figure
    except Exception as exc:
        log.exception("%s failed", title)
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}


async def _run_xmpp_figures(
    plan: Plan, figures: tuple[str, ...], workdir: Path, results: dict[str, Any],
) -> None:
    from twisted.internet import threads

    from bench import fig_get, fig_notify, fig_sync
    from bench.daemon import Daemon, add_reader_profiles
    from bench.harness import BACKEND_CONFIG, Harness
    from bench.servers import running_servers

    with running_servers(workdir / "servers") as servers:
        harness = Harness(servers, workdir / "harness")
        daemon = Daemon(workdir / "daemon", BACKEND_CONFIG)
        try:
            await harness.start()
            await threads.deferToThread(daemon.start)
            await threads.deferToThread(add_reader_profiles, daemon, servers)
            if "get" in figures:
                await _measure(results, "get", "figures 1 and 2: get items",
                               fig_get.run(harness, daemon, servers, plan))
            if "sync" in figures:
                await _measure(results, "sync", "figure 3: sync",
                               fig_sync.run(harness, servers, plan, workdir))
            if "notify" in figures:
                await _measure(results, "notify", "figure 4: notifications",
                               fig_notify.run(harness, daemon, servers, plan))
        finally:
            daemon.stop()
            await harness.stop()


async def _run_database_figures(
    plan: Plan, figures: tuple[str, ...], workdir: Path, results: dict[str, Any],
) -> None:
    from bench import fig_search, fig_start

    async with fig_search.SearchDatabases(workdir / "search") as databases:
        results["machine"]["postgresql_server"] = await databases.postgresql_version()
        if "search" in figures:
            await _measure(results, "search", "figure 5: search", fig_search.run(databases, plan))
        if "start" in figures:
            await databases.fill_to(plan.search_sizes[-1])
            await _measure(results, "start", "figure 6: daemon start",
                           fig_start.run(databases, plan, workdir / "start"))


def _run_reactor(plan: Plan, figures: tuple[str, ...], workdir: Path) -> dict[str, Any]:
    """Run the suite on Twisted's asyncio reactor, as the daemon does; return the results."""
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer, reactor

    outcome: dict[str, Any] = {}

    def start() -> None:
        d = defer.ensureDeferred(run_suite(plan, figures, workdir))
        d.addCallbacks(lambda results: outcome.update(results=results),
                       lambda failure: outcome.update(failure=failure))
        d.addBoth(lambda _: reactor.stop())

    from bench.daemon import stop_all

    # On an interrupted run, stopping the daemons ends the bridge calls that
    # threads are blocked in, so the process can exit.
    reactor.addSystemEventTrigger("before", "shutdown", stop_all)
    reactor.callWhenRunning(start)
    reactor.run()
    if "failure" in outcome:
        outcome["failure"].raiseException()
    if "results" not in outcome:
        raise SystemExit("the run was interrupted: no results written")
    return outcome["results"]


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(
        level=logging.DEBUG if arguments.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The backends' own logs would interleave with the benchmark's progress.
    logging.getLogger("libervia").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    plan = QUICK if arguments.quick else FULL
    figures = tuple(arguments.only or FIGURES)
    results_dir = arguments.results_dir or (
        DEFAULT_RESULTS_DIR / "quick" if arguments.quick else DEFAULT_RESULTS_DIR
    )
    doc = arguments.doc
    if doc is None and not arguments.quick and figures == FIGURES:
        doc = DEFAULT_DOC

    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    workdir = Path(tempfile.mkdtemp(prefix="libervia-bench-", dir="/tmp"))
    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    log.info("%s run of %s, working folder %s", plan.name, ", ".join(figures), workdir)
    try:
        results = _run_reactor(plan, figures, workdir)
    finally:
        if arguments.keep_workdir:
            log.info("working folder kept: %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["run"] = {
        "plan": plan.name,
        "figures": list(figures),
        "command": command.strip(),
        "started": started_at.isoformat(timespec="seconds"),
        "duration_s": time.monotonic() - started,
    }

    from bench import report

    failed = {
        name: results.pop(name)["error"] for name in FIGURES if "error" in results.get(name, {})
    }
    for name, error in failed.items():
        log.error("figure %s failed: %s", name, error)
    results["run"]["failed_figures"] = failed
    results_dir.mkdir(parents=True, exist_ok=True)
    results_path = results_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    plots = report.write_plots(results, results_dir)
    print(report.summary(results))
    if doc is not None:
        report.update_doc(doc, results, plots)
        log.info("report written to %s", doc)
    log.info("results in %s (%.0f s)", results_path, results["run"]["duration_s"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
