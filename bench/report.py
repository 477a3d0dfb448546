"""Tables, plots and the Markdown report of a benchmark run.

:func:`update_doc` rewrites the part of doc/benchmarks.md between
GENERATED_BEGIN and GENERATED_END and keeps the rest, which is written by
hand (method, profiles and plans).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GENERATED_BEGIN = "<!-- BEGIN RESULTS: written by python -m bench, do not edit -->"
GENERATED_END = "<!-- END RESULTS -->"

MB = 1_000_000
MIB = 1024 * 1024

#: Libervia 0.9 (Debian package), measured on this kind of machine with a
#: 1,000-item microblog node on a loopback Prosody. Figures as (low, high).
LIBERVIA_09 = {
    "cached_bridge_ms": (8.4, 11.1),
    "live_bridge_nagle_off_ms": (4.5, 8.3),
    "live_bridge_nagle_on_ms": (50.0, 50.0),
    "sync_1000_s": (0.86, 1.58),
    "search_ms": (5.0, 9.0),
}

TARGET_SEARCH_ITEMS = 1_000_000
TARGET_SYNC_ITEMS = 100_000


def _ms(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _count(value: int) -> str:
    return f"{value:,}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# Targets.

def _series(results: dict[str, Any], where: str, label: str) -> dict[str, Any] | None:
    return results.get("get", {}).get(where, {}).get(label)


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Return each target of the issue with the measured value and whether it is met.

    ``met`` is None when the run did not measure the target at its size.
    """
    targets: list[dict[str, Any]] = []

    cached_bridge = _series(results, "bridge", "cache, Prosody node")
    live_bridge = _series(results, "bridge", "live, Prosody Nagle off")
    cached = _series(results, "in_process", "cache, Prosody node")
    floor = _series(results, "in_process", "sqlite3 floor (rows)")
    if cached_bridge:
        targets.append({
            "target": "cached get of 20 items through the bridge: median under 1 ms",
            "measured": f"{_ms(cached_bridge['median'])} ms",
            "met": cached_bridge["median"] < 1.0,
        })
    if cached_bridge and live_bridge:
        ratio = live_bridge["median"] / cached_bridge["median"]
        targets.append({
            "target": "cached get through the bridge at least 5 times faster than the live "
                      "get through the bridge (Prosody, Nagle off)",
            "measured": f"{ratio:.1f} times faster",
            "met": ratio >= 5,
        })
    cached_xml = _series(results, "in_process", "cache as XML, Prosody node")
    floor_parsed = _series(results, "in_process", "sqlite3 floor + XML parsing")
    if cached_xml and floor:
        # The floor reads XML strings: the comparable cached get is the one
        # returning them (get_items_xml). get_items parses them into
        # elements, compared with the floor followed by the same parsing.
        ratio = cached_xml["median"] / floor["median"]
        measured = f"{ratio:.1f} times the floor (XML strings, get_items_xml)"
        if cached and floor_parsed:
            measured += (
                f"; elements (get_items): {cached['median'] / floor_parsed['median']:.1f} "
                f"times the floor + XML parsing"
            )
        targets.append({
            "target": "cached get in-process within 3 times the sqlite3 floor",
            "measured": measured,
            "met": ratio <= 3,
        })
    elif cached and floor:
        ratio = cached["median"] / floor["median"]
        targets.append({
            "target": "cached get in-process within 3 times the sqlite3 floor",
            "measured": f"{ratio:.0f} times the floor",
            "met": ratio <= 3,
        })

    sync_rows = [row for row in results.get("sync", {}).get("rows", [])
                 if row["server"] == "ejabberd" and row.get("items_per_s")]
    if sync_rows:
        slowest = min(sync_rows, key=lambda row: row["items_per_s"]["median"])
        targets.append({
            "target": "sync from ejabberd: at least 5,000 items/s",
            "measured": ", ".join(
                f"{row['items_per_s']['median']:,.0f} items/s at {_count(row['items'])}"
                for row in sync_rows
            ),
            "met": slowest["items_per_s"]["median"] >= 5000,
        })

    search = results.get("search")
    if search:
        largest = max(row["items"] for row in search["rows"])
        rows = [row for row in search["rows"] if row["items"] == largest]
        worst = max(rows, key=lambda row: row["p95"])
        within = sum(1 for row in rows if row["p95"] < 50)
        targets.append({
            "target": "search p95 under 50 ms at 1,000,000 items on both databases",
            "measured": f"at {_count(largest)} items: {within} of {len(rows)} query and "
                        f"database pairs under 50 ms, worst p95 {_ms(worst['p95'])} ms "
                        f"({worst['query']}, {worst['engine']})",
            "met": (within == len(rows)) if largest >= TARGET_SEARCH_ITEMS else None,
        })

    memory_rows = [row for row in results.get("sync", {}).get("rows", [])
                   if row.get("peak_rss_mib") and row["items"] == max(
                       r["items"] for r in results["sync"]["rows"])]
    if memory_rows:
        size = memory_rows[0]["items"]
        peak = max(row["peak_rss_mib"]["max"] for row in memory_rows) * MIB / MB
        targets.append({
            "target": "peak RSS under 200 MB while syncing 100,000 items",
            "measured": f"{peak:,.0f} MB at {_count(size)} items (highest of the servers)",
            "met": (peak < 200) if size >= TARGET_SYNC_ITEMS else None,
        })

    start = results.get("start")
    if start:
        full = [row for row in start["rows"] if row["items"]]
        if full:
            size = full[0]["items"]
            slowest_start = max(row["median"] for row in full)
            targets.append({
                "target": "daemon start under 1 s with 1,000,000 items",
                "measured": ", ".join(
                    f"{row['engine']} {row['median']:.2f} s" for row in full
                ) + f" at {_count(size)} items",
                "met": (slowest_start < 1.0) if size >= TARGET_SEARCH_ITEMS else None,
            })
    return targets


