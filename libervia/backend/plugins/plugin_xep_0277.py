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
``title``, ``content``, ``summary``
    plain text
``title_xhtml``, ``content_xhtml``, ``summary_xhtml``
    sanitised XHTML fragment (no wrapper ``<div/>``), when the entry has rich
    text
``published``, ``updated``
    float UNIX timestamps (UTC)
``author``, ``author_uri``, ``author_email``
    first author's name, URI and email
``author_jid``
    author's JID, from an ``xmpp:`` author URI, else the item publisher
``author_jid_verified``
    True when the author JID is the item publisher
``tags``
    category terms
``language``
    ``xml:lang`` of the entry
``links``
    ``{href, rel, type, title, hreflang, length}`` dicts
``comments``
    ``{uri, service, node}`` dicts, one per comments node
``service``, ``node``
    where the item comes from, when known

Rich text from the network is untrusted: every HTML or XHTML construct goes
through an allow-list sanitiser that drops scripts, styles, event handler
attributes and URLs with schemes such as ``javascript:``.
"""

from __future__ import annotations

import base64
import binascii
import logging
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

from libervia.backend.core.exceptions import InvalidValue, PubsubError

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

# Posts are public unless the caller passes other options: anyone may read them.
# "max" requests the service's largest item limit: Prosody 0.12 keeps only
# one item in a PEP node created without pubsub#max_items.
DEFAULT_PUBLISH_OPTIONS = {"pubsub#access_model": "open", "pubsub#max_items": "max"}


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
GLOBAL_ATTRIBUTES = frozenset({"title", "lang", "dir"})
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


def _read_author(entry: domish.Element, namespace: str, data: dict[str, Any]) -> None:
    author_elt = _child(entry, namespace, "author")
    if author_elt is None:
        return
    name = _child_text(author_elt, namespace, "name")
    # Atom 0.3 calls the URI <url/>; some Atom 1.0 feeds kept that name.
    uri = _child_text(author_elt, namespace, "uri") or _child_text(author_elt, namespace, "url")
    email = _child_text(author_elt, namespace, "email")
    if name:
        data["author"] = name
    if uri:
        data["author_uri"] = uri
        parsed = parse_xmpp_uri(uri)
        if parsed is not None:
            try:
                data["author_jid"] = jid.JID(parsed[0]).full()
            except jid.InvalidFormat:
                log.debug("ignoring author URI %r: invalid JID", uri)
    if email:
        data["author_email"] = email


def _verify_author(data: dict[str, Any], publisher: str | None) -> None:
    """Set ``author_jid_verified``, using the publisher as the author when none is given."""
    publisher_jid = None
    if publisher:
        try:
            publisher_jid = jid.JID(publisher)
        except jid.InvalidFormat:
            log.debug("ignoring invalid publisher %r of item %s", publisher, data["id"])

    if "author_jid" not in data:
        if publisher_jid is not None:
            data["author_jid"] = publisher_jid.userhost()
            data["author_jid_verified"] = True
        else:
            data["author_jid_verified"] = False
        return

    author_jid = jid.JID(data["author_jid"])
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
    for attribute in ("type", "title", "hreflang"):
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
    if "published" not in data and "updated" in data:
        data["published"] = data["updated"]
    elif "updated" not in data and "published" in data:
        data["updated"] = data["published"]


def _find_entry(item_elt: domish.Element) -> tuple[domish.Element, str] | None:
    for namespace in (NS_ATOM, NS_ATOM_03):
        entry = _child(item_elt, namespace, "entry")
        if entry is not None:
            return entry, namespace
    return None


def item_to_data(
    item_elt: domish.Element, service: str | None = None, node: str | None = None
) -> dict[str, Any]:
    """Parse a pubsub ``<item/>`` holding an Atom entry into microblog data.

    Raises ValueError when the item has no id or no Atom entry. An entry
    without ``<id/>`` is accepted (RFC 4287 requires one, but published
    comments lack it) and gives no ``atom_id``.
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
    language = entry.getAttribute((NS_XML, "lang"))
    if language:
        data["language"] = language

    for key in ("title", "content", "summary"):
        construct = _child(entry, namespace, key)
        if construct is None:
            continue
        if construct.getAttribute("src") and not legacy:
            # NOTE: out-of-line content (RFC 4287 section 4.1.3.2) is not fetched.
            log.debug("ignoring out-of-line <%s/> of item %s", key, item_id)
            continue
        parsed = _read_text_construct(construct, legacy)
        if parsed is None:
            continue
        data[key] = parsed[0]
        if parsed[1] is not None:
            data[f"{key}_xhtml"] = parsed[1]

    _read_dates(entry, namespace, data)
    _read_author(entry, namespace, data)
    _verify_author(data, item_elt.getAttribute("publisher"))

    tags = [
        category["term"].strip()
        for category in entry.elements(namespace, "category")
        if (category.getAttribute("term") or "").strip()
    ]
    if tags:
        data["tags"] = tags

    _read_links(entry, namespace, data)
    return data


# --- Atom building ----------------------------------------------------------


def _add_text_construct(
    entry: domish.Element, name: str, text: str | None, xhtml: str | None
) -> None:
    """Add a text construct, as XHTML when ``xhtml`` is given, else as text."""
    if xhtml:
        # Sanitising also turns loose HTML into well-formed XHTML.
        _, markup = sanitise_html(xhtml)
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
    return f"xmpp:{service}?;node={quote(node, safe='')}"


