"""Differential test: every read served by the pubsub cache equals the live result.

A backend runs in the test process with two profiles. ``alice`` creates an
open node and changes its items: publish, edit (publish again with an
existing id), retract with notification, and rarely purge. ``bob`` is made
a co-owner of the node; he is the reader whose cache is tested. His first
read of the node has it analysed and synchronised, and from then on his
reads come from storage. He also changes ``pubsub#max_items`` and
disconnects now and then while alice changes the node, so that the cache has
to reconcile the node when he connects again.

Prosody 0.12 sends no configuration notification to subscribers. That is
why bob, whose cache applies the configuration changes it makes itself,
changes ``max_items``, and not alice.

After each step, the test waits until the cache's all-items read equals the
live one. Then it compares each request shape served by the cache with the
server's result for the same request (``extra={"use_cache": False}``). The
shapes are all items, ``max_items``, item ids, RSM pages and a walk by
``after``. Prosody ignores RSM, so its RSM pages are cut from its full
result. A small model of the node (:mod:`libervia.testing.pubsub_model`)
gives what no server returns, the order by modification, and documents each
server's item order and evictions. Services give no modification times, so
items changed while bob was offline are expected in that order as the
service lists them when the cache reconciles the node (see
:meth:`~libervia.testing.pubsub_model.NodeModel.reconcile`).

Each server's run has a fixed seed. A failure lists the seed and every step
so far. To replay it, or to run longer sequences::

    LIBERVIA_DIFF_SEED=1234 LIBERVIA_DIFF_STEPS=200 \\
        pytest -q tests/integration/test_cache_differential.py -k ejabberd

``LIBERVIA_DIFF_SEED`` sets the seed of both servers' runs, and
``LIBERVIA_DIFF_STEPS`` the number of random steps after the 3 setup
publications. By default the test stops at the first step whose comparisons
fail. With ``LIBERVIA_DIFF_KEEP_GOING=1`` it records that step, goes on, and
lists every failing step at the end.
"""

from __future__ import annotations

import copy
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.internet import reactor, task
from twisted.words.xish import domish

from libervia.backend.core import constants as C
from libervia.backend.plugins.plugin_xep_0059 import RSMRequest
from libervia.backend.plugins.plugin_xep_0060 import NS_PUBSUB, items_from_xml
from libervia.testing.pubsub_model import (
    ORDER_CREATION,
    ORDER_MODIFICATION,
    NodeModel,
    expected_page,
)
from libervia.testing.session import BackendSession, backend_session
from libervia.testing.xml_compare import xml_differences


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"invalid {name} {value!r}: use an integer") from None


SERVERS = ["prosody", "ejabberd"]
#: Seed of each server's run. LIBERVIA_DIFF_SEED replaces both.
SEEDS = {"prosody": 60_061, "ejabberd": 60_062}
SEED_OVERRIDE = _env_int("LIBERVIA_DIFF_SEED")
_STEP_COUNT_OVERRIDE = _env_int("LIBERVIA_DIFF_STEPS")
STEP_COUNT = 80 if _STEP_COUNT_OVERRIDE is None else _STEP_COUNT_OVERRIDE
SETUP_ITEMS = 3
KEEP_GOING = os.environ.get("LIBERVIA_DIFF_KEEP_GOING") == "1"

NS_TEST = "urn:example:cache-differential"
NODE_PREFIX = "cache-diff-"
UNKNOWN_ID = "unknown-item"
INITIAL_MAX_ITEMS = 8
NODE_OPTIONS = {
    "pubsub#access_model": "open",
    "pubsub#max_items": str(INITIAL_MAX_ITEMS),
    "pubsub#deliver_payloads": "1",
    "pubsub#notify_retract": "1",
    "pubsub#notify_config": "1",
}
IQ_TIMEOUT = 20.0
# How long the cache may take to apply notifications and reconcile (seconds).
CATCH_UP_TIMEOUT = 10.0
POLL_INTERVAL = 0.1

