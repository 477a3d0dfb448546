"""XEP-0059 Result Set Management: the ``<set/>`` element of paged requests.

:class:`RSMRequest` is what a client asks for (a page size, a position) and
:class:`RSMResponse` what the service reports about the page it returned.
Both render to and parse from ``<set xmlns='http://jabber.org/protocol/rsm'/>``
and convert to plain dicts for the bridge. Values are checked when a model is
built, so an invalid page size or index raises InvalidValue naming the value
before anything is sent.

Other plugins use the models; the pubsub plugin places the ``<set/>`` element
as the last child of ``<pubsub/>`` in items requests and reads it back from
the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.words.xish import domish

from libervia.backend.core.exceptions import InvalidValue

PLUGIN_INFO = {
    "name": "Result Set Management",
    "import_name": "XEP-0059",
    "type": "XEP",
    "dependencies": [],
    "recommendations": [],
    "main": "XEP_0059",
    "modes": ["client", "component"],
    "description": "Paging of result sets: request and response models of <set/>",
}

NS_RSM = "http://jabber.org/protocol/rsm"

#: Keys of the dict form of a request (bridge methods, ``extra["rsm"]``).
REQUEST_KEYS = ("max", "after", "before", "index")


def _non_negative_int(value: Any, name: str) -> int | None:
    """Return ``value`` as an int of at least 0; None stays None.

    Accepts ints and strings of ASCII decimal digits (values read from XML or
    a command line). Raises InvalidValue naming the ``name`` field otherwise.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidValue(f"invalid RSM {name} {value!r}: expected an integer of 0 or more")
    if isinstance(value, str):
        text = value.strip()
        # str.isdigit() also accepts digits that int() rejects, such as "²".
        if not (text.isascii() and text.isdigit()):
            raise InvalidValue(
                f"invalid RSM {name} {value[:80]!r}: expected an integer of 0 or more"
            )
        try:
            return int(text)
        except ValueError as e:
            # Python refuses to convert more than 4300 digits by default.
            raise InvalidValue(f"invalid RSM {name} {value[:80]!r}: {e}") from e
    if not isinstance(value, int):
        raise InvalidValue(f"invalid RSM {name} {value!r}: expected an integer of 0 or more")
    if value < 0:
        raise InvalidValue(f"invalid RSM {name} {value}: it must not be negative")
    return value