def _met(value: bool | None) -> str:
    if value is None:
        return "not measured at that size"
    return "met" if value else "**missed**"


# Sections.

def _machine_section(results: dict[str, Any]) -> str:
    machine = results["machine"]
    run = results["run"]
    memory = machine.get("memory_bytes")
    lines = [
        f"Run of {run['started']} ({run['plan']} plan, {run['duration_s'] / 60:.1f} minutes), "
        f"command `{run['command']}`.",
        "",
        f"- Machine: {machine['cores']} cores ({machine['cpu']}), "
        f"{memory / 2**30:.0f} GiB of memory, Linux {machine['kernel']}; load average "
        f"{', '.join(str(value) for value in machine['load_average_at_start'])} at the start.",
        f"- Software: Python {machine['python']}, Twisted {machine['twisted']}, SQLAlchemy "
        f"{machine['sqlalchemy']}, SQLite {machine['sqlite']}, PostgreSQL "
        f"{machine.get('postgresql_server') or 'not used'}, Prosody {machine['prosody']}, "
        f"ejabberd {machine['ejabberd']} (Debian packages).",
    ]
    for name, error in run.get("failed_figures", {}).items():
        lines.append(f"- Figure {name} failed: {error}")
    return "\n".join(lines)


def _targets_section(results: dict[str, Any]) -> str:
    rows = [(entry["target"], entry["measured"], _met(entry["met"]))
            for entry in evaluate_targets(results)]
    return _table(("Target", "Measured", ""), rows)


def _comparison_section(results: dict[str, Any]) -> str:
    def range_text(key: str, unit: str) -> str:
        low, high = LIBERVIA_09[key]
        if key == "live_bridge_nagle_on_ms":
            return f"about {low:g} {unit}"
        return f"{low:g} to {high:g} {unit}"

    rows = []
    for key, label, series in (
        ("cached_bridge_ms", "cached get of 20 items, bridge, median", "cache, Prosody node"),
        ("live_bridge_nagle_off_ms", "live get of 20 items, bridge, Prosody Nagle off, median",
         "live, Prosody Nagle off"),
        ("live_bridge_nagle_on_ms", "live get of 20 items, bridge, Prosody default, median",
         "live, Prosody Nagle on"),
    ):
        entry = _series(results, "bridge", series)
        if entry:
            rows.append((label, range_text(key, "ms"), f"{_ms(entry['median'])} ms"))
    nodes = results.get("get", {}).get("nodes", {})
    if "prosody" in nodes:
        rows.append((
            "sync of the 1,000-item node (Prosody, through the bridge)",
            range_text("sync_1000_s", "s"), f"{nodes['prosody']['daemon_sync_s']:.2f} s",
        ))
    search = results.get("search")
    if search:
        smallest = min(row["items"] for row in search["rows"])
        medians = [row["median"] for row in search["rows"]
                   if row["items"] == smallest and row["query"].startswith("fts_")]
        rows.append((
            f"full-text search, 20 results ({_count(smallest)} items here)",
            range_text("search_ms", "ms"),
            f"{_ms(min(medians))} to {_ms(max(medians))} ms (medians of the queries)",
        ))
    return _table(("Measure", "Libervia 0.9", "This run"), rows)


