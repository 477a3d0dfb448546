"""Start a throwaway ejabberd server on 127.0.0.1 for tests, demos and benchmarks.

:class:`EjabberdServer` writes an ``ejabberdctl.cfg``, an ``ejabberd.yml``
and a self-signed certificate into one folder, runs ``ejabberdctl
foreground`` as a child process and stops its Erlang VM by PID.
Each instance has its own Erlang node name, client port and
distribution port, so several servers can run at once, next to a system-wide
ejabberd if there is one.

Debian's ``ejabberdctl`` (ejabberd 23.01) runs the Erlang VM as the
``ejabberd`` user through ``su`` when called by root, and refuses every other
user. The launcher therefore works as root or as the ``ejabberd`` user, and
its folder belongs to ``ejabberd``.

Accounts are created with ``ejabberdctl register``, which talks to the
running node: accounts registered before :meth:`EjabberdServer.start` are
kept and created, in parallel, once the server runs. Pubsub nodes and items
go to an SQLite file (by default), because ejabberd's pubsub service
advertises RSM only with its SQL backend. Other data stays in Mnesia, in the
folder.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from libervia.testing.prosody import generate_certificate, pick_free_port, read_tail

log = logging.getLogger(__name__)

#: Seconds to wait for the node to start and its client port to accept
#: connections after launch.
START_TIMEOUT = 30.0
#: Seconds to wait for the server to exit after SIGTERM, before SIGKILL.
STOP_TIMEOUT = 10.0
#: Seconds an ``ejabberdctl`` command may take.
COMMAND_TIMEOUT = 30.0
#: Attempts to start when a picked port was taken before ejabberd bound it.
START_ATTEMPTS = 3
#: Lines of the server log quoted in a startup error.
LOG_TAIL_LINES = 40

#: System user that Debian's ejabberdctl runs the server as.
EJABBERD_USER = "ejabberd"
#: Folders searched for ejabberdctl after PATH: Debian installs it in
#: /usr/sbin, which is not on the PATH of most users.
SBIN_DIRS = ("/usr/sbin", "/sbin")

#: Text of the line ejabberd 23.01 logs once every module has started.
STARTED_MARK = "is started in the node '{node}'"
#: Error that ejabberd 23.01 logs when the c2s listener cannot bind its port,
#: and that the Erlang VM prints when it cannot bind its distribution port.
PORT_BIND_FAILURE = "eaddrinuse"

INSTALL_HINT = (
    "run scripts/ensure-ejabberd.sh, or install the Debian packages ejabberd "
    "and erlang-p1-sqlite3 (sudo apt-get install ejabberd erlang-p1-sqlite3)"
)

PubsubDbType = Literal["sql", "mnesia"]


def find_ejabberdctl() -> str:
    """Return the path of ejabberdctl, looked up on PATH, then in /usr/sbin and /sbin.

    Raises:
        RuntimeError: ejabberdctl is not installed.
    """
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    path = shutil.which("ejabberdctl", path=search_path)
    if path is None:
        raise RuntimeError(f"ejabberdctl not found: {INSTALL_HINT}")
    return path


def check_sqlite_driver() -> None:
    """Check that ejabberd's SQLite driver (Debian package erlang-p1-sqlite3) is installed.

    ejabberd loads the driver only when it first opens the database, so a
    missing driver would otherwise show up as pubsub errors in a test.

    Raises:
        RuntimeError: no sqlite3 Erlang application is installed.
    """
    # Debian installs Erlang applications in /usr/lib/erlang/lib, and
    # ejabberd's own ones in /usr/lib/<triplet>, which ejabberdctl adds to
    # ERL_LIBS.
    patterns = [
        ("/usr/lib/erlang/lib", "*sqlite3-*/ebin/sqlite3.app"),
        ("/usr/lib", "*/*sqlite3-*/ebin/sqlite3.app"),
    ]
    for folder, pattern in patterns:
        if any(Path(folder).glob(pattern)):
            return
    raise RuntimeError(
        f"ejabberd's SQLite driver (Erlang application sqlite3) not found: "
        f"{INSTALL_HINT}"
    )


def yaml_document(value: dict[str, Any]) -> str:
    """Format a mapping as YAML.

    JSON is valid YAML, and ejabberd's parser (libyaml) reads it, so the
    standard library's JSON encoder does the quoting.
    """
    return json.dumps(value, indent=2) + "\n"


@dataclass(frozen=True)
class _ProcessId:
    """A PID and the start time of its process, which tell a reused PID apart."""

    pid: int
    start_time: int

    @classmethod
    def read(cls, pid: int) -> _ProcessId | None:
        """Return the identity of a running process, or None when it is gone."""
        stat_fields = _read_stat(pid)
        if stat_fields is None:
            return None
        return cls(pid, int(stat_fields[19]))

    def exists(self) -> bool:
        """Return whether this process still runs (zombies excluded)."""
        stat_fields = _read_stat(self.pid)
        if stat_fields is None:
            return False
        return int(stat_fields[19]) == self.start_time and stat_fields[0] != "Z"


def _read_stat(pid: int) -> list[str] | None:
    """Return the fields of /proc/PID/stat after the command name, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in brackets and may contain spaces: split after it.
    # Field 0 of the result is the state, 1 the parent PID, 19 the start time.
    return text[text.rindex(")") + 2:].split()


