"""Synthetic microblog posts: XEP-0277 Atom items, the same for a given seed and index.

Each post has a title of 6 words, a text content of 40 words, 1 to 3 tags, a
publication date one minute after the previous post, and the publisher as
author. Tags follow Zipf's law too, over TAGS. Words are drawn from a vocabulary of VOCABULARY_SIZE made-up words
(letters only) with Zipf's law: the word of rank r appears with a
probability proportional to 1/r, as words do in natural text. The share of
posts containing a word therefore follows from its rank: about 36 % of the
posts for rank 10, 4.5 % for rank 100 and 0.1 % for rank 5,000. The
full-text queries of the search figure get known selectivities that way.

:func:`post_xml` returns the ``<item/>`` as a string, and :func:`post_parsed`
the parsed data that the XEP-0277 parser builds from it, without parsing
the XML. Parsing and ``item_to_data`` cost about 220 microseconds per item
on the benchmark machine, almost 4 minutes for a million items.
:func:`check_parsed_data` compares both on samples, so the shortcut stays
faithful to the parser.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.words.xish import domish
from wokkel.generic import parseXml

from libervia.backend.plugins.plugin_xep_0277 import item_to_data

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_ATOM = "http://www.w3.org/2005/Atom"

VOCABULARY_SIZE = 20_000
TITLE_WORDS = 6
CONTENT_WORDS = 40
TAGS = [
    "xmpp", "python", "pubsub", "twisted", "sqlite", "postgresql", "debian", "music",
    "travel", "cooking", "cycling", "books", "cinema", "photography", "gardening",
    "science", "history", "politics", "sport", "games",
]
#: Date of the first post; each following post is one minute later.
FIRST_DATE = datetime(2024, 1, 1, tzinfo=timezone.utc)
POST_INTERVAL = timedelta(minutes=1)

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


@dataclass(frozen=True)
class Vocabulary:
    """Made-up words by rank (0 is the most frequent) and their cumulative Zipf weights."""

    words: list[str]
    cumulative_weights: list[float]

    def word(self, rank: int) -> str:
        """Return the word of rank ``rank`` (1 is the most frequent)."""
        return self.words[rank - 1]


def make_vocabulary(seed: int = 0) -> Vocabulary:
    """Return VOCABULARY_SIZE distinct words of 2 to 4 syllables, shuffled by ``seed``."""
    rng = random.Random(seed)
    words: list[str] = []
    for length in (2, 3, 4):
        words += ["".join(parts) for parts in itertools.product(_SYLLABLES, repeat=length)]
        if len(words) >= VOCABULARY_SIZE * 4:
            break
    rng.shuffle(words)
    words = words[:VOCABULARY_SIZE]
    weights = itertools.accumulate(1.0 / rank for rank in range(1, VOCABULARY_SIZE + 1))
    return Vocabulary(words, list(weights))


@dataclass(frozen=True)
class Post:
    """The values of one synthetic post."""

    item_id: str
    title: str
    content: str
    tags: tuple[str, ...]
    published: datetime
    author: str
    author_jid: str


class PostGenerator:
    """Reproducible posts: the same seed and index always give the same post."""

    def __init__(self, author_jid: str, seed: int = 0, vocabulary: Vocabulary | None = None):
        self.author_jid = author_jid
        self.seed = seed
        self.vocabulary = vocabulary or make_vocabulary()
        self._rng = random.Random()
        self._tag_weights = list(
            itertools.accumulate(1.0 / rank for rank in range(1, len(TAGS) + 1))
        )

    def post(self, index: int, prefix: str = "post") -> Post:
        """Return the post number ``index`` (its date and id follow from the index)."""
        rng = self._rng
        rng.seed(self.seed * 1_000_000_007 + index)
        words = rng.choices(
            self.vocabulary.words, cum_weights=self.vocabulary.cumulative_weights,
            k=TITLE_WORDS + CONTENT_WORDS,
        )
        tag_count = rng.randint(1, 3)
        tags = tuple(dict.fromkeys(rng.choices(TAGS, cum_weights=self._tag_weights, k=tag_count)))
        return Post(
            item_id=f"{prefix}-{index:07d}",
            title=" ".join(words[:TITLE_WORDS]).capitalize(),
            content=" ".join(words[TITLE_WORDS:]).capitalize() + ".",
            tags=tags,
            published=FIRST_DATE + index * POST_INTERVAL,
            author=self.author_jid.split("@", 1)[0],
            author_jid=self.author_jid,
        )

    def posts(self, count: int, start: int = 0, prefix: str = "post") -> list[Post]:
        """Return ``count`` posts numbered from ``start``."""
        return [self.post(index, prefix) for index in range(start, start + count)]


def _date(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def post_entry_xml(post: Post) -> str:
    """Return the post's Atom ``<entry/>``, the payload of its pubsub item."""
    categories = "".join(f"<category term={quoteattr(tag)}/>" for tag in post.tags)
    date = _date(post.published)
    return (
        f'<entry xmlns="{NS_ATOM}">'
        f'<title type="text">{escape(post.title)}</title>'
        f'<content type="text">{escape(post.content)}</content>'
        f"<id>urn:bench:{escape(post.item_id)}</id>"
        f"<published>{date}</published><updated>{date}</updated>"
        f"<author><name>{escape(post.author)}</name>"
        f"<uri>xmpp:{escape(post.author_jid)}</uri></author>"
        f"{categories}</entry>"
    )


def post_xml(post: Post) -> str:
    """Return the post as the XML of a pubsub ``<item/>`` holding an Atom entry."""
    return f'<item xmlns="{NS_PUBSUB}" id={quoteattr(post.item_id)}>{post_entry_xml(post)}</item>'


def post_element(post: Post) -> domish.Element:
    """Return the post as a domish ``<item/>``, ready to publish."""
    return parseXml(post_xml(post).encode("utf-8"))


def post_parsed(post: Post, service: str, node: str) -> dict[str, Any]:
    """Return the parsed data that XEP-0277's ``item_to_data`` builds for :func:`post_xml`."""
    timestamp = post.published.timestamp()
    uri = f"xmpp:{post.author_jid}"
    return {
        "id": post.item_id,
        "atom_id": f"urn:bench:{post.item_id}",
        "service": service,
        "node": node,
        "title": post.title,
        "content": post.content,
        "published": timestamp,
        "updated": timestamp,
        "date_source": "entry",
        "authors": [{"name": post.author, "uri": uri, "jid": post.author_jid}],
        "author": post.author,
        "author_uri": uri,
        "author_jid": post.author_jid,
        "author_jid_verified": False,
        "tags": list(post.tags),
    }


def check_parsed_data(posts: list[Post], service: str, node: str) -> None:
    """Check that :func:`post_parsed` equals the XEP-0277 parser's result for ``posts``.

    Raises AssertionError naming the first post that differs.
    """
    for post in posts:
        expected = item_to_data(post_element(post), service, node)
        actual = post_parsed(post, service, node)
        if actual != expected:
            raise AssertionError(
                f"synthetic parsed data of {post.item_id} differs from item_to_data: "
                f"{actual!r} != {expected!r}"
            )