def _get_section(results: dict[str, Any]) -> str:
    get = results["get"]
    floor = get["in_process"]["sqlite3 floor (rows)"]["median"]
    live = get["in_process"]["live, Prosody Nagle off"]["median"]
    rows = []
    for label, entry in get["in_process"].items():
        rows.append((label, _ms(entry["median"]), _ms(entry["p95"]), entry["n"],
                     f"{entry['median'] / floor:.1f}", f"{live / entry['median']:.2f}"))
    in_process = _table(
        ("In-process series", "median ms", "p95 ms", "n", "÷ floor", "live Nagle off ÷"), rows
    )

    ping = get["bridge"]["bridge ping"]["median"]
    live_bridge = get["bridge"]["live, Prosody Nagle off"]["median"]
    rows = []
    for label, entry in get["bridge"].items():
        rows.append((label, _ms(entry["median"]), _ms(entry["p95"]), entry["n"],
                     f"{live_bridge / entry['median']:.2f}", _ms(entry["median"] - ping)))
    bridge = _table(
        ("Bridge series", "median ms", "p95 ms", "n", "live Nagle off ÷", "minus ping, ms"),
        rows,
    )

    publish = ", ".join(
        f"{name} {node['publish_items_per_s']:,.0f} items/s"
        for name, node in get["nodes"].items()
    )
    syncs = ", ".join(
        f"{name} {node['in_process_sync_s']:.2f} s in-process and "
        f"{node['daemon_sync_s']:.2f} s in the daemon"
        for name, node in get["nodes"].items()
    )
    return "\n".join([
        f"Newest {get['max_items']} items of a {_count(get['node_items'])}-item node. "
        f"Publishing the nodes through XMPP (32 requests in flight): {publish}. "
        f"First sync of each node: {syncs}.",
        "",
        in_process,
        "",
        bridge,
    ])


def _sync_section(results: dict[str, Any]) -> str:
    sync = results["sync"]
    rows = []
    for row in sync["rows"]:
        if row.get("seconds"):
            rows.append((
                row["server"], row["daemon"], _count(row["items"]), len(row["runs"]),
                f"{row['seconds']['median']:.2f}", f"{row['seconds']['p95']:.2f}",
                f"{row['items_per_s']['median']:,.0f}",
                f"{row['peak_rss_mib']['median'] * MIB / MB:,.0f}",
                "" if row["completed"] else f"failed: {row['error']}",
            ))
        else:
            rows.append((row["server"], row["daemon"], _count(row["items"]), len(row["runs"]),
                         "", "", "", "", f"failed: {row['error']}"))
    return "\n".join([
        f"ejabberd pages with RSM ({sync['page_size']} items a page). Prosody has no RSM: "
        f"the cache lists the item ids with disco#items and requests the items by id, "
        f"{sync['page_size']} per request. Peak RSS in MB (10^6 bytes).",
        "",
        _table(("Server", "Daemon", "Items", "Runs", "median s", "p95 s", "items/s (median)",
                "peak RSS MB", "Note"), rows),
    ])


def _notify_section(results: dict[str, Any]) -> str:
    notify = results["notify"]
    rows = []
    for entry in [notify["baseline"], *notify["runs"]]:
        latency = entry.get("read_latency_ms")
        rows.append((
            entry["readers"], f"{entry['applied']} of {entry['items']}",
            f"{entry['seconds']:.1f}", f"{entry['applied_per_s']:,.0f}",
            f"{entry['published_per_s']:,.0f}",
            f"{entry['reads_per_s']:,.0f}" if latency else "",
            _ms(latency["median"]) if latency else "",
            _ms(latency["p95"]) if latency else "",
        ))
    return "\n".join([
        f"Server: {notify['server']}; readers stop after {notify['window_s']:g} s at most.",
        "",
        _table(("Readers", "Applied", "s", "applied/s", "published/s", "reads/s",
                "read median ms", "read p95 ms"), rows),
    ])


