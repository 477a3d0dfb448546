"""Several profiles connected at once in one daemon, against real servers.

Three profiles (alpha, beta, gamma) share one server, Prosody then ejabberd;
a fourth (remote) is on a private Prosody that a test stops. Each profile
must have its own client and its own cache, and the failure of one profile,
through a wrong password or a stopped server, must leave the others serving
requests and receiving notifications.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from libervia.testing.backend import BackendRunner
from libervia.testing.prosody import ProsodyServer

NODE = "urn:xmpp:microblog:0"
PASSWORD_ENV = "PROFILES_TEST_PASSWORD"
LOCAL_PROFILES = ("alpha", "beta", "gamma")
REMOTE_DOMAIN = "remote.localhost"


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def server(request: pytest.FixtureRequest) -> Any:
    """Return the session's Prosody, then its ejabberd."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def remote_server(
    tmp_path_factory: pytest.TempPathFactory, server: Any,
) -> Iterator[ProsodyServer]:
    """Run a private Prosody that a test stops, a new one for each ``server``."""
    remote = ProsodyServer(domain=REMOTE_DOMAIN, workdir=tmp_path_factory.mktemp("remote"))
    remote.register("remote", "remote-password")
    with remote:
        yield remote


def create_profile(
    runner: BackendRunner, name: str, jid: str, server: Any, password: str,
) -> None:
    """Create a profile for ``jid`` on ``server`` with ``password``."""
    runner.li(
        "profile", "create", name, "-j", jid,
        "--host", server.host, "--port", str(server.port),
        "--ca-file", str(server.ca_file), "--password-env", PASSWORD_ENV,
        env={PASSWORD_ENV: password},
    )


@pytest.fixture(scope="module")
def backend(
    tmp_path_factory: pytest.TempPathFactory, server: Any, remote_server: ProsodyServer,
) -> Iterator[BackendRunner]:
    """Run a daemon with alpha, beta and gamma on ``server`` and remote on its own server."""
    runner = BackendRunner(tmp_path_factory.mktemp("profiles"))
    suffix = uuid.uuid4().hex[:6]
    runner.jids = {}
    try:
        for profile in LOCAL_PROFILES:
            user = f"{profile}{suffix}"
            password = f"pw-{profile}-{suffix}"
            server.register(user, password)
            runner.jids[profile] = server.jid(user)
            create_profile(runner, profile, runner.jids[profile], server, password)
            runner.li("profile", "connect", profile)
        runner.jids["remote"] = remote_server.jid("remote")
        create_profile(
            runner, "remote", runner.jids["remote"], remote_server, "remote-password"
        )
        runner.li("profile", "connect", "remote")
        # gamma's blog, readable by everyone, is the node the tests cache.
        runner.li(
            "pubsub", "node", "create", "-s", runner.jids["gamma"], "-n", NODE, "-p", "gamma",
            "-o", "pubsub#access_model=open", "-o", "pubsub#max_items=100",
        )
        for title in ("First", "Second", "Third"):
            publish_post(runner, title)
        yield runner
    finally:
        runner.stop()


def publish_post(backend: BackendRunner, title: str) -> str:
    """Publish an Atom post on gamma's blog; return its item id."""
    item_id = f"post-{uuid.uuid4().hex[:8]}"
    item = (
        f"<item id='{item_id}'><entry xmlns='http://www.w3.org/2005/Atom'>"
        f"<title>{title}</title><id>urn:uuid:{item_id}</id>"
        "<published>2024-05-06T07:08:09Z</published></entry></item>"
    )
    backend.li("pubsub", "set", "-s", backend.jids["gamma"], "-n", NODE, "-p", "gamma", input=item)
    return item_id


def get_items(backend: BackendRunner, profile: str, *args: str) -> dict:
    """Run ``li pubsub get`` on gamma's blog as ``profile``."""
    return backend.li_json(
        "pubsub", "get", "-s", backend.jids["gamma"], "-n", NODE, "-p", profile, *args
    )


def iq_sent(backend: BackendRunner, profile: str) -> int:
    """Return the IQs sent by ``profile``'s stream so far."""
    return backend.li_json("debug", "stats", "-p", profile)["iq_sent"]