def _descendants(root: int) -> list[int]:
    """Return the PIDs of every descendant of ``root``, parents first (Linux only)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat_fields = _read_stat(int(entry.name))
        if stat_fields is not None:
            children.setdefault(int(stat_fields[1]), []).append(int(entry.name))

    found: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop(0)
        for child in children.get(pid, []):
            found.append(child)
            pending.append(child)
    return found


def _process_name(pid: int) -> str:
    """Return the command name of a process, or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _reachable_by(path: Path, uid: int, gids: set[int]) -> bool:
    """Return whether a user may enter every folder above ``path``."""
    for folder in path.resolve().parents:
        mode = folder.stat()
        if mode.st_uid == uid:
            allowed = mode.st_mode & stat.S_IXUSR
        elif mode.st_gid in gids:
            allowed = mode.st_mode & stat.S_IXGRP
        else:
            allowed = mode.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


class EjabberdServer:
    """An ejabberd server run as a child process from its own folder.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    :meth:`register` works before and after :meth:`start`.

    Args:
        domain: XMPP domain of the virtual host. The pubsub service is
            ``pubsub.{domain}``.
        workdir: folder for the configs, certificate, data and logs. The
            ``ejabberd`` user must be able to enter every folder above it,
            which rules out pytest's ``tmp_path`` when running as root
            (/tmp/pytest-of-root is private). When None, a temporary folder
            is created and removed by :meth:`stop`.
        tls: True requires STARTTLS before authentication. False does not
            offer STARTTLS, and ejabberd accepts PLAIN authentication over
            plain TCP.
        admins: bare JIDs put in ejabberd's ``admin`` ACL. Unlike
            Prosody's, ejabberd's pubsub service lets every local account
            create nodes, admin or not.
        debug_log: log at debug level (every stanza) instead of info.
        pubsub_db_type: storage of pubsub nodes and items: "sql" (an SQLite
            file in the folder, RSM advertised) or "mnesia".
        extra_config: top-level options added to ``ejabberd.yml``. They must
            not set an option this class writes, because the last one would
            silently win.
        components: external components (XEP-0114) the server accepts, as
            domain to shared secret; they connect to :attr:`component_port`.
        direct_tls: also listen for TLS from the first byte (XEP-0368) on
            :attr:`direct_tls_port`.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        domain: str = "localhost",
        workdir: Path | None = None,
        tls: bool = True,
        admins: Iterable[str] = (),
        debug_log: bool = False,
        pubsub_db_type: PubsubDbType = "sql",
        extra_config: dict[str, Any] | None = None,
        components: dict[str, str] | None = None,
        direct_tls: bool = False,
    ) -> None:
        if pubsub_db_type not in ("sql", "mnesia"):
            raise ValueError(
                f"invalid pubsub_db_type {pubsub_db_type!r}: expected 'sql' or 'mnesia'"
            )
        self._domain = domain
        self._owns_workdir = workdir is None
        self._workdir = Path(workdir) if workdir is not None else None
        self._tls = tls
        self._admins = list(admins)
        self._debug_log = debug_log
        self._pubsub_db_type = pubsub_db_type
        self._extra_config = dict(extra_config or {})
        #: Passwords of the accounts created by :meth:`register`, by user name.
        self.accounts: dict[str, str] = {}
        # Accounts registered before start, created once the node runs.
        self._pending_accounts: dict[str, str] = {}
        self._port: int | None = None
        self._dist_port: int | None = None
        self._components = dict(components or {})
        self._component_port: int | None = None
        self._direct_tls = direct_tls
        self._direct_tls_port: int | None = None
        # Unique per instance, so that ejabberdctl reaches this node only.
        self._node = f"ejabberd-test-{secrets.token_hex(4)}@localhost"
        self._process: subprocess.Popen[bytes] | None = None
        self._beam: _ProcessId | None = None
        self._children: list[_ProcessId] = []
        self._output_files: list[IO[bytes]] = []

        self._ejabberdctl = find_ejabberdctl()
        if pubsub_db_type == "sql":
            check_sqlite_driver()
        self._owner = self._find_owner()
        try:
            self._prepare()
        except BaseException:
            if self._owns_workdir and self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            raise

    # properties

    @property
    def domain(self) -> str:
        """XMPP domain of the virtual host."""
        return self._domain

    @property
    def pubsub_service(self) -> str:
        """JID of the pubsub service."""
        return f"pubsub.{self._domain}"

    @property
    def node(self) -> str:
        """Erlang node name of the server, unique to this instance."""
        return self._node

    @property
    def workdir(self) -> Path:
        """Folder holding the configs, certificate, data and logs."""
        if self._workdir is None:
            raise RuntimeError(
                "this EjabberdServer was stopped and its temporary folder removed"
            )
        return self._workdir

    @property
    def port(self) -> int:
        """Client-to-server (c2s) port on :attr:`host`."""
        if self._port is None:
            raise RuntimeError(
                "this EjabberdServer was stopped and its temporary folder removed"
            )
        return self._port

    @property
    def dist_port(self) -> int:
        """Erlang distribution port on :attr:`host`, used by ejabberdctl."""
        if self._dist_port is None:
            raise RuntimeError(
                "this EjabberdServer was stopped and its temporary folder removed"
            )
        return self._dist_port

    @property
    def component_port(self) -> int:
        """Port of the component listener on :attr:`host`, when created with ``components``."""
        if not self._components:
            raise RuntimeError("this EjabberdServer was created without components")
        if self._component_port is None:
            raise RuntimeError(
                "this EjabberdServer was stopped and its temporary folder removed"
            )
        return self._component_port

    @property
    def direct_tls_port(self) -> int:
        """Direct TLS c2s port on :attr:`host`, when created with ``direct_tls``."""
        if not self._direct_tls:
            raise RuntimeError("this EjabberdServer was created without direct_tls")
        if self._direct_tls_port is None:
            raise RuntimeError(
                "this EjabberdServer was stopped and its temporary folder removed"
            )
        return self._direct_tls_port

    @property
    def config_path(self) -> Path:
        """Path of the generated ``ejabberd.yml``."""
        return self.workdir / "ejabberd.yml"

    @property
    def ctl_config_path(self) -> Path:
        """Path of the generated ``ejabberdctl.cfg``."""
        return self.workdir / "ejabberdctl.cfg"

    @property
    def ca_file(self) -> Path:
        """Self-signed certificate in PEM, for clients to use as trust root."""
        return self.workdir / "certs" / f"{self._domain}.crt"

    @property
    def key_file(self) -> Path:
        """Private key of :attr:`ca_file`."""
        return self.workdir / "certs" / f"{self._domain}.key"

    @property
    def certfile(self) -> Path:
        """Certificate and key in one PEM file, as ejabberd's ``certfiles`` wants."""
        return self.workdir / "certs" / f"{self._domain}.pem"

    @property
    def spool_dir(self) -> Path:
        """Mnesia folder of the node."""
        return self.workdir / "spool"

    @property
    def logs_dir(self) -> Path:
        """Folder of ejabberd's log files."""
        return self.workdir / "logs"

    @property
    def log_path(self) -> Path:
        """ejabberd's main log file."""
        return self.logs_dir / "ejabberd.log"

    @property
    def sql_database(self) -> Path:
        """SQLite file of the pubsub service when ``pubsub_db_type`` is "sql"."""
        return self.workdir / "ejabberd.sqlite"

    @property
    def pid(self) -> int | None:
        """PID of the Erlang VM (beam.smp) running the server, None when not running.

        It is a grandchild of the ``ejabberdctl`` process, behind ``su``
        when running as root.
        """
        if self._beam is None:
            return None
        return self._beam.pid

    @property
    def running(self) -> bool:
        """Whether the server has been started and its Erlang VM has not exited."""
        return (
            self._process is not None
            and self._process.poll() is None
            and self._beam is not None
            and self._beam.exists()
        )

    # setup

    def _find_owner(self) -> tuple[int, int] | None:
        """Return the uid and gid to give the folder to, None when it needs no change.

        Raises:
            RuntimeError: the current user cannot run ejabberdctl.
        """
        try:
            entry = pwd.getpwnam(EJABBERD_USER)
        except KeyError:
            raise RuntimeError(
                f"the system user {EJABBERD_USER!r} does not exist: {INSTALL_HINT}"
            ) from None
        if os.geteuid() == entry.pw_uid:
            return None
        if os.geteuid() != 0:
            raise RuntimeError(
                f"Debian's ejabberdctl runs only as root or as the "
                f"{EJABBERD_USER!r} user (current uid {os.geteuid()}): run the "
                f"tests as one of them"
            )
        return entry.pw_uid, entry.pw_gid

    def _prepare(self) -> None:
        """Create the folder, certificate and configs unless they exist."""
        if self._workdir is not None and self._port is not None:
            return
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="libervia-ejabberd-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._check_workdir_reachable()
        for folder in (self.spool_dir, self.logs_dir, self.workdir / "certs"):
            folder.mkdir(exist_ok=True)

        self._port = pick_free_port(self.host)
        self._dist_port = pick_free_port(self.host)
        if self._components:
            self._component_port = pick_free_port(self.host)
        if self._direct_tls:
            self._direct_tls_port = pick_free_port(self.host)
        if not self.ca_file.exists():
            generate_certificate(self._domain, self.ca_file, self.key_file)
        self.certfile.write_bytes(self.ca_file.read_bytes() + self.key_file.read_bytes())
        # The system's inetrc would do, but ejabberdctl looks for it in the
        # config folder, and the VM logs an error when it is missing.
        (self._workdir / "inetrc").write_text('{lookup, ["file", "native"]}.\n')
        self._write_configs()

    def _check_workdir_reachable(self) -> None:
        """Raise RuntimeError when the ejabberd user cannot enter the folder."""
        if self._owner is None:
            return
        uid, gid = self._owner
        groups = {gid, *os.getgrouplist(EJABBERD_USER, gid)}
        if not _reachable_by(self.workdir, uid, groups):
            raise RuntimeError(
                f"the {EJABBERD_USER!r} user cannot enter a folder above "
                f"{self.workdir}: use a folder under {tempfile.gettempdir()}, or "
                f"workdir=None for a temporary one"
            )

    def _write_configs(self) -> None:
        """Write ejabberdctl.cfg and ejabberd.yml for the current ports and options."""
        # NOTE: the node uses the cookie of the ejabberd user
        # (/var/lib/ejabberd/.erlang.cookie), like the system service: a
        # -setcookie option would show the cookie in the process list.
        erl_options = [
            # Same effect as INET_DIST_INTERFACE=127.0.0.1, without the Erlang
            # VM that ejabberdctl boots on each call to parse that setting.
            "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
            # Debian's default: no crash dump files.
            "-env", "ERL_CRASH_DUMP_BYTES", "0",
        ]
        ctl_lines = [
            "# Written by libervia.testing.ejabberd for a test server.",
            f"ERLANG_NODE={shlex.quote(self._node)}",
            # With a fixed distribution port, neither the node nor
            # ejabberdctl uses epmd.
            f"ERL_DIST_PORT={self._dist_port}",
            f"ERL_OPTIONS={shlex.quote(' '.join(erl_options))}",
            "EJABBERD_BYPASS_WARNINGS=true",
        ]
        self.ctl_config_path.write_text("\n".join(ctl_lines) + "\n")

        header = "# Written by libervia.testing.ejabberd for a test server.\n"
        self.config_path.write_text(header + yaml_document(self._config()))
        self._give_to_ejabberd()

    def _config(self) -> dict[str, Any]:
        """Return the content of ejabberd.yml."""
        listener: dict[str, Any] = {
            "port": self._port,
            "ip": self.host,
            "module": "ejabberd_c2s",
            "max_stanza_size": 10_000_000,
        }
        if self._tls:
            listener["starttls"] = True
            listener["starttls_required"] = True

        pubsub: dict[str, Any] = {
            "hosts": [self.pubsub_service],
            "plugins": ["flat", "pep"],
            # ejabberd 23.01 rejects a pubsub#max_items above 1000 by default.
            "max_items_node": 10_000,
            "access_createnode": "pubsub_createnode",
            "db_type": self._pubsub_db_type,
        }

        config: dict[str, Any] = {
            "hosts": [self._domain],
            "loglevel": "debug" if self._debug_log else "info",
            "certfiles": [str(self.certfile)],
            "listen": [listener] + self._direct_tls_listeners() + self._component_listeners(),
            "auth_method": ["internal"],
            # Stored SCRAM hashes: ejabberd offers SCRAM-SHA-* and PLAIN.
            "auth_password_format": "scram",
            "acl": {
                "admin": {"user": self._admins},
                "local": {"user_regexp": ""},
            },
            "access_rules": {
                "configure": {"allow": "admin"},
                # NOTE: ejabberd checks one rule for node creation on the
                # pubsub service and in PEP, so every local account, not
                # only the admins, may create nodes on the pubsub service.
                "pubsub_createnode": {"allow": "local"},
            },
            "modules": {
                "mod_admin_extra": {},
                "mod_caps": {},
                "mod_disco": {},
                "mod_ping": {},
                "mod_pubsub": pubsub,
                "mod_roster": {},
            },
        }
        if self._pubsub_db_type == "sql":
            # ejabberd 23.01 creates the tables of a new SQLite file itself.
            config["sql_type"] = "sqlite"
            config["sql_database"] = str(self.sql_database)
        config.update(self._extra_config)
        return config

    def _direct_tls_listeners(self) -> list[dict[str, Any]]:
        """Return the c2s listener with TLS from the first byte, if requested."""
        if not self._direct_tls:
            return []
        return [{
            "port": self._direct_tls_port,
            "ip": self.host,
            "module": "ejabberd_c2s",
            "tls": True,
            "max_stanza_size": 10_000_000,
        }]

    def _component_listeners(self) -> list[dict[str, Any]]:
        """Return the ejabberd_service listener of the components, if any."""
        if not self._components:
            return []
        return [{
            "port": self._component_port,
            "ip": self.host,
            "module": "ejabberd_service",
            "hosts": {domain: {"password": secret} for domain, secret in self._components.items()},
        }]

    def _give_to_ejabberd(self) -> None:
        """Make the ejabberd user own the folder and everything in it."""
        if self._owner is None:
            return
        uid, gid = self._owner
        workdir = self.workdir
        os.chown(workdir, uid, gid)
        for root, folders, files in os.walk(workdir):
            for name in folders + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)

    def _change_ports(self) -> None:
        """Pick new c2s and distribution ports and rewrite the configs."""
        self._port = pick_free_port(self.host)
        self._dist_port = pick_free_port(self.host)
        if self._components:
            self._component_port = pick_free_port(self.host)
        if self._direct_tls:
            self._direct_tls_port = pick_free_port(self.host)
        self._write_configs()

    # ejabberdctl

    def _ctl_command(self, *arguments: str) -> list[str]:
        """Return an ejabberdctl command line aimed at this instance's node."""
        return [
            self._ejabberdctl,
            "--config-dir", str(self.workdir),
            "--spool", str(self.spool_dir),
            "--logs", str(self.logs_dir),
            *arguments,
        ]

    def ctl(self, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an ejabberdctl command on the running node and return its result.

        Each call boots an Erlang VM, so it takes a few tenths of a second.

        Raises:
            RuntimeError: ``check`` is true and the command failed.
        """
        result = subprocess.run(
            self._ctl_command(*arguments),
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"ejabberdctl {arguments[0]} failed on node {self._node} "
                f"(exit {result.returncode}): {_output(result)}"
            )
        return result

    # accounts

    def register(self, user: str, password: str) -> None:
        """Create the account ``user@domain`` with ``password``.

        Before :meth:`start`, the account is kept and created by
        :meth:`start`. Registering an existing account replaces its
        password.

        Raises:
            RuntimeError: ejabberdctl failed.
        """
        if not self.running:
            self._pending_accounts[user] = password
            self.accounts[user] = password
            return
        self._register_now({user: password})

    def _register_now(self, accounts: dict[str, str]) -> None:
        """Create accounts on the running node, one ejabberdctl per account, in parallel."""
        # NOTE: passwords are on ejabberdctl's command line, where other
        # local users can see them: use test passwords only.
        commands = {
            user: subprocess.Popen(
                self._ctl_command("register", user, self._domain, password),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for user, password in accounts.items()
        }
        failures = []
        for user, command in commands.items():
            try:
                output, _ = command.communicate(timeout=COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                command.kill()
                output, _ = command.communicate()
                failures.append(
                    f"{user}@{self._domain} (timed out after {COMMAND_TIMEOUT} s): "
                    f"{output.strip()}"
                )
                continue
            if command.returncode == 0:
                self.accounts[user] = accounts[user]
                log.debug("registered %s@%s", user, self._domain)
            elif "already registered" in output:
                self.ctl("change_password", user, self._domain, accounts[user])
                self.accounts[user] = accounts[user]
                log.debug("changed the password of %s@%s", user, self._domain)
            else:
                failures.append(
                    f"{user}@{self._domain} (exit {command.returncode}): "
                    f"{output.strip()}"
                )
        if failures:
            raise RuntimeError(
                "ejabberdctl failed to register " + "; ".join(failures)
            )

    def jid(self, user: str, resource: str | None = None) -> str:
        """Return the JID of ``user`` on this server, with ``resource`` if given."""
        bare = f"{user}@{self._domain}"
        return f"{bare}/{resource}" if resource else bare

    # process

    def start(self) -> None:
        """Launch ejabberd, wait until it runs, then create the pending accounts.

        Raises:
            RuntimeError: the server exited early or was not ready within
                START_TIMEOUT seconds, or an account could not be
                created. The message quotes the end of the server log.
        """
        if self.running:
            return
        # A server that exited on its own still has a process to reap.
        self._reap()
        self._prepare()
        for attempt in range(1, START_ATTEMPTS + 1):
            self._launch()
            try:
                self._wait_until_ready()
            except _PortInUse:
                self._reap()
                if attempt == START_ATTEMPTS:
                    raise RuntimeError(
                        f"ejabberd could not bind free ports after "
                        f"{START_ATTEMPTS} attempts; last log lines:\n"
                        f"{self._log_tail()}"
                    ) from None
                log.warning(
                    "port %s or %s was taken before ejabberd bound it, retrying",
                    self._port, self._dist_port,
                )
                self._change_ports()
                continue
            except BaseException:
                self.stop()
                raise
            break
        log.info(
            "ejabberd started for %s on %s:%s (node %s, PID %s, folder %s)",
            self._domain, self.host, self._port, self._node, self.pid, self._workdir,
        )

        if self._pending_accounts:
            try:
                self._register_now(self._pending_accounts)
            except BaseException:
                self.stop()
                raise
            self._pending_accounts = {}

    def _launch(self) -> None:
        """Start ``ejabberdctl foreground``, output going to files."""
        workdir = self.workdir
        # Remove the logs, so that a startup error quotes this run only.
        for log_file in self.logs_dir.glob("*.log"):
            log_file.unlink()
        stdout = open(workdir / "ejabberd.stdout", "wb")
        stderr = open(workdir / "ejabberd.stderr", "wb")
        self._output_files = [stdout, stderr]
        self._process = subprocess.Popen(
            self._ctl_command("foreground"),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        self._beam = None
        self._children = []
        _started_servers.add(self)

    def _wait_until_ready(self) -> None:
        """Wait for the start line in the log, then for the c2s port."""
        process = self._process
        assert process is not None
        started_mark = STARTED_MARK.format(node=self._node)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            returncode = process.poll()
            log_tail = self._log_tail()
            if PORT_BIND_FAILURE in log_tail:
                raise _PortInUse()
            if returncode is not None:
                raise RuntimeError(
                    f"ejabberd exited with code {returncode} during startup "
                    f"(config {self.config_path}); last log lines:\n{log_tail}"
                )
            # The node logs the start line once every module runs, and opens
            # its listeners right after.
            if self._log_contains(started_mark) and self._port_accepts():
                self._record_processes()
                if self._beam is None:
                    raise RuntimeError(
                        f"ejabberd accepts connections, but no beam.smp process "
                        f"was found under ejabberdctl (PID {process.pid})"
                    )
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"ejabberd was not ready on {self.host}:{self._port} within "
                    f"{START_TIMEOUT} s (config {self.config_path}); last log "
                    f"lines:\n{log_tail}"
                )
            time.sleep(0.05)

    def _record_processes(self) -> None:
        """Record the processes under ejabberdctl, the Erlang VM among them."""
        process = self._process
        assert process is not None
        known = {child.pid for child in self._children}
        for pid in _descendants(process.pid):
            child = _ProcessId.read(pid)
            if child is None or child.pid in known:
                continue
            self._children.append(child)
            if self._beam is None and _process_name(pid) == "beam.smp":
                self._beam = child

    def _log_contains(self, text: str) -> bool:
        """Return whether the main log contains ``text``."""
        try:
            return text in self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return False

    def _port_accepts(self) -> bool:
        """Return whether a TCP connection to the c2s port succeeds."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    def _log_tail(self) -> str:
        """Return the end of the log, stdout and stderr, for error messages."""
        # Errors found before the logger starts, such as an invalid config
        # or a taken distribution port, go to stdout or stderr.
        parts = [read_tail(self.log_path, LOG_TAIL_LINES)]
        for stream in ("stdout", "stderr"):
            text = read_tail(self.workdir / f"ejabberd.{stream}", LOG_TAIL_LINES)
            if text:
                parts.append(f"{stream}:\n{text}")
        return "\n".join(part for part in parts if part) or "(log is empty)"

    def stop(self) -> None:
        """Stop the server and wait until all its processes have exited.

        The Erlang VM gets SIGTERM, which the VM turns into the same clean
        shutdown as ``ejabberdctl stop`` (``init:stop()``) in less than half
        the time, because no other VM has to boot. SIGKILL follows after
        STOP_TIMEOUT seconds. Only processes started by :meth:`start` are
        signalled, by PID. Calling it again, or before :meth:`start`, does
        nothing. A workdir created by this instance is removed, and the
        accounts are created again by the next :meth:`start`.
        """
        if self._process is not None:
            self._reap()
            log.info("ejabberd stopped for %s (node %s)", self._domain, self._node)
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._port = None
            self._dist_port = None
            self._component_port = None
            self._direct_tls_port = None
            self._pending_accounts = dict(self.accounts)

    def _reap(self) -> None:
        """Stop the Erlang VM if it runs and wait for ejabberdctl to exit."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal_server(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning(
                    "ejabberd (node %s, PID %s) ignored SIGTERM for %s s, "
                    "sending SIGKILL",
                    self._node, self.pid, STOP_TIMEOUT,
                )
                self._signal_server(signal.SIGKILL)
                process.wait()
        self._kill_leftovers()

        for output_file in self._output_files:
            output_file.close()
        self._output_files = []
        self._process = None
        self._beam = None
        self._children = []
        _started_servers.discard(self)

    def _signal_server(self, signum: signal.Signals) -> None:
        """Send SIGTERM to the Erlang VM, or SIGKILL to every process started.

        Without a VM, as after a failed start, SIGTERM goes to every process
        started: ``su`` passes it on to its child, and the shells exit.
        """
        process = self._process
        assert process is not None
        self._record_processes()
        if signum == signal.SIGTERM and self._beam is not None and self._beam.exists():
            targets = [self._beam]
        else:
            targets = [*self._children, _ProcessId.read(process.pid)]
        for target in targets:
            if target is None or not target.exists():
                continue
            try:
                os.kill(target.pid, signum)
            except ProcessLookupError:
                pass

    def _kill_leftovers(self) -> None:
        """Kill recorded processes still running after ejabberdctl exited."""
        # erl_child_setup and the port programs exit with the VM: this only
        # acts when something went wrong.
        leftovers = [child for child in self._children if child.exists()]
        deadline = time.monotonic() + 2
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.05)
            leftovers = [child for child in leftovers if child.exists()]
        for child in leftovers:
            log.warning(
                "process %s (%s) of ejabberd node %s outlived it, sending SIGKILL",
                child.pid, _process_name(child.pid), self._node,
            )
            try:
                os.kill(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> EjabberdServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<EjabberdServer {self._domain} {self.host}:{self._port} "
            f"node={self._node} pid={self.pid}>"
        )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    """Return the stripped stdout and stderr of a finished command."""
    return (result.stdout + result.stderr).strip()


class _PortInUse(Exception):
    """ejabberd could not bind a port that was picked for it."""


# Servers still running when the interpreter exits are stopped rather than
# left orphaned. Strong references, so that a running server is never
# garbage collected.
_started_servers: set[EjabberdServer] = set()


@atexit.register
def _stop_started_servers() -> None:
    """Stop every server that was started and not stopped."""
    for server in list(_started_servers):
        server.stop()
