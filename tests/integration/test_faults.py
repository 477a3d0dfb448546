"""Faults injected at chosen points, against real servers and real SQLite files.

Each test runs the backend daemon under test (``libervia-backend fg``) as a
child process, so that it can freeze it with SIGSTOP and kill it with
SIGKILL by PID, and checks what the cache promises after the fault:

- no node is served from the cache with missing or extra items: a read
  marked ``from_cache`` returns what a read of the service returns, also
  for reads made while the profile connects again;
- the database file passes ``PRAGMA integrity_check``, ``PRAGMA
  foreign_key_check`` and the FTS5 integrity check;
- the node becomes COMPLETED again without any cache command, once the
  profile is connected (the daemon connects profiles when asked to, not at
  its start).

Syncs are paged on ejabberd (RSM, 10 items a page), which gives a progress
signal per page to stop at. Prosody ignores RSM and returns every item at
once. Both servers run here on their own, so that the tests can stop them
without disturbing the rest of the suite. Their folders are kept between a
stop and a start, and with them their ports, accounts and SQLite data: nodes,
items and subscriptions survive a restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from alembic import command
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from libervia.backend.memory.sqla import alembic_config, head_revisions
from libervia.cli.bridge_client import BridgeClient, BridgeError, BridgeUnavailable
from libervia.testing.backend import BackendRunner
from libervia.testing.ejabberd import EjabberdServer
from libervia.testing.prosody import ProsodyServer

NS_ATOM = "http://www.w3.org/2005/Atom"
#: The XEP-0277 analyser synchronises every node whose name starts with the
#: microblog namespace and whose items are Atom entries.
NODE_PREFIX = "urn:xmpp:microblog:0-faults-"
PASSWORD_ENV = "FAULTS_TEST_PASSWORD"
#: Accounts of both servers. alice publishes and, as an admin, may create
#: nodes on Prosody's pubsub component. bob's cache is the one under test.
ACCOUNTS = {"alice": "alice-faults-password", "bob": "bob-faults-password"}
PUBLISHER = "alice"
READER = "bob"

#: Daemon settings of the reader: small sync pages, so that a sync of a few
#: hundred items sends many progress signals, and short retry and
#: reconnection delays (seconds), so that recovery is quick.
READER_CONFIG = """\
[pubsub_cache]
sync_page_size = 10
sync_retry_delay = 1

