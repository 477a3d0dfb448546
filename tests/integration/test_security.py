"""Security of a running backend: bridge access, profile isolation, passwords, file modes.

The daemon runs as a user would run it (``libervia-backend`` and ``li`` in
subprocesses, :class:`~libervia.testing.backend.BackendRunner`) against the
session's Prosody, on a PostgreSQL database whose URL carries a password, and
with the DEBUG log level. A second backend runs in the test process for the
profile isolation tests, against Prosody too.

- The bridge socket and its folder belong to the daemon's user with modes
  0600 and 0700. A process of another OS user cannot connect, even when the
  folder is opened: the tests run as root, and fork a child that switches
  to ``nobody``.
- A profile never gets the items another profile cached: a node readable by
  alice only and cached by her is refused to bob, and once bob may read it,
  each profile keeps its own copy.
- Bridge methods that act on several profiles end their name with
  ``_all_profiles`` and state it in their docstring.
- No password, nor its SASL PLAIN encoding, appears in the daemon's log, in
  ``li``'s output, in exceptions or in the bridge's error messages after a
  session that creates profiles, fails a login, connects, publishes, syncs
  and reads.
- Files and folders the backend creates are readable by their owner only,
  even when the daemon starts with umask 000.
"""

from __future__ import annotations

import base64
import inspect
import os
import pwd
import socket
import stat
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from libervia.backend.core import constants as C
from libervia.backend.core.exceptions import NotFound, PubsubError
from libervia.backend.memory.sqla import Storage
from libervia.backend.memory.sqla_mapping import SyncState
from libervia.backend.plugins.plugin_xep_0060 import NS_PUBSUB
from libervia.cli.bridge_client import BridgeClient, BridgeError
from libervia.testing.backend import BackendRunner, Result
from libervia.testing.databases import create_database, drop_database
from libervia.testing.prosody import ProsodyServer

PASSWORD_ENV = "SECURITY_TEST_PASSWORD"
#: Any other user: the bridge must refuse it.
OTHER_USER = "nobody"
NS_TEST = "urn:example:security"
NODE_PREFIX = "security-"
IQ_TIMEOUT = 20.0

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching to another OS user needs root"
)


# --- bridge socket ------------------------------------------------------------------------

#: Exit codes of the child of connect_as.
CONNECTED = 0
CONNECT_REFUSED = 13
CONNECT_FAILED = 1
USER_SWITCH_FAILED = 2


def connect_as(user: str, socket_path: Path) -> int:
    """Connect to ``socket_path`` from a forked child running as ``user``; return its exit code.

    The child drops every group and switches to the user's uid and gid before
    connecting, then exits with CONNECTED, CONNECT_REFUSED (permission
    denied) or CONNECT_FAILED (another error).
    """
    entry = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        code = USER_SWITCH_FAILED
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            code = CONNECT_FAILED
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    sock.connect(str(socket_path))
                    code = CONNECTED
                except PermissionError:
                    code = CONNECT_REFUSED
        finally:
            # Never return into pytest in the child.
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendRunner]:
    runner = BackendRunner(tmp_path_factory.mktemp("security-bridge"))
    try:
        runner.backend("start")
        yield runner
    finally:
        runner.stop()


def socket_path(runner: BackendRunner) -> Path:
    return runner.runtime_dir / C.APP_NAME / C.BRIDGE_SOCKET_NAME


