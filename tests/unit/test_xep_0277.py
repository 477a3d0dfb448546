"""Tests of the XEP-0277 plugin: Atom entry parsing, building and sanitising.

Vectors come from tests/data: the XEP-0277 examples (xep/) and feedparser's
Atom entry cases (atom/). Each feedparser file states its expectation against
feedparser's result structure; the tables below restate it against the
microblog data model, or say why it does not apply.
"""

from __future__ import annotations

import json
import time
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
)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
ATOM_DIR = DATA_DIR / "atom"
XEP_0277_EXAMPLES = DATA_DIR / "xep" / "xep-0277-examples.jsonl"

ABSENT = object()
"""Expected value of a key that must not be in the data."""

IMG = '<img src="http://www.ragingplatypus.com/i/cam-full.jpg" />'
STYLE_LINK = '<a href="http://www.ragingplatypus.com/">never trust your upstream platypus</a>'


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
    # Authors. The model keeps the first author only.
    "atom10__entry_author_email.xml": [((0, "author_email"), "me@example.com")],
    # feedparser joins name and email into one string; the model keeps both.
    "atom10__entry_author_map_author.xml": [
        ((0, "author"), "Example author"),
        ((0, "author_email"), "me@example.com"),
    ],
    "atom10__entry_author_map_author_2.xml": [((0, "author"), "Example author")],
    "atom10__entry_author_name.xml": [((0, "author"), "Example author")],
    "atom10__entry_author_url.xml": [((0, "author_uri"), "http://example.com/")],
    "atom10__entry_authors_email.xml": [((0, "author_email"), "one@one.com")],
    "atom10__entry_authors_name.xml": [((0, "author"), "one")],
    "atom10__entry_authors_uri.xml": [((0, "author_uri"), "http://one.com/")],
    "atom10__entry_authors_url.xml": [((0, "author_uri"), "http://one.com/")],
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
    # feedparser keeps a filtered style attribute; the allow-list drops it.
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

# Vectors about data the microblog model does not hold, by file name prefix.
ATOM_NOT_APPLICABLE = {
    "atom10__entry_category_label": "the model keeps category terms, not labels",
    "atom10__entry_contributor_": "the model has no contributors",
    "atom10__entry_rights_": "the model has no rights statement",
    "atom10__entry_source_": "the model has no <source/> feed metadata",
}


def not_applicable_reason(file_name: str) -> str | None:
    for prefix, reason in ATOM_NOT_APPLICABLE.items():
        if file_name.startswith(prefix):
            return reason
    return None


ATOM_FILES = sorted(path.name for path in ATOM_DIR.glob("*.xml"))


class AtomVectorTests:
    def test_every_vector_is_classified(self) -> None:
        for file_name in ATOM_FILES:
            mapped = file_name in ATOM_CASES or file_name in SANITIZE_CRAZY
            not_applicable = not_applicable_reason(file_name) is not None
            assert mapped != not_applicable, f"{file_name}: mapped={mapped}"

    @pytest.mark.parametrize("file_name", ATOM_FILES)
    def test_vector_parses(self, file_name: str) -> None:
        posts = load_atom_posts(file_name)
        assert posts, f"{file_name} has no entry"
        json.dumps(posts)

    @pytest.mark.parametrize("file_name", sorted(ATOM_CASES))
    def test_vector_expectation(self, file_name: str) -> None:
        posts = load_atom_posts(file_name)
        for path, expected in ATOM_CASES[file_name]:
            value = lookup(posts, path)
            assert value is expected or value == expected, f"{file_name} {path}: {value!r}"

    @pytest.mark.parametrize("file_name", SANITIZE_CRAZY)
    def test_sanitize_crazy(self, file_name: str) -> None:
        field = file_name.split("_")[3]
        markup = load_atom_posts(file_name)[0][f"{field}_xhtml"]
        assert "<h1>Did The Javascript Execute?</h1>" in markup
        assert "I will execute here, too, if you mouse over me" in markup
        assert "<script" not in markup.lower()
        assert "executeMe" not in markup
        assert "alert(" not in markup
        assert "onload" not in markup.lower()
        assert "onmouseover" not in markup.lower()
        assert "<!--" not in markup

    @pytest.mark.parametrize(
        "file_name", [name for name in ATOM_FILES if name.startswith("sanitize__")]
    )
    def test_sanitized_markup_safe(self, file_name: str) -> None:
        post = load_atom_posts(file_name)[0]
        markup = next(value for key, value in post.items() if key.endswith("_xhtml"))
        lowered = markup.lower()
        for forbidden in ("<script", "<style", "<iframe", "<object", "<embed", "<applet",
                          "<meta", "<link", "<frame", " on", "javascript:", "style="):
            assert forbidden not in lowered, f"{file_name}: {forbidden!r} in {markup!r}"
        # The markup must be well-formed, so it can be published as Atom xhtml.
        assert parseXml(f"<div>{markup}</div>") is not None


