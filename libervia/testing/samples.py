"""Real XEP-0277 Atom entries for tests, the demo and benchmarks.

The entries come from the copies of the XEP-0277 examples and of feedparser's
Atom test cases kept in ``tests/data`` (see the NOTICE files there). Each one
is returned as the XML of a pubsub ``<item/>`` with a distinct id, because
several examples share an item id.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.words.xish import domish
from wokkel.generic import parseXml

NS_ATOM = "http://www.w3.org/2005/Atom"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
DATA_DIR = Path(__file__).resolve().parents[2] / "tests" / "data"

# Atom 1.0 cases whose entry makes a readable post on its own.
ATOM_CASES = (
    "atom10__entry_title_text_plain.xml",
    "atom10__entry_author_name.xml",
    "atom10__entry_category_label.xml",
    "atom10__entry_content_value.xml",
    "atom10__entry_summary_text_plain.xml",
    "atom10__entry_link_href.xml",
)


def _item_elements(elt: domish.Element) -> list[domish.Element]:
    found = []
    if elt.name == "item" and any(
        c.uri == NS_ATOM and c.name == "entry" for c in elt.elements()
    ):
        found.append(elt)
    for child in elt.elements():
        found.extend(_item_elements(child))
    return found


def xep_0277_items(data_dir: Path = DATA_DIR) -> list[str]:
    """Return the published items of the XEP-0277 examples, with ids ``xep0277-ex-N``."""
    items = []
    path = data_dir / "xep" / "xep-0277-examples.jsonl"
    for line in path.read_text().splitlines():
        example = json.loads(line)
        if not example.get("well_formed") or "<publish" not in example["xml"]:
            continue
        root = parseXml(f"<root>{example['xml']}</root>".encode())
        for index, item in enumerate(_item_elements(root)):
            item["id"] = f"xep0277-ex{example['example']}-{index}"
            item.uri = item.defaultUri = NS_PUBSUB
            items.append(item.toXml())
    return items


def atom_case_items(data_dir: Path = DATA_DIR) -> list[str]:
    """Return entries of a few feedparser Atom 1.0 cases as items ``atom-CASE``."""
    items = []
    for name in ATOM_CASES:
        text = (data_dir / "atom" / name).read_text()
        # The leading comment contains the case's description, not part of the feed.
        text = re.sub(r"^<!--.*?-->\s*", "", text, flags=re.S)
        feed = parseXml(text.encode())
        entry = next(feed.elements(NS_ATOM, "entry"))
        if not any(True for _ in entry.elements(NS_ATOM, "id")):
            entry.addElement("id", content=f"urn:libervia:test:{name}")
        item = domish.Element((NS_PUBSUB, "item"))
        item["id"] = "atom-" + name.removesuffix(".xml").split("__", 1)[1]
        item.addChild(entry)
        items.append(item.toXml())
    return items


def blog_items(data_dir: Path = DATA_DIR) -> list[str]:
    """Return every sample item: the Atom cases, then the XEP-0277 examples.

    Published in this order, the newest posts are the examples, which all
    have a title.
    """
    return atom_case_items(data_dir) + xep_0277_items(data_dir)
