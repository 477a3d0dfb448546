"""Figure 6: daemon start time, until its bridge responds, with an empty and a full database.

Each start runs ``python -m libervia.backend fg`` (as ``libervia-backend
start`` does in the background) and times it from the launch until a
``ping`` on the bridge socket gets its response, polled every 2 ms. The
databases are those of the search figure, at their largest size, and an
empty database created by a first start. One unrecorded start precedes the
recorded ones on each database, so the files are in the page cache and the
Python modules compiled, as on a machine where the daemon ran before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from twisted.internet import threads

from bench.daemon import Daemon
from bench.fig_search import SearchDatabases
from bench.plan import Plan
from bench.stats import summarise

log = logging.getLogger(__name__)


def _start_times(folder: Path, db_url: str | None, runs: int) -> list[float]:
    """Start and stop a daemon ``runs`` times after one unrecorded start; return the times in s."""
    times = []
    for index in range(runs + 1):
        daemon = Daemon(folder / f"run-{index}", config="", db_url=db_url)
        try:
            seconds = daemon.start()
        finally:
            daemon.stop()
        if index > 0:
            times.append(seconds)
    return times


async def run(databases: SearchDatabases, plan: Plan, folder: Path) -> dict[str, Any]:
    """Measure figure 6; return one row per database."""
    # The daemon must be the only process using the databases, as it would be.
    await databases.close_storages()
    empty_url = f"sqlite+aiosqlite:///{folder / 'empty.db'}"
    cases = [
        ("sqlite", 0, empty_url),
        ("sqlite", databases.size, databases.urls["sqlite"]),
        ("postgresql", databases.size, databases.urls["postgresql"]),
    ]
    rows = []
    for engine, items, url in cases:
        times = await threads.deferToThread(
            _start_times, folder / f"{engine}-{items}", url, plan.start_runs
        )
        rows.append({"engine": engine, "items": items, **summarise(times)})
        log.info("%s, %d items: start in %.2f s (median)", engine, items, rows[-1]["median"])
    return {"rows": rows}