def _search_section(results: dict[str, Any]) -> str:
    search = results["search"]
    sizes = sorted({row["items"] for row in search["rows"]})
    by_key = {(row["query"], row["engine"], row["items"]): row for row in search["rows"]}
    header = ["Query", "Matches"] + [
        f"{engine} {_count(size)} median / p95 ms" for size in sizes
        for engine in ("sqlite", "postgresql")
    ]
    rows = []
    for name, description in search["queries"].items():
        largest = by_key.get((name, "sqlite", sizes[-1]), {})
        matches = largest.get("matches", "")
        if matches != "":
            # The count stops at its bound unless the search asked for more.
            matches = _count(matches) if largest.get("matches_exact", True) else (
                f"{_count(matches)} or more"
            )
        cells = [f"`{name}`: {description}", matches]
        for size in sizes:
            for engine in ("sqlite", "postgresql"):
                row = by_key.get((name, engine, size))
                cells.append(f"{_ms(row['median'])} / {_ms(row['p95'])} (n={row['n']})"
                             if row else "")
        rows.append(cells)
    fills = ", ".join(
        f"{_count(int(size))} items in {seconds:.0f} s"
        for size, seconds in search["fill_seconds"].items()
    )
    return "\n".join([
        f"Limit {search['limit']}, with the default count (exact up to 1,000 matches); "
        f"{search['nodes']} nodes. Matches at {_count(sizes[-1])} items, as the count gives "
        f"them. Filling both databases at once: {fills}.",
        "",
        _table(header, rows),
    ])


def _start_section(results: dict[str, Any]) -> str:
    rows = [(row["engine"], _count(row["items"]), f"{row['median']:.3f}", f"{row['p95']:.3f}",
             row["n"]) for row in results["start"]["rows"]]
    return _table(("Database", "Items", "median s", "p95 s", "n"), rows)


def render(results: dict[str, Any], plots: dict[str, Path], doc: Path) -> str:
    """Return the generated Markdown for ``results``, with links relative to ``doc``."""
    def image(name: str, text: str) -> list[str]:
        if name not in plots:
            return []
        relative = os.path.relpath(plots[name], doc.parent)
        return [f"![{text}]({relative})", ""]

    parts = [_machine_section(results), "", "### Targets", "", _targets_section(results), "",
             "### Libervia 0.9 and this run", "", _comparison_section(results), ""]
    if "get" in results:
        parts += ["### 1 and 2. Get 20 items: cache, live, floor, bridge", "",
                  _get_section(results), ""]
        parts += image("get", "Median and p95 of each get series")
    if "sync" in results:
        parts += ["### 3. Sync throughput and peak memory", "", _sync_section(results), ""]
        parts += image("sync", "Sync throughput and peak RSS by node size")
    if "notify" in results:
        parts += ["### 4. Notifications applied while readers query the cache", "",
                  _notify_section(results), ""]
    if "search" in results:
        parts += ["### 5. Search latency", "", _search_section(results), ""]
        parts += image("search", "p95 of each search query by size and database")
    if "start" in results:
        parts += ["### 6. Daemon start, until the bridge responds", "",
                  _start_section(results), ""]
    return "\n".join(parts).rstrip() + "\n"


def update_doc(doc: Path, results: dict[str, Any], plots: dict[str, Path]) -> None:
    """Replace the generated part of ``doc`` (or append it) with the report of ``results``."""
    generated = f"{GENERATED_BEGIN}\n\n{render(results, plots, doc)}\n{GENERATED_END}"
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n\n"
    if GENERATED_BEGIN in text and GENERATED_END in text:
        before = text[:text.index(GENERATED_BEGIN)]
        after = text[text.index(GENERATED_END) + len(GENERATED_END):]
        text = before + generated + after
    else:
        text = text.rstrip() + "\n\n" + generated + "\n"
    doc.write_text(text, encoding="utf-8")


def summary(results: dict[str, Any]) -> str:
    """Return the targets table as plain text, for the terminal."""
    lines = ["", "Targets:"]
    for entry in evaluate_targets(results):
        lines.append(f"  [{_met(entry['met']).strip('*'):>9}] {entry['target']}: "
                     f"{entry['measured']}")
    return "\n".join(lines)


# Plots.

