"""Start a throwaway Prosody server on 127.0.0.1 for tests, demos and benchmarks.

:class:`ProsodyServer` writes a configuration, a self-signed certificate and
the server's data into one folder, runs ``prosody -F`` as a child process and
stops it by PID. Each instance listens on its own free port, so several
servers can run at once, next to a system-wide Prosody if there is one.

The constructor creates the folder, certificate and configuration, so
accounts can be registered before the server starts. Data goes to an SQLite
database in that folder (Prosody's SQL storage, which needs the Debian
package lua-dbi-sqlite3), except for accounts: ``prosodyctl register`` runs
in a separate process and writes them to Prosody's file storage, where the
server finds them.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO

log = logging.getLogger(__name__)

#: Seconds to wait for the client port to accept connections after launch.
START_TIMEOUT = 10.0
#: Seconds to wait for the process to exit after SIGTERM, before SIGKILL.
STOP_TIMEOUT = 5.0
#: Attempts to start when the picked port was taken before Prosody bound it.
START_ATTEMPTS = 3
#: Lines of the server log quoted in a startup error.
LOG_TAIL_LINES = 40

#: Start of the line Prosody 0.12 logs when it cannot bind a listening port.
PORT_BIND_FAILURE = "Failed to open server port"

INSTALL_HINT = (
    "run scripts/ensure-prosody.sh, or install the Debian package prosody "
    "(sudo apt-get install prosody)"
)


def find_executable(name: str) -> str:
    """Return the path of a Prosody or OpenSSL executable found on PATH.

    Raises:
        RuntimeError: the executable is not on PATH.
    """
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found on PATH: {INSTALL_HINT}")
    return path


def pick_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` at the time of the call.

    Another process may bind the port before the caller does, so callers
    retry with a new port when binding fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def lua_string(value: str) -> str:
    """Quote ``value`` as a Lua string literal for Prosody's config file."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )
    return f'"{escaped}"'


def lua_list(values: Iterable[str]) -> str:
    """Format strings as a Lua table literal, e.g. ``{ "a", "b" }``."""
    items = ", ".join(lua_string(value) for value in values)
    return f"{{ {items} }}" if items else "{}"