#: Relative frequency of each operation of the random steps.
OPERATION_WEIGHTS = {
    "publish": 10, "edit": 6, "retract": 4, "configure": 3, "reconnect": 2, "purge": 1,
}
#: Operations alice performs while bob is offline.
OFFLINE_OPERATIONS = ("publish", "edit", "retract")
MIN_MAX_ITEMS = 2
MAX_MAX_ITEMS = 8
MAX_OFFLINE_OPERATIONS = 3

#: Order of a server's all-items result and of its RSM pages, as observed on
#: Prosody 0.12.3 and ejabberd 23.01 with SQL pubsub storage.
NATIVE_ORDER = {"prosody": ORDER_MODIFICATION, "ejabberd": ORDER_CREATION}

MAX_ITEMS_READS = (1, 3)
RSM_REQUESTS = [
    {"max": 0},
    {"max": 2},
    {"max": 2, "index": 1},
    {"max": 3, "before": ""},
]
WALK_PAGE_SIZE = 2

# A step whose cache does not catch up within CATCH_UP_TIMEOUT fails the
# test anyway. This budget of a few seconds per step only stops a run that hangs.
pytestmark = pytest.mark.timeout(120 + 6 * (SETUP_ITEMS + STEP_COUNT))


@pytest.fixture(scope="module", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


class Session(BackendSession):
    """An in-process backend with alice and bob connected, bob's cache syncing test nodes."""


@pytest_twisted.async_yield_fixture(scope="module")
async def session(server: Any) -> AsyncIterator[Session]:
    analyser = {"name": "cache-diff-test", "type": "test", "node": NODE_PREFIX, "to_sync": True}
    async with backend_session(server, analysers=[analyser], iq_timeout=IQ_TIMEOUT) as base:
        yield Session(server, base.backend, IQ_TIMEOUT)


@dataclass
class Step:
    """One operation of the sequence, with the values needed to replay it.

    ``label`` is the step number. The operations done while bob is offline
    are in ``offline``, numbered ``N.1``, ``N.2``...
    """

    label: str
    operation: str
    item_id: str | None = None
    max_items: int | None = None
    offline: list[Step] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.label} {self.operation}"
        if self.item_id is not None:
            text += f" {self.item_id}"
        if self.max_items is not None:
            text += f" max_items={self.max_items}"
        if self.offline:
            text += ": " + ", ".join(str(step) for step in self.offline)
        return text


def item_ids(items: list[domish.Element]) -> list[str]:
    return [item.getAttribute("id", "") for item in items]


def item_differences(expected: list[domish.Element], actual: list[domish.Element]) -> list[str]:
    """List how the ``actual`` items differ from the ``expected`` ones: ids, order, then XML."""
    if item_ids(expected) != item_ids(actual):
        return [f"expected ids {item_ids(expected)}, got {item_ids(actual)}"]
    differences = []
    for expected_item, actual_item in zip(expected, actual):
        differences += xml_differences(expected_item, actual_item)
    return differences


def describe_request(request: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in request.items())