def write_plots(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Draw the PNG plots of the figures present in ``results``; return their paths by name."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    plots = {}
    if "get" in results:
        plots["get"] = _plot_get(pyplot, results["get"], folder / "get-latency.png")
    if "sync" in results:
        plots["sync"] = _plot_sync(pyplot, results["sync"], folder / "sync-throughput.png")
    if "search" in results:
        plots["search"] = _plot_search(pyplot, results["search"], folder / "search-latency.png")
    return plots


def _plot_get(pyplot: Any, get: dict[str, Any], path: Path) -> Path:
    figure, axes = pyplot.subplots(2, 1, figsize=(10, 7), constrained_layout=True)
    for axis, (where, title) in zip(axes, (("in_process", "In-process"),
                                           ("bridge", "Through the bridge (daemon)"))):
        labels = list(get[where])
        medians = [get[where][label]["median"] for label in labels]
        p95s = [get[where][label]["p95"] for label in labels]
        positions = range(len(labels))
        axis.barh(positions, medians, color="#4c72b0", label="median")
        axis.scatter(p95s, positions, color="#c44e52", marker="|", s=200, label="p95", zorder=3)
        axis.set_yticks(list(positions), labels)
        axis.invert_yaxis()
        axis.set_xscale("log")
        axis.set_xlabel("milliseconds (log scale)")
        axis.set_title(f"{title}: newest {get['max_items']} items of a "
                       f"{get['node_items']:,}-item node")
        if where == "bridge":
            axis.axvline(1.0, color="grey", linestyle="--", label="target: 1 ms")
        else:
            floor = get[where]["sqlite3 floor (rows)"]["median"]
            axis.axvline(3 * floor, color="grey", linestyle="--", label="target: 3 × floor")
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def _plot_sync(pyplot: Any, sync: dict[str, Any], path: Path) -> Path:
    figure, (speed, memory) = pyplot.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    curves: dict[str, list[tuple[int, float, float]]] = {}
    for row in sync["rows"]:
        if not row.get("items_per_s"):
            continue
        label = f"{row['server']} ({row['daemon']})"
        curves.setdefault(label, []).append((
            row["items"], row["items_per_s"]["median"],
            row["peak_rss_mib"]["median"] * MIB / MB,
        ))
    for label, points in curves.items():
        points.sort()
        sizes = [point[0] for point in points]
        speed.plot(sizes, [point[1] for point in points], marker="o", label=label)
        memory.plot(sizes, [point[2] for point in points], marker="o", label=label)
    speed.axhline(5000, color="grey", linestyle="--", label="target (ejabberd): 5,000/s")
    memory.axhline(200, color="grey", linestyle="--", label="target: 200 MB")
    for axis, title, unit in ((speed, "Sync throughput (median)", "items per second"),
                              (memory, "Daemon peak RSS during the sync", "MB")):
        axis.set_xscale("log")
        axis.set_xlabel("items in the node (log scale)")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def _plot_search(pyplot: Any, search: dict[str, Any], path: Path) -> Path:
    sizes = sorted({row["items"] for row in search["rows"]})
    queries = list(search["queries"])
    series = [(engine, size) for size in sizes for engine in ("sqlite", "postgresql")]
    by_key = {(row["query"], row["engine"], row["items"]): row for row in search["rows"]}
    figure, axis = pyplot.subplots(figsize=(11, 5), constrained_layout=True)
    width = 0.8 / len(series)
    for index, (engine, size) in enumerate(series):
        values = [by_key[(query, engine, size)]["p95"] for query in queries]
        positions = [position + index * width for position in range(len(queries))]
        axis.bar(positions, values, width, label=f"{engine}, {size:,} items")
    axis.axhline(50, color="grey", linestyle="--", label="target: 50 ms")
    axis.set_yscale("log")
    axis.set_ylabel("p95, milliseconds (log scale)")
    axis.set_xticks([position + 0.4 - width / 2 for position in range(len(queries))], queries,
                    rotation=30, ha="right")
    axis.set_title(f"Search, {search['limit']} results with the total count")
    axis.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write the plots and the report of a saved run again: ``python -m bench.report``."""
    repo_root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Write the plots and the Markdown report of a saved run again.",
    )
    parser.add_argument(
        "results", type=Path, nargs="?", default=repo_root / "bench" / "results" / "results.json",
        help="results.json of the run (default: bench/results/results.json)",
    )
    parser.add_argument(
        "--doc", type=Path, default=repo_root / "doc" / "benchmarks.md",
        help="Markdown report to update (default: doc/benchmarks.md)",
    )
    arguments = parser.parse_args(argv)
    results = json.loads(arguments.results.read_text(encoding="utf-8"))
    plots = write_plots(results, arguments.results.parent)
    update_doc(arguments.doc, results, plots)
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