class BridgeSocketTests:
    def test_socket_mode(self, daemon: BackendRunner) -> None:
        info = socket_path(daemon).lstat()

        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.getuid()

    def test_folder_mode(self, daemon: BackendRunner) -> None:
        info = socket_path(daemon).parent.stat()

        assert stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.getuid()

    @needs_root
    def test_owner_connects(self, daemon: BackendRunner) -> None:
        """The check itself works: the daemon's user gets in."""
        assert connect_as(pwd.getpwuid(os.getuid()).pw_name, socket_path(daemon)) == CONNECTED

    @needs_root
    def test_other_user_refused(self, daemon: BackendRunner) -> None:
        assert connect_as(OTHER_USER, socket_path(daemon)) == CONNECT_REFUSED

    @needs_root
    def test_other_user_refused_by_socket_mode(self, daemon: BackendRunner) -> None:
        """With the folder opened to everyone, the socket's own mode still refuses."""
        folder = socket_path(daemon).parent
        folder.chmod(0o711)
        try:
            code = connect_as(OTHER_USER, socket_path(daemon))
        finally:
            folder.chmod(0o700)

        assert code == CONNECT_REFUSED

    def test_daemon_answers(self, daemon: BackendRunner) -> None:
        with BridgeClient(socket_path(daemon), timeout=10) as client:
            assert client.call("ping") == "pong"


# --- passwords and file modes -----------------------------------------------------------


class Secrets:
    """Distinctive secrets of one session, and the forms they could leak in."""

    def __init__(self, user: str) -> None:
        token = uuid.uuid4().hex
        self.user = user
        self.password = f"Xmpp-Good-{token}"
        self.wrong_password = f"Xmpp-Wrong-{token}"
        self.database_password = f"Db-Secret-{token}"

    def forms(self) -> dict[str, str]:
        """Return each string that must never appear, named for the failure message."""
        forms = {}
        for name, secret in (
            ("password", self.password),
            ("wrong password", self.wrong_password),
            ("database password", self.database_password),
        ):
            forms[name] = secret
            # SASL PLAIN sends base64("\0user\0password").
            plain = f"\0{self.user}\0{secret}".encode()
            forms[f"{name} in SASL PLAIN"] = base64.b64encode(plain).decode()
        return forms


class Session:
    """A daemon, the outputs of every command run, and the secrets to look for."""

    def __init__(self, runner: BackendRunner, secrets: Secrets, server: ProsodyServer) -> None:
        self.runner = runner
        self.secrets = secrets
        self.server = server
        self.outputs: list[tuple[str, str]] = []
        #: (exception type, message) of each bridge call that failed on purpose.
        self.bridge_errors: list[tuple[str, str]] = []

    def li(self, *args: str, expect: int | None = 0, **kwargs: Any) -> Result:
        result = self.runner.li(*args, expect=expect, **kwargs)
        command = " ".join(args)
        self.outputs.append((f"li {command} (stdout)", result.stdout))
        self.outputs.append((f"li {command} (stderr)", result.stderr))
        return result

    def create_profile(self, name: str, password: str, *options: str) -> None:
        self.li(
            "profile", "create", name, "-j", self.server.jid(self.secrets.user),
            "--host", self.server.host, "--port", str(self.server.port),
            "--ca-file", str(self.server.ca_file), "--password-env", PASSWORD_ENV,
            *options, env={PASSWORD_ENV: password},
        )


@pytest.fixture(scope="module")
def session(
    tmp_path_factory: pytest.TempPathFactory, prosody: ProsodyServer,
) -> Iterator[Session]:
    """Run a whole user session with distinctive secrets; the daemon is stopped at the end.

    The daemon starts with umask 000, so any file it creates without an
    explicit mode would be readable by everyone.
    """
    secrets = Secrets(f"secuser{uuid.uuid4().hex[:8]}")
    prosody.register(secrets.user, secrets.password)
    # PostgreSQL on 127.0.0.1 trusts local connections, so the password in
    # the URL is accepted whatever it is: only its leaks are tested.
    database = create_database()
    url = database.set(password=secrets.database_password)
    runner = BackendRunner(
        tmp_path_factory.mktemp("security-session"),
        extra_env={C.ENV_DB_URL: url.render_as_string(hide_password=False)},
    )
    # A user's XDG base folders exist before the backend runs. The config
    # file is the user's, written with the modes that doc/developer.rst recommends.
    for folder in (runner.base / "data", runner.base / "config", runner.config_file.parent):
        folder.mkdir(mode=0o700)
    runner.write_config("[logging]\nlevel = DEBUG\n")
    runner.config_file.chmod(0o600)
    session = Session(runner, secrets, prosody)
    previous_umask = os.umask(0)
    try:
        # The first li command starts the daemon, with this umask.
        run_user_session(session)
        yield session
    finally:
        os.umask(previous_umask)
        runner.stop()
        drop_database(database)


