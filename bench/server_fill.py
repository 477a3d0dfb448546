"""Fill a pubsub node of a benchmark server by writing its SQLite storage directly.

Publishing runs at 200 to 450 items per second on the benchmark machine,
because ejabberd 23.01 and Prosody 0.12 spend 1 to 4 ms of CPU on each
publish. A 100,000-item node would take 4 to 8 minutes per server. The sync
figure therefore creates its nodes through XMPP and then writes their items
into the server's own database, as rows equal to those a publish writes:

- Prosody 0.12 (mod_storage_sql): one row of ``prosodyarchive`` per item,
  in the archive store ``pubsub_NODE`` of the component's host. Its pubsub
  service reads items from that archive on each request (no item cache).
- ejabberd 23.01 (``db_type: sql``): one row of ``pubsub_item`` per item,
  with creation and modification times written as ``MEGASECS:SECS:MICROSECS``.

Both servers run while the rows are written: SQLite locks the file for
each transaction. The sync figure then checks through XMPP that the server
serves the rows (item count and newest item).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from bench.items import Post, post_entry_xml
from bench.servers import Server

#: Rows written per transaction.
BATCH_SIZE = 5000


def _prosody_database(server: Server) -> Path:
    return server.process.workdir / "data" / "prosody.sqlite"


def _ejabberd_time(microseconds: int) -> str:
    """Format a POSIX time in microseconds as ejabberd 23.01 stores item times."""
    seconds, micro = divmod(microseconds, 1_000_000)
    mega, seconds = divmod(seconds, 1_000_000)
    return f"{mega:06d}:{seconds:06d}:{micro:06d}"


def _batches(posts: Iterable[Post]) -> Iterable[list[Post]]:
    batch: list[Post] = []
    for post in posts:
        batch.append(post)
        if len(batch) == BATCH_SIZE:
            yield batch
            batch = []
    if batch:
        yield batch


def fill_prosody_node(server: Server, node: str, posts: Iterable[Post]) -> int:
    """Append posts to a Prosody node's archive, oldest first; return the number written."""
    publisher = server.jid("pub")
    now = int(time.time())
    written = 0
    with sqlite3.connect(_prosody_database(server), timeout=60) as connection:
        for batch in _batches(posts):
            connection.executemany(
                'INSERT INTO prosodyarchive (host, user, store, key, "when", "with", type, value)'
                " VALUES (?, '', ?, ?, ?, ?, 'xml', ?)",
                [
                    (server.pubsub_service, f"pubsub_{node}", post.item_id, now, publisher,
                     post_entry_xml(post))
                    for post in batch
                ],
            )
            connection.commit()
            written += len(batch)
    return written


def fill_ejabberd_node(server: Server, node: str, posts: Iterable[Post]) -> int:
    """Insert posts into an ejabberd node, oldest first; return the number written.

    Raises LookupError when the node does not exist on the server.
    """
    database = server.process.sql_database
    publisher = server.jid("pub")
    start = time.time_ns() // 1000
    written = 0
    with sqlite3.connect(database, timeout=60) as connection:
        row = connection.execute(
            "SELECT nodeid FROM pubsub_node WHERE host = ? AND node = ?",
            (server.pubsub_service, node),
        ).fetchone()
        if row is None:
            raise LookupError(f"node {node} not found in {database}")
        node_id = row[0]
        for batch in _batches(posts):
            rows = []
            for post in batch:
                # One microsecond apart, so the creation order is the post order.
                stamp = _ejabberd_time(start + written + len(rows))
                rows.append((node_id, post.item_id, publisher, stamp, stamp, post_entry_xml(post)))
            connection.executemany(
                "INSERT INTO pubsub_item (nodeid, itemid, publisher, creation, modification,"
                " payload) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            connection.commit()
            written += len(rows)
    _give_back_to_ejabberd(database)
    return written


def _give_back_to_ejabberd(database: Path) -> None:
    """Give files that SQLite created next to the database back to the database's owner.

    ejabberd runs as its own user, which must keep writing a journal or WAL
    file that this process (root) may have created.
    """
    owner = database.stat()
    for path in database.parent.glob(database.name + "*"):
        if path.stat().st_uid != owner.st_uid:
            os.chown(path, owner.st_uid, owner.st_gid)


def fill_node(server: Server, node: str, posts: Iterable[Post]) -> int:
    """Write posts into a node of ``server``'s storage; return the number written."""
    if server.name == "ejabberd":
        return fill_ejabberd_node(server, node, posts)
    return fill_prosody_node(server, node, posts)
