"""Concurrent readers while a writer fills a node, on SQLite and on PostgreSQL.

A writer stores 10,000 items in batches of 100 while 50 readers loop over the
cache's read methods. No call may fail (on SQLite, in particular, none may
raise "database is locked"), no batch may be seen half written, and every
write must be there at the end, in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest_twisted
from twisted.internet import defer

from libervia.backend.memory.sqla import Storage
from libervia.backend.memory.sqla_mapping import PubsubNode

SERVICE = "pubsub.example.org"
NODE = "urn:xmpp:microblog:0"
READERS = 50
BATCHES = 100
BATCH_SIZE = 100
PAGE_SIZE = 20
# Readers that find the node empty, or read while a batch is stored, need
# some pages read during the writes to prove anything.
MIN_READS_DURING_WRITES = 500


def item_id(batch: int, rank: int) -> str:
    """Return the id of item ``rank`` of batch ``batch``, which sorts in storage order."""
    return f"item-{batch:03d}-{rank:03d}"


def item_xml(item: str) -> str:
    """Return the XML of a pubsub <item/> with a small payload."""
    return f'<item id="{item}"><entry xmlns="urn:example">text of {item}</entry></item>'


@dataclass
class ReadLog:
    """What the readers saw: counts of items, wrong pages, errors."""

    reads: int = 0
    counts: list[int] = field(default_factory=list)
    bad_pages: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def write_all(storage: Storage, node: PubsubNode, done: list[bool]) -> None:
    """Store every batch in order, then set ``done``."""
    try:
        for batch in range(BATCHES):
            items = [item_id(batch, rank) for rank in range(BATCH_SIZE)]
            await storage.cache_pubsub_items(
                node.id, [(item, item_xml(item), {"batch": batch}, None) for item in items]
            )
    finally:
        done[0] = True


async def read_until_done(
    storage: Storage, node: PubsubNode, done: list[bool], log: ReadLog, reader: int
) -> None:
    """Read pages and counts of the node until the writer is done."""
    while not done[0]:
        try:
            count = await storage.count_pubsub_items(node.id)
            if reader % 3 == 1:
                items = await storage.get_pubsub_items(node.id, max_items=PAGE_SIZE)
                page = [item.name for item in items]
            else:
                rows = None
                if reader % 3 == 2:
                    # The cached get's fast path, from the event loop's thread
                    # (None on PostgreSQL).
                    rows = storage.read_items_xml_now(node.id, max_items=PAGE_SIZE)
                if rows is None:
                    rows = await storage.get_pubsub_items_xml(node.id, max_items=PAGE_SIZE)
                page = [name for name, xml in rows if f'"{name}"' in xml]
        except Exception as exc:  # noqa: BLE001 - every error is a test failure
            log.errors.append(f"reader {reader}: {exc!r}")
            return
        log.reads += 1
        log.counts.append(count)
        # A page is the newest items, in storage order, whole batches only.
        if page != sorted(page) or len(page) % PAGE_SIZE or (page and not page[-1].endswith("-099")):
            log.bad_pages.append(f"reader {reader}: {page[:3]}...{page[-3:]}")


class ConcurrentAccessTests:
    """A writer and many readers on one node."""

    @pytest_twisted.ensureDeferred
    async def test_readers_and_writer(self, storage: Storage) -> None:
        profile = await storage.create_profile("alice", "alice@example.org", "secret")
        node = await storage.set_pubsub_node(profile.id, SERVICE, NODE)
        done = [False]
        log = ReadLog()

        start = time.monotonic()
        readers = [
            defer.ensureDeferred(read_until_done(storage, node, done, log, reader))
            for reader in range(READERS)
        ]
        writer = defer.ensureDeferred(write_all(storage, node, done))
        await defer.gatherResults([writer, *readers], consumeErrors=True)
        duration = time.monotonic() - start

        items = await storage.get_pubsub_items(node.id)
        created = [item.created for item in items]
        expected = [item_id(batch, rank) for batch in range(BATCHES) for rank in range(BATCH_SIZE)]

        assert log.errors == []
        assert log.bad_pages == []
        assert log.reads >= MIN_READS_DURING_WRITES, f"only {log.reads} reads in {duration:.1f} s"
        assert [count for count in log.counts if count % BATCH_SIZE] == []
        assert [item.name for item in items] == expected
        assert all(earlier < later for earlier, later in zip(created, created[1:]))
        assert await storage.count_pubsub_items(node.id) == BATCHES * BATCH_SIZE
