"""``make demo``: a real blog cached by the backend, live and cached reads timed.

The demo starts a throwaway Prosody on 127.0.0.1, registers a publisher and
a reader, starts a backend daemon in a private folder (the user's own config,
database and daemon are not touched), publishes a small real blog (the
XEP-0277 examples and a few feedparser Atom cases), then reads it as the
reader: live from the server, then from the cache once the node is
synchronised. Everything it started is stopped at the end.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from libervia.testing.backend import BackendRunner
from libervia.testing.prosody import ProsodyServer
from libervia.testing.samples import blog_items

NODE = "urn:xmpp:microblog:0"
ROUNDS = 50
MAX_ITEMS = 10


def _timed_gets(client, service: str, use_cache: bool) -> tuple[list[float], dict]:
    """Return the durations in ms of ROUNDS bridge gets of MAX_ITEMS items, and the last result."""
    durations = []
    result = {}
    for _ in range(ROUNDS):
        start = time.perf_counter()
        result = client.call(
            "ps_items_get", service=service, node=NODE, max_items=MAX_ITEMS,
            extra={"use_cache": use_cache}, profile="reader",
        )
        durations.append((time.perf_counter() - start) * 1000)
    return durations, result


def _summary(durations: list[float]) -> str:
    ordered = sorted(durations)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return f"median {statistics.median(ordered):.2f} ms, p95 {p95:.2f} ms over {len(ordered)} gets"


def run(workdir: Path) -> int:
    print(f"demo folder: {workdir}")
    with ProsodyServer(workdir=workdir / "prosody") as prosody:
        print(f"Prosody listening on {prosody.host}:{prosody.port} for {prosody.domain}")
        accounts = {"pub": "demo-publisher", "reader": "demo-reader"}
        for user in accounts.values():
            prosody.register(user, f"{user}-password")

        runner = BackendRunner(workdir / "backend")
        try:
            print("starting the backend daemon and connecting both profiles...")
            for profile, user in accounts.items():
                runner.li(
                    "profile", "create", profile, "-j", f"{user}@{prosody.domain}",
                    "--host", prosody.host, "--port", str(prosody.port),
                    "--ca-file", str(prosody.ca_file), "--password-env", "DEMO_PASSWORD",
                    env={"DEMO_PASSWORD": f"{user}-password"},
                )
                runner.li("profile", "connect", profile)

            service = f"{accounts['pub']}@{prosody.domain}"
            runner.li(
                "pubsub", "node", "create", "-s", service, "-n", NODE,
                "-o", "pubsub#access_model=open", "-o", "pubsub#max_items=100", "-p", "pub",
            )
            items = blog_items()
            for xml in items:
                runner.li("pubsub", "set", "-s", service, "-n", NODE, "-p", "pub", input=xml)
            print(f"published {len(items)} real Atom entries on {service} node {NODE}")

            os.environ["XDG_RUNTIME_DIR"] = runner.env["XDG_RUNTIME_DIR"]
            from libervia.cli.bridge_client import BridgeClient

            with BridgeClient() as client:
                live, live_result = _timed_gets(client, service, use_cache=False)
                # The first get through the cache analyses the node and starts its sync.
                client.call("ps_items_get", service=service, node=NODE, profile="reader")
                runner.wait_for(
                    lambda: client.call(
                        "ps_cache_get", service=service, node=NODE, profile="reader"
                    )["node"]["sync_state"] == "COMPLETED",
                    what="the sync of the blog node",
                )
                stats_before = client.call("stream_stats", profile="reader")
                cached, cached_result = _timed_gets(client, service, use_cache=True)
                stats_after = client.call("stream_stats", profile="reader")

            same = cached_result["items"] == live_result["items"]
            print()
            count = len(cached_result["items"])
            print(f"live get of {count} items through the bridge:   {_summary(live)}")
            print(f"cached get of {count} items through the bridge: {_summary(cached)}")
            print(
                f"cached answers equal live answers: {same}; IQs sent during the cached "
                f"gets: {stats_after['iq_sent'] - stats_before['iq_sent']}"
            )
            print()
            print("li blog get -M 3 (served from the cache):")
            out = runner.li("blog", "get", "-s", service, "-M", "3", "-p", "reader")
            print(out.stdout)
            return 0 if same else 1
        finally:
            print("stopping the daemon and Prosody")
            runner.stop()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="libervia-demo-") as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
