"""Connection settings of a profile against real Prosody servers, through li."""

from __future__ import annotations

import tempfile

import pytest
import pytest_twisted

from libervia.testing.backend import BackendRunner
from libervia.testing.prosody import ProsodyServer

PASSWORD_ENV = "CONNECTION_TEST_PASSWORD"


@pytest.fixture(scope="module")
def plain_prosody(tmp_path_factory):
    """Yield a Prosody that offers no TLS and accepts PLAIN over plain TCP."""
    server = ProsodyServer(workdir=tmp_path_factory.mktemp("plain-prosody"), tls=False)
    server.register("plainuser", "plain-password")
    with server:
        yield server


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    runner = BackendRunner(tmp_path_factory.mktemp("connection"))
    try:
        yield runner
    finally:
        runner.stop()


def _create(backend: BackendRunner, name: str, server: ProsodyServer, *options: str) -> None:
    backend.li(
        "profile", "create", name, "-j", f"plainuser@{server.domain}",
        "--host", server.host, "--port", str(server.port),
        "--password-env", PASSWORD_ENV, *options,
        env={PASSWORD_ENV: "plain-password"},
    )


class PlaintextTests:
    def test_refused_without_allow_plaintext(self, backend, plain_prosody):
        _create(backend, "strict", plain_prosody)
        result = backend.li("profile", "connect", "strict", expect=1)
        assert "does not offer TLS" in result.stderr
        assert str(plain_prosody.port) in result.stderr

    def test_connects_with_allow_plaintext(self, backend, plain_prosody):
        _create(backend, "lenient", plain_prosody, "--allow-plaintext")
        out = backend.li_json("profile", "connect", "lenient")
        assert out["jid"].startswith(f"plainuser@{plain_prosody.domain}/")
        profiles = {p["name"]: p for p in backend.li_json("profile", "list")}
        assert profiles["lenient"]["connected"] is True
        assert profiles["strict"]["connected"] is False


class ProfileCommandTests:
    def test_duplicate_profile_rejected(self, backend, plain_prosody):
        _create(backend, "twice", plain_prosody)
        result = backend.li(
            "profile", "create", "twice", "-j", "other@localhost",
            "--password-env", PASSWORD_ENV, env={PASSWORD_ENV: "x"}, expect=1,
        )
        assert "twice" in result.stderr
        assert "already exists" in result.stderr

    def test_invalid_jid_rejected(self, backend):
        result = backend.li(
            "profile", "create", "badjid", "-j", "no-user-part",
            "--password-env", PASSWORD_ENV, env={PASSWORD_ENV: "x"}, expect=1,
        )
        assert "no-user-part" in result.stderr

    def test_disconnect_then_get_says_not_connected(self, backend, plain_prosody):
        _create(backend, "brief", plain_prosody, "--allow-plaintext")
        backend.li("profile", "connect", "brief")
        backend.li("profile", "disconnect", "brief")
        result = backend.li(
            "pubsub", "get", "-n", "urn:xmpp:microblog:0", "-p", "brief", expect=1
        )
        assert "not connected" in result.stderr
        assert "li profile connect brief" in result.stderr

    def test_deleted_profile_is_gone(self, backend, plain_prosody):
        _create(backend, "doomed", plain_prosody)
        backend.li("profile", "delete", "doomed")
        names = [p["name"] for p in backend.li_json("profile", "list")]
        assert "doomed" not in names


class ConcurrentConnectTests:
    @pytest_twisted.ensureDeferred
    async def test_concurrent_connects_share_one_client(
        self, plain_prosody, tmp_path, monkeypatch
    ):
        from twisted.internet import defer

        from libervia.backend.core.main import Backend

        for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME"):
            monkeypatch.setenv(var, str(tmp_path / var.lower()))
        monkeypatch.setenv("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="lbc-", dir="/tmp"))
        backend = Backend()
        await backend.start()
        try:
            await backend._profile_create(
                "shared", f"plainuser@{plain_prosody.domain}", "plain-password",
                {"host": plain_prosody.host, "port": plain_prosody.port,
                 "allow_plaintext": True},
            )
            clients = await defer.gatherResults([
                defer.ensureDeferred(backend.connect_profile("shared")) for _ in range(3)
            ])
            assert clients[0] is clients[1]
            assert clients[0] is clients[2]
            assert backend.clients["shared"] is clients[0]
        finally:
            await backend.stop()