[xmpp]
iq_timeout = 20
reconnect_initial_delay = {reconnect_delay}
reconnect_factor = 1
reconnect_max_delay = {reconnect_delay}
reconnect_jitter = 0
"""
#: Seconds given to a daemon to respond on its bridge after it starts.
DAEMON_START_TIMEOUT = 60.0
#: Seconds given to a node to become COMPLETED, or to a sync to report.
SYNC_TIMEOUT = 60.0

#: The revision before the full-text index. Upgrading from it extracts the
#: text of every cached item and builds the index, in one transaction.
OLD_REVISION = "b1706904027b"
#: A profile that never connects, whose cached items only the upgrade reads.
ARCHIVE_PROFILE = "archive"


# Servers


@pytest.fixture(scope="module")
def prosody_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProsodyServer]:
    """Yield a Prosody server of this module only, which tests may stop and start again."""
    server = ProsodyServer(
        domain="localhost",
        workdir=tmp_path_factory.mktemp("faults-prosody"),
        admins=[f"{PUBLISHER}@localhost"],
    )
    for user, password in ACCOUNTS.items():
        server.register(user, password)
    with server:
        yield server


@pytest.fixture(scope="module")
def ejabberd_server() -> Iterator[EjabberdServer]:
    """Yield an ejabberd server of this module only, which tests may stop and start again.

    The folder is created here rather than by the server, so that a stop
    keeps it until the module ends. The ejabberd user must be able to enter
    it, hence a folder under /tmp instead of pytest's.
    """
    workdir = Path(tempfile.mkdtemp(prefix="lbf-ejabberd-"))
    try:
        server = EjabberdServer(domain="localhost", workdir=workdir)
        for user, password in ACCOUNTS.items():
            server.register(user, password)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# Items


def atom_item(item_id: str, title: str, padding: int = 200) -> str:
    """Return the XML of a pubsub item holding an Atom entry with ``padding`` more bytes."""
    words = " ".join(f"word{index}" for index in range(padding // 10))
    return (
        f"<item id='{escape(item_id)}'><entry xmlns='{NS_ATOM}'>"
        f"<title>{escape(title)}</title><id>urn:uuid:{escape(item_id)}</id>"
        f"<published>2024-01-01T00:00:00Z</published>"
        f"<content>{escape(title)} {words}</content></entry></item>"
    )


def item_ids(xmls: list[str]) -> list[str]:
    """Return the ids of ``<item/>`` XML strings, in order."""
    ids = []
    for xml in xmls:
        start = xml.index(" id=") + len(" id=")
        quote = xml[start]
        ids.append(xml[start + 1:xml.index(quote, start + 1)])
    return ids


# Daemons


def bridge(socket_path: Path, timeout: float = 30.0) -> BridgeClient:
    """Return a bridge client connected to a daemon and registered for its signals."""
    client = BridgeClient(socket_path, timeout=timeout)
    client.connect()
    # The daemon sends signals to the connections it has registered: a call
    # makes sure this one is.
    client.call("ping")
    return client


class Daemon:
    """A backend daemon run in the foreground as a child of the test, so that it can be killed.

    Its output goes to the runner's log file, as with ``libervia-backend start``.
    """

    def __init__(self, runner: BackendRunner) -> None:
        self.runner = runner
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        """Path of the daemon's bridge socket."""
        return self.runner.runtime_dir / "libervia" / "bridge.sock"

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        """Start the daemon process without waiting for its bridge."""
        assert not self.running, "the daemon is already running"
        self.runner.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.runner.log_file, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "libervia.backend", "fg"],
                env=self.runner.env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=log_file, start_new_session=True,
            )

    def wait_ready(self, timeout: float = DAEMON_START_TIMEOUT) -> None:
        """Wait until the bridge responds, failing with the log tail when the daemon exits first."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the daemon exited with code {self.process.returncode} while "
                    f"starting\ndaemon log tail:\n{self.runner.log_tail()}"
                )
            try:
                with closing(BridgeClient(self.socket_path, timeout=2)) as client:
                    if client.call("ping") == "pong":
                        return
            except (BridgeUnavailable, BridgeError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the daemon did not respond within {timeout:g} s\n"
                    f"daemon log tail:\n{self.runner.log_tail()}"
                )
            time.sleep(0.05)

    def start(self) -> None:
        """Start the daemon (again after a stop or a kill) and wait until its bridge responds."""
        self.spawn()
        self.wait_ready()

    def _send(self, signum: int) -> None:
        assert self.running, "the daemon is not running"
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def pause(self) -> None:
        """Freeze the daemon with SIGSTOP, wherever it is, and wait until it is stopped.

        The signal is delivered asynchronously: without the wait, the daemon
        could still commit a write after this returns.
        """
        self._send(signal.SIGSTOP)
        assert self.process is not None
        stat_file = Path(f"/proc/{self.process.pid}/stat")
        deadline = time.monotonic() + 10
        # The state is the field after the parenthesised command name.
        while stat_file.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
            if time.monotonic() > deadline:
                raise AssertionError("the daemon did not stop within 10 s of SIGSTOP")
            time.sleep(0.001)

    def resume(self) -> None:
        """Let a frozen daemon run again with SIGCONT."""
        self._send(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the daemon with SIGKILL and reap it."""
        self._send(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the daemon with SIGTERM as a user does, or SIGKILL it after 30 s."""
        if not self.running:
            return
        # A frozen daemon handles SIGTERM only once it runs again.
        self.resume()
        self._send(signal.SIGTERM)
        assert self.process is not None
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the daemon ignored SIGTERM for 30 s\ndaemon log tail:\n"
                f"{self.runner.log_tail()}"
            ) from None


class Publisher:
    """A second daemon, started by ``li``, with the publisher's profile connected to a server."""

    def __init__(self, runner: BackendRunner, server: Any) -> None:
        self.runner = runner
        self.service = server.pubsub_service
        runner.li(
            "profile", "create", PUBLISHER, "-j", f"{PUBLISHER}@{server.domain}",
            "--host", server.host, "--port", str(server.port),
            "--ca-file", str(server.ca_file), "--password-env", PASSWORD_ENV,
            env={PASSWORD_ENV: ACCOUNTS[PUBLISHER]},
        )
        self.connect()
        self.socket_path = runner.runtime_dir / "libervia" / "bridge.sock"
        self.bridge = bridge(self.socket_path)

    def connect(self) -> None:
        """Connect the profile, also to replace a stream lost in a server restart."""
        self.runner.li("profile", "connect", PUBLISHER)

    def create_node(self, max_items: int = 1000) -> str:
        """Create an open node on the pubsub service and return its name."""
        node = f"{NODE_PREFIX}{uuid.uuid4().hex[:10]}"
        self.bridge.call(
            "ps_node_create", service=self.service, node=node, profile=PUBLISHER,
            options={
                "pubsub#access_model": "open",
                "pubsub#max_items": str(max_items),
                "pubsub#notify_retract": "1",
                "pubsub#deliver_payloads": "1",
            },
        )
        return node

    def _call_per_item(
        self, method: str, ids: list[str], make_params: Callable[[str], dict[str, Any]],
        connections: int = 4,
    ) -> None:
        """Call a bridge method once per item id, over several bridge connections at once.

        Neither server takes several items in one publish or retract request.
        """

        def call_share(share: list[str]) -> None:
            with closing(bridge(self.socket_path)) as client:
                for item_id in share:
                    client.call(method, profile=PUBLISHER, **make_params(item_id))

        shares = [ids[start::connections] for start in range(connections)]
        with ThreadPoolExecutor(connections) as pool:
            list(pool.map(call_share, shares))

    def publish(self, node: str, ids: list[str], title: str = "post", padding: int = 200) -> None:
        """Publish one Atom item per id, in an order of the service's choosing."""
        self._call_per_item(
            "ps_publish", ids,
            lambda item_id: {
                "service": self.service, "node": node,
                "items": [atom_item(item_id, f"{title} {item_id}", padding)],
            },
        )

    def retract(self, node: str, ids: list[str]) -> None:
        """Retract items, notifying the subscribers."""
        self._call_per_item(
            "ps_retract", ids,
            lambda item_id: {"service": self.service, "node": node, "item_ids": [item_id]},
        )

    def close(self) -> None:
        self.bridge.close()
        self.runner.stop()


@pytest.fixture
def publisher_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[Any], Publisher]]:
    """Return a function that starts a publisher daemon on a server, stopped after the test."""
    started: list[Publisher] = []

    def start(server: Any) -> Publisher:
        publisher = Publisher(BackendRunner(tmp_path_factory.mktemp("publisher")), server)
        started.append(publisher)
        return publisher

    yield start
    for publisher in started:
        publisher.close()


