"""Tests of the node model that the differential test compares the cache with."""

from __future__ import annotations

import pytest

from libervia.backend.plugins.plugin_xep_0059 import RSMRequest
from libervia.testing.pubsub_model import (
    ORDER_CREATION,
    ORDER_MODIFICATION,
    NodeModel,
    expected_page,
)


def filled(ids: str, max_items: int = 10, trim_on_configure: bool = True) -> NodeModel:
    model = NodeModel(max_items, trim_on_configure)
    for item_id in ids:
        model.publish(item_id)
    return model


class NodeModelTests:
    def test_edit_moves_in_modification_order_only(self) -> None:
        model = filled("abc")

        evicted = model.publish("a")

        assert evicted == []
        assert model.creation_order == ["a", "b", "c"]
        assert model.modification_order == ["b", "c", "a"]

    def test_new_item_evicts_least_recently_modified(self) -> None:
        model = filled("abc", max_items=3)
        model.publish("a")

        assert model.publish("d") == ["b"]
        assert model.creation_order == ["a", "c", "d"]

    @pytest.mark.parametrize("trim_on_configure", [True, False])
    def test_lower_max_items(self, trim_on_configure: bool) -> None:
        model = filled("abcd", trim_on_configure=trim_on_configure)

        evicted = model.configure(2)

        if trim_on_configure:
            assert evicted == ["a", "b"]
            assert model.creation_order == ["c", "d"]
        else:
            assert evicted == []
            assert model.publish("e") == ["a", "b", "c"]
            assert model.creation_order == ["d", "e"]

    def test_retract_unknown(self) -> None:
        with pytest.raises(KeyError):
            filled("a").retract("z")


class ObservedOrderTests:
    def test_reconcile_by_modification_is_exact(self) -> None:
        model = filled("abcd")
        model.publish("c")
        model.publish("a")

        model.reconcile({"a", "c"}, ORDER_MODIFICATION)

        assert model.observed_modification_order == ["b", "d", "c", "a"]
        assert model.observed_order_matches(["b", "d", "c", "a"])
        assert not model.observed_order_matches(["b", "d", "a", "c"])

    def test_reconcile_by_creation_leaves_changed_unordered(self) -> None:
        model = filled("abcd")
        model.publish("c")
        model.publish("a")

        model.reconcile({"a", "c"}, ORDER_CREATION)

        assert model.observed_order_matches(["b", "d", "a", "c"])
        assert model.observed_order_matches(["b", "d", "c", "a"])
        assert not model.observed_order_matches(["d", "b", "a", "c"])
        assert not model.observed_order_matches(["b", "a", "d", "c"])
        assert not model.observed_order_matches(["b", "d", "a"])

    def test_edit_after_reconcile_orders_again(self) -> None:
        model = filled("abcd")
        model.reconcile({"a", "c"}, ORDER_CREATION)

        model.publish("a")

        assert model.observed_order_matches(["b", "d", "c", "a"])
        assert not model.observed_order_matches(["b", "d", "a", "c"])


class ExpectedPageTests:
    IDS = ["a", "b", "c", "d", "e"]

    @pytest.mark.parametrize(
        ("request_args", "page", "first_index"),
        [
            ({"max": 2}, ["a", "b"], 0),
            ({"max": 2, "index": 3}, ["d", "e"], 3),
            ({"max": 2, "after": "b"}, ["c", "d"], 2),
            ({"max": 2, "before": "d"}, ["b", "c"], 1),
            ({"max": 3, "before": ""}, ["c", "d", "e"], 2),
        ],
    )
    def test_pages(self, request_args: dict, page: list[str], first_index: int) -> None:
        ids, response = expected_page(self.IDS, RSMRequest(**request_args))

        assert ids == page
        assert (response.first, response.last, response.first_index, response.count) == (
            page[0], page[-1], first_index, 5
        )

    def test_empty_page_has_only_count(self) -> None:
        ids, response = expected_page(self.IDS, RSMRequest(max=0))

        assert ids == []
        assert response.to_dict() == {"count": 5}