def read_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a text file, or "" when it is missing."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def generate_certificate(domain: str, cert_path: Path, key_path: Path) -> None:
    """Write a self-signed certificate valid one day for ``domain`` and its pubsub host.

    The key is EC P-256, because generating it is much faster than
    generating a 2048-bit RSA key.

    Raises:
        RuntimeError: openssl is missing or failed.
    """
    openssl = find_executable("openssl")
    command = [
        openssl, "req", "-x509",
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "1",
        "-subj", f"/CN={domain}",
        "-addext", f"subjectAltName=DNS:{domain},DNS:pubsub.{domain}",
        "-keyout", str(key_path),
        "-out", str(cert_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"openssl failed to create a certificate for {domain} "
            f"(exit {result.returncode}): {result.stderr.strip()}"
        )


class ProsodyServer:
    """A Prosody server run as a child process from its own folder.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    :meth:`register` works before and after :meth:`start`.

    Args:
        domain: XMPP domain of the virtual host. The pubsub component is
            ``pubsub.{domain}``.
        workdir: folder for the config, certificate, data and logs. When
            None, a temporary folder is created and removed by :meth:`stop`.
        nagle: keep Nagle's algorithm on the server's sockets (Prosody's
            default). False sets TCP_NODELAY, so Prosody sends small
            responses at once instead of waiting for the client's delayed ACK.
        tls: True requires STARTTLS before authentication. False does not
            offer STARTTLS and accepts PLAIN authentication over plain TCP.
        admins: bare JIDs allowed to create nodes on the pubsub component.
        debug_log: log at debug level (every stanza) instead of info.
        extra_config: Lua lines added to the global section of the config.
            They must not set an option this class writes: Prosody 0.12
            rejects a config that sets an option twice.
        direct_tls: also listen for TLS from the first byte (XEP-0368) on
            :attr:`direct_tls_port`.
        components: external components (XEP-0114) the server accepts, as
            domain to shared secret; they connect to :attr:`component_port`.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        domain: str = "localhost",
        workdir: Path | None = None,
        nagle: bool = False,
        tls: bool = True,
        admins: Iterable[str] = (),
        debug_log: bool = False,
        extra_config: str = "",
        direct_tls: bool = False,
        components: dict[str, str] | None = None,
    ) -> None:
        self._domain = domain
        self._components = dict(components or {})
        self._component_port: int | None = None
        self._direct_tls = direct_tls
        self._direct_tls_port: int | None = None
        self._owns_workdir = workdir is None
        self._workdir = Path(workdir) if workdir is not None else None
        self._nagle = nagle
        self._tls = tls
        self._admins = list(admins)
        self._debug_log = debug_log
        self._extra_config = extra_config
        #: Passwords of the accounts created by :meth:`register`, by user name.
        self.accounts: dict[str, str] = {}
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output_files: list[IO[bytes]] = []
        self._prosody = find_executable("prosody")
        self._prosodyctl = find_executable("prosodyctl")
        self._prepare()

    # properties

    @property
    def domain(self) -> str:
        """XMPP domain of the virtual host."""
        return self._domain

    @property
    def pubsub_service(self) -> str:
        """JID of the pubsub component."""
        return f"pubsub.{self._domain}"

    @property
    def workdir(self) -> Path:
        """Folder holding the config, certificate, data and logs."""
        if self._workdir is None:
            raise RuntimeError(
                "this ProsodyServer was stopped and its temporary folder removed"
            )
        return self._workdir

    @property
    def port(self) -> int:
        """Client-to-server (c2s) port on :attr:`host`."""
        if self._port is None:
            raise RuntimeError(
                "this ProsodyServer was stopped and its temporary folder removed"
            )
        return self._port

    @property
    def direct_tls_port(self) -> int:
        """Direct TLS c2s port on :attr:`host`, when created with ``direct_tls``."""
        if not self._direct_tls:
            raise RuntimeError("this ProsodyServer was created without direct_tls")
        if self._direct_tls_port is None:
            raise RuntimeError(
                "this ProsodyServer was stopped and its temporary folder removed"
            )
        return self._direct_tls_port

    @property
    def component_port(self) -> int:
        """Port of the component listener on :attr:`host`, when created with ``components``."""
        if not self._components:
            raise RuntimeError("this ProsodyServer was created without components")
        if self._component_port is None:
            raise RuntimeError(
                "this ProsodyServer was stopped and its temporary folder removed"
            )
        return self._component_port

    @property
    def config_path(self) -> Path:
        """Path of the generated Prosody configuration file."""
        return self.workdir / "prosody.cfg.lua"

    @property
    def ca_file(self) -> Path:
        """Self-signed certificate in PEM, for clients to use as trust root."""
        return self.workdir / "certs" / f"{self._domain}.crt"

    @property
    def key_file(self) -> Path:
        """Private key of :attr:`ca_file`."""
        return self.workdir / "certs" / f"{self._domain}.key"

    @property
    def log_path(self) -> Path:
        """Prosody's log file."""
        return self.workdir / "prosody.log"

    @property
    def pid(self) -> int | None:
        """PID of the running server process, None when not started or stopped."""
        if self._process is None:
            return None
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the server process has been started and has not exited."""
        return self._process is not None and self._process.poll() is None

    # setup

    def _prepare(self) -> None:
        """Create the folder, certificate and config unless they exist."""
        if self._workdir is not None and self._port is not None:
            return
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="libervia-prosody-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        (self._workdir / "data").mkdir(exist_ok=True)
        (self._workdir / "certs").mkdir(exist_ok=True)

        self._port = pick_free_port(self.host)
        if self._direct_tls:
            self._direct_tls_port = pick_free_port(self.host)
        if self._components:
            self._component_port = pick_free_port(self.host)
        if not self.ca_file.exists():
            generate_certificate(self._domain, self.ca_file, self.key_file)
        self._write_config()

    def _write_config(self) -> None:
        """Write the Prosody configuration for the current port and options."""
        workdir = self._workdir
        assert workdir is not None
        modules = ["roster", "saslauth", "disco", "ping", "pep"]
        if self._tls:
            modules.append("tls")
        log_level = "debug" if self._debug_log else "info"
        direct_tls_ports = f"{{ {self._direct_tls_port} }}" if self._direct_tls else "{}"
        component_ports = f"{{ {self._component_port} }}" if self._components else "{}"

        lines = [
            "-- Written by libervia.testing.prosody for a test server.",
            "run_as_root = true",
            f"pidfile = {lua_string(str(workdir / 'prosody.pid'))}",
            f"data_path = {lua_string(str(workdir / 'data'))}",
            f"admin_socket = {lua_string(str(workdir / 'admin.sock'))}",
            f"certificates = {lua_string(str(workdir / 'certs'))}",
            f"log = {{ {log_level} = {lua_string(str(self.log_path))} }}",
            "",
            f"interfaces = {lua_list([self.host])}",
            f"local_interfaces = {lua_list([self.host])}",
            f"c2s_interfaces = {lua_list([self.host])}",
            f"c2s_ports = {{ {self._port} }}",
            # Only the c2s listener is wanted: the other services that
            # Prosody may load get no port, so they never bind a default one.
            f"c2s_direct_tls_ports = {direct_tls_ports}",
            "legacy_ssl_ports = {}",
            "s2s_ports = {}",
            f"component_ports = {component_ports}",
            f"component_interfaces = {lua_list([self.host])}",
            "http_ports = {}",
            "https_ports = {}",
            "",
            f"modules_enabled = {lua_list(modules)}",
            f"modules_disabled = {lua_list(['s2s', 's2s_auth_certs'])}",
            "",
            'authentication = "internal_hashed"',
            # Prosody 0.12.3's memory store corrupts a pubsub node when an
            # item is published again under an id it holds: its index of
            # item positions goes stale, so a later edit removes another
            # item and the node lists an id twice. Its file store rewrites a
            # node's whole archive on each publish. SQLite (mod_storage_sql
            # with the Debian package lua-dbi-sqlite3) has neither problem.
            'default_storage = "sql"',
            'sql = { driver = "SQLite3", database = "prosody.sqlite" }',
            # prosodyctl register writes accounts from its own process, into
            # files that the server reads.
            'storage = { accounts = "internal" }',
            # Prosody 0.12 archive stores may reject items beyond this count
            # with internal-server-error.
            "storage_archive_item_limit = 100000",
            # Caps on pubsub#max_items for PEP and component nodes (default 256).
            "pep_max_items = 10000",
            "pubsub_max_items = 10000",
            "",
            f"c2s_require_encryption = {'true' if self._tls else 'false'}",
            f"allow_unencrypted_plain_auth = {'false' if self._tls else 'true'}",
            "ssl = {",
            f"    certificate = {lua_string(str(self.ca_file))},",
            f"    key = {lua_string(str(self.key_file))},",
            "}",
        ]
        if not self._nagle:
            lines.append("network_settings = { nagle = false }")
        if self._extra_config:
            lines += ["", "-- extra_config", self._extra_config]
        lines += [
            "",
            f"VirtualHost {lua_string(self._domain)}",
            "",
            f"Component {lua_string(self.pubsub_service)} \"pubsub\"",
            "    autocreate_on_publish = true",
            f"    admins = {lua_list(self._admins)}",
            "",
        ]
        for component, secret in self._components.items():
            lines += [
                f"Component {lua_string(component)}",
                f"    component_secret = {lua_string(secret)}",
                "",
            ]
        self.config_path.write_text("\n".join(lines), encoding="utf-8")

    def _change_port(self, port: int) -> None:
        """Replace the c2s port in the config, keeping any edit made to it."""
        config = self.config_path.read_text(encoding="utf-8")
        old_line = f"c2s_ports = {{ {self._port} }}"
        self.config_path.write_text(
            config.replace(old_line, f"c2s_ports = {{ {port} }}"), encoding="utf-8"
        )
        self._port = port

    # accounts

    def register(self, user: str, password: str) -> None:
        """Create the account ``user@domain`` with ``password``.

        Works before :meth:`start` and while the server runs. Registering an
        existing account replaces its password.

        Raises:
            RuntimeError: prosodyctl failed.
        """
        # NOTE: the password is on prosodyctl's command line, where other
        # local users can see it: use test passwords only.
        command = [
            self._prosodyctl, "--config", str(self.config_path),
            "register", user, self._domain, password,
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise RuntimeError(
                f"prosodyctl failed to register {user}@{self._domain} "
                f"(exit {result.returncode}): {output}"
            )
        self.accounts[user] = password
        log.debug("registered %s@%s", user, self._domain)

    def jid(self, user: str, resource: str | None = None) -> str:
        """Return the JID of ``user`` on this server, with ``resource`` if given."""
        bare = f"{user}@{self._domain}"
        return f"{bare}/{resource}" if resource else bare

    # process

    def start(self) -> None:
        """Launch Prosody and wait until its c2s port accepts connections.

        Raises:
            RuntimeError: the server exited early or did not accept
                connections within START_TIMEOUT seconds. The message quotes
                the end of the server log.
        """
        if self.running:
            return
        self._prepare()
        for attempt in range(1, START_ATTEMPTS + 1):
            self._launch()
            try:
                self._wait_until_ready()
            except _PortInUse:
                self._reap()
                if attempt == START_ATTEMPTS:
                    raise RuntimeError(
                        f"Prosody could not bind a free port after "
                        f"{START_ATTEMPTS} attempts; last log lines:\n"
                        f"{self._log_tail()}"
                    ) from None
                log.warning(
                    "port %s was taken before Prosody bound it, retrying", self._port
                )
                self._change_port(pick_free_port(self.host))
                continue
            except BaseException:
                self.stop()
                raise
            break
        log.info(
            "Prosody started for %s on %s:%s (PID %s, folder %s)",
            self._domain, self.host, self._port, self.pid, self._workdir,
        )

    def _launch(self) -> None:
        """Start the Prosody process in the foreground, output going to files."""
        workdir = self.workdir
        # Truncate the log, so a startup error quotes this run only.
        self.log_path.write_bytes(b"")
        stdout = open(workdir / "prosody.stdout", "wb")
        stderr = open(workdir / "prosody.stderr", "wb")
        self._output_files = [stdout, stderr]
        self._process = subprocess.Popen(
            [self._prosody, "--config", str(self.config_path), "-F"],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        _started_servers.add(self)

    def _wait_until_ready(self) -> None:
        """Poll the c2s port until it accepts a TCP connection."""
        process = self._process
        assert process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            returncode = process.poll()
            # Prosody keeps running when it cannot bind a port: it only logs.
            if PORT_BIND_FAILURE in self._log_tail():
                raise _PortInUse()
            if returncode is not None:
                raise RuntimeError(
                    f"Prosody exited with code {returncode} during startup "
                    f"(config {self.config_path}); last log lines:\n"
                    f"{self._log_tail()}"
                )
            # The log line rules out another program that took the port and
            # accepts connections in Prosody's place.
            if self._c2s_activated() and self._port_accepts():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Prosody did not accept connections on {self.host}:{self._port} "
                    f"within {START_TIMEOUT} s (config {self.config_path}); "
                    f"last log lines:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def _c2s_activated(self) -> bool:
        """Return whether the log shows the c2s listener bound to our port."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return False
        return f"Activated service 'c2s' on [{self.host}]:{self._port}" in text

    def _port_accepts(self) -> bool:
        """Return whether a TCP connection to the c2s port succeeds."""
        try:
            with socket.create_connection((self.host, self._port), timeout=1):
                return True
        except OSError:
            return False

    def _log_tail(self) -> str:
        """Return the end of the log, stdout and stderr, for error messages."""
        # Errors found before logging is set up, such as a config syntax
        # error, go to stdout or stderr instead of the log file.
        parts = [read_tail(self.log_path)]
        for stream in ("stdout", "stderr"):
            text = read_tail(self.workdir / f"prosody.{stream}")
            if text:
                parts.append(f"{stream}:\n{text}")
        return "\n".join(part for part in parts if part) or "(log is empty)"

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after STOP_TIMEOUT seconds.

        Only the PID of the process started by :meth:`start` is signalled.
        Calling it again, or before :meth:`start`, does nothing. A workdir
        created by this instance is removed.
        """
        if self._process is not None:
            self._reap()
            log.info("Prosody stopped for %s", self._domain)
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._port = None
            self._direct_tls_port = None
            self._component_port = None

    def _reap(self) -> None:
        """Terminate the child process if it runs and wait for its exit."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning(
                    "Prosody (PID %s) ignored SIGTERM for %s s, sending SIGKILL",
                    process.pid, STOP_TIMEOUT,
                )
                process.kill()
                process.wait()
        for output_file in self._output_files:
            output_file.close()
        self._output_files = []
        self._process = None
        _started_servers.discard(self)

    def __enter__(self) -> ProsodyServer:
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
            f"<ProsodyServer {self._domain} {self.host}:{self._port} "
            f"pid={self.pid}>"
        )


class _PortInUse(Exception):
    """Prosody could not bind the c2s port that was picked for it."""


# Servers still running when the interpreter exits, such as after an
# unhandled exception in the demo, are stopped rather than left orphaned.
# Strong references, so that a running server is never garbage collected.
_started_servers: set[ProsodyServer] = set()


@atexit.register
def _stop_started_servers() -> None:
    """Stop every server that was started and not stopped."""
    for server in list(_started_servers):
        server.stop()
