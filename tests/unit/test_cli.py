"""Tests of ``li``: parsing, password sources, output and errors.

Commands run against a real BridgeServer whose methods are stubs with the
signatures of the bridge contract, so a param the CLI sends wrongly fails as
invalid params. ``main`` runs in a thread because the client is blocking.
"""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from libervia.backend.bridge.server import BridgeServer
from libervia.backend.core import paths
from libervia.backend.core.exceptions import NotFound, ProfileNotFound
from libervia.cli.cmd_pubsub import build_item
from libervia.cli.common import CliError, parse_key_values
from libervia.cli.main import main
from libervia.cli.output import Output, pretty_xml

ITEM_XML = (
    '<item id="post-1"><entry xmlns="http://www.w3.org/2005/Atom">'
    "<title>Hello</title></entry></item>"
)


class StubBackend:
    """Bridge methods with the contract's signatures; records every call."""

    def __init__(self, bridge: BridgeServer) -> None:
        self.bridge = bridge
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.profiles: list[dict[str, Any]] = [
            {"name": "alice", "jid": "alice@example.org", "connected": True, "default": True},
            {"name": "bob", "jid": "bob@example.org", "connected": False, "default": False},
        ]
        for name in (
            "ping", "version", "daemon_stop", "profile_create", "profile_list",
            "profile_delete", "profile_default_set", "profile_connect",
            "profile_disconnect", "ps_items_get", "ps_publish", "ps_retract",
            "ps_node_create", "ps_cache_get", "mb_get", "mb_send", "stream_stats",
        ):
            bridge.register_method(name, getattr(self, name))

    def record(self, method: str, **params: Any) -> None:
        self.calls.append((method, params))

    def last(self, method: str) -> dict[str, Any]:
        """Return the params of the last call to ``method``."""
        for name, params in reversed(self.calls):
            if name == method:
                return params
        raise AssertionError(f"{method} was not called; calls: {self.calls}")

    def called(self, method: str) -> bool:
        return any(name == method for name, _ in self.calls)

    def ping(self) -> str:
        return "pong"

    def version(self) -> str:
        return "0.1.0"

    def daemon_stop(self) -> None:
        self.record("daemon_stop")
        # Stop after the response, as the real daemon does.
        reactor.callLater(  # type: ignore[attr-defined]
            0.2, lambda: defer.ensureDeferred(self.bridge.stop())
        )

    def profile_create(
        self, name: str, jid: str, password: str, options: dict | None = None
    ) -> dict[str, Any]:
        self.record("profile_create", name=name, jid=jid, password=password, options=options)
        return {"name": name, "jid": jid}

    def profile_list(self) -> list[dict[str, Any]]:
        return self.profiles

    def profile_delete(self, name: str) -> None:
        self.record("profile_delete", name=name)

    def profile_default_set(self, name: str) -> None:
        self.record("profile_default_set", name=name)

    def profile_connect(self, name: str | None, password: str | None = None) -> dict:
        self.record("profile_connect", name=name, password=password)
        if name == "nobody":
            raise ProfileNotFound("no profile named 'nobody': create it with li profile create")
        return {"jid": "alice@example.org/li"}

    def profile_disconnect(self, name: str | None) -> None:
        self.record("profile_disconnect", name=name)

    def ps_items_get(
        self, service: str | None, node: str, max_items: int | None = None,
        item_ids: list[str] | None = None, extra: dict | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        self.record(
            "ps_items_get", service=service, node=node, max_items=max_items,
            item_ids=item_ids, extra=extra, profile=profile,
        )
        return {
            "items": [ITEM_XML],
            "metadata": {
                "service": service, "node": node, "complete": True,
                "from_cache": False, "rsm": {"first": "post-1", "last": "post-1", "count": 1},
            },
        }

    def ps_publish(
        self, service: str | None, node: str, items: list[str],
        options: dict | None = None, profile: str | None = None,
    ) -> dict[str, Any]:
        self.record("ps_publish", service=service, node=node, items=items, options=options, profile=profile)
        return {"item_ids": ["generated-id"]}

    def ps_retract(
        self, service: str | None, node: str, item_ids: list[str], notify: bool = True,
        profile: str | None = None,
    ) -> None:
        self.record("ps_retract", service=service, node=node, item_ids=item_ids, notify=notify, profile=profile)

    def ps_node_create(
        self, service: str | None, node: str, options: dict | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        self.record("ps_node_create", service=service, node=node, options=options, profile=profile)
        return {"node": node}

    def ps_cache_get(self, service: str | None, node: str, profile: str | None = None) -> dict:
        self.record("ps_cache_get", service=service, node=node, profile=profile)
        if node == "missing":
            raise NotFound(f"node {node!r} of {service} is not cached")
        return {
            "node": {
                "service": service, "node": node, "type": "blog", "subtype": None,
                "sync_state": "COMPLETED", "sync_state_updated": "2024-05-01T12:00:00+00:00",
            },
            "items": [
                {
                    "id": "post-1", "xml": ITEM_XML, "parsed": {"title": "Hello"},
                    "created": "2024-05-01T12:00:00+00:00",
                    "updated": "2024-05-02T08:00:00+00:00",
                },
                {
                    "id": "raw-2", "xml": "<item id='raw-2'/>", "parsed": None,
                    "created": "2024-05-01T12:00:01+00:00",
                    "updated": "2024-05-01T12:00:01+00:00",
                },
            ],
        }

    def mb_get(
        self, service: str | None, node: str | None = None, max_items: int | None = None,
        extra: dict | None = None, profile: str | None = None,
    ) -> dict[str, Any]:
        self.record("mb_get", service=service, node=node, max_items=max_items, extra=extra, profile=profile)
        return {
            "items": [
                {
                    "id": "post-1", "title": "First post", "content": "Hello world",
                    "published": "2024-05-01T12:00:00+00:00", "author": "Alice",
                    "tags": ["xmpp", "python"],
                },
            ],
            "metadata": {"service": service, "node": "urn:xmpp:microblog:0"},
        }

    def mb_send(
        self, service: str | None, node: str | None = None, data: dict | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        self.record("mb_send", service=service, node=node, data=data, profile=profile)
        return {"item_id": (data or {}).get("id", "new-post")}

    def stream_stats(self, profile: str | None = None) -> dict[str, int]:
        self.record("stream_stats", profile=profile)
        return {"iq_sent": 4, "stanzas_sent": 10, "stanzas_received": 12}


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point XDG_RUNTIME_DIR at a short temporary folder and clear li's variables."""
    base = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    for variable in ("LIBERVIA_PROFILE", "LIBERVIA_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    yield paths.runtime_dir()
    shutil.rmtree(base, ignore_errors=True)


@pytest_twisted.async_yield_fixture
async def backend(runtime_dir: Path) -> AsyncIterator[StubBackend]:
    """Yield the stub backend behind a started BridgeServer."""
    bridge = BridgeServer()
    stub = StubBackend(bridge)
    await bridge.start()
    yield stub
    await bridge.stop()


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code = code
        self.out = out
        self.err = err

    def json(self) -> Any:
        return json.loads(self.out)


async def run_li(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *argv: str,
    stdin: str = "",
) -> Result:
    """Run ``li argv`` in a thread with ``stdin``; return exit code and output."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    code = await threads.deferToThread(main, ["--no-autostart", *argv])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


class ProfileTests:
    @pytest_twisted.ensureDeferred
    async def test_create_password_file(self, backend, capsys, monkeypatch, tmp_path) -> None:
        password_file = tmp_path / "password"
        password_file.write_text("file-secret\n")
        result = await run_li(
            capsys, monkeypatch, "profile", "create", "alice", "-j", "alice@example.org",
            "--host", "127.0.0.1", "--port", "5222", "--allow-plaintext",
            "--password-file", str(password_file),
        )
        assert result.code == 0
        params = backend.last("profile_create")
        assert params["password"] == "file-secret"
        assert params["options"] == {"host": "127.0.0.1", "port": 5222, "allow_plaintext": True}
        assert "profile alice created for alice@example.org" in result.out

    @pytest_twisted.ensureDeferred
    async def test_create_password_env(self, backend, capsys, monkeypatch) -> None:
        monkeypatch.setenv("MY_PASSWORD", "env-secret")
        result = await run_li(
            capsys, monkeypatch, "profile", "create", "alice", "-j", "alice@example.org",
            "--password-env", "MY_PASSWORD",
        )
        assert result.code == 0
        assert backend.last("profile_create")["password"] == "env-secret"

    @pytest_twisted.ensureDeferred
    async def test_create_default_env(self, backend, capsys, monkeypatch) -> None:
        monkeypatch.setenv("LIBERVIA_PASSWORD", "default-env-secret")
        result = await run_li(
            capsys, monkeypatch, "profile", "create", "alice", "-j", "alice@example.org"
        )
        assert result.code == 0
        assert backend.last("profile_create")["password"] == "default-env-secret"

    @pytest_twisted.ensureDeferred
    async def test_create_password_stdin(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "profile", "create", "alice", "-j", "alice@example.org",
            "--password-file", "-", stdin="stdin-secret\n",
        )
        assert result.code == 0
        assert backend.last("profile_create")["password"] == "stdin-secret"

    @pytest_twisted.ensureDeferred
    async def test_create_missing_password(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "profile", "create", "alice", "-j", "alice@example.org"
        )
        assert result.code == 1
        assert result.err.startswith("li: error: missing password")
        assert "--password-file" in result.err
        assert "--password-env" in result.err
        assert "prompted" in result.err
        assert len(result.err.splitlines()) == 1
        assert not backend.called("profile_create")

    @pytest_twisted.ensureDeferred
    async def test_create_unset_env(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "profile", "create", "alice", "-j", "alice@example.org",
            "--password-env", "UNSET_VARIABLE_FOR_TEST",
        )
        assert result.code == 1
        assert "UNSET_VARIABLE_FOR_TEST is not set" in result.err

    @pytest_twisted.ensureDeferred
    async def test_create_empty_password(self, backend, capsys, monkeypatch, tmp_path) -> None:
        password_file = tmp_path / "password"
        password_file.write_text("\n")
        result = await run_li(
            capsys, monkeypatch, "profile", "create", "alice", "-j", "alice@example.org",
            "--password-file", str(password_file),
        )
        assert result.code == 1
        assert "empty" in result.err

    @pytest_twisted.ensureDeferred
    async def test_create_no_clear_password(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "profile", "create", "alice", "-j", "alice@example.org",
            "--password", "clear-secret",
        )
        assert result.code == 1
        assert result.err.startswith("li: error: unrecognized arguments")

    @pytest_twisted.ensureDeferred
    async def test_create_two_sources(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "profile", "create", "alice", "-j", "alice@example.org",
            "--password-file", "x", "--password-env", "Y",
        )
        assert result.code == 1
        assert "not allowed with" in result.err

    @pytest_twisted.ensureDeferred
    async def test_create_ca_file(self, backend, capsys, monkeypatch, tmp_path) -> None:
        ca_file = tmp_path / "ca.pem"
        ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
        monkeypatch.setenv("LIBERVIA_PASSWORD", "secret")
        monkeypatch.chdir(tmp_path)
        result = await run_li(
            capsys, monkeypatch, "profile", "create", "alice", "-j", "alice@example.org",
            "--ca-file", "ca.pem",
        )
        assert result.code == 0
        assert backend.last("profile_create")["options"] == {"ca_file": str(ca_file)}

    @pytest_twisted.ensureDeferred
    async def test_create_missing_ca_file(self, backend, capsys, monkeypatch, tmp_path) -> None:
        monkeypatch.setenv("LIBERVIA_PASSWORD", "secret")
        result = await run_li(
            capsys, monkeypatch, "profile", "create", "alice", "-j", "alice@example.org",
            "--ca-file", str(tmp_path / "missing.pem"),
        )
        assert result.code == 1
        assert "CA file not found" in result.err

    @pytest_twisted.ensureDeferred
    async def test_create_default(self, backend, capsys, monkeypatch) -> None:
        monkeypatch.setenv("LIBERVIA_PASSWORD", "secret")
        result = await run_li(
            capsys, monkeypatch, "-O", "json", "profile", "create", "alice",
            "-j", "alice@example.org", "--default",
        )
        assert result.code == 0
        assert backend.last("profile_default_set") == {"name": "alice"}
        assert result.json() == {"name": "alice", "jid": "alice@example.org", "default": True}

    @pytest_twisted.ensureDeferred
    async def test_connect_stored_password(self, backend, capsys, monkeypatch) -> None:
        # $LIBERVIA_PASSWORD is for profile creation: connect uses the stored one.
        monkeypatch.setenv("LIBERVIA_PASSWORD", "not-this-one")
        result = await run_li(capsys, monkeypatch, "profile", "connect", "alice")
        assert result.code == 0
        assert backend.last("profile_connect") == {"name": "alice", "password": None}
        assert result.out == "connected as alice@example.org/li\n"

    @pytest_twisted.ensureDeferred
    async def test_connect_password_env(self, backend, capsys, monkeypatch) -> None:
        monkeypatch.setenv("MY_PASSWORD", "env-secret")
        result = await run_li(
            capsys, monkeypatch, "profile", "connect", "alice", "--password-env", "MY_PASSWORD"
        )
        assert result.code == 0
        assert backend.last("profile_connect")["password"] == "env-secret"

    @pytest_twisted.ensureDeferred
    async def test_connect_profile_env(self, backend, capsys, monkeypatch) -> None:
        monkeypatch.setenv("LIBERVIA_PROFILE", "bob")
        result = await run_li(capsys, monkeypatch, "profile", "connect")
        assert result.code == 0
        assert backend.last("profile_connect")["name"] == "bob"

    @pytest_twisted.ensureDeferred
    async def test_connect_default_profile(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "profile", "connect")
        assert result.code == 0
        assert backend.last("profile_connect")["name"] is None

    @pytest_twisted.ensureDeferred
    async def test_connect_prompt_no_tty(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "profile", "connect", "--password-prompt")
        assert result.code == 1
        assert "stdin is not a terminal" in result.err

    @pytest_twisted.ensureDeferred
    async def test_connect_backend_error(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "profile", "connect", "nobody")
        assert result.code == 1
        assert result.err == (
            "li: error: no profile named 'nobody': create it with li profile create\n"
        )

    @pytest_twisted.ensureDeferred
    async def test_disconnect(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "-p", "bob", "profile", "disconnect")
        assert result.code == 0
        assert backend.last("profile_disconnect") == {"name": "bob"}

    @pytest_twisted.ensureDeferred
    async def test_list_plain(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "profile", "list")
        assert result.code == 0
        lines = result.out.splitlines()
        assert lines[0].split() == ["name", "jid", "connected", "default"]
        assert lines[1].split() == ["alice", "alice@example.org", "yes", "yes"]
        assert lines[2].split() == ["bob", "bob@example.org", "no"]

    @pytest_twisted.ensureDeferred
    async def test_list_json(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "profile", "list", "-O", "json")
        assert result.code == 0
        assert result.json() == backend.profiles

    @pytest_twisted.ensureDeferred
    async def test_delete(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "profile", "delete", "bob")
        assert result.code == 0
        assert backend.last("profile_delete") == {"name": "bob"}


def run_li_on_terminal(argv: list[str], answers: list[str]) -> tuple[int, str]:
    """Run ``li`` in a subprocess on a pseudo-terminal, typing ``answers`` at its prompts."""
    master, slave = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "libervia.cli", "--no-autostart", *argv],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        # Without a controlling terminal, getpass reads the pty given as stdin.
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    os.close(slave)
    output = b""
    try:
        for index, answer in enumerate(answers):
            while output.count(b"Password") <= index:
                ready, _, _ = select.select([master], [], [], 10)
                assert ready, f"no password prompt; output so far: {output!r}"
                output += os.read(master, 1024)
            os.write(master, answer.encode() + b"\n")
        while True:
            ready, _, _ = select.select([master], [], [], 10)
            if not ready:
                break
            try:
                chunk = os.read(master, 1024)
            except OSError:  # EIO: the child closed the terminal.
                break
            if not chunk:
                break
            output += chunk
        return process.wait(timeout=10), output.decode(errors="replace")
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()


class TerminalTests:
    @pytest_twisted.ensureDeferred
    async def test_create_prompt(self, backend) -> None:
        code, output = await threads.deferToThread(
            run_li_on_terminal,
            ["profile", "create", "alice", "-j", "alice@example.org"],
            ["typed-secret", "typed-secret"],
        )
        assert code == 0, output
        assert backend.last("profile_create")["password"] == "typed-secret"
        assert "typed-secret" not in output

    @pytest_twisted.ensureDeferred
    async def test_create_prompt_mismatch(self, backend) -> None:
        code, output = await threads.deferToThread(
            run_li_on_terminal,
            ["profile", "create", "alice", "-j", "alice@example.org"],
            ["typed-secret", "other-secret"],
        )
        assert code == 1
        assert "li: error: the passwords do not match" in output
        assert not backend.called("profile_create")


class PubsubTests:
    @pytest_twisted.ensureDeferred
    async def test_get_params(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "pubsub", "get", "-s", "pubsub.example.org", "-n", "blog",
            "-M", "5", "-i", "a", "b", "-i", "c", "-C", "-p", "alice",
        )
        assert result.code == 0
        assert backend.last("ps_items_get") == {
            "service": "pubsub.example.org", "node": "blog", "max_items": 5,
            "item_ids": ["a", "b", "c"], "extra": {"use_cache": False}, "profile": "alice",
        }

    @pytest_twisted.ensureDeferred
    async def test_get_defaults(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "pubsub", "get", "-n", "blog")
        assert result.code == 0
        assert backend.last("ps_items_get") == {
            "service": None, "node": "blog", "max_items": None,
            "item_ids": None, "extra": {}, "profile": None,
        }

    @pytest_twisted.ensureDeferred
    async def test_get_plain_output(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "pubsub", "get", "-s", "pubsub.example.org", "-n", "blog"
        )
        lines = result.out.splitlines()
        assert lines[0] == '<item id="post-1">'
        assert lines[1] == '  <entry xmlns="http://www.w3.org/2005/Atom">'
        assert lines[-1] == (
            "-- 1 item(s), node blog, service pubsub.example.org, complete, "
            "from the service, RSM first=post-1 last=post-1 count=1"
        )

    @pytest_twisted.ensureDeferred
    async def test_get_json(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "pubsub", "get", "-n", "blog", "-O", "json"
        )
        document = result.json()
        assert document["items"] == [ITEM_XML]
        assert document["metadata"]["complete"] is True

    @pytest_twisted.ensureDeferred
    async def test_get_invalid_max(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "pubsub", "get", "-n", "blog", "-M", "0")
        assert result.code == 1
        assert "must be at least 1" in result.err
        assert len(result.err.splitlines()) == 1

    @pytest_twisted.ensureDeferred
    async def test_get_missing_node(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "pubsub", "get", "-s", "pubsub.example.org")
        assert result.code == 1
        assert result.err.startswith("li: error: the following arguments are required: -n/--node")

    @pytest_twisted.ensureDeferred
    async def test_set_payload(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "pubsub", "set", "-s", "pubsub.example.org", "-n", "blog",
            "-i", "id-1", "-o", "pubsub#access_model=open",
            stdin='<entry xmlns="http://www.w3.org/2005/Atom"><title>T</title></entry>\n',
        )
        assert result.code == 0
        params = backend.last("ps_publish")
        assert params["items"] == [
            '<item id="id-1"><entry xmlns="http://www.w3.org/2005/Atom">'
            "<title>T</title></entry></item>"
        ]
        assert params["options"] == {"pubsub#access_model": "open"}
        assert result.out == "generated-id\n"

    @pytest_twisted.ensureDeferred
    async def test_set_invalid_xml(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "pubsub", "set", "-n", "blog", stdin="<entry>"
        )
        assert result.code == 1
        assert result.err.startswith("li: error: invalid XML on stdin")
        assert not backend.called("ps_publish")

    @pytest_twisted.ensureDeferred
    async def test_set_empty_stdin(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "pubsub", "set", "-n", "blog")
        assert result.code == 1
        assert "no item XML on stdin" in result.err

    @pytest_twisted.ensureDeferred
    async def test_retract(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "pubsub", "retract", "-n", "blog", "-i", "a", "b", "--no-notify"
        )
        assert result.code == 0
        params = backend.last("ps_retract")
        assert params["item_ids"] == ["a", "b"]
        assert params["notify"] is False
        assert result.out == "retracted 2 item(s): a, b\n"

    @pytest_twisted.ensureDeferred
    async def test_retract_notify_default(self, backend, capsys, monkeypatch) -> None:
        await run_li(capsys, monkeypatch, "pubsub", "retract", "-n", "blog", "-i", "a")
        assert backend.last("ps_retract")["notify"] is True

    @pytest_twisted.ensureDeferred
    async def test_node_create(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "pubsub", "node", "create", "-s", "pubsub.example.org",
            "-n", "events", "-o", "pubsub#max_items=100",
        )
        assert result.code == 0
        assert backend.last("ps_node_create")["options"] == {"pubsub#max_items": "100"}
        assert result.out == "events\n"

    @pytest_twisted.ensureDeferred
    async def test_cache_get_plain(self, backend, capsys, monkeypatch) -> None:
        monkeypatch.setenv("TZ", "UTC")
        result = await run_li(
            capsys, monkeypatch, "pubsub", "cache", "get", "-s", "pubsub.example.org", "-n", "blog"
        )
        assert result.code == 0
        lines = result.out.splitlines()
        assert lines[0].startswith("node blog on pubsub.example.org: blog, sync state COMPLETED since ")
        assert lines[1].split() == ["item", "id", "created", "updated", "title"]
        assert lines[2].split()[0] == "post-1"
        assert lines[2].split()[-1] == "Hello"
        assert lines[3].split()[0] == "raw-2"

    @pytest_twisted.ensureDeferred
    async def test_cache_get_not_cached(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "pubsub", "cache", "get", "-s", "pubsub.example.org", "-n", "missing"
        )
        assert result.code == 1
        assert result.err == "li: error: node 'missing' of pubsub.example.org is not cached\n"

    @pytest_twisted.ensureDeferred
    async def test_cache_get_json(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "pubsub", "cache", "get", "-n", "blog", "-O", "json"
        )
        document = result.json()
        assert document["node"]["sync_state"] == "COMPLETED"
        assert [item["id"] for item in document["items"]] == ["post-1", "raw-2"]


class BlogTests:
    @pytest_twisted.ensureDeferred
    async def test_get_plain(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "blog", "get", "-s", "alice@example.org", "-M", "3", "-C"
        )
        assert result.code == 0
        assert backend.last("mb_get") == {
            "service": "alice@example.org", "node": None, "max_items": 3,
            "extra": {"use_cache": False}, "profile": None,
        }
        lines = result.out.splitlines()
        assert lines[0].startswith("-- ")
        assert lines[1] == ""
        assert lines[2] == "First post"
        assert "by Alice" in lines[3]
        assert "tags: xmpp, python" in lines[3]
        assert lines[4] == "Hello world"

    @pytest_twisted.ensureDeferred
    async def test_get_json(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "blog", "get", "-O", "json")
        assert result.json()["items"][0]["title"] == "First post"

    @pytest_twisted.ensureDeferred
    async def test_set_stdin(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(
            capsys, monkeypatch, "blog", "set", "-t", "Title", "-T", "a", "-T", "b",
            "-i", "my-post", stdin="Some content\n",
        )
        assert result.code == 0
        assert backend.last("mb_send")["data"] == {
            "content": "Some content\n", "title": "Title", "tags": ["a", "b"], "id": "my-post",
        }
        assert result.out == "my-post\n"

    @pytest_twisted.ensureDeferred
    async def test_set_content_option(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "blog", "set", "-c", "Short post")
        assert result.code == 0
        assert backend.last("mb_send")["data"] == {"content": "Short post"}


class MiscTests:
    @pytest_twisted.ensureDeferred
    async def test_debug_stats(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "debug", "stats", "-p", "alice")
        assert result.code == 0
        assert backend.last("stream_stats") == {"profile": "alice"}
        assert result.out.splitlines() == [
            "iq sent:          4",
            "stanzas sent:     10",
            "stanzas received: 12",
        ]

    @pytest_twisted.ensureDeferred
    async def test_debug_stats_json(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "-O", "json", "debug", "stats")
        assert result.json() == {"iq_sent": 4, "stanzas_sent": 10, "stanzas_received": 12}

    @pytest_twisted.ensureDeferred
    async def test_daemon_status_running(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "daemon", "status", "-O", "json")
        assert result.code == 0
        assert result.json()["running"] is True

    @pytest_twisted.ensureDeferred
    async def test_daemon_status_stopped(self, runtime_dir, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "daemon", "status")
        assert result.code == 3
        assert result.out == "daemon not running\n"

    @pytest_twisted.ensureDeferred
    async def test_daemon_stop(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "daemon", "stop")
        assert result.code == 0
        assert result.out == "daemon stopped\n"
        assert not paths.bridge_socket().exists()

    @pytest_twisted.ensureDeferred
    async def test_unavailable(self, runtime_dir, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "profile", "list")
        assert result.code == 2
        assert result.err.startswith("li: error: the daemon is not running")
        assert len(result.err.splitlines()) == 1

    @pytest_twisted.ensureDeferred
    async def test_invalid_output(self, backend, capsys, monkeypatch) -> None:
        result = await run_li(capsys, monkeypatch, "profile", "list", "-O", "yaml")
        assert result.code == 1
        assert result.err.startswith("li: error: argument -O/--output: invalid choice")

    def test_module_help(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "libervia.cli", "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )
        assert result.returncode == 0
        assert "pubsub" in result.stdout


class HelperTests:
    def test_build_item_whole(self) -> None:
        assert build_item("<item id='x'><p xmlns='urn:test'/></item>", None) == (
            '<item id="x"><p xmlns="urn:test"/></item>'
        )

    def test_build_item_sets_id(self) -> None:
        assert build_item("<item><p xmlns='urn:test'/></item>", "y") == (
            '<item id="y"><p xmlns="urn:test"/></item>'
        )

    def test_build_item_id_conflict(self) -> None:
        with pytest.raises(CliError):
            build_item("<item id='x'/>", "y")

    def test_build_item_keeps_prefixes(self) -> None:
        payload = "<a:entry xmlns:a='urn:a'><a:title>T</a:title></a:entry>"
        assert build_item(payload, None) == (
            '<item><a:entry xmlns:a="urn:a"><a:title>T</a:title></a:entry></item>'
        )

    def test_build_item_rejects_doctype(self) -> None:
        with pytest.raises(CliError):
            build_item("<!DOCTYPE p []><p/>", None)

    def test_key_values_repeated(self) -> None:
        assert parse_key_values(["a=1", "b=x=y", "a=2"]) == {"a": ["1", "2"], "b": "x=y"}

    def test_key_values_invalid(self) -> None:
        with pytest.raises(CliError):
            parse_key_values(["novalue"])

    def test_pretty_xml_not_xml(self) -> None:
        assert pretty_xml("not <xml") == "not <xml"

    def test_styled_output(self) -> None:
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        stream = Terminal()
        output = Output(stream=stream)
        output.table(("name", "jid"), [("[bold]alice", "alice@example.org")])
        output.xml(ITEM_XML)
        output.line("done")
        output.fields([("count", 3)])
        text = stream.getvalue()
        assert output.styled
        # Values are shown as given, never read as rich markup.
        assert "[bold]alice" in text
        assert "post-1" in text
        assert "count" in text