def run_user_session(session: Session) -> None:
    """Create profiles, fail logins, connect, publish, sync and read, as a user does."""
    secrets = session.secrets
    session.create_profile("good", secrets.password)
    session.create_profile("plain", secrets.password, "--sasl-mechanisms", "PLAIN")
    session.create_profile("wrong", secrets.wrong_password)
    session.create_profile("wrongplain", secrets.wrong_password, "--sasl-mechanisms", "PLAIN")
    service_jid = session.server.jid(secrets.user)

    for name in ("wrong", "wrongplain"):
        failed = session.li("profile", "connect", name, expect=None)
        assert failed.returncode != 0
    failed = session.li(
        "profile", "connect", "good", "--password-env", PASSWORD_ENV, expect=None,
        env={PASSWORD_ENV: secrets.wrong_password},
    )
    assert failed.returncode != 0
    # Values the daemon rejects, with the password given.
    session.li(
        "profile", "create", "badjid", "-j", "not a jid", "--password-env", PASSWORD_ENV,
        expect=None, env={PASSWORD_ENV: secrets.password},
    )
    session.li(
        "profile", "create", "good", "-j", service_jid, "--password-env", PASSWORD_ENV,
        expect=None, env={PASSWORD_ENV: secrets.password},
    )

    session.li("profile", "connect", "good")
    session.li("profile", "connect", "plain")
    service = service_jid
    node = "urn:xmpp:microblog:0"
    session.li(
        "pubsub", "node", "create", "-s", service, "-n", node, "-p", "good",
        "-o", "pubsub#access_model=open", "-o", "pubsub#max_items=100",
    )
    for index in range(3):
        item = (
            f"<item id='post-{index}'><entry xmlns='http://www.w3.org/2005/Atom'>"
            f"<title>Post {index}</title><id>urn:uuid:{uuid.uuid4()}</id>"
            "<published>2024-05-06T07:08:09Z</published></entry></item>"
        )
        session.li("pubsub", "set", "-s", service, "-n", node, "-p", "good", input=item)
    # The first read has the node analysed, the sync fills the cache, the
    # last read comes from it.
    session.li("pubsub", "get", "-s", service, "-n", node, "-p", "plain", "-O", "json")
    session.li("pubsub", "cache", "sync", "-s", service, "-n", node, "-p", "plain")
    cached = session.li("pubsub", "get", "-s", service, "-n", node, "-p", "plain", "-O", "json")
    assert cached.json()["metadata"]["from_cache"] is True
    session.li("pubsub", "cache", "get", "-s", service, "-n", node, "-p", "plain")
    session.li("blog", "get", "-s", service, "-p", "plain")
    session.li("pubsub", "cache", "stats", "-p", "plain")
    session.li("profile", "list")
    session.li("profile", "list", "-O", "json")
    session.li("debug", "stats", "-p", "good")

    with BridgeClient(socket_path(session.runner), timeout=30) as client:
        for params in (
            {"name": "good", "password": secrets.wrong_password},
            {"name": "wrong"},
        ):
            client.call("profile_disconnect", name=params["name"])
            try:
                client.call("profile_connect", **params)
            except BridgeError as exc:
                session.bridge_errors.append((exc.type, exc.message))
                session.outputs.append(("bridge error of profile_connect", exc.message))
            else:
                raise AssertionError("profile_connect with a wrong password succeeded")
        client.call("profile_connect", name="good")
    session.runner.backend("stop")