def data_to_item(data: dict[str, Any]) -> domish.Element:
    """Build a pubsub ``<item/>`` with an Atom entry from microblog data.

    A missing item id and Atom id are generated; missing dates are set to the
    current time. Raises InvalidValue for a comments entry without a URI,
    service or node.
    """
    item_id = data.get("id") or str(uuid.uuid4())
    item_elt = domish.Element((None, "item"))
    item_elt["id"] = item_id
    entry = item_elt.addElement((NS_ATOM, "entry"))
    if data.get("language"):
        entry[(NS_XML, "lang")] = data["language"]

    # RFC 4287 requires a title, even an empty one.
    _add_text_construct(entry, "title", data.get("title"), data.get("title_xhtml"))
    if data.get("summary") or data.get("summary_xhtml"):
        _add_text_construct(entry, "summary", data.get("summary"), data.get("summary_xhtml"))
    if data.get("content") or data.get("content_xhtml"):
        _add_text_construct(entry, "content", data.get("content"), data.get("content_xhtml"))

    entry.addElement("id", content=data.get("atom_id") or f"urn:uuid:{uuid.uuid4()}")

    now = datetime.now(timezone.utc).timestamp()
    published = data.get("published")
    updated = data.get("updated")
    if published is None:
        published = updated if updated is not None else now
    if updated is None:
        updated = published
    entry.addElement("published", content=format_date(float(published)))
    entry.addElement("updated", content=format_date(float(updated)))

    author_uri = data.get("author_uri")
    if not author_uri and data.get("author_jid"):
        author_uri = f"xmpp:{data['author_jid']}"
    if data.get("author") or author_uri or data.get("author_email"):
        author_elt = entry.addElement("author")
        if data.get("author"):
            author_elt.addElement("name", content=data["author"])
        if author_uri:
            author_elt.addElement("uri", content=author_uri)
        if data.get("author_email"):
            author_elt.addElement("email", content=data["author_email"])

    for tag in data.get("tags", []):
        category = entry.addElement("category")
        category["term"] = tag

    for link in data.get("links", []):
        link_elt = entry.addElement("link")
        link_elt["href"] = link["href"]
        for attribute in ("rel", "type", "title", "hreflang", "length"):
            if link.get(attribute) is not None:
                link_elt[attribute] = str(link[attribute])

    for comment in data.get("comments", []):
        link_elt = entry.addElement("link")
        link_elt["rel"] = "replies"
        link_elt["title"] = "comments"
        link_elt["href"] = _comment_uri(comment)

    return item_elt


# --- plugin -------------------------------------------------------------------


def _parse_jid(value: str, role: str) -> jid.JID:
    try:
        return jid.JID(value)
    except jid.InvalidFormat as error:
        raise InvalidValue(f"invalid {role} JID {value!r}: {error}") from error


def _json_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of pubsub metadata with JIDs turned into strings."""
    return {
        key: value.full() if isinstance(value, jid.JID) else value
        for key, value in metadata.items()
    }


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
    ) -> dict[str, Any]:
        """Retrieve microblog posts of a node; items that are not posts are skipped."""
        items, metadata = await self._pubsub.get_items(
            client, service, node, max_items=max_items, extra=extra or {}
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

    async def mb_send(
        self,
        client: Any,
        service: jid.JID,
        node: str = NS_MICROBLOG,
        data: dict[str, Any] | None = None,
    ) -> str:
        """Publish a microblog post; return its item id.

        ``data["options"]`` sets the publish options: absent means
        DEFAULT_PUBLISH_OPTIONS, None means no publish options.
        """
        if not isinstance(data, dict):
            raise InvalidValue(f"invalid microblog data {data!r}: expected a mapping")
        options = data.get("options", DEFAULT_PUBLISH_OPTIONS)
        item_elt = data_to_item(data)
        # Services reject publish options in different ways: Prosody with
        # precondition-not-met when the node exists with another
        # configuration, ejabberd 23.01 with resource-constraint for a field it
        # does not know (pubsub#max_items). Then the node is created with the
        # same settings as a configuration (nothing happens if it exists) and
        # the post goes out without options, as the node is configured.
        try:
            item_ids = await self._pubsub.publish(
                client, service, node, [item_elt], options=options
            )
        except PubsubError as e:
            if not options or not _rejects_options(e):
                raise
            log.info(
                "profile %s: node %s of %s rejected publish options %s (%s); "
                "creating it with that configuration unless it exists",
                client.profile, node, service.full(), options, e,
            )
            await self._create_blog_node(client, service, node, options)
            item_ids = await self._pubsub.publish(client, service, node, [item_elt])
        return item_ids[0] if item_ids else item_elt["id"]

    async def _create_blog_node(
        self, client: Any, service: jid.JID, node: str, options: dict[str, Any],
    ) -> None:
        """Create a blog node configured with ``options``; do nothing when it exists.

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

    async def _mb_get(
        self,
        service: str | None = None,
        node: str | None = None,
        max_items: int | None = None,
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
        )

    async def _mb_send(
        self,
        service: str | None = None,
        node: str | None = None,
        data: dict[str, Any] | None = None,
        profile: str | None = None,
    ) -> dict[str, str]:
        client = self.host.get_client(profile)
        item_id = await self.mb_send(
            client, self._service_jid(client, service), node or NS_MICROBLOG, data
        )
        return {"item_id": item_id}