class CacheReadProbe(threading.Thread):
    """Read a node as the reader without pause, keeping the reads served from the cache.

    It runs while the profile connects or reconnects, to catch a read served
    from the cache before the node was reconciled. Failed reads (the profile
    not connected yet) are counted and ignored.
    """

    def __init__(self, reader: Reader, node: str) -> None:
        super().__init__(daemon=True)
        self.socket_path = reader.daemon.socket_path
        self.service = reader.service
        self.node = node
        self.cached_reads: list[list[str]] = []
        self.failed_reads = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        with closing(bridge(self.socket_path)) as client:
            while not self._stop_event.is_set():
                try:
                    result = client.call(
                        "ps_items_get", service=self.service, node=self.node, profile=READER
                    )
                except BridgeError:
                    self.failed_reads += 1
                    time.sleep(0.001)
                    continue
                if result["metadata"].get("from_cache"):
                    self.cached_reads.append(result["items"])

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def assert_reads_equal(self, items: list[str]) -> None:
        """Assert that every read served from the cache returned ``items``."""
        for cached in self.cached_reads:
            assert item_ids(cached) == item_ids(items)
            assert cached == items


class Reader:
    """The daemon under test, with the reader's profile on a server."""

    def __init__(
        self, base: Path, server: Any, reconnect_delay: float = 0.5,
        db_file: Path | None = None,
    ) -> None:
        extra_env = {}
        if db_file is not None:
            extra_env["LIBERVIA_DB_URL"] = f"sqlite+aiosqlite:///{db_file}"
        self.runner = BackendRunner(base, extra_env=extra_env)
        self.runner.write_config(READER_CONFIG.format(reconnect_delay=reconnect_delay))
        self.server = server
        self.service = server.pubsub_service
        self.daemon = Daemon(self.runner)
        #: Path of the daemon's SQLite database.
        self.db_file = db_file or self.runner.db_file
        self._bridge: BridgeClient | None = None

    def start(self) -> None:
        """Start the daemon, creating the reader's profile at the first start."""
        self.daemon.start()
        self._bridge = None
        if READER not in [profile["name"] for profile in self.bridge.call("profile_list")]:
            self.runner.li(
                "profile", "create", READER, "-j", f"{READER}@{self.server.domain}",
                "--host", self.server.host, "--port", str(self.server.port),
                "--ca-file", str(self.server.ca_file), "--password-env", PASSWORD_ENV,
                env={PASSWORD_ENV: ACCOUNTS[READER]},
            )

    @property
    def bridge(self) -> BridgeClient:
        """A bridge client of the running daemon."""
        if self._bridge is None or not self._bridge.connected:
            self._bridge = bridge(self.daemon.socket_path)
        return self._bridge

    def connect(self) -> None:
        """Connect the reader's profile the way a user does: ``li profile connect``."""
        self.runner.li("profile", "connect", READER)

    def connected(self) -> bool:
        """Return whether the reader's profile is connected, as ``profile_list`` reports it."""
        profiles = {profile["name"]: profile for profile in self.bridge.call("profile_list")}
        return profiles[READER]["connected"]

    def get(self, node: str, use_cache: bool = True) -> dict[str, Any]:
        """Return the reader's ``ps_items_get`` result for every item of a node."""
        extra = {} if use_cache else {"use_cache": False}
        return self.bridge.call(
            "ps_items_get", service=self.service, node=node, extra=extra, profile=READER
        )

    def sync_state(self, node: str) -> str | None:
        """Return the node's sync state as the daemon reports it, None when it is not cached."""
        try:
            result = self.bridge.call(
                "ps_cache_get", service=self.service, node=node, profile=READER
            )
        except BridgeError as exc:
            if exc.type == "NotFound":
                return None
            raise
        return result["node"]["sync_state"]

    def wait_completed(self, node: str) -> None:
        """Wait until the node is COMPLETED, only reading its state meanwhile."""
        self.runner.wait_for(
            lambda: self.sync_state(node) == "COMPLETED", timeout=SYNC_TIMEOUT,
            what=f"node {node} to become COMPLETED",
        )

    def assert_honest(self, node: str) -> bool:
        """Assert that a read served from the cache equals a read of the service.

        Returns whether the read came from the cache.
        """
        cached = self.get(node)
        if not cached["metadata"].get("from_cache"):
            return False
        live = self.get(node, use_cache=False)
        assert item_ids(cached["items"]) == item_ids(live["items"])
        assert cached["items"] == live["items"]
        return True

    def first_sync(self, node: str) -> None:
        """Read a node, which starts its sync, and wait until it is COMPLETED."""
        self.get(node)
        self.wait_completed(node)

    def connect_until_completed(self, node: str) -> None:
        """Connect the profile and wait until the node is COMPLETED, reading it all along.

        The node must not change meanwhile: every read served from the
        cache must return the service's items at the end.
        """
        probe = CacheReadProbe(self, node)
        probe.start()
        try:
            self.connect()
            self.wait_completed(node)
        finally:
            probe.stop()
        probe.assert_reads_equal(self.get(node, use_cache=False)["items"])

    def assert_final_state(self, node: str) -> None:
        """Assert that the cache serves the service's items, then stop and check the file."""
        assert self.assert_honest(node), f"node {node} is COMPLETED but not served from the cache"
        self.stop()
        assert_database_intact(self.db_file)
        assert_fulltext_index_intact(self.db_file)

    def stop(self) -> None:
        if self._bridge is not None:
            self._bridge.close()
        self.daemon.stop()
        shutil.rmtree(self.runner.runtime_dir, ignore_errors=True)