class PasswordTests:
    def test_failures_happened(self, session: Session) -> None:
        """The session did run the failures whose messages are scanned."""
        assert [error_type for error_type, _ in session.bridge_errors] == ["AuthError"] * 2

    @pytest.mark.parametrize(
        "form", ["password", "password in SASL PLAIN", "wrong password",
                 "wrong password in SASL PLAIN", "database password",
                 "database password in SASL PLAIN"],
    )
    def test_not_in_outputs(self, session: Session, form: str) -> None:
        secret = session.secrets.forms()[form]
        leaks = [name for name, text in session.outputs if secret in text]

        assert leaks == []

    @pytest.mark.parametrize(
        "form", ["password", "password in SASL PLAIN", "wrong password",
                 "wrong password in SASL PLAIN", "database password"],
    )
    def test_not_in_daemon_log(self, session: Session, form: str) -> None:
        log_text = session.runner.log_file.read_text(errors="replace")
        secret = session.secrets.forms()[form]

        assert len(log_text) > 10_000, "the DEBUG log is unexpectedly short"
        assert secret not in log_text

    def test_log_names_database_without_password(self, session: Session) -> None:
        log_text = session.runner.log_file.read_text(errors="replace")

        assert "postgresql+asyncpg://postgres:***@" in log_text


class FileModeTests:
    def test_created_files_private(self, session: Session) -> None:
        """Every file and folder under the XDG folders is closed to group and others."""
        roots = [session.runner.base / "data", session.runner.base / "config",
                 session.runner.runtime_dir / C.APP_NAME]
        open_paths = []
        seen = 0
        for root in roots:
            for path in [root, *root.rglob("*")]:
                if not path.exists():
                    continue
                seen += 1
                mode = stat.S_IMODE(path.lstat().st_mode)
                if mode & 0o077:
                    open_paths.append(f"{path} {mode:o}")

        assert seen >= 4
        assert open_paths == [], "\n".join(open_paths)

    def test_log_file_mode(self, session: Session) -> None:
        assert stat.S_IMODE(session.runner.log_file.stat().st_mode) == 0o600

    def test_config_not_written(self, session: Session) -> None:
        """The backend never writes a config file: only the one the test wrote is there."""
        files = sorted(path.name for path in (session.runner.base / "config").rglob("*")
                       if path.is_file())

        assert files == [C.CONFIG_FILE_NAME]