class DifferentialRun:
    """A seeded sequence of operations on one new node, and the comparisons after each step."""

    def __init__(self, session: Session, seed: int) -> None:
        self.session = session
        self.seed = seed
        self.random = random.Random(seed)
        # The reads draw from their own generator, so that a change of the
        # comparisons leaves the step sequence of a seed as it was.
        self.read_random = random.Random(f"reads-{seed}")
        self.node = f"{NODE_PREFIX}{uuid.uuid4().hex[:10]}"
        # The model is the node's expected state. The steps are planned from
        # it, never from the server's results, so a seed always replays the
        # same steps.
        self.model = NodeModel(INITIAL_MAX_ITEMS, trim_on_configure=not session.is_ejabberd)
        self.steps: list[Step] = []
        self._item_count = 0
        self._handlers: dict[str, Callable[[Step], Awaitable[None]]] = {
            "publish": self._publish,
            "edit": self._publish,
            "retract": self._retract,
            "purge": self._purge,
            "configure": self._configure,
            "reconnect": self._reconnect,
        }

    @property
    def native_order(self) -> str:
        return NATIVE_ORDER[self.session.server_name]

    # steps

    async def create_node(self) -> None:
        """Have alice create the node and make bob a co-owner."""
        pubsub = self.session.pubsub
        alice = self.session.client("alice")
        await pubsub.create_node(alice, self.session.service, self.node, NODE_OPTIONS)
        bob_jid = self.session.client("bob").jid.userhostJID()
        await pubsub.set_node_affiliations(
            alice, self.session.service, self.node, {bob_jid: "owner"}
        )

    async def start_cache(self) -> None:
        """Read the node once as bob, so that his cache analyses and syncs it."""
        await self.session.pubsub.get_items(
            self.session.client("bob"), self.session.service, self.node
        )
        await self.session.cache.wait_syncs()

    def _new_item_id(self) -> str:
        item_id = f"item-{self._item_count:03d}"
        self._item_count += 1
        return item_id

    def _plan_item_operation(self, label: str, operation: str, model: NodeModel) -> Step:
        """Plan a publish, edit or retract on ``model``, a publish when the node is empty."""
        if operation != "publish" and len(model) == 0:
            operation = "publish"
        if operation == "publish":
            return Step(label, operation, item_id=self._new_item_id())
        return Step(label, operation, item_id=self.random.choice(model.creation_order))

    def plan_step(self, operation: str | None = None) -> Step:
        """Choose the next step (random unless ``operation`` is given) and record it."""
        label = str(len(self.steps) + 1)
        if operation is None:
            operation = self.random.choices(
                list(OPERATION_WEIGHTS), weights=list(OPERATION_WEIGHTS.values())
            )[0]
        if operation == "configure":
            step = Step(
                label, operation, max_items=self.random.randint(MIN_MAX_ITEMS, MAX_MAX_ITEMS)
            )
        elif operation == "purge":
            step = Step(label, operation)
        elif operation == "reconnect":
            step = Step(label, operation)
            # The offline operations are planned on a copy of the model, each
            # one on the state the previous ones leave.
            planned = copy.deepcopy(self.model)
            for number in range(1, self.random.randint(1, MAX_OFFLINE_OPERATIONS) + 1):
                offline = self._plan_item_operation(
                    f"{label}.{number}", self.random.choice(OFFLINE_OPERATIONS), planned
                )
                apply_to_model(planned, offline)
                step.offline.append(offline)
        else:
            step = self._plan_item_operation(label, operation, self.model)
        self.steps.append(step)
        return step

    async def apply(self, step: Step) -> None:
        """Perform a step on the server and update the model to match."""
        await self._handlers[step.operation](step)
        if step.operation != "reconnect":
            apply_to_model(self.model, step)

    async def _publish(self, step: Step) -> None:
        item = domish.Element((NS_PUBSUB, "item"))
        item["id"] = step.item_id
        text = f"{step.item_id} published at step {step.label}"
        item.addElement((NS_TEST, "entry"), content=text)
        await self.session.pubsub.publish(
            self.session.client("alice"), self.session.service, self.node, [item]
        )

    async def _retract(self, step: Step) -> None:
        await self.session.pubsub.retract_items(
            self.session.client("alice"), self.session.service, self.node, [step.item_id],
            notify=True,
        )

    async def _purge(self, step: Step) -> None:
        await self.session.pubsub.purge_node(
            self.session.client("alice"), self.session.service, self.node
        )

    async def _configure(self, step: Step) -> None:
        await self.session.pubsub.set_node_configuration(
            self.session.client("bob"), self.session.service, self.node,
            {"pubsub#max_items": str(step.max_items)},
        )

    async def _reconnect(self, step: Step) -> None:
        await self.session.backend.disconnect_profile("bob")
        for offline in step.offline:
            await self.apply(offline)
        await self.session.connect("bob")
        changed = {
            offline.item_id for offline in step.offline
            if offline.operation in ("publish", "edit") and offline.item_id in self.model
        }
        self.model.reconcile(
            changed, ORDER_CREATION if self.session.is_ejabberd else ORDER_MODIFICATION
        )

    # reads

    async def read(
        self, use_cache: bool, extra: dict[str, Any] | None = None, **kwargs: Any,
    ) -> tuple[list[domish.Element], dict[str, Any]]:
        """Get the node's items as bob, from the cache or (``use_cache`` False) from the server."""
        extra = dict(extra or {})
        if not use_cache:
            extra["use_cache"] = False
        return await self.session.pubsub.get_items(
            self.session.client("bob"), self.session.service, self.node, extra=extra, **kwargs
        )

    async def read_xml(self, **kwargs: Any) -> tuple[list[domish.Element], dict[str, Any]]:
        """Get the node's items from the cache as the bridge does (stored XML), parsed back."""
        xmls, metadata = await self.session.pubsub.get_items_xml(
            self.session.client("bob"), self.session.service, self.node, **kwargs
        )
        return items_from_xml(xmls), metadata

    async def compare_xml_read(
        self, comparison: Comparison, shape: str, items: list[domish.Element], **kwargs: Any,
    ) -> None:
        """Check that the bridge's read (stored XML, not parsed) gives the items of ``items``."""
        xml_items, metadata = await self.read_xml(**kwargs)
        if comparison.served(f"{shape} as XML", metadata):
            for difference in item_differences(items, xml_items):
                comparison.mismatches.append(f"{shape} as XML: {difference}")

    async def wait_caught_up(self) -> None:
        """Wait until the cache's all-items read equals the live one, or CATCH_UP_TIMEOUT.

        Returning on timeout is no failure: compare_all reports the difference.
        """
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while True:
            # A live read is also a round trip on bob's stream, so the
            # notifications the server sent him before its result have arrived
            # when it returns. The second one follows the messages that a sync
            # may cause (ejabberd sends the last item again on subscription).
            live_items, _ = await self.read(use_cache=False)
            await self.session.pubsub.wait_events(self.session.client("bob"))
            await self.session.cache.wait_syncs()
            await self.read(use_cache=False)
            await self.session.pubsub.wait_events(self.session.client("bob"))
            cached_items, metadata = await self.read(use_cache=True)
            if metadata[C.META_FROM_CACHE] and not item_differences(live_items, cached_items):
                return
            if time.monotonic() > deadline:
                return
            await task.deferLater(reactor, POLL_INTERVAL, lambda: None)

    async def walk_after(self, use_cache: bool) -> list[tuple[list[str], dict[str, Any]]]:
        """Walk the node by RSM ``after`` pages and return each page's ids and metadata.

        Each request takes the ``last`` key of the previous page, so the cache
        and the server are each walked with their own keys. The walk stops at
        an empty page, a page without ``last`` or a page that repeats the
        previous one.
        """
        pages: list[tuple[list[str], dict[str, Any]]] = []
        request = RSMRequest(max=WALK_PAGE_SIZE)
        for _ in range(len(self.model) // WALK_PAGE_SIZE + 3):
            items, metadata = await self.read(use_cache, rsm_request=request)
            ids = item_ids(items)
            if not ids or (pages and ids == pages[-1][0]):
                break
            pages.append((ids, metadata))
            last = (metadata.get(C.META_RSM) or {}).get("last")
            if last is None:
                break
            request = RSMRequest(max=WALK_PAGE_SIZE, after=last)
        return pages

    # comparisons

    async def compare_all(self) -> tuple[list[str], list[str]]:
        """Compare every request shape served by the cache with the server and the model.

        Returns two lists of differences. The first lists the server results
        that the test's model of that server does not predict: the test is
        wrong, or the server changed. The second lists the cache results that
        differ from the server's, or from the model for the order by
        modification.
        """
        comparison = Comparison()
        live_items, live_metadata = await self.read(use_cache=False)
        live_ids = item_ids(live_items)
        comparison.model(
            "live all items", self.model.order(self.native_order), live_ids,
        )

        await self._compare_all_items(comparison, live_items, live_metadata)
        await self._compare_max_items(comparison)
        await self._compare_item_ids(comparison)
        for request in RSM_REQUESTS:
            await self._compare_rsm_page(comparison, live_ids, request)
        await self._compare_walk(comparison, live_ids)
        await self._compare_modification_order(comparison)
        return comparison.model_errors, comparison.mismatches

    async def _compare_all_items(
        self, comparison: Comparison, live_items: list[domish.Element],
        live_metadata: dict[str, Any],
    ) -> None:
        items, metadata = await self.read(use_cache=True)
        shape = "all items"
        if comparison.served(shape, metadata):
            for difference in item_differences(live_items, items):
                comparison.mismatches.append(f"{shape}: {difference}")
            comparison.cache(
                f"{shape} complete", live_metadata[C.META_COMPLETE], metadata[C.META_COMPLETE]
            )
            await self.compare_xml_read(comparison, shape, live_items)

    async def _compare_max_items(self, comparison: Comparison) -> None:
        for max_items in MAX_ITEMS_READS:
            shape = f"max_items={max_items}"
            live_items, live_metadata = await self.read(use_cache=False, max_items=max_items)
            items, metadata = await self.read(use_cache=True, max_items=max_items)
            # ejabberd returns the newest items by creation, newest first, and
            # Prosody the newest by modification, oldest first.
            if self.session.is_ejabberd:
                expected = self.model.creation_order[-max_items:][::-1]
            else:
                expected = self.model.modification_order[-max_items:]
            comparison.model(f"live {shape}", expected, item_ids(live_items))
            if comparison.served(shape, metadata):
                comparison.cache(shape, item_ids(live_items), item_ids(items))
                comparison.cache(
                    f"{shape} complete", live_metadata[C.META_COMPLETE],
                    metadata[C.META_COMPLETE],
                )
                await self.compare_xml_read(comparison, shape, live_items, max_items=max_items)

    async def _compare_item_ids(self, comparison: Comparison) -> None:
        existing = self.model.creation_order
        requested = self.read_random.sample(existing, min(2, len(existing))) + [UNKNOWN_ID]
        self.read_random.shuffle(requested)
        shape = f"item_ids={requested}"
        live_items, _ = await self.read(use_cache=False, item_ids=requested)
        items, metadata = await self.read(use_cache=True, item_ids=requested)
        # ejabberd returns the items in creation order, Prosody in the
        # order of the request.
        if self.session.is_ejabberd:
            expected = [item_id for item_id in existing if item_id in requested]
        else:
            expected = [item_id for item_id in requested if item_id in self.model]
        comparison.model(f"live {shape}", expected, item_ids(live_items))
        if comparison.served(shape, metadata):
            comparison.cache(shape, item_ids(live_items), item_ids(items))
            await self.compare_xml_read(comparison, shape, live_items, item_ids=requested)

    async def _compare_rsm_page(
        self, comparison: Comparison, live_ids: list[str], request: dict[str, Any],
    ) -> None:
        """Compare one RSM page with the page a XEP-0059 service cuts from the live items.

        ejabberd's ``first`` and ``last`` are creation timestamps and its
        index is 0 unless an index is requested, so its own result is
        compared by the page's ids and the count, and by the index only when
        requested. It returns the last page (empty ``before``) newest first,
        so that page is compared as a set.
        """
        shape = f"RSM {describe_request(request)}"
        expected_ids, expected_rsm = expected_page(live_ids, RSMRequest(**request))
        live_items, live_metadata = await self.read(
            use_cache=False, rsm_request=RSMRequest(**request)
        )
        items, metadata = await self.read(use_cache=True, rsm_request=RSMRequest(**request))
        page = item_ids(items)
        live_page = item_ids(live_items)
        live_rsm = live_metadata.get(C.META_RSM) or {}
        unordered = request.get("before") == ""

        if self.session.is_ejabberd:
            comparison.model(
                f"live {shape} ids", sorted(expected_ids) if unordered else expected_ids,
                sorted(live_page) if unordered else live_page,
            )
            comparison.model(f"live {shape} count", expected_rsm.count, live_rsm.get("count"))
        else:
            comparison.model(f"live {shape} ignored", True, live_metadata.get("rsm_ignored"))
            comparison.model(f"live {shape} ids", live_ids, live_page)

        if not comparison.served(shape, metadata):
            return
        rsm = metadata.get(C.META_RSM) or {}
        comparison.cache(f"{shape} ids", expected_ids, page)
        comparison.cache(f"{shape} metadata", expected_rsm.to_dict(), rsm)
        comparison.cache(f"{shape} rsm_ignored", False, metadata.get("rsm_ignored"))
        comparison.cache(
            f"{shape} complete", len(expected_ids) == len(live_ids), metadata[C.META_COMPLETE]
        )
        if self.session.is_ejabberd:
            comparison.cache(
                f"{shape} ids as ejabberd's",
                sorted(live_page) if unordered else live_page,
                sorted(page) if unordered else page,
            )
            comparison.cache(
                f"{shape} count as ejabberd's", live_rsm.get("count"), rsm.get("count")
            )
            if "index" in request:
                comparison.cache(
                    f"{shape} index as ejabberd's", live_rsm.get("index"), rsm.get("index")
                )

    async def _compare_walk(self, comparison: Comparison, live_ids: list[str]) -> None:
        """Walk by ``after`` on both sides, each with its own keys, and compare the pages."""
        shape = f"RSM walk by after, max={WALK_PAGE_SIZE}"
        expected: list[tuple[list[str], dict[str, Any]]] = []
        after = None
        while True:
            ids, rsm = expected_page(live_ids, RSMRequest(max=WALK_PAGE_SIZE, after=after))
            if not ids:
                break
            expected.append((ids, rsm.to_dict()))
            after = ids[-1]

        pages = await self.walk_after(use_cache=True)
        for number, (_, metadata) in enumerate(pages, 1):
            comparison.served(f"{shape}, page {number}", metadata)
        comparison.cache(
            f"{shape}: pages and metadata", expected,
            [(ids, metadata.get(C.META_RSM) or {}) for ids, metadata in pages],
        )
        if self.session.is_ejabberd:
            live_pages = await self.walk_after(use_cache=False)
            comparison.model(
                f"live {shape}: pages",
                [ids for ids, _ in expected], [ids for ids, _ in live_pages],
            )
            comparison.cache(
                f"{shape}: pages as ejabberd's",
                [ids for ids, _ in live_pages], [ids for ids, _ in pages],
            )

    async def _compare_modification_order(self, comparison: Comparison) -> None:
        """Compare the reads ordered by modification, which no server offers, with the model."""
        extra = {"order_by": ORDER_MODIFICATION}
        shape = "all items by modification"
        items, metadata = await self.read(use_cache=True, extra=extra)
        # The order the page below is cut from: the cache's own when it is
        # one of the orders the model allows (see NodeModel.reconcile).
        reference = self.model.observed_modification_order
        if comparison.served(shape, metadata):
            if self.model.observed_order_matches(item_ids(items)):
                reference = item_ids(items)
            else:
                comparison.cache(shape, reference, item_ids(items))

        request = {"max": 3, "before": ""}
        shape = f"RSM {describe_request(request)} by modification"
        expected_ids, expected_rsm = expected_page(reference, RSMRequest(**request))
        items, metadata = await self.read(
            use_cache=True, extra=extra, rsm_request=RSMRequest(**request)
        )
        if comparison.served(shape, metadata):
            comparison.cache(f"{shape} ids", expected_ids, item_ids(items))
            comparison.cache(
                f"{shape} metadata", expected_rsm.to_dict(), metadata.get(C.META_RSM) or {}
            )

    # failure report

    def report(self, title: str, differences: list[str], with_steps: bool = True) -> str:
        """Describe a failed step: the differences, then the seed, the steps and the model."""
        server_name = self.session.server_name
        lines = [f"{title} ({server_name}, seed {self.seed}, after step {self.steps[-1].label}):"]
        lines += [f"  - {difference}" for difference in differences]
        if not with_steps:
            return "\n".join(lines)
        lines.append("steps:")
        lines += [f"  {step}" for step in self.steps]
        lines.append(
            f"model: max_items {self.model.max_items}, creation order "
            f"{self.model.creation_order}, modification order {self.model.modification_order}"
        )
        lines.append(
            f"replay: LIBERVIA_DIFF_SEED={self.seed} "
            f"LIBERVIA_DIFF_STEPS={len(self.steps) - SETUP_ITEMS} "
            f"pytest -q tests/integration/test_cache_differential.py -k {server_name}"
        )
        return "\n".join(lines)


class Comparison:
    """The differences found after one step, kept apart by whose fault they show."""

    def __init__(self) -> None:
        self.model_errors: list[str] = []
        self.mismatches: list[str] = []

    def model(self, check: str, expected: Any, got: Any) -> None:
        """Record a server result that the test's model does not predict."""
        if expected != got:
            self.model_errors.append(f"{check}: model expects {expected!r}, server gave {got!r}")

    def cache(self, check: str, expected: Any, got: Any) -> None:
        """Record a cache result that differs from the expected one."""
        if expected != got:
            self.mismatches.append(f"{check}: expected {expected!r}, cache gave {got!r}")

    def served(self, check: str, metadata: dict[str, Any]) -> bool:
        """Tell whether a read came from the cache, and record it when not.

        A read that the server served proves nothing about the cache.
        """
        if metadata.get(C.META_FROM_CACHE) is True:
            return True
        self.mismatches.append(f"{check}: not served from the cache (from_cache is "
                               f"{metadata.get(C.META_FROM_CACHE)!r})")
        return False


def apply_to_model(model: NodeModel, step: Step) -> None:
    """Update ``model`` for a publish, edit, retract, purge or configure step."""
    if step.operation in ("publish", "edit"):
        model.publish(step.item_id)
    elif step.operation == "retract":
        model.retract(step.item_id)
    elif step.operation == "purge":
        model.purge()
    elif step.operation == "configure":
        model.configure(step.max_items)


async def check_step(run: DifferentialRun, with_steps: bool = True) -> str | None:
    """Wait for the cache to catch up, compare, and return the failure report or None."""
    await run.wait_caught_up()
    model_errors, mismatches = await run.compare_all()
    if model_errors:
        return run.report(
            "the server does not behave as the test models it", model_errors, with_steps
        )
    if mismatches:
        return run.report("the cache's results differ from the server's", mismatches, with_steps)
    return None


@pytest_twisted.ensureDeferred
async def test_cache_matches_server(session: Session) -> None:
    seed = SEED_OVERRIDE if SEED_OVERRIDE is not None else SEEDS[session.server_name]
    print(f"{session.server_name}: seed {seed}, {STEP_COUNT} random steps")
    run = DifferentialRun(session, seed)
    await run.create_node()
    for _ in range(SETUP_ITEMS):
        await run.apply(run.plan_step("publish"))
    await run.start_cache()
    failure = await check_step(run, with_steps=not KEEP_GOING)
    failures = [failure] if failure else []
    assert KEEP_GOING or failure is None, failure

    for _ in range(STEP_COUNT):
        await run.apply(run.plan_step())
        failure = await check_step(run, with_steps=not KEEP_GOING)
        if failure is not None:
            failures.append(failure)
        assert KEEP_GOING or failure is None, failure

    assert not failures, run.report(f"{len(failures)} steps failed", failures)
