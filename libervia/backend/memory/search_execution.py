"""Run a checked search: the bounded count, the order chosen from it, and the page.

:func:`run_search` is the body of
:meth:`~libervia.backend.memory.sqla.Storage.search_pubsub_items`. It runs
the queries built by :mod:`~libervia.backend.memory.search` in one read
transaction:

1. The count, which stops at the request's count limit, or at
   :data:`~search.RELEVANCE_MAX_MATCHES` when the order uses relevance.
2. The page. A search ordered by relevance that matched more than
   :data:`~search.RELEVANCE_MAX_MATCHES` items is ordered by row id instead
   (the order in which the cache stored the items), in the direction of the
   relevance key, so the best matches come first only where scoring every
   match stays cheap.

On SQLite, a full-text search ordered by ``created`` or ``updated`` runs in
two steps (see :func:`_sqlite_newest_page`), because SQLite can neither
merge the order of an index with the FTS5 matches nor probe FTS5 cheaply
for each row of an index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, Text, bindparam, column, exists, literal, literal_column, select, table
from sqlalchemy.ext.asyncio import AsyncSession

from libervia.backend.memory import fulltext, search
from libervia.backend.memory.search import OrderKey, SearchHit, SearchRequest, SearchResult
from libervia.backend.memory.sqla_mapping import PubsubItem

# Extra column of the SQLite two-step pages: the row id, which breaks ties.
ROW_ID_LABEL = "row_id"


async def run_search(
    session: AsyncSession, dialect_name: str, request: SearchRequest
) -> SearchResult:
    """Run ``request`` in ``session``; return the page of hits and the count."""
    uses_relevance = any(key.name == search.RELEVANCE for key in request.order)

    cap = _count_cap(request, uses_relevance)
    counted: int | None = None
    if cap is None or cap > 0:
        counted = await session.scalar(search.build_count_query(dialect_name, request, cap)) or 0

    order = request.order
    relevance_ignored = (
        uses_relevance and counted is not None and counted > search.RELEVANCE_MAX_MATCHES
    )
    if relevance_ignored:
        order = tuple(
            OrderKey(search.STORAGE_ORDER, None, key.descending)
            if key.name == search.RELEVANCE else key
            for key in order
        )

    rows: Sequence[Row[Any]] = []
    if request.limit:
        if dialect_name == "sqlite" and _is_time_order(request, order):
            rows = await _sqlite_newest_page(session, request, order[0])
        else:
            page = search.build_page_query(dialect_name, request, order)
            rows = (await session.execute(page)).all()

    hits = [_hit(row) for row in rows]
    total, total_exact = _total(request, cap, counted, len(hits))
    return SearchResult(
        hits=hits, total=total, total_exact=total_exact, relevance_ignored=relevance_ignored
    )


def _count_cap(request: SearchRequest, uses_relevance: bool) -> int | None:
    """Return the LIMIT of the count query: None counts every match, 0 runs no count."""
    if request.count_limit is None:
        return None
    if request.count_limit == 0 and not uses_relevance:
        return 0
    cap = request.count_limit + 1
    if uses_relevance:
        # Counting one more than the maximum shows whether relevance applies.
        cap = max(cap, search.RELEVANCE_MAX_MATCHES + 1)
    return cap


def _total(
    request: SearchRequest, cap: int | None, counted: int | None, hit_count: int
) -> tuple[int | None, bool]:
    """Return the total to report and whether it is exact."""
    if request.count_limit == 0 or counted is None:
        return None, False
    if cap is None or counted < cap:
        return counted, True
    # The count stopped at its cap.
    seen = request.offset + hit_count
    if 0 < hit_count < request.limit:
        # A short page contains the last matches.
        return seen, True
    return max(request.count_limit or 0, seen), False


def _hit(row: Row[Any]) -> SearchHit:
    fields = dict(row._mapping)
    fields.pop(ROW_ID_LABEL, None)
    # Parsed data is None for the items of a node without a parser.
    if not isinstance(fields["parsed"], dict):
        fields["parsed"] = {}
    return SearchHit(**fields)


def _is_time_order(request: SearchRequest, order: Sequence[OrderKey]) -> bool:
    """Tell whether the order is one time key (created or updated) of a full-text search."""
    return (
        request.fts is not None
        and len(order) == 1
        and order[0].name in ("created", "updated")
    )


async def _sqlite_newest_page(
    session: AsyncSession, request: SearchRequest, key: OrderKey
) -> list[Row[Any]]:
    """Return the page of a full-text search ordered by ``key`` (created or updated) on SQLite.

    Both times mostly grow with the row id, which FTS5 returns its matches
    in. Step 1 reads the ``offset + limit`` matches of highest row id
    (lowest when ascending), from FTS5. The page is among them, except for
    matches of lower row id with a time at least as far in the order as
    the last of step 1: step 2 reads those through the (time, id) index
    and checks each against FTS5. The whole result is then sorted here.
    """
    needed = request.offset + request.limit
    time_column = getattr(PubsubItem, str(key.name))
    row_id = PubsubItem.id.label(ROW_ID_LABEL)
    first_step = dataclasses.replace(request, offset=0, limit=needed)
    storage_order = (OrderKey(search.STORAGE_ORDER, None, key.descending),)
    query = search.build_page_query("sqlite", first_step, storage_order, [row_id])
    rows = list((await session.execute(query)).all())

    def sort_key(row: Row[Any]) -> tuple[Any, int]:
        return (getattr(row, str(key.name)), getattr(row, ROW_ID_LABEL))

    rows.sort(key=sort_key, reverse=key.descending)
    if len(rows) == needed:
        boundary_time = getattr(rows[-1], str(key.name))
        row_ids = [getattr(row, ROW_ID_LABEL) for row in rows]
        edge_id = min(row_ids) if key.descending else max(row_ids)
        rows += await _sqlite_rows_out_of_order(
            session, request, time_column, boundary_time, edge_id, key.descending
        )
        rows.sort(key=sort_key, reverse=key.descending)
    return rows[request.offset:needed]


async def _sqlite_rows_out_of_order(
    session: AsyncSession,
    request: SearchRequest,
    time_column: Any,
    boundary_time: Any,
    edge_id: int,
    descending: bool,
) -> list[Row[Any]]:
    """Return the matches beyond ``edge_id`` in row id whose time reaches ``boundary_time``."""
    # A correlated probe of FTS5 by row id, evaluated only for the rows of
    # the time range that pass the cheap conditions.
    fts_table = table(fulltext.SQLITE_FTS_TABLE, column("rowid"))
    match = search.fts5_match(str(request.fts), request.fts_mode)
    in_fts = exists(
        select(literal(1))
        .select_from(fts_table)
        .where(
            literal_column(fulltext.SQLITE_FTS_TABLE).bool_op("MATCH")(
                bindparam(None, match, type_=Text)
            ),
            fts_table.c.rowid == PubsubItem.id,
        )
    )
    if descending:
        window = [time_column >= boundary_time, PubsubItem.id < edge_id]
    else:
        window = [time_column <= boundary_time, PubsubItem.id > edge_id]
    without_fts = dataclasses.replace(request, fts=None, offset=0, limit=search.MAX_LIMIT)
    builder_order = (OrderKey(str(time_column.key), None, descending),)
    query = search.build_page_query(
        "sqlite", without_fts, builder_order, [PubsubItem.id.label(ROW_ID_LABEL)]
    )
    query = query.where(*window, in_fts).limit(None).offset(None)
    return list((await session.execute(query)).all())