@pytest.fixture
def reader_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Reader]]:
    """Return a function that makes a Reader (not started), stopped after the test."""
    made: list[Reader] = []

    def make(server: Any, **kwargs: Any) -> Reader:
        reader = Reader(tmp_path_factory.mktemp("reader"), server, **kwargs)
        made.append(reader)
        return reader

    yield make
    for reader in made:
        reader.stop()


# Database files


def read_database(path: Path, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run a read-only query on an SQLite file, leaving its WAL files as they are."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        return db.execute(query, params).fetchall()


def stored_node(path: Path, node: str) -> tuple[str | None, int]:
    """Return the reader's stored sync state and item count of a node."""
    rows = read_database(
        path,
        "SELECT n.sync_state, (SELECT count(*) FROM pubsub_items i WHERE i.node_id = n.id) "
        "FROM pubsub_nodes n JOIN profiles p ON p.id = n.profile_id "
        "WHERE p.name = ? AND n.name = ?",
        READER, node,
    )
    assert rows, f"node {node} is not in {path}"
    return rows[0]


def assert_database_intact(path: Path) -> None:
    """Assert that SQLite finds no corruption and no dangling row in the file."""
    assert read_database(path, "PRAGMA integrity_check") == [("ok",)]
    assert read_database(path, "PRAGMA foreign_key_check") == []


def assert_fulltext_index_intact(path: Path) -> None:
    """Assert that the FTS5 index matches the items, once the daemon is stopped.

    The check is an INSERT of a command, so it needs a writable connection.
    """
    with closing(sqlite3.connect(path, timeout=10)) as db:
        # Raises sqlite3.DatabaseError when the index differs from its content.
        db.execute(
            "INSERT INTO pubsub_items_fts(pubsub_items_fts, rank) VALUES ('integrity-check', 1)"
        )


def database_revision(path: Path) -> str:
    """Return the Alembic revision stored in an SQLite file."""
    return read_database(path, "SELECT version_num FROM alembic_version")[0][0]


def downgrade_database(path: Path, revision: str) -> None:
    """Downgrade an SQLite file to an older revision, as an older version would have left it."""
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()


def copy_node_to_archive(path: Path, node: str, copies: int) -> int:
    """Store ``copies`` copies of the reader's cached items in a node of the archive profile.

    Returns the number of items of the archive's node.
    """
    with closing(sqlite3.connect(path)) as db, db:
        archive_id = db.execute(
            "SELECT id FROM profiles WHERE name = ?", (ARCHIVE_PROFILE,)
        ).fetchone()[0]
        reader_node_id = db.execute(
            "SELECT n.id FROM pubsub_nodes n JOIN profiles p ON p.id = n.profile_id "
            "WHERE p.name = ? AND n.name = ?", (READER, node),
        ).fetchone()[0]
        archive_node_id = db.execute(
            "INSERT INTO pubsub_nodes (profile_id, service, name, analyser, type, subtype, "
            "sync_state, sync_state_updated, extra) SELECT ?, service, name, analyser, type, "
            "subtype, sync_state, sync_state_updated, extra FROM pubsub_nodes WHERE id = ?",
            (archive_id, reader_node_id),
        ).lastrowid
        db.execute(
            "WITH RECURSIVE copy(number) AS (SELECT 1 UNION ALL SELECT number + 1 FROM copy "
            "WHERE number < ?) "
            "INSERT INTO pubsub_items (node_id, name, data, parsed, publisher, created, updated) "
            "SELECT ?, item.name || '-' || copy.number, item.data, item.parsed, "
            "item.publisher, item.created, item.updated "
            "FROM pubsub_items item, copy WHERE item.node_id = ?",
            (copies, archive_node_id, reader_node_id),
        )
        return db.execute(
            "SELECT count(*) FROM pubsub_items WHERE node_id = ?", (archive_node_id,)
        ).fetchone()[0]


def backups(path: Path) -> list[Path]:
    """Return the files named as backup copies of an SQLite file, leftovers of a copy excluded."""
    return sorted(
        backup for backup in path.parent.glob(f"{path.name}.bak-*")
        if not backup.name.endswith(("-journal", "-wal", "-shm", ".partial"))
    )


def log_since(runner: BackendRunner, offset: int) -> str:
    """Return what the daemon logged after the first ``offset`` bytes of its log file."""
    with open(runner.log_file, encoding="utf-8", errors="replace") as log_file:
        log_file.seek(offset)
        return log_file.read()


# Sync signals


def wait_sync_progress(
    signals: BridgeClient, node: str, min_items: int,
) -> dict[str, Any]:
    """Wait for a ``ps_cache_sync`` IN_PROGRESS signal of the node with ``min_items`` or more.

    Fails when the sync ends first, so that a missed fault point is reported.
    """
    for name, args in signals.iter_signals(timeout=SYNC_TIMEOUT):
        if name != "ps_cache_sync" or args.get("node") != node:
            continue
        if args["state"] == "IN_PROGRESS" and (args.get("items") or 0) >= min_items:
            return args
        assert args["state"] == "IN_PROGRESS", (
            f"the sync ended ({args}) before {min_items} items were fetched"
        )
    raise AssertionError("unreachable: iter_signals raises on timeout")


def wait_sync_end(signals: BridgeClient, node: str) -> dict[str, Any]:
    """Return the arguments of the next ``ps_cache_sync`` signal ending a sync of the node."""
    for name, args in signals.iter_signals(timeout=SYNC_TIMEOUT):
        if name == "ps_cache_sync" and args.get("node") == node and args["state"] != "IN_PROGRESS":
            return args
    raise AssertionError("unreachable: iter_signals raises on timeout")


def kill_at_sync_progress(
    reader: Reader, node: str, min_items: int, start_sync: Callable[[BridgeClient], Any],
) -> tuple[dict[str, Any], tuple[str | None, int]]:
    """SIGKILL the reader's daemon once a sync of the node has fetched ``min_items`` items.

    ``start_sync(client)`` makes the daemon start the sync. It runs in a
    thread with a bridge client of its own, because the daemon may be killed
    before it responds. The daemon is frozen with SIGSTOP as soon as the
    progress signal arrives, so the node read from the file before the kill
    is what the kill leaves. Returns the progress signal's arguments and
    that stored (sync state, item count).
    """
    signals = bridge(reader.daemon.socket_path)

    def run_start_sync() -> None:
        try:
            with closing(bridge(reader.daemon.socket_path)) as client:
                start_sync(client)
        except BridgeUnavailable:
            pass  # killed before it responded

    thread = threading.Thread(target=run_start_sync, daemon=True)
    thread.start()
    try:
        progress = wait_sync_progress(signals, node, min_items)
        reader.daemon.pause()
    finally:
        signals.close()
    stored = stored_node(reader.db_file, node)
    reader.daemon.kill()
    thread.join(timeout=30)
    return progress, stored


def connect_reader(client: BridgeClient) -> None:
    client.call("profile_connect", name=READER)


# Tests


class DaemonKillTests:
    """The daemon killed with SIGKILL during a sync and during a notification burst."""

    def test_kill_during_first_sync(self, ejabberd_server, publisher_factory, reader_factory):
        publisher = publisher_factory(ejabberd_server)
        node = publisher.create_node()
        publisher.publish(node, [f"item-{index:03}" for index in range(300)])
        reader = reader_factory(ejabberd_server)
        reader.start()
        reader.connect()

        # Kill point: 100 of the 300 items fetched, by pages of 10.
        progress, stored = kill_at_sync_progress(
            reader, node, 100,
            lambda client: client.call(
                "ps_items_get", service=reader.service, node=node, max_items=1,
                profile=READER,
            ),
        )
        assert progress["count"] == 300
        # A first sync stores each page as it arrives: the pages stored
        # before the kill stay, not served while the node is IN_PROGRESS.
        assert stored[0] == "IN_PROGRESS"
        assert 100 <= stored[1] < 300
        assert_database_intact(reader.db_file)

        reader.start()
        assert stored_node(reader.db_file, node) == stored
        reader.connect_until_completed(node)
        reader.assert_final_state(node)

    def test_kill_during_reconciliation(
        self, ejabberd_server, publisher_factory, reader_factory,
    ):
        publisher = publisher_factory(ejabberd_server)
        node = publisher.create_node()
        ids = [f"item-{index:03}" for index in range(300)]
        publisher.publish(node, ids)
        reader = reader_factory(ejabberd_server)
        reader.start()
        reader.connect()
        reader.first_sync(node)
        reader.daemon.stop()

        # Changes made while the reader is offline: reconciling must delete
        # the retracted items (extra items) and store the new and edited
        # ones (missing items).
        publisher.retract(node, ids[:30])
        publisher.publish(node, ids[100:120], title="edited")
        publisher.publish(node, [f"new-{index:02}" for index in range(30)])
        reader.start()
        # Kill point: 100 of the 300 items fetched by the sync that
        # connecting the profile starts.
        progress, stored = kill_at_sync_progress(reader, node, 100, connect_reader)
        assert progress["count"] == 300
        # The old items are still stored, maybe with the last new item, which
        # the service sends again to a returning subscriber.
        assert stored[0] == "IN_PROGRESS"
        assert stored[1] >= 300
        assert_database_intact(reader.db_file)

        reader.start()
        assert stored_node(reader.db_file, node)[0] == "IN_PROGRESS"
        reader.connect_until_completed(node)
        reader.assert_final_state(node)

    def test_kill_while_storing_items(self, prosody_server, publisher_factory, reader_factory):
        publisher = publisher_factory(prosody_server)
        node = publisher.create_node()
        # 300 items of 20 kB: storing them with their parsed data and
        # full-text index writes about 6 MB to the WAL file in one
        # transaction (fewer items than a sync page).
        publisher.publish(node, [f"item-{index:03}" for index in range(300)], padding=20_000)
        reader = reader_factory(prosody_server)
        reader.start()
        reader.connect()
        wal_file = reader.db_file.with_name(reader.db_file.name + "-wal")
        start_size = wal_file.stat().st_size
        reader.get(node)

        # Kill point: the transaction storing the items has written 1 MB to
        # the WAL file and has not committed. The items are written in one
        # worker thread call, in a few tenths of a second, so the WAL file
        # is watched from the request that starts the sync on.
        reader.runner.wait_for(
            lambda: wal_file.stat().st_size > start_size + 1_000_000, interval=0.001,
            what="the WAL file to grow by 1 MB",
        )
        reader.daemon.pause()
        stored = stored_node(reader.db_file, node)
        reader.daemon.kill()
        # Each batch is its own transaction: the batches committed before
        # the kill stay, and the one being written is not committed yet.
        assert stored[0] == "IN_PROGRESS"
        assert stored[1] < 300, "every item was committed before the kill"
        assert_database_intact(reader.db_file)

        reader.start()
        # The uncommitted transaction is gone, not half applied.
        assert stored_node(reader.db_file, node) == stored
        reader.connect_until_completed(node)
        reader.assert_final_state(node)

    def test_kill_during_notification_burst(
        self, prosody_server, publisher_factory, reader_factory,
    ):
        publisher = publisher_factory(prosody_server)
        node = publisher.create_node()
        publisher.publish(node, [f"item-{index:02}" for index in range(20)])
        reader = reader_factory(prosody_server)
        reader.start()
        reader.connect()
        reader.first_sync(node)

        burst_errors: list[Exception] = []

        def publish_burst() -> None:
            try:
                publisher.publish(node, [f"burst-{index:03}" for index in range(200)])
            except Exception as exc:
                burst_errors.append(exc)

        burst = threading.Thread(target=publish_burst, daemon=True)
        burst.start()
        # Kill point: 60 items of the burst stored from notifications.
        reader.runner.wait_for(
            lambda: stored_node(reader.db_file, node)[1] >= 80, interval=0.005,
            what="60 notified items in the database",
        )
        reader.daemon.pause()
        stored = stored_node(reader.db_file, node)
        reader.daemon.kill()
        burst.join(timeout=60)
        assert not burst_errors
        # Notifications leave the node COMPLETED, so the file alone does not
        # show that items are missing.
        assert stored[0] == "COMPLETED"
        assert 80 <= stored[1] < 220
        assert_database_intact(reader.db_file)

        reader.start()
        # Each notified item is its own transaction. One whose commit reached
        # the WAL file as the daemon stopped, before the WAL index showed it,
        # appears once SQLite recovers the WAL: one item more at most.
        restarted = stored_node(reader.db_file, node)
        assert restarted[0] == stored[0]
        assert restarted[1] in (stored[1], stored[1] + 1)
        reader.connect_until_completed(node)
        assert len(reader.get(node)["items"]) == 220
        reader.assert_final_state(node)


class MigrationKillTests:
    """The daemon killed while it upgrades a database left at an older revision.

    The database (42 MB) contains 10,000 items of a profile that never
    connects. On a 2-core machine its backup copy took 0.1 to 0.2 s. The
    upgrade (text extraction and full-text index of every item, in one
    transaction) took about 1 s. Both are long enough to stop the daemon
    inside them by watching the files and the log.
    """

    @pytest.fixture
    def old_database(self, prosody_server, publisher_factory, reader_factory):
        """Return a stopped reader whose database is at OLD_REVISION, and its synced node."""
        publisher = publisher_factory(prosody_server)
        node = publisher.create_node()
        publisher.publish(node, [f"item-{index:02}" for index in range(20)], padding=2000)
        reader = reader_factory(prosody_server)
        reader.start()
        reader.runner.li(
            "profile", "create", ARCHIVE_PROFILE, "-j", f"{ARCHIVE_PROFILE}@localhost",
            "--password-env", PASSWORD_ENV, env={PASSWORD_ENV: "archive-password"},
        )
        reader.connect()
        reader.first_sync(node)
        reader.daemon.stop()
        downgrade_database(reader.db_file, OLD_REVISION)
        assert copy_node_to_archive(reader.db_file, node, 500) == 10_000
        return reader, node

    def assert_unchanged(self, reader: Reader) -> None:
        """Assert that the killed upgrade left the database as it was, at the old revision."""
        assert_database_intact(reader.db_file)
        assert database_revision(reader.db_file) == OLD_REVISION
        assert read_database(reader.db_file, "SELECT count(*) FROM pubsub_items") == [(10_020,)]

    def assert_recovery(self, reader: Reader, node: str) -> None:
        """Start the daemon again, then assert the upgrade, the backups and the node's sync."""
        reader.start()
        assert database_revision(reader.db_file) == head_revisions()[0]
        for backup in backups(reader.db_file):
            assert read_database(backup, "PRAGMA integrity_check") == [("ok",)]
            assert database_revision(backup) == OLD_REVISION
            assert read_database(backup, "SELECT count(*) FROM pubsub_items") == [(10_020,)]
        reader.connect_until_completed(node)
        reader.assert_final_state(node)

    def test_kill_during_backup_copy(self, old_database):
        reader, node = old_database
        backup = reader.db_file.with_name(f"{reader.db_file.name}.bak-{OLD_REVISION}")
        offset = reader.runner.log_file.stat().st_size
        reader.daemon.spawn()
        # Kill point: 1 MB of the backup copy written, the upgrade not
        # started. The copy is looked for under any name starting with the
        # backup's.
        reader.runner.wait_for(
            lambda: any(
                path.stat().st_size > 1_000_000
                for path in reader.db_file.parent.glob(f"{backup.name}*")
            ),
            interval=0.001, what="1 MB of the backup copy",
        )
        reader.daemon.pause()
        upgrade_started = "Upgrading database" in log_since(reader.runner, offset)
        reader.daemon.kill()
        assert not upgrade_started, "the backup copy was complete before the kill"
        self.assert_unchanged(reader)
        # A copy cut short is not left under a backup name.
        assert backups(reader.db_file) == []

        self.assert_recovery(reader, node)
        assert backups(reader.db_file) == [backup]
        assert not list(reader.db_file.parent.glob("*.partial*"))

    def test_kill_during_upgrade(self, old_database):
        reader, node = old_database
        wal_file = reader.db_file.with_name(reader.db_file.name + "-wal")
        offset = reader.runner.log_file.stat().st_size
        reader.daemon.spawn()
        # Kill point: the upgrade transaction has written 1 MB to the WAL file.
        reader.runner.wait_for(
            lambda: "Upgrading database" in log_since(reader.runner, offset)
            and wal_file.exists() and wal_file.stat().st_size > 1_000_000,
            interval=0.001, what="the upgrade to write 1 MB",
        )
        reader.daemon.pause()
        revision = database_revision(reader.db_file)
        reader.daemon.kill()
        assert revision == OLD_REVISION, "the upgrade was committed before the kill"
        self.assert_unchanged(reader)

        self.assert_recovery(reader, node)
        # The copies made before the killed upgrade and before the one that succeeded.
        assert len(backups(reader.db_file)) == 2


@contextmanager
def server_stopped(server: Any) -> Iterator[None]:
    """Stop ``server`` during the block, then start it again, also when the block fails."""
    server.stop()
    try:
        yield
    finally:
        server.start()


class ServerRestartTests:
    """The XMPP server stopped during a sync, and restarted while the profile is idle."""

    def test_server_stopped_mid_sync(self, ejabberd_server, publisher_factory, reader_factory):
        publisher = publisher_factory(ejabberd_server)
        node = publisher.create_node()
        publisher.publish(node, [f"item-{index:03}" for index in range(300)])
        reader = reader_factory(ejabberd_server)
        reader.start()
        reader.connect()
        signals = bridge(reader.daemon.socket_path)

        reader.get(node)
        progress = wait_sync_progress(signals, node, 100)
        # Stop point: 100 of the 300 items fetched. The daemon is frozen
        # while the server stops, so the server cannot send the other pages
        # before it goes.
        reader.daemon.pause()
        with server_stopped(ejabberd_server):
            reader.daemon.resume()
            assert progress["count"] == 300

            assert wait_sync_end(signals, node)["state"] == "ERROR"
            # The pages stored before the stop stay, and the next sync
            # reconciles them.
            state, count = stored_node(reader.db_file, node)
            assert state == "ERROR"
            assert 100 <= count < 300
            reader.runner.wait_for(lambda: not reader.connected(), what="the stream loss")
            with pytest.raises(BridgeError) as error:
                reader.get(node)
            assert error.value.type == "ProfileNotConnected"

            probe = CacheReadProbe(reader, node)
            probe.start()
        publisher.connect()
        # No command: the profile reconnects by itself, which syncs the node.
        reader.runner.wait_for(reader.connected, timeout=30, what="the reconnection")
        reader.wait_completed(node)
        probe.stop()
        probe.assert_reads_equal(reader.get(node, use_cache=False)["items"])
        reader.assert_final_state(node)

    # The reader's first reconnection attempt comes that many seconds after
    # the stream loss: enough to restart the server and change the node while
    # the reader is offline. ejabberd takes about 3 s to stop and start.
    @pytest.mark.parametrize(
        ("server_name", "reconnect_delay"),
        [("prosody_server", 3), ("ejabberd_server", 6)],
    )
    def test_server_restart_while_idle(
        self, request, server_name, reconnect_delay, publisher_factory, reader_factory,
    ):
        server = request.getfixturevalue(server_name)
        publisher = publisher_factory(server)
        node = publisher.create_node()
        ids = [f"item-{index:02}" for index in range(50)]
        publisher.publish(node, ids)
        reader = reader_factory(server, reconnect_delay=reconnect_delay)
        reader.start()
        reader.connect()
        reader.first_sync(node)

        with server_stopped(server):
            reader.runner.wait_for(lambda: not reader.connected(), what="the stream loss")
            with pytest.raises(BridgeError) as error:
                reader.get(node)
            assert error.value.type == "ProfileNotConnected"
        publisher.connect()
        publisher.retract(node, ids[:5])
        publisher.publish(node, ids[10:15], title="edited")
        publisher.publish(node, [f"new-{index}" for index in range(5)])
        assert not reader.connected(), "the reader came back before the node changed"

        probe = CacheReadProbe(reader, node)
        probe.start()
        # No command: the profile reconnects by itself and reconciles the node.
        reader.runner.wait_for(reader.connected, timeout=30, what="the reconnection")
        reader.wait_completed(node)
        probe.stop()
        live = reader.get(node, use_cache=False)["items"]
        assert len(live) == 50
        probe.assert_reads_equal(live)
        reader.assert_final_state(node)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """Yield the folder of a new 8 MB tmpfs, unmounted after the test.

    Mounting needs root (or CAP_SYS_ADMIN), as in CI. Without it the test
    fails with mount's message instead of running on a disk that never fills.
    """
    folder = tmp_path / "small-fs"
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(folder)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs on {folder} (exit {result.returncode}): "
            f"{result.stderr.strip()}. The disk full tests need root",
            pytrace=False,
        )
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill_filesystem(folder: Path, leave: int) -> Path:
    """Write a file that takes the free space of ``folder``'s filesystem but ``leave`` bytes."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    filler = folder / "filler"
    with open(filler, "ab") as filler_file:
        filler_file.write(b"\0" * max(free - leave, 0))
    return filler


class DiskFullTests:
    """The database on a filesystem with no space left while items are stored.

    ``small_filesystem`` comes first in the arguments, so that the daemons
    stop before it is unmounted.
    """

    def test_disk_full_during_sync(
        self, small_filesystem, prosody_server, publisher_factory, reader_factory,
    ):
        publisher = publisher_factory(prosody_server)
        node = publisher.create_node()
        # 800 kB of XML, more than the 256 kB left once stored with the parsed
        # data, the text and the full-text index.
        publisher.publish(node, [f"item-{index:03}" for index in range(100)], padding=8000)
        reader = reader_factory(prosody_server, db_file=small_filesystem / "libervia.db")
        reader.start()
        reader.connect()
        filler = fill_filesystem(small_filesystem, 256 * 1024)

        result = reader.runner.li(
            "pubsub", "cache", "sync", "-s", reader.service, "-n", node, "-p", READER,
            expect=1,
        )
        assert f"sync of node {node} of {reader.service} failed" in result.stderr
        assert "database or disk is full" in result.stderr
        log = reader.runner.log_file.read_text()
        assert f"profile {READER}: sync of node {node} of {reader.service} failed" in log
        # Nothing of the failed transaction is stored.
        assert stored_node(reader.db_file, node) == ("ERROR", 0)
        assert_database_intact(reader.db_file)
        # The service serves every item meanwhile.
        assert not reader.assert_honest(node)
        assert len(reader.get(node)["items"]) == 100

        filler.unlink()
        # No command: the timed retry syncs the node.
        reader.wait_completed(node)
        reader.assert_final_state(node)

    def test_disk_full_during_notification(
        self, small_filesystem, prosody_server, publisher_factory, reader_factory,
    ):
        publisher = publisher_factory(prosody_server)
        node = publisher.create_node()
        publisher.publish(node, [f"item-{index:02}" for index in range(20)])
        reader = reader_factory(prosody_server, db_file=small_filesystem / "libervia.db")
        reader.start()
        reader.connect()
        reader.first_sync(node)
        # A clean stop copies the WAL file into the database and removes it,
        # so the writes below need new space instead of reusing the WAL's.
        reader.daemon.stop()
        reader.start()
        reader.connect()
        reader.wait_completed(node)
        filler = fill_filesystem(small_filesystem, 32 * 1024)
        signals = bridge(reader.daemon.socket_path)

        # An item of about 150 kB: storing it needs more than the space left.
        publisher.publish(node, ["large"], padding=150_000)
        failure = wait_sync_end(signals, node)
        assert failure["state"] == "ERROR"
        assert "database or disk is full" in failure["error"]
        log = reader.runner.log_file.read_text()
        assert (
            f"profile {READER}: notification of node {node} of {reader.service} not applied "
            "to the cache"
        ) in log
        assert stored_node(reader.db_file, node) == ("ERROR", 20)
        assert_database_intact(reader.db_file)
        # The node is not served without the new item.
        assert not reader.assert_honest(node)
        assert len(reader.get(node)["items"]) == 21

        filler.unlink()
        # No command: the timed retry syncs the node.
        reader.wait_completed(node)
        reader.assert_final_state(node)