def _optional_text(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidValue(f"invalid RSM {name} {value!r}: expected a string")


def find_set(parent: domish.Element | None) -> domish.Element | None:
    """Return the RSM ``<set/>`` child of ``parent``, or None."""
    if parent is None:
        return None
    return next(parent.elements(NS_RSM, "set"), None)


def _child_text(set_elt: domish.Element, name: str) -> str | None:
    child = next(set_elt.elements(NS_RSM, name), None)
    return None if child is None else str(child)


@dataclass
class RSMRequest:
    """A page request: page size and position.

    ``max`` is the page size (0 requests only the count). ``after`` requests
    the page following an item, ``before`` the page preceding one, and
    ``before=""`` the last page. ``index`` requests the page starting at
    a position, counted from 0. ``after``, ``before`` and ``index`` exclude
    each other.
    """

    max: int | None = None
    after: str | None = None
    before: str | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        self.max = _non_negative_int(self.max, "max")
        self.index = _non_negative_int(self.index, "index")
        self.after = _optional_text(self.after, "after")
        self.before = _optional_text(self.before, "before")
        positions = [
            name for name, value in
            (("after", self.after), ("before", self.before), ("index", self.index))
            if value is not None
        ]
        if len(positions) > 1:
            raise InvalidValue(
                f"invalid RSM request: {' and '.join(positions)} exclude each other, "
                "give only one of them"
            )
        if self.after == "":
            raise InvalidValue("invalid RSM after '': give the id of the last item received")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RSMRequest:
        """Build a request from a dict with the keys of REQUEST_KEYS.

        Raises InvalidValue for an unknown key or an invalid value.
        """
        if not isinstance(data, dict):
            raise InvalidValue(f"invalid RSM request {data!r}: expected a mapping")
        unknown = set(data) - set(REQUEST_KEYS)
        if unknown:
            raise InvalidValue(
                f"unknown RSM request keys {sorted(unknown)}: use {list(REQUEST_KEYS)}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Return the values that are set, keyed as in REQUEST_KEYS."""
        values = {"max": self.max, "after": self.after, "before": self.before, "index": self.index}
        return {key: value for key, value in values.items() if value is not None}

    def to_element(self) -> domish.Element:
        """Render the request as a ``<set/>`` element."""
        set_elt = domish.Element((NS_RSM, "set"))
        if self.max is not None:
            set_elt.addElement("max", content=str(self.max))
        if self.after is not None:
            set_elt.addElement("after", content=self.after)
        if self.before is not None:
            # An empty <before/> requests the last page.
            before_elt = set_elt.addElement("before")
            if self.before:
                before_elt.addContent(self.before)
        if self.index is not None:
            set_elt.addElement("index", content=str(self.index))
        return set_elt

    @classmethod
    def from_element(cls, set_elt: domish.Element) -> RSMRequest:
        """Parse a request ``<set/>``; raise InvalidValue for invalid values."""
        before_elt = next(set_elt.elements(NS_RSM, "before"), None)
        return cls(
            max=_child_text(set_elt, "max"),
            after=_child_text(set_elt, "after"),
            before=None if before_elt is None else str(before_elt),
            index=_child_text(set_elt, "index"),
        )


@dataclass
class RSMResponse:
    """Page description returned by a service.

    ``first`` and ``last`` are the ids the service gives to the first and
    last entries of the page (an item id, or another key such as a
    timestamp: pass ``last`` back as ``after`` to get the next page).
    ``first_index`` is the position of ``first`` in the whole set and
    ``count`` the size of the whole set; each may be absent.
    """

    first: str | None = None
    first_index: int | None = None
    last: str | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        self.first = _optional_text(self.first, "first")
        self.last = _optional_text(self.last, "last")
        self.first_index = _non_negative_int(self.first_index, "first index")
        self.count = _non_negative_int(self.count, "count")

    def to_dict(self) -> dict[str, Any]:
        """Return the values that are set, with the keys first, index, last and count."""
        values = {
            "first": self.first, "index": self.first_index, "last": self.last,
            "count": self.count,
        }
        return {key: value for key, value in values.items() if value is not None}

    def to_element(self) -> domish.Element:
        """Render the response as a ``<set/>`` element."""
        set_elt = domish.Element((NS_RSM, "set"))
        if self.first is not None:
            first_elt = set_elt.addElement("first", content=self.first)
            if self.first_index is not None:
                first_elt["index"] = str(self.first_index)
        if self.last is not None:
            set_elt.addElement("last", content=self.last)
        if self.count is not None:
            set_elt.addElement("count", content=str(self.count))
        return set_elt

    @classmethod
    def from_element(cls, set_elt: domish.Element) -> RSMResponse:
        """Parse a response ``<set/>``; raise InvalidValue for invalid numbers."""
        response, errors = cls.read_element(set_elt)
        if errors:
            raise InvalidValue(errors[0])
        return response

    @classmethod
    def read_element(cls, set_elt: domish.Element) -> tuple[RSMResponse, list[str]]:
        """Parse a response ``<set/>``, leaving out invalid numbers; return it with the errors.

        A service's page keys (``first``, ``last``) stay usable when its
        ``count`` or ``index`` is invalid.
        """
        first_elt = next(set_elt.elements(NS_RSM, "first"), None)
        numbers = {
            "first_index": None if first_elt is None else first_elt.getAttribute("index"),
            "count": _child_text(set_elt, "count"),
        }
        errors = []
        for key, value in numbers.items():
            try:
                numbers[key] = _non_negative_int(value, key.replace("_", " "))
            except InvalidValue as e:
                errors.append(str(e))
                numbers[key] = None
        response = cls(
            first=None if first_elt is None else str(first_elt),
            last=_child_text(set_elt, "last"),
            **numbers,
        )
        return response, errors


class XEP_0059:
    """Plugin entry: the models live in this module, and the plugin keeps no state."""

    def __init__(self, host: Any) -> None:
        self.host = host

    def get_handler(self, client: Any) -> None:
        return None