def cache_state(backend: BackendRunner, profile: str) -> dict | None:
    """Return ``li pubsub cache get`` of gamma's blog for ``profile``, or None when not cached."""
    result = backend.li(
        "pubsub", "cache", "get", "-s", backend.jids["gamma"], "-n", NODE, "-p", profile,
        "-O", "json", expect=None,
    )
    return result.json() if result.returncode == 0 else None


def wait_synced(backend: BackendRunner, profile: str) -> dict:
    """Wait until gamma's blog is synchronised in ``profile``'s cache."""

    def synced() -> dict | None:
        state = cache_state(backend, profile)
        if state is not None and state["node"]["sync_state"] == "COMPLETED":
            return state
        return None

    return backend.wait_for(synced, what=f"gamma's blog synchronised for {profile}")


def connected_profiles(backend: BackendRunner) -> dict[str, bool]:
    """Return each profile's connection state from ``li profile list``."""
    return {p["name"]: p["connected"] for p in backend.li_json("profile", "list")}


def wait_cached_item(backend: BackendRunner, profile: str, item_id: str) -> None:
    """Wait until a notified item is in ``profile``'s cache of gamma's blog."""

    def cached() -> bool:
        state = cache_state(backend, profile)
        return state is not None and item_id in [item["id"] for item in state["items"]]

    backend.wait_for(cached, what=f"item {item_id} in the cache of {profile}")


class ProfilesTests:
    """In order: separate clients, separate caches, then failures of one profile."""

    def test_each_profile_connected_with_own_jid(self, backend):
        profiles = backend.li_json("profile", "list")
        jids = {p["name"]: p["jid"] for p in profiles}
        for name in (*LOCAL_PROFILES, "remote"):
            assert jids[name] == backend.jids[name]
        assert all(connected_profiles(backend).values())

    def test_requests_counted_per_client(self, backend):
        before = {name: iq_sent(backend, name) for name in LOCAL_PROFILES}
        get_items(backend, "beta", "-C")
        after = {name: iq_sent(backend, name) for name in LOCAL_PROFILES}
        assert after["beta"] == before["beta"] + 1
        assert after["alpha"] == before["alpha"]
        assert after["gamma"] == before["gamma"]

    def test_cache_of_one_profile_not_served_to_another(self, backend):
        get_items(backend, "alpha")
        alpha_state = wait_synced(backend, "alpha")
        assert len(alpha_state["items"]) == 3
        assert cache_state(backend, "beta") is None

        beta_before = iq_sent(backend, "beta")
        beta_result = get_items(backend, "beta")
        assert beta_result["metadata"]["from_cache"] is False
        assert iq_sent(backend, "beta") > beta_before

        alpha_before = iq_sent(backend, "alpha")
        alpha_result = get_items(backend, "alpha")
        assert alpha_result["metadata"]["from_cache"] is True
        assert iq_sent(backend, "alpha") == alpha_before
        assert alpha_result["items"] == beta_result["items"]

    def test_wrong_password_leaves_others_working(self, backend, server):
        create_profile(backend, "wrongpw", backend.jids["beta"], server, "not-the-password")
        result = backend.li("profile", "connect", "wrongpw", expect=1)
        assert "authentication" in result.stderr
        states = connected_profiles(backend)
        assert states["wrongpw"] is False
        for name in LOCAL_PROFILES:
            assert states[name] is True

        cached = get_items(backend, "alpha")
        assert cached["metadata"]["from_cache"] is True
        item_id = publish_post(backend, "After a failed login")
        wait_cached_item(backend, "alpha", item_id)

    def test_stopped_server_leaves_others_working(self, backend, remote_server):
        remote_server.stop()
        backend.wait_for(
            lambda: connected_profiles(backend)["remote"] is False,
            what="the remote profile to lose its connection",
        )
        states = connected_profiles(backend)
        for name in LOCAL_PROFILES:
            assert states[name] is True

        failed = backend.li("profile", "connect", "remote", expect=1)
        assert "127.0.0.1" in failed.stderr
        item_id = publish_post(backend, "While a server is down")
        wait_cached_item(backend, "alpha", item_id)
        live = get_items(backend, "beta", "-C")
        assert item_id in str(live["items"])
        assert backend.backend("status").returncode == 0
