"""Connection settings of a profile against real Prosody servers, through li."""

from __future__ import annotations

import pytest

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
