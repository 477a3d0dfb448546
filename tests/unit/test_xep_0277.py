"""Tests of the XEP-0277 plugin: Atom entry parsing, building and sanitising.

Vectors come from tests/data: the XEP-0277 examples (xep/) and feedparser's
Atom entry cases (atom/). Each feedparser file states its expectation against
feedparser's result structure; the tables below restate it against the
microblog data model, or say why it does not apply.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish
from wokkel.generic import parseXml

from libervia.backend.core.exceptions import InvalidValue, PubsubConflict, PubsubItemNotFound
from libervia.backend.plugins import plugin_xep_0277
from libervia.backend.plugins.plugin_xep_0277 import (
    NS_ATOM,
    NS_ATOM_03,
    NS_COMMENT_PREFIX,
    NS_MICROBLOG,
    XEP_0277,
    data_to_item,
    item_to_data,
    sanitise_html,
    sanitise_style,
)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
ATOM_DIR = DATA_DIR / "atom"
XEP_0277_EXAMPLES = DATA_DIR / "xep" / "xep-0277-examples.jsonl"

ABSENT = object()
"""Expected value of a key that must not be in the data."""

IMG = '<img src="http://www.ragingplatypus.com/i/cam-full.jpg" />'
# feedparser also keeps "background-x: center; background-y: center", which
# are not CSS properties; the allow-list drops unknown properties.
STYLE_LINK = (
    '<a href="http://www.ragingplatypus.com/" style="display: block; width: 100%; '
    'height: 100%; background-color: black">never trust your upstream platypus</a>'
)


# Plain text that survives a round trip: no control characters, and no
# leading or trailing white space, which the parser strips.
PLAIN_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40).map(
    str.strip
)


def timestamp(date: str) -> float:
    """Return the UNIX timestamp of an ISO 8601 date with a time zone."""
    return datetime.fromisoformat(date).timestamp()


# --- vector loading -----------------------------------------------------------


def wrap_entry(entry: domish.Element, item_id: str) -> domish.Element:
    """Put an Atom entry into a pubsub item, adding an Atom id when it has none.

    feedparser's entries seldom have an <id/>, which item_to_data requires.
    """
    if next(entry.elements(entry.uri, "id"), None) is None:
        entry.addElement((entry.uri, "id"), content=f"urn:test:{item_id}")
    item = domish.Element((None, "item"))
    item["id"] = item_id
    item.addChild(entry)
    return item


def load_atom_posts(file_name: str) -> list[dict[str, Any]]:
    """Parse every entry of a feedparser vector into microblog data."""
    feed = parseXml((ATOM_DIR / file_name).read_bytes())
    entries = [
        child
        for child in feed.elements()
        if child.name == "entry" and child.uri in (NS_ATOM, NS_ATOM_03)
    ]
    return [
        item_to_data(wrap_entry(entry, f"vector-{index}"))
        for index, entry in enumerate(entries)
    ]


def lookup(posts: list[dict[str, Any]], path: tuple[Any, ...]) -> Any:
    """Follow ``path`` (entry index, then keys and list indexes); ABSENT if missing."""
    value: Any = posts
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError):
            return ABSENT
    return value


def load_xep_examples() -> dict[int, dict[str, Any]]:
    examples = {}
    with XEP_0277_EXAMPLES.open(encoding="utf-8") as examples_file:
        for line in examples_file:
            example = json.loads(line)
            examples[example["example"]] = example
    return examples


def find_items(element: domish.Element) -> list[domish.Element]:
    """Return the pubsub <item/> elements under ``element``, in document order."""
    found = []
    for child in element.elements():
        if child.name == "item":
            found.append(child)
        else:
            found.extend(find_items(child))
    return found


def xep_example_item(number: int) -> domish.Element:
    """Return the first item of a XEP-0277 example; a bare entry gets wrapped."""
    root = parseXml(load_xep_examples()[number]["xml"])
    if root.name == "entry":
        return wrap_entry(root, f"example-{number}")
    return find_items(root)[0]


# --- feedparser vectors -----------------------------------------------------------

ATOM_CASES: dict[str, list[tuple[tuple[Any, ...], Any]]] = {
    # Authors: "authors" lists every author, the author* keys repeat the first.
    "atom10__entry_author_email.xml": [((0, "author_email"), "me@example.com")],
    # feedparser joins name and email into one string; the model keeps both.
    "atom10__entry_author_map_author.xml": [
        ((0, "author"), "Example author"),
        ((0, "author_email"), "me@example.com"),
    ],
    "atom10__entry_author_map_author_2.xml": [((0, "author"), "Example author")],
    "atom10__entry_author_name.xml": [((0, "author"), "Example author")],
    "atom10__entry_author_url.xml": [((0, "author_uri"), "http://example.com/")],
    "atom10__entry_authors_email.xml": [
        ((0, "authors", 0, "email"), "one@one.com"),
        ((0, "authors", 1, "email"), "two@two.com"),
        ((0, "author_email"), "one@one.com"),
    ],
    "atom10__entry_authors_name.xml": [
        ((0, "authors", 0, "name"), "one"),
        ((0, "authors", 1, "name"), "two"),
        ((0, "author"), "one"),
    ],
    "atom10__entry_authors_uri.xml": [
        ((0, "authors", 0, "uri"), "http://one.com/"),
        ((0, "authors", 1, "uri"), "http://two.com/"),
        ((0, "author_uri"), "http://one.com/"),
    ],
    "atom10__entry_authors_url.xml": [
        ((0, "authors", 0, "uri"), "http://one.com/"),
        ((0, "authors", 1, "uri"), "http://two.com/"),
        ((0, "author_uri"), "http://one.com/"),
    ],
    # Contributors have the shape of "authors", and feedparser's "href" is "uri".
    "atom10__entry_contributor_email.xml": [
        ((0, "contributors", 0, "email"), "me@example.com"),
    ],
    "atom10__entry_contributor_multiple.xml": [
        (
            (0, "contributors", 0),
            {"name": "Contributor 1", "email": "me@example.com", "uri": "http://example.com/"},
        ),
        (
            (0, "contributors", 1),
            {"name": "Contributor 2", "email": "you@example.com", "uri": "http://two.example.com/"},
        ),
    ],
    "atom10__entry_contributor_name.xml": [
        ((0, "contributors", 0, "name"), "Example contributor"),
    ],
    "atom10__entry_contributor_uri.xml": [
        ((0, "contributors", 0, "uri"), "http://example.com/"),
    ],
    "atom10__entry_contributor_url.xml": [
        ((0, "contributors", 0, "uri"), "http://example.com/"),
    ],
    # Categories.
    "atom10__entry_category_term_non_ascii.xml": [((0, "tags"), ["Freiräume"])],
    # Content.
    "atom10__entry_content_and_summary.xml": [
        ((0, "summary"), "Summary"),
        ((0, "content"), "Example Atom"),
    ],
    # Base64 data of a non-HTML media type is text, never markup.
    "atom10__entry_content_base64.xml": [
        ((0, "content"), "Example <b>Atom</b>"),
        ((0, "content_xhtml"), ABSENT),
    ],
    "atom10__entry_content_base64_2.xml": [
        ((0, "content"), "<p>History of the &lt;blink&gt; tag</p>"),
    ],
    "atom10__entry_content_escaped_markup.xml": [
        ((0, "content_xhtml"), "Example <b>Atom</b>"),
        ((0, "content"), "Example Atom"),
    ],
    "atom10__entry_content_inline_markup.xml": [
        ((0, "content_xhtml"), "Example <b>Atom</b>"),
        ((0, "content"), "Example Atom"),
    ],
    "atom10__entry_content_inline_markup_2.xml": [
        ((0, "content_xhtml"), "History of the &lt;blink&gt; tag"),
        ((0, "content"), "History of the <blink> tag"),
    ],
    "atom10__entry_content_text_plain_brackets.xml": [
        ((0, "content"), "History of the <blink> tag"),
        ((0, "content_xhtml"), ABSENT),
    ],
    # feedparser's type "text/plain" is plain text without an *_xhtml key here.
    "atom10__entry_content_type.xml": [
        ((0, "content"), "Example Atom"),
        ((0, "content_xhtml"), ABSENT),
    ],
    "atom10__entry_content_type_text.xml": [
        ((0, "content"), "Example Atom"),
        ((0, "content_xhtml"), ABSENT),
    ],
    "atom10__entry_content_value.xml": [((0, "content"), "Example Atom")],
    # Atom ids, never normalised (RFC 4287 section 4.2.6.1).
    "atom10__entry_id.xml": [((0, "atom_id"), "http://example.com/")],
    "atom10__entry_id_map_guid.xml": [((0, "atom_id"), "http://example.com/")],
    "atom10__entry_id_no_normalization_2.xml": [((0, "atom_id"), "http://www.example.org/Thing")],
    "atom10__entry_id_no_normalization_4.xml": [((0, "atom_id"), "HTTP://www.example.org/thing")],
    "atom10__entry_id_no_normalization_5.xml": [((0, "atom_id"), "http://www.example.com/~bob")],
    "atom10__entry_id_no_normalization_6.xml": [((0, "atom_id"), "http://www.example.com/%7ebob")],
    "atom10__entry_id_no_normalization_7.xml": [((0, "atom_id"), "http://www.example.com/%7Ebob")],
    # Links. feedparser's "link" is the first alternate link.
    "atom10__entry_link_alternate_map_link.xml": [
        ((0, "links", 0, "rel"), "alternate"),
        ((0, "links", 0, "href"), "http://www.example.com/"),
    ],
    "atom10__entry_link_alternate_map_link_3.xml": [
        ((0, "links", 0, "rel"), "alternate"),
        ((0, "links", 0, "href"), "http://www.example.com/alternate"),
    ],
    "atom10__entry_link_href.xml": [((0, "links", 0, "href"), "http://www.example.com/")],
    "atom10__entry_link_hreflang.xml": [((0, "links", 0, "hreflang"), "en")],
    # The model stores the length as an int.
    "atom10__entry_link_length.xml": [((0, "links", 0, "length"), 42301)],
    "atom10__entry_link_no_href.xml": [
        ((0, "links", 0, "href"), "http://www.example.com/"),
        ((0, "links", 1, "href"), "http://www.example.com/"),
    ],
    "atom10__entry_link_no_href_link_priority.xml": [
        ((0, "links", 0, "rel"), "alternate"),
        ((0, "links", 0, "href"), "http://www.example.com/alternate"),
        ((1, "links", 1, "rel"), "alternate"),
        ((1, "links", 1, "href"), "http://www.example.com/alternate"),
    ],
    "atom10__entry_link_no_rel.xml": [((0, "links", 0, "rel"), "alternate")],
    "atom10__entry_link_rel_enclosure.xml": [((0, "links", 0, "rel"), "enclosure")],
    "atom10__entry_link_rel_enclosure_map_enclosure_type.xml": [
        ((0, "links", 0, "rel"), "enclosure"),
        ((0, "links", 0, "type"), "video/mpeg4"),
    ],
    "atom10__entry_link_rel_enclosure_map_enclosure_url.xml": [
        ((0, "links", 0, "rel"), "enclosure"),
        ((0, "links", 0, "href"), "http://www.example.com/movie.mp4"),
    ],
    "atom10__entry_link_rel_other.xml": [
        ((0, "links", 0, "rel"), "http://feedparser.org/rel/test"),
    ],
    "atom10__entry_link_rel_self.xml": [((0, "links", 0, "rel"), "self")],
    "atom10__entry_link_rel_via.xml": [((0, "links", 0, "rel"), "via")],
    "atom10__entry_link_type.xml": [((0, "links", 0, "type"), "text/html")],
    # Rights, a text construct like the title.
    "atom10__entry_rights_content_value.xml": [((0, "rights"), "Example Atom")],
    "atom10__entry_rights_escaped_markup.xml": [
        ((0, "rights_xhtml"), "Example <b>Atom</b>"),
        ((0, "rights"), "Example Atom"),
    ],
    "atom10__entry_rights_inline_markup.xml": [
        ((0, "rights_xhtml"), "Example <b>Atom</b>"),
        ((0, "rights"), "Example Atom"),
    ],
    "atom10__entry_rights_inline_markup_2.xml": [
        ((0, "rights_xhtml"), "History of the &lt;blink&gt; tag"),
        ((0, "rights"), "History of the <blink> tag"),
    ],
    "atom10__entry_rights_text_plain.xml": [((0, "rights"), "Example Atom")],
    "atom10__entry_rights_text_plain_brackets.xml": [
        ((0, "rights"), "History of the <blink> tag"),
        ((0, "rights_xhtml"), ABSENT),
    ],
    "atom10__entry_rights_type_text.xml": [
        ((0, "rights"), "Example Atom"),
        ((0, "rights_xhtml"), ABSENT),
    ],
    # Summary.
    "atom10__entry_summary_base64.xml": [((0, "summary"), "Example <b>Atom</b>")],
    "atom10__entry_summary_base64_2.xml": [
        ((0, "summary"), "<p>History of the &lt;blink&gt; tag</p>"),
    ],
    "atom10__entry_summary_content_value.xml": [((0, "summary"), "Example Atom")],
    "atom10__entry_summary_escaped_markup.xml": [
        ((0, "summary_xhtml"), "Example <b>Atom</b>"),
        ((0, "summary"), "Example Atom"),
    ],
    "atom10__entry_summary_inline_markup.xml": [
        ((0, "summary_xhtml"), "Example <b>Atom</b>"),
        ((0, "summary"), "Example Atom"),
    ],
    "atom10__entry_summary_inline_markup_2.xml": [
        ((0, "summary_xhtml"), "History of the &lt;blink&gt; tag"),
    ],
    "atom10__entry_summary_text_plain.xml": [((0, "summary"), "Example Atom")],
    "atom10__entry_summary_type_default.xml": [
        ((0, "summary"), "Example Atom"),
        ((0, "summary_xhtml"), ABSENT),
    ],
    "atom10__entry_summary_type_text.xml": [
        ((0, "summary"), "Example Atom"),
        ((0, "summary_xhtml"), ABSENT),
    ],
    # Title.
    "atom10__entry_title_base64.xml": [((0, "title"), "Example <b>Atom</b>")],
    "atom10__entry_title_content_value.xml": [((0, "title"), "Example Atom")],
    "atom10__entry_title_escaped_markup.xml": [
        ((0, "title_xhtml"), "Example <b>Atom</b>"),
        ((0, "title"), "Example Atom"),
    ],
    "atom10__entry_title_inline_markup.xml": [
        ((0, "title_xhtml"), "Example <b>Atom</b>"),
        ((0, "title"), "Example Atom"),
    ],
    "atom10__entry_title_inline_markup_2.xml": [
        ((0, "title_xhtml"), "History of the &lt;blink&gt; tag"),
    ],
    "atom10__entry_title_text_plain.xml": [((0, "title"), "Example Atom")],
    "atom10__entry_title_text_plain_brackets.xml": [
        ((0, "title"), "History of the <blink> tag"),
        ((0, "title_xhtml"), ABSENT),
    ],
    "atom10__entry_title_type_empty-no-crash.xml": [((0, "title"), "evil")],
    "atom10__entry_title_type_text.xml": [
        ((0, "title"), "Example Atom"),
        ((0, "title_xhtml"), ABSENT),
    ],
}

# Expected sanitised markup of the sanitize__entry_<field>_<case>.xml files,
# by case; the field is content, summary or title.
SANITIZE_EXPECTED = {
    "applet": "safe description",
    "embed": "safe description",
    "frame": "safe description",
    "iframe": "safe description",
    "link": "safe description",
    "meta": "safe description",
    "object": "safe description",
    "script": "safe description",
    "script_base64": "safe description",
    "script_cdata": "safe description",
    "script_map_description": "safe description",
    "script_inline": "<div>safe description</div>",
    "style": STYLE_LINK,
}
# Where the vector keeps markup that follows the removed element.
SANITIZE_EXPECTED_BY_FILE = {
    "sanitize__entry_content_embed.xml": "safe <b>description</b>",
    "sanitize__entry_content_iframe.xml": "safe <b>description</b>",
}
# feedparser's expected value for these keeps comments and script text; the
# checks in test_sanitize_crazy state what must and must not survive instead.
SANITIZE_CRAZY = (
    "sanitize__entry_content_crazy.xml",
    "sanitize__entry_summary_crazy.xml",
    "sanitize__entry_title_crazy.xml",
)


def sanitize_cases() -> dict[str, list[tuple[tuple[Any, ...], Any]]]:
    cases = {}
    for path in sorted(ATOM_DIR.glob("sanitize__entry_*.xml")):
        if path.name in SANITIZE_CRAZY:
            continue
        field, _, case = path.stem[len("sanitize__entry_"):].partition("_")
        if path.name in SANITIZE_EXPECTED_BY_FILE:
            expected = SANITIZE_EXPECTED_BY_FILE[path.name]
        elif case.startswith("on"):
            expected = IMG
        else:
            expected = SANITIZE_EXPECTED[case]
        cases[path.name] = [((0, f"{field}_xhtml"), expected)]
    return cases


ATOM_CASES.update(sanitize_cases())

# Vectors left out, by file name prefix, with the reason. The doc section
# "Microblog data model" lists them too.
ATOM_NOT_APPLICABLE = {
    "atom10__entry_category_label": "tags keep category terms, not their labels",
    "atom10__entry_source_": (
        "the model has no metadata of the feed an entry was copied from (<source/>); "
        "test_source_ignored checks that it does not leak into the post"
    ),
}


def not_applicable_reason(file_name: str) -> str | None:
    for prefix, reason in ATOM_NOT_APPLICABLE.items():
        if file_name.startswith(prefix):
            return reason
    return None


ATOM_FILES = sorted(path.name for path in ATOM_DIR.glob("*.xml"))
# Every Atom vector is mapped (ATOM_CASES and SANITIZE_CRAZY) or left out
# (ATOM_NOT_APPLICABLE). Update these counts, and the doc section "Microblog
# data model", when a case is added or left out.
ATOM_VECTOR_COUNT = 184
ATOM_PASS_COUNT = 142


def atom_case_failures(file_name: str) -> list[str]:
    """Return the expectations of a mapped Atom vector that the parsed data misses."""
    posts = load_atom_posts(file_name)
    if file_name in SANITIZE_CRAZY:
        return crazy_markup_failures(file_name, posts)
    failures = []
    for path, expected in ATOM_CASES[file_name]:
        value = lookup(posts, path)
        if not (value is expected or value == expected):
            failures.append(f"{file_name} {path}: {value!r}, expected {expected!r}")
    return failures


def crazy_markup_failures(file_name: str, posts: list[dict[str, Any]]) -> list[str]:
    """Check the sanitize__*_crazy vectors: what must survive, and what must not.

    feedparser's expected value keeps comments and script text; the
    sanitiser drops both, so the check names the parts instead.
    """
    field = file_name.split("_")[3]
    markup = posts[0].get(f"{field}_xhtml", "")
    lowered = markup.lower()
    required = (
        "<h1>Did The Javascript Execute?</h1>",
        "I will execute here, too, if you mouse over me",
    )
    dropped = ("<script", "executeme", "alert(", "onload", "onmouseover", "<!--")
    failures = [f"{file_name}: {part!r} missing" for part in required if part not in markup]
    failures += [f"{file_name}: {part!r} kept" for part in dropped if part in lowered]
    return failures


def remove_source(entry: domish.Element) -> domish.Element:
    """Return a copy of an entry without its <source/> elements."""
    copy = parseXml(entry.toXml())
    copy.children = [
        child for child in copy.children
        if isinstance(child, str) or child.name != "source"
    ]
    return copy


class AtomVectorTests:
    def test_every_vector_is_classified(self) -> None:
        assert len(ATOM_FILES) == ATOM_VECTOR_COUNT
        for file_name in ATOM_FILES:
            mapped = file_name in ATOM_CASES or file_name in SANITIZE_CRAZY
            not_applicable = not_applicable_reason(file_name) is not None
            assert mapped != not_applicable, f"{file_name}: mapped={mapped}"

    def test_pass_count(self) -> None:
        mapped = sorted([*ATOM_CASES, *SANITIZE_CRAZY])
        failures = [failure for name in mapped for failure in atom_case_failures(name)]
        passed = [name for name in mapped if not atom_case_failures(name)]
        assert failures == []
        assert len(passed) == ATOM_PASS_COUNT

    @pytest.mark.parametrize("file_name", ATOM_FILES)
    def test_vector_parses(self, file_name: str) -> None:
        posts = load_atom_posts(file_name)
        assert posts, f"{file_name} has no entry"
        json.dumps(posts)

    @pytest.mark.parametrize("file_name", sorted([*ATOM_CASES, *SANITIZE_CRAZY]))
    def test_vector_expectation(self, file_name: str) -> None:
        assert atom_case_failures(file_name) == []

    @pytest.mark.parametrize(
        "file_name", [name for name in ATOM_FILES if name.startswith("atom10__entry_source_")]
    )
    def test_source_ignored(self, file_name: str) -> None:
        feed = parseXml((ATOM_DIR / file_name).read_bytes())
        entry = next(feed.elements(NS_ATOM, "entry"))
        without_source = remove_source(entry)
        assert next(entry.elements(NS_ATOM, "source"), None) is not None
        assert item_to_data(wrap_entry(entry, "i")) == item_to_data(wrap_entry(without_source, "i"))

    @pytest.mark.parametrize(
        "file_name", [name for name in ATOM_FILES if name.startswith("sanitize__")]
    )
    def test_sanitized_markup_safe(self, file_name: str) -> None:
        post = load_atom_posts(file_name)[0]
        markup = next(value for key, value in post.items() if key.endswith("_xhtml"))
        lowered = markup.lower()
        for forbidden in ("<script", "<style", "<iframe", "<object", "<embed", "<applet",
                          "<meta", "<link", "<frame", " on", "javascript:", "url(",
                          "expression(", "background-x"):
            assert forbidden not in lowered, f"{file_name}: {forbidden!r} in {markup!r}"
        # The markup must be well-formed, so it can be published as Atom xhtml.
        assert parseXml(f"<div>{markup}</div>") is not None


# --- XEP-0277 examples ------------------------------------------------------------

POST_1_ATOM_ID = "tag:montague.lit,2008-05-08:posts-1cb57d9c-1c46-11dd-838c-001143d5d5db"
POST_1_XMPP_URI = (
    "xmpp:romeo@montague.lit?;node=urn%3Axmpp%3Amicroblog%3A0;"
    "item=1cb57d9c-1c46-11dd-838c-001143d5d5db"
)
CAFE = "hanging out at the Caf\u00e9 Napolitano"
CAPUCHAT = {"name": "CapuChat", "uri": "https://capu.chat", "version": "42"}

XEP_CASES: dict[int, dict[str, Any]] = {
    1: {
        "id": "1cb57d9c-1c46-11dd-838c-001143d5d5db",
        "atom_id": POST_1_ATOM_ID,
        "title": CAFE,
        "title_xhtml": ABSENT,
        "published": timestamp("2008-05-08T18:30:02+00:00"),
        "updated": timestamp("2008-05-08T18:30:02+00:00"),
        "date_source": "entry",
        "author_jid": ABSENT,
        "author_jid_verified": False,
        "generator": ABSENT,
    },
    2: {
        "title": CAFE,
        "title_xhtml": "<p>hanging out at the <strong>Caf\u00e9 Napolitano</strong></p>",
        "generator": CAPUCHAT,
    },
    # The publisher attribute of a received post verifies its author.
    3: {
        "author_jid": "romeo@montague.lit",
        "author_jid_verified": True,
        "generator": CAPUCHAT,
        "links": [
            {
                "href": "http://montague.lit/romeo/posts/1cb57d9c-1c46-11dd-838c-001143d5d5db",
                "rel": "alternate",
                "type": "text/html",
            },
            {"href": POST_1_XMPP_URI, "rel": "alternate"},
        ],
    },
    # A reply (RFC 4685). The line-wrapped xmpp: URI is joined.
    4: {
        "author": "Benvolio Montague",
        "author_uri": "xmpp:romeo@montague.lit",
        "author_jid": "romeo@montague.lit",
        "author_jid_verified": False,
        "authors": [
            {
                "name": "Benvolio Montague",
                "uri": "xmpp:romeo@montague.lit",
                "jid": "romeo@montague.lit",
            }
        ],
        "title": "@romeo cappuccino this late in the day?",
        "published": timestamp("2008-05-08T18:31:21+00:00"),
        "in_reply_to": [
            {
                "ref": POST_1_ATOM_ID,
                "href": "http://montague.lit/romeo/posts/1cb57d9c-1c46-11dd-838c-001143d5d5db",
                "type": "application/xhtml+xml",
            },
            {"ref": POST_1_ATOM_ID, "href": POST_1_XMPP_URI},
        ],
    },
    5: {
        "author": "Romeo Montague",
        "published": timestamp("2008-05-08T18:30:02+00:00"),
        "updated": timestamp("2008-05-08T18:32:02+00:00"),
        "links": [
            {
                "href": "http://montague.lit/benvolio/posts/1re57d3c-1q46-11dd-748r-024943d2d5rt",
                "rel": "alternate",
                "type": "text/html",
            },
            {
                "href": "xmpp:benvolio@montague.lit?;node=urn%3Axmpp%3Amicroblog%3A0;"
                "item=1re57d3c-1q46-11dd-748r-024943d2d5rt",
                "rel": "alternate",
            },
            # A repeated post links the original with rel="via" and its Atom id.
            {"href": POST_1_XMPP_URI, "rel": "via", "ref": POST_1_ATOM_ID},
        ],
    },
    6: {"tags": ["humour", "xmpp"]},
    7: {
        "comments": [
            {
                "uri": "xmpp:pubsub.montague.lit?;node=urn%3Axmpp%3Amicroblog%3A0%3Acomments"
                "%2Fdd88c9bc58886fce0049ed050df0c5f2",
                "service": "pubsub.montague.lit",
                "node": NS_COMMENT_PREFIX + "dd88c9bc58886fce0049ed050df0c5f2",
            }
        ],
        "links": ABSENT,
    },
    # A comment: no Atom id and no <updated/>.
    8: {
        "atom_id": ABSENT,
        "author": "Juliet Capulet",
        "author_jid": "juliet@capulet.lit",
        "author_jid_verified": False,
        "title": "She is so pretty!",
        "published": timestamp("2008-05-08T18:39:02+00:00"),
        "updated": timestamp("2008-05-08T18:39:02+00:00"),
        "date_source": "entry",
    },
    11: {
        "author_jid": "romeo@montague.lit",
        "title": "Is lost in the forest. Need help!",
        "geoloc": {
            "lat": 48.171761,
            "lon": -3.3667986,
            "country": "France",
            "countrycode": "FR",
            "region": "Brittany",
        },
        "comments": [
            {
                "uri": "xmpp:pubsub.montague.lit?;node=urn%3Axmpp%3Amicroblog%3A0%3Acomments"
                "%2F36ec6dfe61e52b1e2cdb248823520233",
                "service": "pubsub.montague.lit",
                "node": NS_COMMENT_PREFIX + "36ec6dfe61e52b1e2cdb248823520233",
            }
        ],
    },
}

# Examples that item_to_data rejects, with the reason.
XEP_REJECTED = {
    9: "node metadata is an Atom <feed/>, not an <entry/>",
    10: "node metadata is an Atom <feed/>, not an <entry/>",
}
# Mapped examples whose expectations hold, plus rejected examples that raise.
XEP_PASS_COUNT = 11


def xep_example_failures(number: int) -> list[str]:
    """Return the expectations of a XEP-0277 example that item_to_data misses."""
    item = xep_example_item(number)
    if number in XEP_REJECTED:
        try:
            item_to_data(item)
        except ValueError:
            return []
        return [f"example {number} was parsed, but {XEP_REJECTED[number]}"]
    data = item_to_data(item)
    failures = []
    for key, expected in XEP_CASES[number].items():
        value = data.get(key, ABSENT)
        if not (value is expected or value == expected):
            failures.append(f"example {number} {key}: {value!r}, expected {expected!r}")
    return failures


class XepExampleTests:
    def test_every_example_is_classified(self) -> None:
        for number in load_xep_examples():
            assert (number in XEP_CASES) != (number in XEP_REJECTED), number

    def test_pass_count(self) -> None:
        numbers = sorted(load_xep_examples())
        failures = [failure for number in numbers for failure in xep_example_failures(number)]
        passed = [number for number in numbers if not xep_example_failures(number)]
        assert failures == []
        assert len(passed) == XEP_PASS_COUNT

    @pytest.mark.parametrize("number", sorted(XEP_CASES))
    def test_example_expectation(self, number: int) -> None:
        assert xep_example_failures(number) == []

    @pytest.mark.parametrize("number", sorted(XEP_REJECTED))
    def test_example_rejected(self, number: int) -> None:
        item = xep_example_item(number)
        with pytest.raises(ValueError, match=item["id"]):
            item_to_data(item)

    def test_service_and_node_kept(self) -> None:
        data = item_to_data(xep_example_item(1), "romeo@montague.lit", NS_MICROBLOG)
        assert data["service"] == "romeo@montague.lit"
        assert data["node"] == NS_MICROBLOG

    def test_result_is_json(self) -> None:
        for number in XEP_CASES:
            data = item_to_data(xep_example_item(number))
            assert json.loads(json.dumps(data)) == data


# --- dates ------------------------------------------------------------------------


def entry_item(
    entry_children: str, item_id: str = "post-1", publisher: str | None = None
) -> domish.Element:
    publisher_attribute = f' publisher="{publisher}"' if publisher else ""
    return parseXml(
        f'<item xmlns="http://jabber.org/protocol/pubsub" id="{item_id}"{publisher_attribute}>'
        f'<entry xmlns="{NS_ATOM}">{entry_children}</entry></item>'
    )


class DateTests:
    def test_offset_stored_as_utc(self) -> None:
        data = item_to_data(
            entry_item(
                "<id>urn:x:1</id><published>2008-05-08T20:30:02+02:00</published>"
                "<updated>2008-05-08T13:30:02-05:00</updated>"
            )
        )
        assert data["published"] == timestamp("2008-05-08T18:30:02+00:00")
        assert data["updated"] == timestamp("2008-05-08T18:30:02+00:00")

    def test_fractional_seconds(self) -> None:
        data = item_to_data(entry_item("<id>u</id><updated>2008-05-08T18:30:02.250Z</updated>"))
        assert data["updated"] == timestamp("2008-05-08T18:30:02.250+00:00")

    def test_rfc_822_date(self) -> None:
        data = item_to_data(
            entry_item("<id>u</id><published>Thu, 08 May 2008 18:30:02 GMT</published>")
        )
        assert data["published"] == timestamp("2008-05-08T18:30:02+00:00")

    def test_date_without_zone_is_utc(self) -> None:
        data = item_to_data(entry_item("<id>u</id><published>2008-05-08T18:30:02</published>"))
        assert data["published"] == timestamp("2008-05-08T18:30:02+00:00")

    def test_no_dates_nor_time_ids(self) -> None:
        data = item_to_data(entry_item("<id>u</id><title>t</title>"))
        assert "published" not in data
        assert "updated" not in data
        assert "date_source" not in data

    def test_no_dates_uuid1_item_id(self) -> None:
        # The item id of XEP-0277's first example is a version 1 UUID.
        item = entry_item("<id>u</id>", item_id="1cb57d9c-1c46-11dd-838c-001143d5d5db")
        data = item_to_data(item)
        assert data["published"] == timestamp("2008-05-07T14:58:54.592758+00:00")
        assert data["updated"] == data["published"]
        assert data["date_source"] == "item id"

    def test_no_dates_uuid6_item_id(self) -> None:
        # A version 6 UUID made at 2022-02-22T19:22:22Z.
        item = entry_item("<id>u</id>", item_id="1ec9414c-232a-6b00-b3c8-9f6bdeced846")
        data = item_to_data(item)
        assert data["published"] == timestamp("2022-02-22T19:22:22+00:00")
        assert data["date_source"] == "item id"

    def test_no_dates_uuid7_atom_id(self) -> None:
        # A version 7 UUID made at 2022-02-22T19:22:22Z.
        item = entry_item("<id>urn:uuid:017f22e2-79b0-7cc3-98c4-dc0c0c07398f</id>")
        data = item_to_data(item)
        assert data["published"] == timestamp("2022-02-22T19:22:22+00:00")
        assert data["date_source"] == "atom id"

    def test_no_dates_uuid4_ignored(self) -> None:
        item = entry_item("<id>urn:uuid:1b4e28ba-2fa1-4d2b-883f-0016d3cca427</id>",
                          item_id="9f3c6a52-8d0e-4c6b-a1f2-3e5d7c9b1a20")
        assert "published" not in item_to_data(item)

    def test_no_dates_hex_id_ignored(self) -> None:
        # 32 hex digits read as a UUID would be version 1 (the 13th digit).
        item = entry_item("<id>u</id>", item_id="dd88c9bc58881fce8049ed050df0c5f2")
        assert "published" not in item_to_data(item)

    def test_no_dates_tag_uri(self) -> None:
        item = entry_item("<id>tag:montague.lit,2008-05-08:posts-1</id>", item_id="posts-1")
        data = item_to_data(item)
        assert data["published"] == timestamp("2008-05-08T00:00:00+00:00")
        assert data["date_source"] == "atom id"

    def test_no_dates_tag_uri_year_only(self) -> None:
        item = entry_item("<id>tag:example.org,2004:x</id>")
        assert item_to_data(item)["published"] == timestamp("2004-01-01T00:00:00+00:00")

    def test_no_dates_tag_uri_invalid_date(self) -> None:
        item = entry_item("<id>tag:example.org,2004-13-40:x</id>")
        assert "published" not in item_to_data(item)

    def test_no_dates_stable_across_parses(self) -> None:
        xml = entry_item("<id>tag:example.org,2004:x</id>", item_id="p").toXml()
        first = item_to_data(parseXml(xml))
        time.sleep(0.01)
        assert item_to_data(parseXml(xml)) == first

    def test_entry_dates_win_over_ids(self) -> None:
        item = entry_item(
            "<id>tag:example.org,2004:x</id><updated>2010-01-01T00:00:00Z</updated>",
            item_id="1cb57d9c-1c46-11dd-838c-001143d5d5db",
        )
        data = item_to_data(item)
        assert data["published"] == timestamp("2010-01-01T00:00:00+00:00")
        assert data["date_source"] == "entry"

    def test_atom_03_dates(self) -> None:
        item = parseXml(
            f'<item id="i"><entry xmlns="{NS_ATOM_03}"><issued>2004-01-01T00:00:00Z</issued>'
            "<modified>2004-01-02T00:00:00Z</modified></entry></item>"
        )
        data = item_to_data(item)
        assert data["published"] == timestamp("2004-01-01T00:00:00+00:00")
        assert data["updated"] == timestamp("2004-01-02T00:00:00+00:00")

    def test_published_only(self) -> None:
        data = item_to_data(entry_item("<id>u</id><published>2008-05-08T18:30:02Z</published>"))
        assert data["updated"] == data["published"]

    def test_updated_only(self) -> None:
        data = item_to_data(entry_item("<id>u</id><updated>2008-05-08T18:30:02Z</updated>"))
        assert data["published"] == data["updated"]

    def test_invalid_date_ignored(self) -> None:
        data = item_to_data(
            entry_item(
                "<id>u</id><published>yesterday-ish</published>"
                "<updated>2008-05-08T18:30:02Z</updated>"
            )
        )
        assert data["published"] == timestamp("2008-05-08T18:30:02+00:00")


# --- round trip ---------------------------------------------------------------


class RoundTripTests:
    def test_fields_kept(self) -> None:
        data = {
            "id": "post-1",
            "atom_id": "tag:example.org,2024:post-1",
            "title": "Hello",
            "content": "First line\nsecond line",
            "summary": "Greeting",
            "published": timestamp("2024-01-02T03:04:05+00:00"),
            "updated": timestamp("2024-01-02T04:05:06.5+00:00"),
            "author": "Juliet Capulet",
            "author_uri": "xmpp:juliet@capulet.lit",
            "author_email": "juliet@capulet.lit",
            "author_jid": "juliet@capulet.lit",
            "tags": ["verona", "balcony"],
            "language": "en",
            "links": [
                {"href": "https://capulet.lit/post-1", "rel": "alternate", "type": "text/html"},
                {
                    "href": "https://capulet.lit/song.ogg",
                    "rel": "enclosure",
                    "type": "audio/ogg",
                    "title": "Song",
                    "length": 1234,
                },
            ],
            "comments": [
                {
                    "uri": "xmpp:pubsub.capulet.lit?;node=urn%3Axmpp%3Amicroblog%3A0%3A"
                    "comments%2Fpost-1",
                    "service": "pubsub.capulet.lit",
                    "node": NS_COMMENT_PREFIX + "post-1",
                }
            ],
        }
        parsed = item_to_data(parseXml(data_to_item(data).toXml()))
        for key, value in data.items():
            assert parsed.get(key) == value, key

    def test_xhtml_kept(self) -> None:
        data = {
            "id": "post-2",
            "atom_id": "urn:x:2",
            "title_xhtml": "Hello <em>world</em>",
            "content_xhtml": (
                '<p>Look: <a href="https://example.org/">here</a></p>'
                '<img src="https://example.org/a.png" />'
            ),
        }
        parsed = item_to_data(parseXml(data_to_item(data).toXml()))
        assert parsed["title_xhtml"] == data["title_xhtml"]
        assert parsed["title"] == "Hello world"
        assert parsed["content_xhtml"] == data["content_xhtml"]
        assert parsed["content"] == "Look: here"

    def test_xhtml_sanitised_on_build(self) -> None:
        item = data_to_item({"content_xhtml": "<p onclick='x()'>hi<script>x()</script>"})
        parsed = item_to_data(parseXml(item.toXml()))
        assert parsed["content_xhtml"] == "<p>hi</p>"

    def test_comments_uri_built(self) -> None:
        node = NS_COMMENT_PREFIX + "abc/def"
        item = data_to_item({"comments": [{"service": "pubsub.example.org", "node": node}]})
        parsed = item_to_data(parseXml(item.toXml()))
        assert parsed["comments"][0]["service"] == "pubsub.example.org"
        assert parsed["comments"][0]["node"] == node

    def test_ids_generated(self) -> None:
        parsed = item_to_data(parseXml(data_to_item({"title": "t"}).toXml()))
        assert parsed["id"]
        assert parsed["atom_id"].startswith("urn:uuid:")

    def test_dates_default_to_now(self) -> None:
        before = int(time.time())
        parsed = item_to_data(parseXml(data_to_item({"title": "t"}).toXml()))
        assert parsed["published"] >= before
        assert parsed["updated"] == parsed["published"]

    def test_dates_rfc_3339_utc(self) -> None:
        item = data_to_item({"published": timestamp("2024-01-02T05:04:05+02:00")})
        entry = next(item.elements(NS_ATOM, "entry"))
        published = next(entry.elements(NS_ATOM, "published"))
        assert str(published) == "2024-01-02T03:04:05Z"

    def test_date_strings_accepted(self) -> None:
        item = data_to_item({"published": "2024-01-02T05:04:05+02:00", "updated": "2024-01-03"})
        parsed = item_to_data(parseXml(item.toXml()))
        assert parsed["published"] == timestamp("2024-01-02T03:04:05+00:00")
        assert parsed["updated"] == timestamp("2024-01-03T00:00:00+00:00")

    def test_extended_fields_kept(self) -> None:
        data = {
            "id": "reply-1",
            "authors": [
                {"name": "Romeo", "uri": "xmpp:romeo@montague.lit", "jid": "romeo@montague.lit"},
                {"name": "Benvolio", "email": "benvolio@montague.lit"},
            ],
            "contributors": [{"name": "Mercutio", "uri": "https://mercutio.lit/"}],
            "rights": "CC BY 4.0",
            "rights_xhtml": '<a href="https://creativecommons.org/licenses/by/4.0/">CC BY 4.0</a>',
            "in_reply_to": [
                {"ref": POST_1_ATOM_ID, "href": POST_1_XMPP_URI, "type": "application/atom+xml"}
            ],
            "links": [{"href": POST_1_XMPP_URI, "rel": "via", "ref": POST_1_ATOM_ID}],
            "generator": {"name": "Libervia", "uri": "https://libervia.org", "version": "0.1"},
            "geoloc": {"lat": 48.5, "lon": -3.25, "locality": "Brest"},
        }
        parsed = item_to_data(parseXml(data_to_item(data).toXml()))
        for key, value in data.items():
            assert parsed.get(key) == value, key
        assert parsed["author"] == "Romeo"
        assert parsed["author_jid"] == "romeo@montague.lit"

    def test_author_keys_win_over_authors(self) -> None:
        data = {
            "author": "New name",
            "author_jid": "juliet@capulet.lit",
            "authors": [{"name": "Old name"}, {"name": "Nurse"}],
        }
        parsed = item_to_data(parseXml(data_to_item(data).toXml()))
        assert [author.get("name") for author in parsed["authors"]] == ["New name", "Nurse"]
        assert parsed["author_uri"] == "xmpp:juliet@capulet.lit"

    def test_invalid_xml_characters_removed(self) -> None:
        item = data_to_item({"title": "a\x00b\x0bc\r\nd", "tags": ["t\x1f"]})
        parsed = item_to_data(parseXml(item.toXml()))
        assert parsed["title"] == "abc\nd"
        assert parsed["tags"] == ["t"]

    def test_unsafe_xhtml_falls_back_to_text(self) -> None:
        item = data_to_item({"content": "plain", "content_xhtml": "<script>x()</script>"})
        parsed = item_to_data(parseXml(item.toXml()))
        assert parsed["content"] == "plain"
        assert "content_xhtml" not in parsed

    @given(
        title=PLAIN_TEXT,
        content=PLAIN_TEXT,
        summary=PLAIN_TEXT,
        tags=st.lists(PLAIN_TEXT.filter(bool), unique=True, max_size=5),
        published=st.integers(0, 4_102_444_800),
        edited_after=st.integers(0, 10_000_000),
        language=st.sampled_from(["en", "fr-CA", "zh-Hant-TW"]),
        author=PLAIN_TEXT.filter(bool),
        href=st.sampled_from(["https://example.org/a?b=c&d=e", "xmpp:x@example.org", "/rel"]),
    )
    def test_round_trip_property(
        self, title: str, content: str, summary: str, tags: list[str], published: int,
        edited_after: int, language: str, author: str, href: str,
    ) -> None:
        data = {
            "id": "p",
            "atom_id": "urn:x:p",
            "title": title,
            "content": content,
            "summary": summary,
            "tags": tags,
            "published": float(published),
            "updated": float(published + edited_after),
            "language": language,
            "author": author,
            "links": [{"href": href, "rel": "related", "title": title or "t"}],
        }
        parsed = item_to_data(parseXml(data_to_item(data).toXml()))
        for key, value in data.items():
            if key in ("content", "summary", "tags") and not value:
                assert key not in parsed
            else:
                assert parsed[key] == value, key


class DataValidationTests:
    @pytest.mark.parametrize(
        "data, message",
        [
            ({"title": 1}, "title must be a string"),
            ({"content_xhtml": ["<p/>"]}, "content_xhtml must be a string"),
            ({"tags": "a,b"}, "tags must be a list of strings"),
            ({"tags": ["a", 2]}, "each tag must be a string, not 2"),
            ({"authors": ["Juliet"]}, "each entry of authors must be a mapping, not 'Juliet'"),
            ({"tags": ["  "]}, "empty tag"),
            ({"links": [{"rel": "alternate"}]}, "has no href"),
            ({"links": "https://example.org/"}, "links must be a list of mappings"),
            ({"comments": [{"node": "n"}]}, "give a uri, or a service and a node"),
            ({"in_reply_to": [{"href": "https://example.org/"}]}, "has no ref"),
            ({"published": True}, "published must be a timestamp"),
            ({"published": "last tuesday-ish"}, "is not a date"),
            ({"updated": float("nan")}, "is not a date"),
            ({"geoloc": {"lat": 1, "bad name": 2}}, "not a XEP-0080 element name"),
            ({"generator": "me"}, "generator must be a mapping"),
        ],
    )
    def test_invalid_data_rejected(self, data: dict[str, Any], message: str) -> None:
        with pytest.raises(InvalidValue, match=re.escape(message)):
            data_to_item(data)


# --- malformed items and authors ---------------------------------------------------


class MalformedTests:
    def test_item_without_entry(self) -> None:
        item = parseXml('<item id="no-entry"><foo xmlns="urn:x"/></item>')
        with pytest.raises(ValueError, match="no-entry"):
            item_to_data(item)

    def test_entry_without_id(self) -> None:
        data = item_to_data(entry_item("<title>t</title>", item_id="no-atom-id"))
        assert "atom_id" not in data
        assert data["title"] == "t"

    def test_item_without_id(self) -> None:
        item = parseXml(f'<item><entry xmlns="{NS_ATOM}"><id>u</id></entry></item>')
        with pytest.raises(ValueError, match="missing item id"):
            item_to_data(item)

    def test_invalid_base64_skipped(self) -> None:
        data = item_to_data(
            entry_item('<id>u</id><content type="application/octet-stream">!!!</content>')
        )
        assert "content" not in data

    def test_out_of_line_content_ignored(self) -> None:
        data = item_to_data(
            entry_item('<id>u</id><content type="text/html" src="https://example.org/p"/>')
        )
        assert "content" not in data

    def test_invalid_author_jid_ignored(self) -> None:
        data = item_to_data(entry_item("<id>u</id><author><uri>xmpp:@@</uri></author>"))
        assert data["author_uri"] == "xmpp:@@"
        assert "author_jid" not in data


class AuthorTests:
    def test_author_matches_publisher(self) -> None:
        data = item_to_data(
            entry_item(
                "<id>u</id><author><uri>xmpp:juliet@capulet.lit</uri></author>",
                publisher="juliet@capulet.lit/balcony",
            )
        )
        assert data["author_jid_verified"] is True

    def test_author_differs_from_publisher(self) -> None:
        data = item_to_data(
            entry_item(
                "<id>u</id><author><uri>xmpp:juliet@capulet.lit</uri></author>",
                publisher="tybalt@capulet.lit",
            )
        )
        assert data["author_jid"] == "juliet@capulet.lit"
        assert data["author_jid_verified"] is False

    def test_publisher_without_author(self) -> None:
        data = item_to_data(entry_item("<id>u</id>", publisher="juliet@capulet.lit/balcony"))
        assert data["author_jid"] == "juliet@capulet.lit"
        assert data["author_jid_verified"] is True

    def test_language(self) -> None:
        item = parseXml(
            f'<item id="i"><entry xmlns="{NS_ATOM}" xml:lang="fr"><id>u</id></entry></item>'
        )
        assert item_to_data(item)["language"] == "fr"


# --- sanitiser --------------------------------------------------------------------


# Pieces of hostile or broken HTML that the property test combines at random.
HTML_FRAGMENTS = [
    "text", " ", "\n", "&amp;", "&lt;", "&#x6a;", "<", ">", "/", '"', "'", "=",
    "<b>", "</b>", "<p>", "</p>", "<div>", "</i>", "<br>", "<br/>", "<!--", "-->",
    "<script>", "</script>", "<style>", "</style>", "<iframe src=x>", "<embed src=x>",
    "<img src=x onerror=alert(1)>", "<a href='javascript:alert(1)'>",
    "<a href=' java\tscript:x'>",
    "<a href=\"http://example.org/\">", "</a>", "<svg onload=x>", "<![CDATA[", "]]>",
    "<!DOCTYPE html>", "\x00", "\x0b", "<table><tr><td>", "<template>",
]


def iter_elements(element: domish.Element) -> Iterator[domish.Element]:
    for child in element.elements():
        yield child
        yield from iter_elements(child)


class SanitiserTests:
    def test_javascript_url_removed(self) -> None:
        _, markup = sanitise_html('<a href="javascript:alert(1)">x</a>')
        assert markup == "<a>x</a>"

    def test_obfuscated_javascript_url_removed(self) -> None:
        _, markup = sanitise_html('<a href=" jav&#x61;\tscript:alert(1)">x</a>')
        assert markup == "<a>x</a>"

    def test_data_url_removed(self) -> None:
        _, markup = sanitise_html('<img src="data:text/html;base64,PHNjcmlwdD4=" alt="a">')
        assert markup == '<img alt="a" />'

    def test_relative_url_kept(self) -> None:
        _, markup = sanitise_html('<a href="/posts/1?x=a:b">x</a>')
        assert markup == '<a href="/posts/1?x=a:b">x</a>'

    def test_unclosed_tags_closed(self) -> None:
        _, markup = sanitise_html("<p><b>bold<i>both</p>after")
        assert markup == "<p><b>bold<i>both</i></b></p>after"

    def test_stray_end_tag_ignored(self) -> None:
        _, markup = sanitise_html("a</div>b")
        assert markup == "ab"

    def test_text_escaped(self) -> None:
        _, markup = sanitise_html("1 &lt; 2 &amp; <b title='\"q\"'>x</b>")
        assert markup == '1 &lt; 2 &amp; <b title="&quot;q&quot;">x</b>'

    def test_plain_text_lines(self) -> None:
        plain, _ = sanitise_html("<p>one\n  two</p><p>three<br>four</p>")
        assert plain == "one two\nthree\nfour"

    @given(st.lists(st.sampled_from(HTML_FRAGMENTS), max_size=30).map("".join))
    def test_output_well_formed_and_allowed(self, html: str) -> None:
        _, markup = sanitise_html(html)
        document = parseXml(f"<root>{markup}</root>")
        assert document is not None, repr(html)
        for element in iter_elements(document):
            assert element.name in plugin_xep_0277.ALLOWED_TAGS, repr(html)
            for name, value in element.attributes.items():
                assert not name.lower().startswith("on"), repr(html)
                if name in plugin_xep_0277.URL_ATTRIBUTES:
                    assert "script" not in value.lower(), repr(html)

    def test_style_element_dropped(self) -> None:
        plain, markup = sanitise_html("<style>p { color: red }</style><p>x</p>")
        assert markup == "<p>x</p>"
        assert plain == "x"

    def test_style_import_dropped(self) -> None:
        _, markup = sanitise_html('<style>@import url("http://evil.example/x.css");</style>x')
        assert markup == "x"

    def test_style_attribute_kept(self) -> None:
        _, markup = sanitise_html(
            '<span style="COLOR: Red;font-weight:bold ; text-align: center">x</span>'
        )
        assert markup == '<span style="color: Red; font-weight: bold; text-align: center">x</span>'

    def test_style_colour_functions_kept(self) -> None:
        assert sanitise_style("color: rgb(1, 2, 3) !important") == "color: rgb(1, 2, 3) !important"
        assert sanitise_style("background-color: hsla(120, 50%, 50%, .5)") == (
            "background-color: hsla(120, 50%, 50%, .5)"
        )

    def test_style_font_names_kept(self) -> None:
        assert sanitise_style("font-family: 'DejaVu Sans', serif") == (
            "font-family: 'DejaVu Sans', serif"
        )

    @pytest.mark.parametrize(
        "style",
        [
            "background: url(http://tracker.example/pixel.png)",
            "background-image: url('http://tracker.example/pixel.png')",
            "color: url(http://tracker.example/)",
            "width: expression(alert(1))",
            "width: EXPRESSION (alert(1))",
            "color: u\\72 l(http://tracker.example/)",
            "color: red /* comment */",
            "@import url(http://evil.example/x.css)",
            "behavior: url(script.htc)",
            "-moz-binding: url(http://evil.example/x.xml#x)",
            "list-style: url(http://tracker.example/bullet.png)",
            "cursor: url(http://tracker.example/c.cur), auto",
            "color: image-set('a.png' 1x)",
            "width: calc(100% - 1px)",
            "color: javascript:alert(1)",
            "position: fixed",
            "color:",
            "no declaration",
        ],
    )
    def test_style_unsafe_dropped(self, style: str) -> None:
        assert sanitise_style(style) == ""

    def test_style_attribute_removed_when_empty(self) -> None:
        _, markup = sanitise_html('<p style="background: url(http://tracker.example/)">x</p>')
        assert markup == "<p>x</p>"

    def test_style_safe_part_kept(self) -> None:
        _, markup = sanitise_html(
            '<p style="color: blue; background-image: url(http://tracker.example/)">x</p>'
        )
        assert markup == '<p style="color: blue">x</p>'

    def test_style_in_xhtml_filtered(self) -> None:
        item = entry_item(
            '<id>u</id><content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml">'
            '<p style="color: red; background: url(http://tracker.example/)" onclick="x()">'
            "hi</p></div></content>"
        )
        assert item_to_data(item)["content_xhtml"] == '<p style="color: red">hi</p>'

    @given(st.text(alphabet=st.sampled_from("abcdeklmnoprstuxz:;()'\" /*@!#,.-\\ 0123"),
                   max_size=60))
    def test_style_output_safe(self, style: str) -> None:
        output = sanitise_style(style).lower()
        for forbidden in ("url(", "expression(", "@", "\\", "/*"):
            assert forbidden not in output, repr(style)
        for declaration in filter(None, output.split("; ")):
            name, _, value = declaration.partition(": ")
            assert name in plugin_xep_0277.STYLE_PROPERTIES, repr(style)
            assert ":" not in value, repr(style)


# --- plugin, with a recording host ----------------------------------------------------


class RecordingBridge:
    def __init__(self) -> None:
        self.methods: dict[str, Any] = {}

    def register_method(self, name: str, method: Any) -> None:
        self.methods[name] = method


class RecordingCache:
    def __init__(self) -> None:
        self.analysers: list[dict[str, Any]] = []

    def register_analyser(self, analyser: dict[str, Any]) -> None:
        self.analysers.append(analyser)


class StaticPubsub:
    """XEP-0060 stand-in returning fixed items and recording publications."""

    def __init__(self, items: list[domish.Element]) -> None:
        self.items = items
        self.get_requests: list[tuple[Any, ...]] = []
        self.published: list[tuple[Any, ...]] = []

    async def get_items(self, client, service, node, max_items=None, item_ids=None,
                        sub_id=None, extra=None):
        self.get_requests.append((service, node, max_items, extra))
        return self.items, {"service": service, "node": node, "complete": True,
                            "from_cache": False}

    async def publish(self, client, service, node, items, options=None):
        self.published.append((service, node, items, options))
        return [items[0]["id"]]


class Client:
    profile = "juliet"
    jid = jid.JID("juliet@capulet.lit/balcony")


class Host:
    def __init__(self, pubsub: StaticPubsub, with_cache: bool = True) -> None:
        self.bridge = RecordingBridge()
        self.plugins: dict[str, Any] = {"XEP-0060": pubsub}
        if with_cache:
            self.plugins["PUBSUB_CACHE"] = RecordingCache()
        self.client = Client()

    def get_client(self, profile: str | None) -> Client:
        return self.client


class PluginTests:
    def test_analysers_registered(self) -> None:
        host = Host(StaticPubsub([]))
        XEP_0277(host)
        registered = host.plugins["PUBSUB_CACHE"].analysers
        analysers = {analyser["name"]: analyser for analyser in registered}
        assert analysers["XEP-0277"]["node"] == NS_MICROBLOG
        assert analysers["XEP-0277"]["to_sync"] is True
        assert analysers["XEP-0277 comments"]["node"] == NS_COMMENT_PREFIX
        assert analysers["XEP-0277 comments"]["subtype"] == "comment"
        assert analysers["XEP-0277 comments"]["to_sync"] is False

    def test_works_without_cache(self) -> None:
        host = Host(StaticPubsub([]), with_cache=False)
        XEP_0277(host)
        assert set(host.bridge.methods) == {"mb_get", "mb_send", "mb_retract"}

    def test_cache_parser(self) -> None:
        host = Host(StaticPubsub([]))
        plugin = XEP_0277(host)
        data = plugin._cache_parser(host.client, xep_example_item(1), None, NS_MICROBLOG)
        assert data["service"] == "juliet@capulet.lit"
        assert data["title"] == CAFE

    def test_cache_parser_malformed(self) -> None:
        host = Host(StaticPubsub([]))
        plugin = XEP_0277(host)
        service = jid.JID("romeo@montague.lit")
        data = plugin._cache_parser(host.client, xep_example_item(9), service, NS_MICROBLOG)
        assert data is None

    @pytest_twisted.ensureDeferred
    async def test_mb_get_skips_malformed(self) -> None:
        pubsub = StaticPubsub([xep_example_item(9), xep_example_item(1)])
        host = Host(pubsub)
        XEP_0277(host)
        result = await host.bridge.methods["mb_get"](service="", max_items=5)
        item_ids = [post["id"] for post in result["items"]]
        assert item_ids == ["1cb57d9c-1c46-11dd-838c-001143d5d5db"]
        assert pubsub.get_requests == [(jid.JID("juliet@capulet.lit"), NS_MICROBLOG, 5, {})]
        assert result["metadata"]["service"] == "juliet@capulet.lit"
        json.dumps(result)

    @pytest_twisted.ensureDeferred
    async def test_mb_send_default_options(self) -> None:
        pubsub = StaticPubsub([])
        host = Host(pubsub)
        XEP_0277(host)
        result = await host.bridge.methods["mb_send"](
            service="pubsub.capulet.lit", data={"id": "p1", "title": "Hi"}
        )
        assert result == {"item_id": "p1"}
        service, node, items, options = pubsub.published[0]
        assert service == jid.JID("pubsub.capulet.lit")
        assert node == NS_MICROBLOG
        assert options == plugin_xep_0277.DEFAULT_PUBLISH_OPTIONS
        assert item_to_data(items[0])["title"] == "Hi"

    @pytest_twisted.ensureDeferred
    async def test_mb_send_without_options(self) -> None:
        pubsub = StaticPubsub([])
        host = Host(pubsub)
        XEP_0277(host)
        await host.bridge.methods["mb_send"](data={"title": "Hi", "options": None})
        assert pubsub.published[0][3] is None


class NodePubsub(StaticPubsub):
    """XEP-0060 stand-in that also keeps nodes and records node and retract requests.

    ``get_items`` with item ids returns the published items with those ids
    (the last publication of each), or raises item-not-found when the node
    has none, as Prosody 0.12 and ejabberd 23.01 do for a missing node.
    """

    def __init__(self, existing_nodes: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__([])
        self.nodes: dict[tuple[str, str], dict[str, Any] | None] = {
            key: None for key in existing_nodes
        }
        self.created: list[tuple[str, str, dict[str, Any] | None]] = []
        self.deleted: list[tuple[str, str]] = []
        self.retracted: list[tuple[str, str, list[str], bool]] = []
        self.item_id_requests: list[list[str] | None] = []

    async def get_items(self, client, service, node, max_items=None, item_ids=None,
                        sub_id=None, extra=None):
        self.item_id_requests.append(item_ids)
        found = {
            item["id"]: item
            for published_service, published_node, items, _ in self.published
            if (published_service, published_node) == (service, node)
            for item in items
        }
        if item_ids is None:
            return list(found.values()), {"service": service, "node": node}
        if not found:
            raise PubsubItemNotFound("item-not-found", service.full(), node, "item-not-found")
        items = [parseXml(found[item_id].toXml()) for item_id in item_ids if item_id in found]
        return items, {"service": service, "node": node}

    async def create_node(self, client, service, node, options=None):
        key = (service.full(), node)
        if key in self.nodes:
            raise PubsubConflict("conflict", service.full(), node, "conflict")
        self.nodes[key] = options
        self.created.append((service.full(), node, options))
        return node

    async def delete_node(self, client, service, node, redirect_uri=None):
        key = (service.full(), node)
        if key not in self.nodes:
            raise PubsubItemNotFound("item-not-found", service.full(), node, "item-not-found")
        del self.nodes[key]
        self.deleted.append(key)

    async def retract_items(self, client, service, node, item_ids, notify=True):
        self.retracted.append((service.full(), node, item_ids, notify))


def plugin_with(pubsub: NodePubsub) -> tuple[XEP_0277, Host]:
    host = Host(pubsub)
    return XEP_0277(host), host


def published_data(pubsub: NodePubsub, index: int = -1) -> dict[str, Any]:
    """Return the microblog data of a published item, read back from its XML."""
    return item_to_data(parseXml(pubsub.published[index][2][0].toXml()))


AUTHOR_BLOG = jid.JID("juliet@capulet.lit")


class SendTests:
    @pytest_twisted.ensureDeferred
    async def test_comments_node_created(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        result = await plugin.mb_send(
            host.client, AUTHOR_BLOG, NS_MICROBLOG,
            {"id": "p1", "title": "Talk", "allow_comments": True},
        )
        node = NS_COMMENT_PREFIX + "p1"
        assert pubsub.created == [
            ("juliet@capulet.lit", node, plugin_xep_0277.COMMENTS_NODE_OPTIONS)
        ]
        uri = "xmpp:juliet@capulet.lit?;node=urn%3Axmpp%3Amicroblog%3A0%3Acomments%2Fp1"
        expected = [{"uri": uri, "service": "juliet@capulet.lit", "node": node}]
        assert result == {"item_id": "p1", "comments": expected}
        assert published_data(pubsub)["comments"] == expected

    @pytest_twisted.ensureDeferred
    async def test_comments_node_on_other_service(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        result = await plugin.mb_send(
            host.client, AUTHOR_BLOG, NS_MICROBLOG,
            {"id": "p1", "allow_comments": True, "comments_service": "pubsub.capulet.lit"},
        )
        assert pubsub.created[0][:2] == ("pubsub.capulet.lit", NS_COMMENT_PREFIX + "p1")
        assert result["comments"][0]["service"] == "pubsub.capulet.lit"

    @pytest_twisted.ensureDeferred
    async def test_existing_comments_node_reused(self) -> None:
        node = NS_COMMENT_PREFIX + "p1"
        pubsub = NodePubsub(existing_nodes=(("juliet@capulet.lit", node),))
        plugin, host = plugin_with(pubsub)
        result = await plugin.mb_send(
            host.client, AUTHOR_BLOG, NS_MICROBLOG, {"id": "p1", "allow_comments": True}
        )
        assert pubsub.created == []
        assert result["comments"][0]["node"] == node

    @pytest_twisted.ensureDeferred
    async def test_comments_given_not_created(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        comments = [{"service": "pubsub.capulet.lit", "node": NS_COMMENT_PREFIX + "x"}]
        await plugin.mb_send(
            host.client, AUTHOR_BLOG, NS_MICROBLOG,
            {"allow_comments": True, "comments": comments},
        )
        assert pubsub.created == []
        assert published_data(pubsub)["comments"][0]["node"] == NS_COMMENT_PREFIX + "x"

    @pytest_twisted.ensureDeferred
    async def test_request_keys_not_published(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        await plugin.mb_send(
            host.client, AUTHOR_BLOG, NS_MICROBLOG,
            {"title": "t", "allow_comments": False, "options": None},
        )
        xml = pubsub.published[0][2][0].toXml()
        assert "allow_comments" not in xml
        assert "options" not in xml
        assert pubsub.published[0][3] is None

    @pytest_twisted.ensureDeferred
    async def test_edit_keeps_published_fields(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        await plugin.mb_send(
            host.client, AUTHOR_BLOG, NS_MICROBLOG,
            {"id": "p1", "title": "v1", "published": 1_000_000.0, "allow_comments": True},
        )
        first = published_data(pubsub)
        before_edit = time.time()
        await plugin.mb_send(
            host.client, AUTHOR_BLOG, NS_MICROBLOG, {"id": "p1", "title": "v2"}
        )
        edited = published_data(pubsub)
        assert pubsub.item_id_requests[-1] == ["p1"]
        assert edited["title"] == "v2"
        assert edited["published"] == 1_000_000.0
        assert edited["updated"] >= before_edit - 1
        assert edited["atom_id"] == first["atom_id"]
        assert edited["comments"] == first["comments"]
        assert len(pubsub.created) == 1

    @pytest_twisted.ensureDeferred
    async def test_new_id_is_new_post(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        await plugin.mb_send(host.client, AUTHOR_BLOG, NS_MICROBLOG, {"id": "fresh"})
        data = published_data(pubsub)
        assert data["published"] == data["updated"]

    @pytest_twisted.ensureDeferred
    async def test_no_id_no_lookup(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        result = await plugin.mb_send(host.client, AUTHOR_BLOG, NS_MICROBLOG, {"title": "t"})
        assert pubsub.item_id_requests == []
        assert uuid.UUID(result["item_id"])

    @pytest_twisted.ensureDeferred
    async def test_author_defaults_to_profile(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        await plugin.mb_send(host.client, AUTHOR_BLOG, NS_MICROBLOG, {"title": "t"})
        assert published_data(pubsub)["author_uri"] == "xmpp:juliet@capulet.lit"

    @pytest_twisted.ensureDeferred
    async def test_given_author_kept(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        await plugin.mb_send(
            host.client, AUTHOR_BLOG, NS_MICROBLOG,
            {"author": "Romeo", "author_uri": "xmpp:romeo@montague.lit"},
        )
        assert published_data(pubsub)["author_jid"] == "romeo@montague.lit"

    @pytest_twisted.ensureDeferred
    async def test_comment_sent_without_options(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        await plugin.mb_send(
            host.client, jid.JID("romeo@montague.lit"), NS_COMMENT_PREFIX + "p1", {"title": "hi"}
        )
        assert pubsub.published[0][3] is None

    @pytest.mark.parametrize(
        "data, message",
        [
            ({"tags": "x"}, "tags must be a list"),
            ({"published": "someday"}, "published 'someday' is not a date"),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_invalid_data_sends_nothing(self, data: dict[str, Any], message: str) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        with pytest.raises(InvalidValue, match=re.escape(message)):
            await plugin.mb_send(
                host.client, AUTHOR_BLOG, NS_MICROBLOG,
                {"id": "p1", "allow_comments": True, **data},
            )
        assert pubsub.created == []
        assert pubsub.published == []
        assert pubsub.item_id_requests == []

    @pytest.mark.parametrize(
        "data, message",
        [
            ({"allow_comments": "yes"}, "invalid allow_comments 'yes'"),
            ({"comments_service": 5}, "invalid comments_service 5"),
            ({"options": "open"}, "invalid publish options 'open'"),
            ({"allow_comments": True, "comments_service": "@bad@"}, "invalid comments service JID"),
        ],
    )
    @pytest_twisted.ensureDeferred
    async def test_invalid_request_keys(self, data: dict[str, Any], message: str) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        with pytest.raises(InvalidValue, match=re.escape(message)):
            await plugin.mb_send(host.client, AUTHOR_BLOG, NS_MICROBLOG, data)
        assert pubsub.published == []


class RetractTests:
    @pytest_twisted.ensureDeferred
    async def test_retract_notifies(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        result = await host.bridge.methods["mb_retract"](item_id="p1")
        assert pubsub.retracted == [("juliet@capulet.lit", NS_MICROBLOG, ["p1"], True)]
        assert result == {
            "service": "juliet@capulet.lit", "node": NS_MICROBLOG, "item_id": "p1",
            "deleted_comments": [],
        }
        assert pubsub.item_id_requests == []

    @pytest_twisted.ensureDeferred
    async def test_retract_deletes_comments(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        sent = await plugin.mb_send(
            host.client, AUTHOR_BLOG, NS_MICROBLOG, {"id": "p1", "allow_comments": True}
        )
        result = await host.bridge.methods["mb_retract"](item_id="p1", delete_comments=True)
        assert pubsub.deleted == [("juliet@capulet.lit", NS_COMMENT_PREFIX + "p1")]
        assert result["deleted_comments"] == [sent["comments"][0]["uri"]]
        assert pubsub.retracted[0][2] == ["p1"]

    @pytest_twisted.ensureDeferred
    async def test_missing_comments_node_skipped(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        await plugin.mb_send(
            host.client, AUTHOR_BLOG, NS_MICROBLOG, {"id": "p1", "allow_comments": True}
        )
        pubsub.nodes.clear()
        result = await host.bridge.methods["mb_retract"](item_id="p1", delete_comments=True)
        assert result["deleted_comments"] == []
        assert pubsub.retracted[0][2] == ["p1"]

    @pytest_twisted.ensureDeferred
    async def test_empty_item_id_rejected(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        with pytest.raises(InvalidValue, match="give the id of the post"):
            await host.bridge.methods["mb_retract"](item_id="")
        assert pubsub.retracted == []


class GetTests:
    @pytest_twisted.ensureDeferred
    async def test_item_ids_passed(self) -> None:
        pubsub = NodePubsub()
        plugin, host = plugin_with(pubsub)
        await plugin.mb_send(host.client, AUTHOR_BLOG, NS_MICROBLOG, {"id": "a", "title": "A"})
        await plugin.mb_send(host.client, AUTHOR_BLOG, NS_MICROBLOG, {"id": "b", "title": "B"})
        result = await host.bridge.methods["mb_get"](item_ids=["b"])
        assert [post["title"] for post in result["items"]] == ["B"]
        assert pubsub.item_id_requests[-1] == ["b"]