class SQLiteFileModeTests:
    @pytest_twisted.ensureDeferred
    async def test_missing_folders_private(self, tmp_path: Path) -> None:
        """Storage creates the database's missing folders with mode 0700, whatever the umask."""
        path = tmp_path / "share" / "libervia" / C.DB_FILE_NAME
        previous_umask = os.umask(0)
        try:
            storage = Storage(f"sqlite+aiosqlite:///{path}")
            await storage.initialise()
            await storage.create_profile("someone", "someone@example.org", "secret")
            modes = {
                str(item.relative_to(tmp_path)): stat.S_IMODE(item.stat().st_mode)
                for item in tmp_path.rglob("*")
            }
            await storage.close()
        finally:
            os.umask(previous_umask)

        assert modes["share"] == 0o700
        assert modes["share/libervia"] == 0o700
        assert modes[f"share/libervia/{C.DB_FILE_NAME}"] == 0o600
        assert {name: mode for name, mode in modes.items() if mode & 0o077} == {}

    def test_missing_xdg_folders_private(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        """A daemon started where the XDG base folders do not exist yet creates them 0700."""
        runner = BackendRunner(tmp_path_factory.mktemp("security-xdg"))
        previous_umask = os.umask(0)
        try:
            runner.backend("start")
            data_home_mode = stat.S_IMODE((runner.base / "data").stat().st_mode)
        finally:
            os.umask(previous_umask)
            runner.stop()

        assert data_home_mode == 0o700

    def test_database_files_private(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        """The SQLite file, its WAL and shared memory files are 0600 even with umask 000."""
        runner = BackendRunner(tmp_path_factory.mktemp("security-sqlite"))
        previous_umask = os.umask(0)
        try:
            runner.li(
                "profile", "create", "someone", "-j", "someone@example.org",
                "--password-env", PASSWORD_ENV, env={PASSWORD_ENV: "x"},
            )
            files = {
                path.name: stat.S_IMODE(path.stat().st_mode)
                for path in runner.db_file.parent.iterdir()
            }
            folder_mode = stat.S_IMODE(runner.db_file.parent.stat().st_mode)
        finally:
            os.umask(previous_umask)
            runner.stop()

        assert folder_mode == 0o700
        assert files[C.DB_FILE_NAME] == 0o600
        assert {name: mode for name, mode in files.items() if mode & 0o077} == {}
        assert any(name.endswith("-wal") for name in files)


# --- profile isolation --------------------------------------------------------------------


def make_item(item_id: str) -> domish.Element:
    item = domish.Element((NS_PUBSUB, "item"))
    item["id"] = item_id
    item.addElement((NS_TEST, "entry"), content=f"text of {item_id}")
    return item


class Isolation:
    """An in-process backend with alice and bob connected to the session's Prosody."""

    def __init__(self, server: ProsodyServer, backend: Any) -> None:
        self.server = server
        self.backend = backend
        self.service = JID(server.pubsub_service)
        self.pubsub = backend.plugins["XEP-0060"]
        self.cache = backend.plugins["PUBSUB_CACHE"]

    def client(self, profile: str) -> Any:
        return self.backend.get_client(profile)

    async def node_row(self, profile: str, node: str) -> Any:
        profile_row = await self.backend.storage.get_profile(profile)
        return await self.backend.storage.get_pubsub_node(
            profile_row.id, self.service.full(), node
        )

    async def cached_ids(self, profile: str, node: str) -> list[str] | None:
        node_row = await self.node_row(profile, node)
        if node_row is None:
            return None
        return [row.name for row in await self.backend.storage.get_pubsub_items(node_row.id)]

    async def read(self, profile: str, node: str) -> tuple[list[str], dict[str, Any]]:
        items, metadata = await self.pubsub.get_items(self.client(profile), self.service, node)
        await self.cache.wait_syncs()
        return [item["id"] for item in items], metadata


@pytest_twisted.async_yield_fixture(scope="module")
async def isolation(prosody: ProsodyServer) -> AsyncIterator[Isolation]:
    from libervia.backend.core.main import Backend

    base = tempfile.mkdtemp(prefix="lbs-", dir="/tmp")
    with pytest.MonkeyPatch.context() as patch:
        for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
            patch.setenv(var, f"{base}/{var.lower()}")
        patch.delenv(C.ENV_DB_URL, raising=False)
        backend = Backend()
        await backend.start()
        try:
            backend.plugins["PUBSUB_CACHE"].register_analyser(
                {"name": "security-test", "type": "test", "node": NODE_PREFIX, "to_sync": True}
            )
            for profile in ("alice", "bob"):
                await backend._profile_create(
                    profile, prosody.jid(profile), prosody.accounts[profile],
                    {"host": prosody.host, "port": prosody.port,
                     "ca_file": str(prosody.ca_file)},
                )
                client = await backend.connect_profile(profile)
                client.options.iq_timeout = IQ_TIMEOUT
            yield Isolation(prosody, backend)
        finally:
            await backend.stop()


class ProfileIsolationTests:
    @pytest_twisted.ensureDeferred
    async def test_cached_items_stay_with_their_profile(self, isolation: Isolation) -> None:
        node = f"{NODE_PREFIX}{uuid.uuid4().hex[:10]}"
        alice = isolation.client("alice")
        await isolation.pubsub.create_node(alice, isolation.service, node, {
            "pubsub#access_model": "whitelist",
            "pubsub#max_items": "10",
        })
        for item_id in ("a", "b"):
            await isolation.pubsub.publish(alice, isolation.service, node, [make_item(item_id)])
        await isolation.read("alice", node)
        alice_ids, alice_metadata = await isolation.read("alice", node)

        # bob may not read the node: the cache alice filled must not serve him.
        with pytest.raises(PubsubError):
            await isolation.read("bob", node)
        bob_cached = await isolation.cached_ids("bob", node)
        with pytest.raises(NotFound):
            await isolation.cache._bridge_cache_get(
                service=isolation.service.full(), node=node, profile="bob"
            )

        # Once bob may read it, he gets a copy of his own...
        bob_jid = isolation.client("bob").jid.userhostJID()
        await isolation.pubsub.set_node_affiliations(
            alice, isolation.service, node, {bob_jid: "member"}
        )
        await isolation.read("bob", node)
        bob_ids, bob_metadata = await isolation.read("bob", node)
        alice_row = await isolation.node_row("alice", node)
        bob_row = await isolation.node_row("bob", node)

        # ...which only his own notifications change: offline, he misses one
        # that alice's copy gets.
        await isolation.backend.disconnect_profile("bob")
        try:
            await isolation.pubsub.publish(alice, isolation.service, node, [make_item("c")])
            await isolation.pubsub.wait_events(alice)
            alice_after = await isolation.cached_ids("alice", node)
            bob_after = await isolation.cached_ids("bob", node)
        finally:
            client = await isolation.backend.connect_profile("bob")
            client.options.iq_timeout = IQ_TIMEOUT
        await isolation.cache.wait_syncs()
        bob_reconciled, _ = await isolation.read("bob", node)

        assert alice_ids == ["a", "b"]
        assert alice_metadata["from_cache"] is True
        assert bob_cached in (None, [])
        assert bob_ids == ["a", "b"]
        assert bob_metadata["from_cache"] is True
        assert alice_row.sync_state == bob_row.sync_state == SyncState.COMPLETED
        assert alice_row.id != bob_row.id
        assert alice_after == ["a", "b", "c"]
        assert bob_after == ["a", "b"]
        assert bob_reconciled == ["a", "b", "c"]


# --- bridge methods spanning profiles ---------------------------------------------------------

#: Methods that manage profiles or the daemon itself: they take no profile
#: to act as, by nature.
DAEMON_METHODS = {
    "ping", "version", "daemon_stop", "profile_create", "profile_list", "profile_delete",
    "profile_default_set", "profile_connect", "profile_disconnect",
}
SPANNING_SUFFIX = "_all_profiles"
#: Methods that may act on other profiles without saying so in their name.
NAMING_GAPS: set[str] = set()


def bridge_methods(isolation: Isolation) -> dict[str, Any]:
    bridge = isolation.backend.bridge
    return {name: bridge._methods[name].func for name in bridge.methods}


def spans_profiles(func: Any) -> bool:
    """Tell whether a bridge method may act on other profiles than the caller's."""
    parameters = inspect.signature(func).parameters
    return "profiles" in parameters or "profile" not in parameters


class SpanningMethodTests:
    def test_names(self, isolation: Isolation) -> None:
        wrongly_named = [
            name for name, func in bridge_methods(isolation).items()
            if name not in DAEMON_METHODS | NAMING_GAPS and spans_profiles(func)
            and not name.endswith(SPANNING_SUFFIX)
        ]

        assert wrongly_named == []

    def test_search_named(self, isolation: Isolation) -> None:
        methods = bridge_methods(isolation)

        assert not spans_profiles(methods["ps_cache_search"])
        assert spans_profiles(methods["ps_cache_search_all_profiles"])

    def test_docstrings(self, isolation: Isolation) -> None:
        undocumented = [
            name for name, func in bridge_methods(isolation).items()
            if name.endswith(SPANNING_SUFFIX)
            and "profiles" not in (inspect.getdoc(func) or "")
        ]

        assert undocumented == []

    def test_others_act_on_one_profile(self, isolation: Isolation) -> None:
        """The suffix is not a decoration: methods without it take one profile."""
        methods = bridge_methods(isolation)
        single = [name for name in methods
                  if name not in DAEMON_METHODS | NAMING_GAPS
                  and not name.endswith(SPANNING_SUFFIX)]

        assert len(single) > 20
        assert all("profile" in inspect.signature(methods[name]).parameters for name in single)