# --- XEP-0277 examples ------------------------------------------------------------

POST_1_ATOM_ID = "tag:montague.lit,2008-05-08:posts-1cb57d9c-1c46-11dd-838c-001143d5d5db"
CAFE = "hanging out at the Caf\u00e9 Napolitano"

XEP_CASES: dict[int, dict[str, Any]] = {
    1: {
        "id": "1cb57d9c-1c46-11dd-838c-001143d5d5db",
        "atom_id": POST_1_ATOM_ID,
        "title": CAFE,
        "title_xhtml": ABSENT,
        "published": timestamp("2008-05-08T18:30:02+00:00"),
        "updated": timestamp("2008-05-08T18:30:02+00:00"),
        "author_jid": ABSENT,
        "author_jid_verified": False,
    },
    2: {
        "title": CAFE,
        "title_xhtml": "<p>hanging out at the <strong>Caf\u00e9 Napolitano</strong></p>",
    },
    3: {
        "author_jid": "romeo@montague.lit",
        "author_jid_verified": True,
        "links": [
            {
                "href": "http://montague.lit/romeo/posts/1cb57d9c-1c46-11dd-838c-001143d5d5db",
                "rel": "alternate",
                "type": "text/html",
            },
            {
                "href": "xmpp:romeo@montague.lit?;node=urn%3Axmpp%3Amicroblog%3A0;"
                "item=1cb57d9c-1c46-11dd-838c-001143d5d5db",
                "rel": "alternate",
            },
        ],
    },
    4: {
        "author": "Benvolio Montague",
        "author_uri": "xmpp:romeo@montague.lit",
        "author_jid": "romeo@montague.lit",
        "author_jid_verified": False,
        "title": "@romeo cappuccino this late in the day?",
        "published": timestamp("2008-05-08T18:31:21+00:00"),
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
            {
                "href": "xmpp:romeo@montague.lit?;node=urn%3Axmpp%3Amicroblog%3A0;"
                "item=1cb57d9c-1c46-11dd-838c-001143d5d5db",
                "rel": "via",
            },
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
    8: {
        "atom_id": ABSENT,
        "author": "Juliet Capulet",
        "author_jid": "juliet@capulet.lit",
        "title": "She is so pretty!",
        "published": timestamp("2008-05-08T18:39:02+00:00"),
    },
    11: {
        "author_jid": "romeo@montague.lit",
        "title": "Is lost in the forest. Need help!",
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


class XepExampleTests:
    def test_every_example_is_classified(self) -> None:
        for number in load_xep_examples():
            assert (number in XEP_CASES) != (number in XEP_REJECTED), number

    @pytest.mark.parametrize("number", sorted(XEP_CASES))
    def test_example_expectation(self, number: int) -> None:
        data = item_to_data(xep_example_item(number))
        for key, expected in XEP_CASES[number].items():
            value = data.get(key, ABSENT)
            assert value is expected or value == expected, f"example {number} {key}: {value!r}"

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

    def test_no_dates(self) -> None:
        data = item_to_data(entry_item("<id>u</id><title>t</title>"))
        assert "published" not in data
        assert "updated" not in data

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
        assert set(host.bridge.methods) == {"mb_get", "mb_send"}

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
