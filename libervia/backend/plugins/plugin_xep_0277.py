"""XEP-0277 microblogging: Atom entries over pubsub, converted to and from data.

A microblog post is a pubsub item whose payload is an Atom ``<entry/>``
(RFC 4287). :func:`item_to_data` turns such an item into a JSON-serialisable
dict (the microblog data model used on the bridge and in the pubsub cache),
and :func:`data_to_item` builds an item from that dict. Both are plain
functions, usable without a backend host.

Keys of the data model, all optional except ``id``:

``id``
    pubsub item id
``atom_id``
    Atom ``<id/>`` of the entry; absent when the entry has none, as in the
    comment example of XEP-0277
``title``, ``content``, ``summary``, ``rights``
    plain text. A built entry always has a ``title``, as RFC 4287 requires.
``title_xhtml``, ``content_xhtml``, ``summary_xhtml``, ``rights_xhtml``
    sanitised XHTML fragment (no wrapper ``<div/>``), when the entry has rich
    text (Atom type ``html`` or ``xhtml``). The plain text key then holds its
    text.
``published``, ``updated``
    float UNIX timestamps in UTC, whatever the time zone of the entry. When
    the entry has one date only, the other takes its value.
``date_source``
    where the dates come from: ``"entry"``, or for an entry without dates
    ``"item id"`` (the time in a UUID item id of version 1, 6 or 7) or
    ``"atom id"`` (the same in a ``urn:uuid:`` Atom id, else the date of a
    ``tag:`` Atom id, at midnight UTC). Parsing the same item again gives the
    same dates. Absent, with the dates, when none of these is found.
``author``, ``author_uri``, ``author_email``
    first author's name, URI and email
``author_jid``
    author's JID, from an ``xmpp:`` author URI, else the item publisher
``author_jid_verified``
    True when the author JID has the bare JID of the item's ``publisher``
    attribute. False when they differ or the item has no publisher.
``authors``, ``contributors``
    ``{name, uri, email, jid}`` dicts, every author and contributor in
    document order (``jid`` for an ``xmpp:`` URI)
``tags``
    category terms, without duplicates
``language``
    ``xml:lang`` of the entry, else of the item
``links``
    ``{href, rel, type, title, hreflang, length, ref}`` dicts: alternate,
    related, enclosure (``length`` in bytes, ``type`` the media type), via
    (a repeated post, ``ref`` its Atom id) and any other relation
``comments``
    ``{uri, service, node}`` dicts, one per comments node (a ``rel="replies"``
    link titled ``comments`` with an ``xmpp:`` URI)
``in_reply_to``
    ``{ref, href, type, source}`` dicts from ``thr:in-reply-to`` (RFC 4685)
``generator``
    ``{name, uri, version}`` of the software that published the entry
``geoloc``
    XEP-0080 location: element names as keys, numbers (``lat``, ``lon``,
    ``alt``, ...) as floats
``service``, ``node``
    where the item comes from, when known

Rich text from the network is untrusted: every HTML or XHTML construct goes
through an allow-list sanitiser that drops scripts, event handler
attributes, URLs with schemes such as ``javascript:``, and the style
declarations that could load a resource or run code (``url(``,
``expression(``, ``@import``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import uuid
from datetime import datetime, timezone
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, unquote

from dateutil import parser as date_parser

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.words.protocols.jabber import jid
from twisted.words.xish import domish
from wokkel.generic import parseXml

from libervia.backend.core.exceptions import InvalidValue, PubsubError, PubsubItemNotFound
from libervia.backend.plugins.plugin_xep_0060 import make_jid

log = logging.getLogger(__name__)

PLUGIN_INFO = {
    "name": "Microblogging",
    "import_name": "XEP-0277",
    "type": "XEP",
    "dependencies": ["XEP-0060"],
    "recommendations": ["PUBSUB_CACHE", "XEP-0163"],
    "main": "XEP_0277",
    "modes": ["client", "component"],
    "description": "Microblogging over pubsub (XEP-0277): Atom entries to and from data",
}

NS_MICROBLOG = "urn:xmpp:microblog:0"
NS_ATOM = "http://www.w3.org/2005/Atom"
NS_COMMENT_PREFIX = "urn:xmpp:microblog:0:comments/"
# Atom 0.3 predates RFC 4287; old feeds and gateways still produce it.
NS_ATOM_03 = "http://purl.org/atom/ns#"
NS_XHTML = "http://www.w3.org/1999/xhtml"
NS_XML = "http://www.w3.org/XML/1998/namespace"
# Atom threading extensions (RFC 4685): <thr:in-reply-to/> marks a reply.
NS_THREADING = "http://purl.org/syndication/thread/1.0"
# User location (XEP-0080), which XEP-0277 uses to geotag a post.
NS_GEOLOC = "http://jabber.org/protocol/geoloc"

# Text constructs of an entry, read as plain text plus an optional
# "<name>_xhtml" key.
TEXT_CONSTRUCTS = ("title", "summary", "content", "rights")
# Keys of the first author in the data model, and the person keys they come from.
AUTHOR_KEYS = {"author": "name", "author_uri": "uri", "author_email": "email", "author_jid": "jid"}
# Attributes of <link/> kept as strings. "ref" is the Atom id of the linked
# post, which XEP-0277 puts on the rel="via" link of a repeated post.
LINK_TEXT_ATTRIBUTES = ("type", "title", "hreflang", "ref")
# XEP-0080 elements whose value is a decimal number.
GEOLOC_NUMBERS = frozenset(
    {"accuracy", "alt", "altaccuracy", "bearing", "error", "lat", "lon", "speed"}
)

# Values of "date_source": where the published and updated dates come from.
DATE_SOURCE_ENTRY = "entry"
DATE_SOURCE_ITEM_ID = "item id"
DATE_SOURCE_ATOM_ID = "atom id"
# 100 ns intervals from the UUID epoch (1582-10-15) to the UNIX epoch.
UUID_EPOCH_TICKS = 0x01B21DD213814000
# A UUID in its hyphenated form, alone or as a URN. Hex strings without
# hyphens, such as the MD5 ids some clients use, are not read as UUIDs.
UUID_TEXT = re.compile(
    r"^(?:urn:uuid:)?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
    re.IGNORECASE,
)
# tag:AUTHORITY,YYYY[-MM[-DD]]:SPECIFIC (RFC 4151).
TAG_URI_DATE = re.compile(r"^tag:[^,:]+,(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?:", re.IGNORECASE)

# Posts are public unless the caller passes other options: anyone may read them.
# "max" requests the service's largest item limit: Prosody 0.12 keeps only
# one item in a PEP node created without pubsub#max_items.
DEFAULT_PUBLISH_OPTIONS = {"pubsub#access_model": "open", "pubsub#max_items": "max"}
# Configuration of a comments node created for a post, as XEP-0277 recommends:
# anyone may read and comment, retractions are notified, and the node keeps
# many items. "itemreply" makes the service put the publisher's JID on each
# item, which lets readers verify comment authors. ejabberd 23.01 does it, and
# Prosody 0.12 ignores the field.
COMMENTS_NODE_OPTIONS = {
    "pubsub#access_model": "open",
    "pubsub#publish_model": "open",
    "pubsub#notify_retract": "1",
    "pubsub#itemreply": "publisher",
    "pubsub#max_items": "max",
}
# Fields that an edit keeps from the published post when the new data has none.
KEPT_ON_EDIT = ("atom_id", "published", "comments")


def _rejects_options(error: Exception) -> bool:
    """Return True when a publish error shows that the service rejected the publish options."""
    return getattr(error, "app_condition", None) == "precondition-not-met" or getattr(
        error, "condition", None
    ) in ("resource-constraint", "not-acceptable", "bad-request")


# --- HTML/XHTML sanitiser ---------------------------------------------------

ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "acronym", "address", "b", "bdi", "bdo", "big", "blockquote",
        "br", "caption", "center", "cite", "code", "col", "colgroup", "dd", "del",
        "details", "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "font",
        "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li",
        "mark", "ol", "p", "pre", "q", "rp", "rt", "ruby", "s", "samp", "small",
        "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody",
        "td", "tfoot", "th", "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
    }
)
GLOBAL_ATTRIBUTES = frozenset({"title", "lang", "dir", "style"})
TAG_ATTRIBUTES = {
    "a": frozenset({"href", "hreflang", "rel"}),
    "abbr": frozenset({"title"}),
    "blockquote": frozenset({"cite"}),
    "col": frozenset({"span"}),
    "colgroup": frozenset({"span"}),
    "del": frozenset({"cite", "datetime"}),
    "img": frozenset({"src", "alt", "width", "height"}),
    "ins": frozenset({"cite", "datetime"}),
    "ol": frozenset({"start", "reversed", "type"}),
    "q": frozenset({"cite"}),
    "td": frozenset({"colspan", "rowspan", "headers"}),
    "th": frozenset({"colspan", "rowspan", "headers", "scope"}),
    "time": frozenset({"datetime"}),
}
URL_ATTRIBUTES = frozenset({"href", "src", "cite"})
URL_SCHEMES = frozenset({"http", "https", "mailto", "xmpp", "ftp", "tel", "geo"})
# These elements are dropped with everything inside: their content is code, not
# text. Other disallowed elements are unwrapped and their text is kept.
DROPPED_WITH_CONTENT = frozenset({"script", "style", "template"})
VOID_TAGS = frozenset(
    {
        "area", "base", "br", "col", "embed", "frame", "hr", "img", "input",
        "keygen", "link", "meta", "param", "source", "track", "wbr",
    }
)
# Elements that start a new line in the plain text version.
BLOCK_TAGS = frozenset(
    {
        "address", "blockquote", "br", "caption", "dd", "details", "div", "dl",
        "dt", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
        "li", "ol", "p", "pre", "summary", "table", "tr", "ul",
    }
)
# Characters that XML 1.0 forbids: they would make the serialised XHTML unparsable.
XML_INVALID_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# White space as HTML defines it; a no-break space is not part of it.
HTML_WHITESPACE = re.compile("[ \t\n\r\f]+")
URL_IGNORED_CHARS = re.compile("[\x00-\x20\x7f]")
URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")

# CSS properties kept in a style attribute. None of them takes a URL:
# background, background-image, list-style, cursor, content, border-image and
# the like are left out, so a post cannot make the reader load a resource.
# Positioning (position, z-index, top, left, ...) is left out too, so a post
# cannot cover the page of the frontend that shows it.
STYLE_PROPERTIES = frozenset(
    {
        "background-color", "border", "border-bottom", "border-collapse",
        "border-color", "border-left", "border-radius", "border-right",
        "border-spacing", "border-style", "border-top", "border-width", "clear",
        "color", "direction", "display", "float", "font", "font-family",
        "font-size", "font-style", "font-variant", "font-weight", "height",
        "letter-spacing", "line-height", "list-style-position", "list-style-type",
        "margin", "margin-bottom", "margin-left", "margin-right", "margin-top",
        "max-height", "max-width", "min-height", "min-width", "padding",
        "padding-bottom", "padding-left", "padding-right", "padding-top",
        "text-align", "text-decoration", "text-decoration-color",
        "text-decoration-line", "text-decoration-style", "text-indent",
        "text-transform", "vertical-align", "white-space", "width", "word-spacing",
    }
)
# A style value may contain words, numbers with units, colours, quoted font
# names, "!important" and the colour functions of STYLE_FUNCTIONS. A colon, a
# backslash escape, a comment, an at-rule or any other function (url(),
# expression(), image-set(), ...) makes the declaration dropped.
STYLE_VALUE = re.compile(r"^[a-zA-Z0-9\s#.,%'\"()+\-/!]*$")
STYLE_FUNCTION = re.compile(r"([a-zA-Z\-]*)\s*\(")
STYLE_FUNCTIONS = frozenset({"rgb", "rgba", "hsl", "hsla"})


def _escape_text(text: str) -> str:
    text = XML_INVALID_CHARS.sub("", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attribute(value: str) -> str:
    return _escape_text(value).replace('"', "&quot;")


def _is_safe_url(url: str) -> bool:
    """Tell whether ``url`` is relative or uses an allowed scheme."""
    # Browsers ignore whitespace and control characters inside a URL, so
    # "java\tscript:" must be seen as "javascript:".
    compact = URL_IGNORED_CHARS.sub("", url)
    match = URL_SCHEME.match(compact)
    if match is None:
        return True
    return match.group(1).lower() in URL_SCHEMES


def _is_safe_style_value(value: str) -> bool:
    if "/*" in value or not STYLE_VALUE.match(value):
        return False
    functions = STYLE_FUNCTION.findall(value)
    if value.count("(") != len(functions):
        return False
    return all(name.lower() in STYLE_FUNCTIONS for name in functions)


def sanitise_style(style: str) -> str:
    """Keep the declarations of a style attribute that are in the allow-list.

    Return the kept declarations as ``"name: value; name: value"``, or "" when
    none is left. Declarations of unknown properties, and values that could
    load a resource or run code (``url(``, ``expression(``, ``@import``,
    escapes, comments), are dropped.
    """
    safe_declarations = []
    for declaration in XML_INVALID_CHARS.sub("", style).split(";"):
        name, separator, value = declaration.partition(":")
        name = name.strip().lower()
        value = " ".join(value.split())
        if not separator or not value or name not in STYLE_PROPERTIES:
            continue
        if not _is_safe_style_value(value):
            continue
        safe_declarations.append(f"{name}: {value}")
    return "; ".join(safe_declarations)


class _SanitisingBuilder:
    """Rebuild markup from start, end and text events, keeping only what is allowed.

    The output is produced from scratch (escaped text, quoted attributes,
    every element closed), so it is well-formed XHTML whatever the input was.
    A plain text version is collected at the same time.
    """

    def __init__(self) -> None:
        self._markup: list[str] = []
        self._text: list[str] = []
        self._open: list[str] = []
        self._dropping: list[str] = []

    def start(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        tag = tag.lower()
        if self._dropping or tag in DROPPED_WITH_CONTENT:
            if tag in DROPPED_WITH_CONTENT:
                self._dropping.append(tag)
            return
        if tag in BLOCK_TAGS:
            self._text.append("\n")
        if tag not in ALLOWED_TAGS:
            return

        filtered = self._filter_attributes(tag, attributes)
        rendered = "".join(f' {name}="{_escape_attribute(value)}"' for name, value in filtered)
        if tag in VOID_TAGS:
            self._markup.append(f"<{tag}{rendered} />")
        else:
            self._markup.append(f"<{tag}{rendered}>")
            self._open.append(tag)

    def end(self, tag: str) -> None:
        tag = tag.lower()
        if self._dropping:
            if tag in self._dropping:
                while self._dropping.pop() != tag:
                    pass
            return
        if tag in BLOCK_TAGS:
            self._text.append("\n")
        if tag not in self._open:
            # Stray end tag, or the end of an element that was unwrapped.
            return
        # Closing an outer element closes the unclosed ones it contains.
        while True:
            closed = self._open.pop()
            self._markup.append(f"</{closed}>")
            if closed == tag:
                break

    def text(self, data: str) -> None:
        if self._dropping:
            return
        self._markup.append(_escape_text(data))
        # HTML renders runs of white space as one space; line breaks in the
        # plain text come from BLOCK_TAGS only.
        self._text.append(HTML_WHITESPACE.sub(" ", XML_INVALID_CHARS.sub("", data)))

    def result(self) -> tuple[str, str]:
        """Close what is still open; return the plain text and the XHTML markup."""
        while self._open:
            self._markup.append(f"</{self._open.pop()}>")
        markup = "".join(self._markup).strip()

        lines = "".join(self._text).split("\n")
        stripped = (HTML_WHITESPACE.sub(" ", line).strip(" ") for line in lines)
        plain = "\n".join(line for line in stripped if line)
        return plain, markup

    @staticmethod
    def _filter_attributes(
        tag: str, attributes: list[tuple[str, str | None]]
    ) -> list[tuple[str, str]]:
        allowed = GLOBAL_ATTRIBUTES | TAG_ATTRIBUTES.get(tag, frozenset())
        filtered: list[tuple[str, str]] = []
        seen: set[str] = set()
        for name, value in attributes:
            name = name.lower()
            if name not in allowed or name in seen:
                continue
            value = value if value is not None else name
            if name in URL_ATTRIBUTES and not _is_safe_url(value):
                continue
            if name == "style":
                value = sanitise_style(value)
                if not value:
                    continue
            seen.add(name)
            filtered.append((name, value))
        return filtered


class _HTMLSanitiser(HTMLParser):
    """Feed an HTML string into a :class:`_SanitisingBuilder`."""

    def __init__(self, builder: _SanitisingBuilder) -> None:
        super().__init__(convert_charrefs=True)
        self._builder = builder

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._builder.start(tag, attrs)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._builder.start(tag, attrs)
        if tag.lower() not in VOID_TAGS:
            self._builder.end(tag)

    def handle_endtag(self, tag: str) -> None:
        self._builder.end(tag)

    def handle_data(self, data: str) -> None:
        self._builder.text(data)

    # Comments, doctypes, processing instructions and CDATA sections are
    # dropped: the default handlers of HTMLParser ignore them.


def sanitise_html(html: str) -> tuple[str, str]:
    """Sanitise an HTML string; return its plain text and safe XHTML markup."""
    builder = _SanitisingBuilder()
    parser = _HTMLSanitiser(builder)
    parser.feed(html)
    parser.close()
    return builder.result()


def _feed_element(builder: _SanitisingBuilder, element: domish.Element) -> None:
    for child in element.children:
        if isinstance(child, str):
            builder.text(child)
            continue
        if child.uri not in (NS_XHTML, None, ""):
            # Foreign XML (SVG, MathML, ...) is not in the allow-list.
            continue
        # Namespaced attributes (xml:lang, xlink:href, ...) have tuple keys.
        attributes = [
            (name, value) for name, value in child.attributes.items() if isinstance(name, str)
        ]
        builder.start(child.name, attributes)
        _feed_element(builder, child)
        if child.name.lower() not in VOID_TAGS:
            builder.end(child.name)


def sanitise_xhtml(element: domish.Element) -> tuple[str, str]:
    """Sanitise the XHTML children of ``element``; return plain text and markup."""
    builder = _SanitisingBuilder()
    _feed_element(builder, element)
    return builder.result()


# --- Atom parsing -----------------------------------------------------------


def _element_text(element: domish.Element) -> str:
    """Return the text of ``element`` and its descendants, without markup."""
    parts: list[str] = []
    for child in element.children:
        if isinstance(child, str):
            parts.append(child)
        else:
            parts.append(_element_text(child))
    return "".join(parts)


def _child(element: domish.Element, namespace: str, name: str) -> domish.Element | None:
    return next(element.elements(namespace, name), None)


def _child_text(element: domish.Element, namespace: str, name: str) -> str | None:
    child = _child(element, namespace, name)
    if child is None:
        return None
    return _element_text(child).strip()


def _decode_base64(encoded: str) -> str | None:
    try:
        raw = base64.b64decode("".join(encoded.split()), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _construct_format(element: domish.Element, legacy: bool) -> tuple[str, str]:
    """Return the media type and the encoding mode of an Atom text construct.

    The mode is "escaped" (the text is the value), "base64" or "xml" (the value
    is the child elements). Atom 1.0 uses ``type`` alone (RFC 4287 section 3.1
    and 4.1.3); Atom 0.3 has a media type in ``type`` and a separate ``mode``.
    """
    type_ = (element.getAttribute("type") or "").strip().lower()
    if legacy:
        mode = (element.getAttribute("mode") or "xml").strip().lower()
        return type_ or "text/plain", mode

    if type_ in ("", "text"):
        return "text/plain", "escaped"
    if type_ == "html":
        return "text/html", "escaped"
    if type_ == "xhtml":
        return "application/xhtml+xml", "xml"
    if type_.startswith("text/"):
        return type_, "escaped"
    if type_.endswith("+xml") or type_.endswith("/xml"):
        return type_, "xml"
    return type_, "base64"


def _xhtml_container(element: domish.Element, legacy: bool) -> domish.Element:
    """Return the element whose children are the XHTML content.

    In Atom 1.0 the content is wrapped in an XHTML ``<div/>`` that is not part
    of it (RFC 4287 section 3.1.1.3); Atom 0.3 has no wrapper.
    """
    if legacy:
        return element
    child_elements = [child for child in element.elements()]
    if len(child_elements) == 1:
        wrapper = child_elements[0]
        if wrapper.name == "div" and wrapper.uri == NS_XHTML:
            return wrapper
    return element


def _read_text_construct(
    element: domish.Element, legacy: bool
) -> tuple[str, str | None] | None:
    """Read an Atom text construct; return (plain text, XHTML markup or None).

    Return None when the value cannot be read as text (invalid base64, binary
    data), so the caller leaves the key out.
    """
    media_type, mode = _construct_format(element, legacy)
    is_html = media_type in ("text/html", "html")
    is_xhtml = media_type in ("application/xhtml+xml", "xhtml")

    if mode == "xml" and (is_html or is_xhtml):
        return sanitise_xhtml(_xhtml_container(element, legacy))

    if mode == "base64":
        value = _decode_base64(_element_text(element))
        if value is None:
            log.debug("ignoring <%s/>: its base64 value is not UTF-8 text", element.name)
            return None
    else:
        value = _element_text(element)

    if is_html or is_xhtml:
        return sanitise_html(value)
    return value.strip(), None


def parse_date(value: str) -> float | None:
    """Parse a date (RFC 3339 or another common form) into a UTC UNIX timestamp.

    A date without a time zone is taken as UTC. Return None when ``value`` is
    not a date.
    """
    value = value.strip()
    try:
        parsed = date_parser.isoparse(value)
    except ValueError:
        try:
            parsed = date_parser.parse(value)
        except (ValueError, OverflowError):
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def format_date(timestamp: float) -> str:
    """Format a UNIX timestamp as an RFC 3339 date in UTC (``...Z``)."""
    date = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return date.isoformat().replace("+00:00", "Z")


def parse_xmpp_uri(uri: str) -> tuple[str, dict[str, str]] | None:
    """Split an ``xmpp:`` URI (RFC 5122) into its JID and query parameters.

    ``xmpp:pubsub.example.org?;node=urn%3Axmpp%3Amicroblog%3A0`` gives
    ``("pubsub.example.org", {"node": "urn:xmpp:microblog:0"})``; the query
    type (``pubsub``, ``message``, ...) is stored under ``"action"``. Return
    None when ``uri`` is not an xmpp: URI.
    """
    # White space is not valid in a URI, but line-wrapped URIs occur in the wild.
    compact = "".join(uri.split())
    if not compact.lower().startswith("xmpp:"):
        return None
    rest = compact[len("xmpp:"):]
    if rest.startswith("//"):
        # xmpp://account@host/target: the authority names the sending account.
        rest = rest[2:].partition("/")[2]

    path, _, query = rest.partition("?")
    parameters: dict[str, str] = {}
    for position, part in enumerate(query.split(";") if query else []):
        key, separator, value = part.partition("=")
        if separator:
            parameters[unquote(key)] = unquote(value)
        elif position == 0 and key:
            parameters["action"] = unquote(key)
    return unquote(path), parameters


def _read_person(person_elt: domish.Element, namespace: str) -> dict[str, str] | None:
    """Read an Atom person construct (author or contributor), or return None when it is empty.

    Keys: ``name``, ``uri``, ``email`` and, for an ``xmpp:`` URI, ``jid``.
    """
    person: dict[str, str] = {}
    name = _child_text(person_elt, namespace, "name")
    # Atom 0.3 calls the URI <url/>; some Atom 1.0 feeds kept that name.
    uri = _child_text(person_elt, namespace, "uri") or _child_text(person_elt, namespace, "url")
    email = _child_text(person_elt, namespace, "email")
    if name:
        person["name"] = name
    if uri:
        person["uri"] = uri
        parsed = parse_xmpp_uri(uri)
        if parsed is not None:
            try:
                person["jid"] = make_jid(parsed[0]).full()
            except jid.InvalidFormat:
                log.debug("ignoring the JID of person URI %r: invalid JID", uri)
    if email:
        person["email"] = email
    return person or None


def _read_people(entry: domish.Element, namespace: str, data: dict[str, Any]) -> None:
    authors = [
        person
        for person in (_read_person(elt, namespace) for elt in entry.elements(namespace, "author"))
        if person is not None
    ]
    if authors:
        data["authors"] = authors
        first = authors[0]
        for key, person_key in AUTHOR_KEYS.items():
            if person_key in first:
                data[key] = first[person_key]

    contributors = [
        person
        for person in (
            _read_person(elt, namespace) for elt in entry.elements(namespace, "contributor")
        )
        if person is not None
    ]
    if contributors:
        data["contributors"] = contributors


def _verify_author(data: dict[str, Any], publisher: str | None) -> None:
    """Set ``author_jid_verified``, using the publisher as the author when none is given.

    The author JID is verified when it has the bare JID of the item's
    ``publisher`` attribute, the check that XEP-0277 recommends for comments.
    Without that attribute nothing can be verified.
    """
    publisher_jid = None
    if publisher:
        try:
            publisher_jid = make_jid(publisher)
        except jid.InvalidFormat:
            log.debug("ignoring invalid publisher %r of item %s", publisher, data["id"])

    if "author_jid" not in data:
        if publisher_jid is not None:
            data["author_jid"] = publisher_jid.userhost()
            data["author_jid_verified"] = True
        else:
            data["author_jid_verified"] = False
        return

    author_jid = make_jid(data["author_jid"])
    data["author_jid_verified"] = (
        publisher_jid is not None and publisher_jid.userhost() == author_jid.userhost()
    )


def _read_link(link_elt: domish.Element, item_id: str) -> dict[str, Any] | None:
    href = link_elt.getAttribute("href")
    if href is None:
        # Some feeds put the URL in the element text.
        href = _element_text(link_elt)
    # A URI never contains white space, but line-wrapped ones occur in the wild.
    href = "".join(href.split())
    if not href:
        log.debug("ignoring <link/> without href in item %s", item_id)
        return None

    link: dict[str, Any] = {"href": href, "rel": link_elt.getAttribute("rel") or "alternate"}
    for attribute in LINK_TEXT_ATTRIBUTES:
        value = link_elt.getAttribute(attribute)
        if value:
            link[attribute] = value
    length = (link_elt.getAttribute("length") or "").strip()
    if length.isdigit():
        link["length"] = int(length)
    return link


def _comment_node(link: dict[str, Any]) -> dict[str, str] | None:
    """Return the comments node a ``rel="replies"`` link points to, or None."""
    if link["rel"] != "replies" or link.get("title") != "comments":
        return None
    parsed = parse_xmpp_uri(link["href"])
    if parsed is None or "node" not in parsed[1]:
        return None
    return {"uri": link["href"], "service": parsed[0], "node": parsed[1]["node"]}


def _read_links(entry: domish.Element, namespace: str, data: dict[str, Any]) -> None:
    links: list[dict[str, Any]] = []
    comments: list[dict[str, str]] = []
    for link_elt in entry.elements(namespace, "link"):
        link = _read_link(link_elt, data["id"])
        if link is None:
            continue
        comment_node = _comment_node(link)
        if comment_node is not None:
            comments.append(comment_node)
        else:
            links.append(link)
    if links:
        data["links"] = links
    if comments:
        data["comments"] = comments


def _read_replies(entry: domish.Element, data: dict[str, Any]) -> None:
    """Read the ``thr:in-reply-to`` elements (RFC 4685) of a reply."""
    replies = []
    for reply_elt in entry.elements(NS_THREADING, "in-reply-to"):
        ref = (reply_elt.getAttribute("ref") or "").strip()
        if not ref:
            log.debug("ignoring <in-reply-to/> without ref in item %s", data["id"])
            continue
        reply = {"ref": ref}
        for attribute in ("href", "type", "source"):
            value = reply_elt.getAttribute(attribute)
            if value:
                reply[attribute] = "".join(value.split()) if attribute == "href" else value
        replies.append(reply)
    if replies:
        data["in_reply_to"] = replies


def _read_generator(entry: domish.Element, namespace: str, data: dict[str, Any]) -> None:
    generator_elt = _child(entry, namespace, "generator")
    if generator_elt is None:
        return
    generator = {}
    name = _element_text(generator_elt).strip()
    if name:
        generator["name"] = name
    # Atom 0.3 names the URI attribute "url".
    uri = generator_elt.getAttribute("uri") or generator_elt.getAttribute("url")
    if uri:
        generator["uri"] = uri.strip()
    version = generator_elt.getAttribute("version")
    if version:
        generator["version"] = version.strip()
    if generator:
        data["generator"] = generator


def _read_geoloc(entry: domish.Element, data: dict[str, Any]) -> None:
    """Read a XEP-0080 ``<geoloc/>``: one key per child element, numbers as floats."""
    geoloc_elt = _child(entry, NS_GEOLOC, "geoloc")
    if geoloc_elt is None:
        return
    geoloc: dict[str, Any] = {}
    for child in geoloc_elt.elements():
        if child.uri != NS_GEOLOC:
            continue
        text = _element_text(child).strip()
        if not text:
            continue
        if child.name in GEOLOC_NUMBERS:
            try:
                number = float(text)
            except ValueError:
                log.debug("ignoring geoloc <%s/> %r of item %s", child.name, text, data["id"])
                continue
            if not math.isfinite(number):
                continue
            geoloc[child.name] = number
        else:
            geoloc[child.name] = text
    if geoloc:
        data["geoloc"] = geoloc


def _uuid_timestamp(value: str) -> float | None:
    """Return the creation time stored in a time-based UUID, or None.

    UUID versions 1 and 6 hold a count of 100 ns intervals since 1582-10-15,
    version 7 a UNIX time in milliseconds (RFC 9562). Other versions, and
    values that are not hyphenated UUIDs, give None.
    """
    value = value.strip()
    if not UUID_TEXT.match(value):
        return None
    parsed = uuid.UUID(value)
    if parsed.variant != uuid.RFC_4122:
        return None
    bits = parsed.int
    if parsed.version == 1:
        ticks = parsed.time
    elif parsed.version == 6:
        ticks = ((bits >> 80) << 12) | ((bits >> 64) & 0xFFF)
    elif parsed.version == 7:
        return (bits >> 80) / 1000
    else:
        return None
    timestamp = (ticks - UUID_EPOCH_TICKS) / 10_000_000
    return timestamp if timestamp >= 0 else None


def _tag_uri_timestamp(value: str) -> float | None:
    """Return midnight UTC of the date in a ``tag:`` URI (RFC 4151), or None."""
    match = TAG_URI_DATE.match(value.strip())
    if match is None:
        return None
    year, month, day = (int(part) if part else 1 for part in match.groups())
    try:
        return datetime(year, month, day, tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _stable_timestamp(data: dict[str, Any]) -> tuple[float, str] | None:
    """Derive a date from the ids of a post without dates; return it and its source.

    The sources, in order: a time-based UUID item id, a time-based UUID Atom
    id (``urn:uuid:...``), the date of a ``tag:`` Atom id. The result depends
    on the item alone, so parsing the same item again gives the same date.
    """
    timestamp = _uuid_timestamp(data["id"])
    if timestamp is not None:
        return timestamp, DATE_SOURCE_ITEM_ID
    atom_id = data.get("atom_id")
    if atom_id:
        timestamp = _uuid_timestamp(atom_id)
        if timestamp is None:
            timestamp = _tag_uri_timestamp(atom_id)
        if timestamp is not None:
            return timestamp, DATE_SOURCE_ATOM_ID
    return None


def _read_dates(entry: domish.Element, namespace: str, data: dict[str, Any]) -> None:
    # Atom 0.3 names the dates "issued" and "modified".
    names = {"published": ("published", "issued"), "updated": ("updated", "modified")}
    for key, element_names in names.items():
        for element_name in element_names:
            text = _child_text(entry, namespace, element_name)
            if not text:
                continue
            timestamp = parse_date(text)
            if timestamp is None:
                log.debug("ignoring invalid <%s/> %r in item %s", element_name, text, data["id"])
                continue
            data[key] = timestamp
            break
    if "published" in data or "updated" in data:
        data["date_source"] = DATE_SOURCE_ENTRY
    else:
        derived = _stable_timestamp(data)
        if derived is None:
            # NOTE: a post without dates and without time-based ids gets no
            # date at all, because the parse time would change at each parse.
            return
        data["published"], data["date_source"] = derived
    if "published" not in data:
        data["published"] = data["updated"]
    elif "updated" not in data:
        data["updated"] = data["published"]


def _find_entry(item_elt: domish.Element) -> tuple[domish.Element, str] | None:
    for namespace in (NS_ATOM, NS_ATOM_03):
        entry = _child(item_elt, namespace, "entry")
        if entry is not None:
            return entry, namespace
    return None


def _read_language(item_elt: domish.Element, entry: domish.Element) -> str | None:
    """Return the ``xml:lang`` of the entry, inherited from the item when it has none."""
    for element in (entry, item_elt):
        language = element.getAttribute((NS_XML, "lang"))
        if language is not None:
            # xml:lang="" explicitly means "no language" (XML 1.0).
            return language.strip() or None
    return None


def _read_text_constructs(
    entry: domish.Element, namespace: str, legacy: bool, data: dict[str, Any]
) -> None:
    for key in TEXT_CONSTRUCTS:
        construct = _child(entry, namespace, key)
        if construct is None:
            continue
        if construct.getAttribute("src") and not legacy:
            # NOTE: out-of-line content (RFC 4287 section 4.1.3.2) is not fetched.
            log.debug("ignoring out-of-line <%s/> of item %s", key, data["id"])
            continue
        parsed = _read_text_construct(construct, legacy)
        if parsed is None:
            continue
        data[key] = parsed[0]
        if parsed[1] is not None:
            data[f"{key}_xhtml"] = parsed[1]


def _read_tags(entry: domish.Element, namespace: str, data: dict[str, Any]) -> None:
    tags: list[str] = []
    for category in entry.elements(namespace, "category"):
        term = (category.getAttribute("term") or "").strip()
        if term and term not in tags:
            tags.append(term)
    if tags:
        data["tags"] = tags


def item_to_data(
    item_elt: domish.Element, service: str | None = None, node: str | None = None
) -> dict[str, Any]:
    """Parse a pubsub ``<item/>`` holding an Atom entry into microblog data.

    Raises ValueError when the item has no id or no Atom entry (a node's
    ``<feed/>`` metadata item is not a post). An entry without ``<id/>`` is
    accepted (RFC 4287 requires one, but published comments lack it) and
    gives no ``atom_id``.
    """
    item_id = item_elt.getAttribute("id")
    if not item_id:
        raise ValueError("invalid microblog item: missing item id")
    found = _find_entry(item_elt)
    if found is None:
        raise ValueError(f"invalid microblog item {item_id!r}: no Atom <entry/>")
    entry, namespace = found
    legacy = namespace == NS_ATOM_03
    data: dict[str, Any] = {"id": item_id}
    atom_id = _child_text(entry, namespace, "id")
    if atom_id:
        data["atom_id"] = atom_id
    if service is not None:
        data["service"] = service
    if node is not None:
        data["node"] = node
    language = _read_language(item_elt, entry)
    if language:
        data["language"] = language

    _read_text_constructs(entry, namespace, legacy, data)
    _read_dates(entry, namespace, data)
    _read_people(entry, namespace, data)
    _verify_author(data, item_elt.getAttribute("publisher"))
    _read_tags(entry, namespace, data)
    _read_links(entry, namespace, data)
    _read_replies(entry, data)
    _read_generator(entry, namespace, data)
    _read_geoloc(entry, data)
    return data


# --- Atom building ----------------------------------------------------------

# Keys of the data model checked by data_to_item, by expected type.
STRING_KEYS = (
    "id", "atom_id", "language", "author", "author_uri", "author_email", "author_jid",
    *TEXT_CONSTRUCTS, *(f"{name}_xhtml" for name in TEXT_CONSTRUCTS),
)
LIST_OF_MAPPINGS_KEYS = ("links", "comments", "authors", "contributors", "in_reply_to")
MAPPING_KEYS = ("generator", "geoloc")
GEOLOC_KEY = re.compile(r"^[a-z]+$")


def _check_type(value: Any, expected: type | tuple[type, ...], description: str) -> None:
    if not isinstance(value, expected) or isinstance(value, bool):
        raise InvalidValue(f"invalid microblog data: {description} {value!r}")


def _check_data(data: dict[str, Any]) -> None:
    """Raise InvalidValue when a key of microblog data has the wrong type or a date is invalid."""
    for key in STRING_KEYS:
        if data.get(key) is not None:
            _check_type(data[key], str, f"{key} must be a string, not")
    for key in ("published", "updated"):
        if data.get(key) is not None:
            _check_type(data[key], (int, float, str), f"{key} must be a timestamp, not")
            _timestamp_value(data[key], key)
    tags = data.get("tags")
    if tags is not None:
        _check_type(tags, list, "tags must be a list of strings, not")
        for tag in tags:
            _check_type(tag, str, "each tag must be a string, not")
            if not tag.strip():
                raise InvalidValue("invalid microblog data: empty tag")
    for key in LIST_OF_MAPPINGS_KEYS:
        values = data.get(key)
        if values is None:
            continue
        _check_type(values, list, f"{key} must be a list of mappings, not")
        for value in values:
            _check_type(value, dict, f"each entry of {key} must be a mapping, not")
    for link in data.get("links") or []:
        if not isinstance(link.get("href"), str) or not link["href"].strip():
            raise InvalidValue(f"invalid microblog data: link {link!r} has no href")
    for reply in data.get("in_reply_to") or []:
        if not isinstance(reply.get("ref"), str) or not reply["ref"].strip():
            raise InvalidValue(
                f"invalid microblog data: in_reply_to {reply!r} has no ref (the Atom id "
                "of the post replied to)"
            )
    for key in MAPPING_KEYS:
        if data.get(key) is not None:
            _check_type(data[key], dict, f"{key} must be a mapping, not")
    for key in data.get("geoloc") or {}:
        if not isinstance(key, str) or not GEOLOC_KEY.match(key):
            raise InvalidValue(
                f"invalid microblog data: geoloc key {key!r} is not a XEP-0080 element name"
            )


def _timestamp_value(value: int | float | str, key: str) -> float:
    """Return a timestamp given as a number or as a date string."""
    if isinstance(value, str):
        parsed = parse_date(value)
        if parsed is None:
            raise InvalidValue(
                f"invalid microblog data: {key} {value!r} is not a date. Use a UNIX "
                "timestamp or an ISO 8601 date."
            )
        return parsed
    if not math.isfinite(value):
        raise InvalidValue(f"invalid microblog data: {key} {value!r} is not a date")
    return float(value)


def _add_text_construct(
    entry: domish.Element, name: str, text: str | None, xhtml: str | None
) -> None:
    """Add a text construct, as XHTML when ``xhtml`` is given, else as text.

    ``xhtml`` may be loose HTML: sanitising turns it into well-formed XHTML.
    Markup that sanitises to nothing is replaced by ``text``.
    """
    markup = sanitise_html(xhtml)[1] if xhtml else ""
    if markup:
        # parseXml drops text directly under the root element (it parses like
        # a stream), so the wrapper <div/> is put one level down.
        document = parseXml(f'<root><div xmlns="{NS_XHTML}">{markup}</div></root>')
        wrapper = next(document.elements(NS_XHTML, "div"))
        construct = entry.addElement(name)
        construct["type"] = "xhtml"
        construct.addChild(wrapper)
        return
    construct = entry.addElement(name, content=text or "")
    construct["type"] = "text"


def _comment_uri(comment: dict[str, Any]) -> str:
    uri = comment.get("uri")
    if uri:
        return uri
    service = comment.get("service")
    node = comment.get("node")
    if not service or not node:
        raise InvalidValue(
            f"invalid comments entry {comment!r}: give a uri, or a service and a node"
        )
    return comments_node_uri(service, node)


def comments_node_uri(service: str, node: str) -> str:
    """Return the XMPP URI (RFC 5122) of a comments node, the href of its comments link."""
    return f"xmpp:{service}?;node={quote(node, safe='')}"


def _add_person(entry: domish.Element, element_name: str, person: dict[str, Any]) -> None:
    uri = person.get("uri")
    if not uri and person.get("jid"):
        uri = f"xmpp:{person['jid']}"
    if not (person.get("name") or uri or person.get("email")):
        return
    person_elt = entry.addElement(element_name)
    if person.get("name"):
        person_elt.addElement("name", content=str(person["name"]))
    if uri:
        person_elt.addElement("uri", content=str(uri))
    if person.get("email"):
        person_elt.addElement("email", content=str(person["email"]))


def _add_people(entry: domish.Element, data: dict[str, Any]) -> None:
    """Add the authors and contributors.

    The ``author*`` keys describe the first author and replace
    ``authors[0]``, and the other entries of ``authors`` follow it.
    """
    authors = list(data.get("authors") or [])
    first = {
        person_key: data[key] for key, person_key in AUTHOR_KEYS.items() if data.get(key)
    }
    if first:
        authors[:1] = [first]
    for author in authors:
        _add_person(entry, "author", author)
    for contributor in data.get("contributors") or []:
        _add_person(entry, "contributor", contributor)


def _add_dates(entry: domish.Element, data: dict[str, Any]) -> None:
    published = data.get("published")
    updated = data.get("updated")
    if published is None and updated is None:
        published = updated = datetime.now(timezone.utc).timestamp()
    elif published is None:
        published = updated
    elif updated is None:
        updated = published
    entry.addElement("published", content=format_date(_timestamp_value(published, "published")))
    entry.addElement("updated", content=format_date(_timestamp_value(updated, "updated")))


def _add_links(entry: domish.Element, data: dict[str, Any]) -> None:
    for link in data.get("links") or []:
        link_elt = entry.addElement("link")
        link_elt["href"] = link["href"]
        link_elt["rel"] = str(link.get("rel") or "alternate")
        for attribute in (*LINK_TEXT_ATTRIBUTES, "length"):
            if link.get(attribute) is not None:
                link_elt[attribute] = str(link[attribute])

    for comment in data.get("comments") or []:
        link_elt = entry.addElement("link")
        link_elt["rel"] = "replies"
        link_elt["title"] = "comments"
        link_elt["href"] = _comment_uri(comment)

    for reply in data.get("in_reply_to") or []:
        reply_elt = entry.addElement((NS_THREADING, "in-reply-to"))
        reply_elt["ref"] = reply["ref"]
        for attribute in ("href", "type", "source"):
            if reply.get(attribute):
                reply_elt[attribute] = str(reply[attribute])


def _add_generator(entry: domish.Element, generator: dict[str, Any]) -> None:
    generator_elt = entry.addElement("generator", content=str(generator.get("name") or ""))
    for attribute in ("uri", "version"):
        if generator.get(attribute):
            generator_elt[attribute] = str(generator[attribute])


def _add_geoloc(entry: domish.Element, geoloc: dict[str, Any]) -> None:
    geoloc_elt = entry.addElement((NS_GEOLOC, "geoloc"))
    for name, value in geoloc.items():
        if value is None:
            continue
        geoloc_elt.addElement(name, content=str(value))


def _remove_invalid_xml(element: domish.Element) -> None:
    """Remove the characters that XML 1.0 forbids from the text and attributes of a tree.

    Line ends in text become "\\n", as an XML parser would read them.
    """
    for name, value in element.attributes.items():
        element.attributes[name] = XML_INVALID_CHARS.sub("", value)
    for index, child in enumerate(element.children):
        if isinstance(child, str):
            text = XML_INVALID_CHARS.sub("", child)
            element.children[index] = text.replace("\r\n", "\n").replace("\r", "\n")
        else:
            _remove_invalid_xml(child)


def data_to_item(data: dict[str, Any]) -> domish.Element:
    """Build a pubsub ``<item/>`` with an Atom entry from microblog data.

    A missing item id and Atom id are generated; missing dates are set to the
    current time. ``*_xhtml`` values are sanitised and may be loose HTML.
    Characters that XML 1.0 forbids are removed.
    Raises InvalidValue for a key of the wrong type, a date that cannot be
    read, a link without href, a reply without ref, or a comments entry
    without a URI, service or node.
    """
    _check_data(data)
    item_id = data.get("id") or str(uuid.uuid4())
    item_elt = domish.Element((None, "item"))
    item_elt["id"] = item_id
    entry = item_elt.addElement((NS_ATOM, "entry"))
    if data.get("language"):
        entry[(NS_XML, "lang")] = data["language"]

    # RFC 4287 requires a title, even an empty one.
    _add_text_construct(entry, "title", data.get("title"), data.get("title_xhtml"))
    for name in TEXT_CONSTRUCTS[1:]:
        if data.get(name) or data.get(f"{name}_xhtml"):
            _add_text_construct(entry, name, data.get(name), data.get(f"{name}_xhtml"))

    entry.addElement("id", content=data.get("atom_id") or f"urn:uuid:{uuid.uuid4()}")
    _add_dates(entry, data)
    _add_people(entry, data)
    for tag in data.get("tags") or []:
        category = entry.addElement("category")
        category["term"] = tag.strip()
    _add_links(entry, data)
    if data.get("generator"):
        _add_generator(entry, data["generator"])
    if data.get("geoloc"):
        _add_geoloc(entry, data["geoloc"])
    _remove_invalid_xml(item_elt)
    return item_elt


# --- plugin -------------------------------------------------------------------


def _parse_jid(value: str, role: str) -> jid.JID:
    try:
        return make_jid(value)
    except jid.InvalidFormat as error:
        raise InvalidValue(f"invalid {role} JID {value!r}: {error}") from error


def _json_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of pubsub metadata with JIDs turned into strings."""
    return {
        key: value.full() if isinstance(value, jid.JID) else value
        for key, value in metadata.items()
    }


def default_publish_options(node: str) -> dict[str, Any] | None:
    """Return the publish options used when a post gives none.

    A comments node usually belongs to someone else, and its owner configured
    it: a comment goes out without options.
    """
    if node.startswith(NS_COMMENT_PREFIX):
        return None
    return DEFAULT_PUBLISH_OPTIONS


def _pop_request_options(data: dict[str, Any], node: str) -> tuple[Any, bool, str | None]:
    """Remove the keys of mb_send that are not post data, and return their values.

    Returns the publish options, ``allow_comments`` and ``comments_service``.
    """
    options = data.pop("options", default_publish_options(node))
    if options is not None and not isinstance(options, dict):
        raise InvalidValue(f"invalid publish options {options!r}: expected a mapping or null")
    allow_comments = data.pop("allow_comments", False)
    if not isinstance(allow_comments, bool):
        raise InvalidValue(f"invalid allow_comments {allow_comments!r}: expected true or false")
    comments_service = data.pop("comments_service", None)
    if comments_service is not None and not isinstance(comments_service, str):
        raise InvalidValue(f"invalid comments_service {comments_service!r}: expected a JID")
    return options, allow_comments, comments_service or None


def _keep_previous_fields(data: dict[str, Any], previous: dict[str, Any]) -> None:
    """Fill an edit's data with the fields of the published post that it does not change."""
    for key in KEPT_ON_EDIT:
        if data.get(key) is None and previous.get(key) is not None:
            data[key] = previous[key]
    if data.get("updated") is None:
        data["updated"] = datetime.now(timezone.utc).timestamp()


class XEP_0277:
    """Microblog bridge methods and pubsub cache analysers."""

    def __init__(self, host: Any) -> None:
        log.info("plugin XEP-0277 (microblogging) initialisation")
        self.host = host
        self._pubsub = host.plugins["XEP-0060"]
        if "PUBSUB_CACHE" in host.plugins:
            cache = host.plugins["PUBSUB_CACHE"]
            cache.register_analyser(
                {
                    "name": "XEP-0277",
                    "node": NS_MICROBLOG,
                    "namespace": NS_ATOM,
                    "type": "blog",
                    "to_sync": True,
                    "parser": self._cache_parser,
                }
            )
            # The longer prefix wins, so comments nodes, whose names start
            # with NS_MICROBLOG too, get this analyser.
            cache.register_analyser(
                {
                    "name": "XEP-0277 comments",
                    "node": NS_COMMENT_PREFIX,
                    "namespace": NS_ATOM,
                    "type": "blog",
                    "subtype": "comment",
                    "to_sync": False,
                    "parser": self._cache_parser,
                }
            )
        if "XEP-0163" in host.plugins:
            host.plugins["XEP-0163"].add_interest(NS_MICROBLOG)
        host.bridge.register_method("mb_get", self._mb_get)
        host.bridge.register_method("mb_send", self._mb_send)
        host.bridge.register_method("mb_retract", self._mb_retract)

    def get_handler(self, client: Any) -> None:
        """Return None: microblog events reach the plugin through XEP-0060."""
        return None

    def _cache_parser(
        self, client: Any, item_elt: domish.Element, service: jid.JID | None, node: str
    ) -> dict[str, Any] | None:
        """Parse a cached item; return None for an item that is not a microblog post."""
        service_str = service.full() if service is not None else client.jid.userhost()
        try:
            return item_to_data(item_elt, service_str, node)
        except ValueError as error:
            log.debug(
                "[%s] not caching parsed data of an item on %s, node %s: %s",
                client.profile, service_str, node, error,
            )
            return None

    def _service_jid(self, client: Any, service: str | None) -> jid.JID:
        if not service:
            return client.jid.userhostJID()
        return _parse_jid(service, "service")

    async def mb_get(
        self,
        client: Any,
        service: jid.JID,
        node: str = NS_MICROBLOG,
        max_items: int | None = None,
        extra: dict[str, Any] | None = None,
        item_ids: list[str] | None = None,
    ) -> dict[str, Any]:
        """Retrieve microblog posts of a node; items that are not posts are skipped.

        ``item_ids`` limits the result to these posts. Returns ``items`` (the
        posts as microblog data) and ``metadata`` (the pubsub metadata).
        """
        items, metadata = await self._pubsub.get_items(
            client, service, node, max_items=max_items, item_ids=item_ids or None,
            extra=extra or {},
        )
        posts = []
        for item_elt in items:
            try:
                posts.append(item_to_data(item_elt, service.full(), node))
            except ValueError as error:
                log.debug(
                    "[%s] skipping item of %s, node %s: %s",
                    client.profile, service.full(), node, error,
                )
        return {"items": posts, "metadata": _json_metadata(metadata)}

    async def _get_post(
        self, client: Any, service: jid.JID, node: str, item_id: str
    ) -> dict[str, Any] | None:
        """Return the post ``item_id`` of a node, or None when the service has no such post.

        Raises a PubsubError subclass for other errors of the service.
        """
        try:
            result = await self.mb_get(client, service, node, item_ids=[item_id])
        except PubsubItemNotFound:
            return None
        for post in result["items"]:
            if post["id"] == item_id:
                return post
        return None

    async def mb_send(
        self,
        client: Any,
        service: jid.JID,
        node: str = NS_MICROBLOG,
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Publish a microblog post; return its ``item_id`` and its ``comments`` entries.

        ``data`` is microblog data plus these request keys:

        - ``options``: the publish options; absent means
          :func:`default_publish_options`, None means no publish options;
        - ``allow_comments``: create a comments node for the post (named
          ``urn:xmpp:microblog:0:comments/ITEM_ID``, on ``comments_service``
          or else on ``service``) and link it, unless the post already links
          one;
        - ``comments_service``: JID of the pubsub service of that node.

        A post without author gets the profile's bare JID as author. When an
        item with the same id exists (an edit), the post keeps its Atom id,
        ``published`` date and comments links unless ``data`` gives others,
        and ``updated`` becomes the current time.

        Raises InvalidValue for invalid data, and a PubsubError subclass when
        the service rejects the comments node or the publication.
        """
        if not isinstance(data, dict):
            raise InvalidValue(f"invalid microblog data {data!r}: expected a mapping")
        data = dict(data)
        options, allow_comments, comments_service = _pop_request_options(data, node)
        _check_data(data)

        if data.get("id"):
            try:
                previous = await self._get_post(client, service, node, data["id"])
            except PubsubError as error:
                log.info(
                    "profile %s: reading post %s of %s, node %s failed, so it is published "
                    "as a new post: %s",
                    client.profile, data["id"], service.full(), node, error,
                )
                previous = None
            if previous is not None:
                _keep_previous_fields(data, previous)
        else:
            data["id"] = str(uuid.uuid4())
        if not any(data.get(key) for key in ("author_jid", "author_uri", "authors")):
            data["author_jid"] = client.jid.userhost()
        if allow_comments and not data.get("comments"):
            data["comments"] = [
                await self._create_comments_node(
                    client,
                    _parse_jid(comments_service, "comments service") if comments_service
                    else service,
                    data["id"],
                )
            ]

        item_elt = data_to_item(data)
        item_ids = await self._publish(client, service, node, item_elt, options)
        result: dict[str, Any] = {"item_id": item_ids[0] if item_ids else item_elt["id"]}
        if data.get("comments"):
            result["comments"] = data["comments"]
        return result

    async def _publish(
        self,
        client: Any,
        service: jid.JID,
        node: str,
        item_elt: domish.Element,
        options: dict[str, Any] | None,
    ) -> list[str]:
        """Publish an item with publish options, falling back to a configured node."""
        # Services reject publish options in different ways: Prosody with
        # precondition-not-met when the node exists with another
        # configuration, ejabberd 23.01 with resource-constraint for a field it
        # does not know (pubsub#max_items). Then the node is created with the
        # same settings as a configuration (nothing happens if it exists) and
        # the post goes out without options, as the node is configured.
        try:
            return await self._pubsub.publish(client, service, node, [item_elt], options=options)
        except PubsubError as e:
            if not options or not _rejects_options(e):
                raise
            log.info(
                "profile %s: node %s of %s rejected publish options %s (%s); "
                "creating it with that configuration unless it exists",
                client.profile, node, service.full(), options, e,
            )
            await self._create_configured_node(client, service, node, options)
            return await self._pubsub.publish(client, service, node, [item_elt])

    async def _create_comments_node(
        self, client: Any, service: jid.JID, item_id: str
    ) -> dict[str, str]:
        """Create the comments node of a post, or reuse it, and return its comments entry."""
        node = NS_COMMENT_PREFIX + item_id
        await self._create_configured_node(client, service, node, COMMENTS_NODE_OPTIONS)
        log.info(
            "profile %s: comments node %s of %s ready for post %s",
            client.profile, node, service.full(), item_id,
        )
        return {
            "uri": comments_node_uri(service.full(), node),
            "service": service.full(),
            "node": node,
        }

    async def _create_configured_node(
        self, client: Any, service: jid.JID, node: str, options: dict[str, Any],
    ) -> None:
        """Create a node configured with ``options``; do nothing when it exists.

        A "max" item limit that the service rejects is retried as 1000.
        """
        configurations = [options]
        if options.get("pubsub#max_items") == "max":
            configurations.append({**options, "pubsub#max_items": "1000"})
        for index, configuration in enumerate(configurations):
            try:
                await self._pubsub.create_node(client, service, node, configuration)
                return
            except PubsubError as e:
                if getattr(e, "condition", None) == "conflict":
                    return
                if index == len(configurations) - 1 or not _rejects_options(e):
                    raise

    async def mb_retract(
        self,
        client: Any,
        service: jid.JID,
        node: str,
        item_id: str,
        delete_comments: bool = False,
    ) -> list[str]:
        """Retract a post, notifying subscribers, and return the deleted comments nodes.

        With ``delete_comments``, the comments nodes that the post links are
        deleted first, and their URIs returned. A node that no longer exists
        is skipped. Raises
        InvalidValue for an empty item id, and a PubsubError subclass when the
        service rejects a request (a post that does not exist gives
        PubsubItemNotFound on Prosody 0.12 and ejabberd 23.01).
        """
        if not isinstance(item_id, str) or not item_id:
            raise InvalidValue(f"invalid item id {item_id!r}: give the id of the post to retract")
        deleted: list[str] = []
        if delete_comments:
            post = await self._get_post(client, service, node, item_id)
            for comment in (post or {}).get("comments", []):
                comments_service = _parse_jid(comment["service"], "comments service")
                try:
                    await self._pubsub.delete_node(client, comments_service, comment["node"])
                except PubsubItemNotFound:
                    log.debug(
                        "profile %s: comments node %s of %s was already deleted",
                        client.profile, comment["node"], comment["service"],
                    )
                    continue
                deleted.append(comment["uri"])
        # XEP-0277 requires notify_retract on blog nodes: subscribers must learn
        # of the retraction to update what they show.
        await self._pubsub.retract_items(client, service, node, [item_id], notify=True)
        return deleted

    async def _mb_get(
        self,
        service: str | None = None,
        node: str | None = None,
        max_items: int | None = None,
        item_ids: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        return await self.mb_get(
            client,
            self._service_jid(client, service),
            node or NS_MICROBLOG,
            max_items=max_items,
            extra=extra,
            item_ids=item_ids,
        )

    async def _mb_send(
        self,
        service: str | None = None,
        node: str | None = None,
        data: dict[str, Any] | None = None,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        return await self.mb_send(
            client, self._service_jid(client, service), node or NS_MICROBLOG, data
        )

    async def _mb_retract(
        self,
        service: str | None = None,
        node: str | None = None,
        item_id: str = "",
        delete_comments: bool = False,
        profile: str | None = None,
    ) -> dict[str, Any]:
        client = self.host.get_client(profile)
        service_jid = self._service_jid(client, service)
        node = node or NS_MICROBLOG
        deleted = await self.mb_retract(client, service_jid, node, item_id, delete_comments)
        return {
            "service": service_jid.full(),
            "node": node,
            "item_id": item_id,
            "deleted_comments": deleted,
        }
