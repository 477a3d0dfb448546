"""XEP-0115 Entity Capabilities: what this client supports, announced in presence.

Plugins declare the service discovery features they support with
:meth:`XEP_0115.add_feature`. The plugin keeps one identity and that set of
features and computes their verification string (``ver``) as XEP-0115
section 5 defines it. It adds a ``<c/>`` element to the initial presence of
every stream through the ``XMPP_initial_presence`` trigger point, and responds
to disco#info requests (XEP-0030) sent without a node or for the ``NODE#VER``
node of the caps.

Other entities use the caps to learn what the client supports without asking
each time. A PEP service, for instance, sends notifications of a node to the
contacts whose features include ``NODE+notify`` (see the XEP-0163 plugin).

The features must be declared before the profiles connect, from plugin
constructors: the caps sent in a presence are those known at that time.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from wokkel import disco
from wokkel.iwokkel import IDisco
from zope.interface import implementer

from libervia.backend.core.exceptions import InvalidValue
from libervia.backend.core.xmpp import TRIGGER_INITIAL_PRESENCE

log = logging.getLogger(__name__)

PLUGIN_INFO = {
    "name": "Entity capabilities",
    "import_name": "XEP-0115",
    "type": "XEP",
    "dependencies": [],
    "recommendations": [],
    "main": "XEP_0115",
    # A component sends no presence to carry caps, and its disco identity
    # would not be this client's one.
    "modes": ["client"],
    "description": "Entity capabilities (XEP-0115) and disco#info answers for the client",
}

NS_CAPS = "http://jabber.org/protocol/caps"
NS_DISCO_INFO = disco.NS_DISCO_INFO
NS_X_DATA = "jabber:x:data"
NS_XML = "http://www.w3.org/XML/1998/namespace"
# domish stores namespaced attributes under (namespace, name) keys.
XML_LANG = (NS_XML, "lang")

#: Hash function of the verification string: SHA-1, which XEP-0115 makes
#: mandatory to implement.
HASH_NAME = "sha-1"

#: URI identifying this software in the ``node`` attribute of the caps.
CAPS_NODE = "https://libervia.org"

#: Service discovery identity of every profile: an XMPP client without a GUI
#: of its own, which the disco registry files as a PC client.
DEFAULT_IDENTITY_NAME = "Libervia"

FORM_TYPE = "FORM_TYPE"


@dataclass(frozen=True, order=True)
class Identity:
    """A service discovery identity, whose field order is the sort order of XEP-0115."""

    category: str
    type: str
    lang: str = ""
    name: str = ""


#: Extended information forms (XEP-0128): FORM_TYPE to {field var: values}.
ExtendedForms = Mapping[str, Mapping[str, Sequence[str]]]


def verification_text(
    identities: Iterable[Identity],
    features: Iterable[str],
    forms: ExtendedForms | None = None,
) -> str:
    """Build the string S that XEP-0115 section 5.1 hashes into the ``ver``.

    Strings are sorted by code point, which is the order of their UTF-8
    bytes, the "i;octet" collation that XEP-0115 requires. Raises
    InvalidValue for duplicate identities or features, which make a
    disco#info result ill-formed (XEP-0115 section 5.4).
    """
    identity_list = sorted(identities)
    feature_list = sorted(features)
    if len(set(identity_list)) != len(identity_list):
        raise InvalidValue(f"duplicate service discovery identity in {identity_list!r}")
    if len(set(feature_list)) != len(feature_list):
        raise InvalidValue(f"duplicate service discovery feature in {feature_list!r}")
    forms = forms or {}

    parts: list[str] = []
    for identity in identity_list:
        parts.append(f"{identity.category}/{identity.type}/{identity.lang}/{identity.name}")
    parts.extend(feature_list)
    for form_type in sorted(forms):
        parts.append(form_type)
        fields = forms[form_type]
        for var in sorted(fields):
            if var == FORM_TYPE:
                continue
            parts.append(var)
            parts.extend(sorted(fields[var]))

    # Every part is followed by "<", the last one included.
    return "".join(part + "<" for part in parts)


def verification_string(
    identities: Iterable[Identity],
    features: Iterable[str],
    forms: ExtendedForms | None = None,
) -> str:
    """Compute the SHA-1 ``ver`` of XEP-0115 section 5.1: base64 of the hash of S."""
    text = verification_text(identities, features, forms)
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")


def parse_disco_info(
    query: domish.Element,
) -> tuple[list[Identity], list[str], dict[str, dict[str, list[str]]]]:
    """Read the identities, features and extended forms of a disco#info ``<query/>``.

    A form without a hidden FORM_TYPE field is skipped, as XEP-0115 section
    5.4 requires. Raises InvalidValue when two forms have the same FORM_TYPE.
    """
    identities = [
        Identity(
            category=elt.getAttribute("category", ""),
            type=elt.getAttribute("type", ""),
            lang=elt.getAttribute(XML_LANG, ""),
            name=elt.getAttribute("name", ""),
        )
        for elt in query.elements(NS_DISCO_INFO, "identity")
    ]
    features = [
        elt.getAttribute("var", "") for elt in query.elements(NS_DISCO_INFO, "feature")
    ]
    forms: dict[str, dict[str, list[str]]] = {}
    for form_elt in query.elements(NS_X_DATA, "x"):
        fields: dict[str, list[str]] = {}
        form_type = None
        for field_elt in form_elt.elements(NS_X_DATA, "field"):
            var = field_elt.getAttribute("var", "")
            values = [str(value) for value in field_elt.elements(NS_X_DATA, "value")]
            if var == FORM_TYPE:
                if field_elt.getAttribute("type") == "hidden" and values:
                    form_type = values[0]
                continue
            fields[var] = values
        if form_type is None:
            log.debug("disco#info form without a hidden FORM_TYPE skipped")
            continue
        if form_type in forms:
            raise InvalidValue(f"two disco#info forms have the FORM_TYPE {form_type!r}")
        forms[form_type] = fields
    return identities, features, forms


@implementer(IDisco)
class CapsDiscoHandler(disco.DiscoHandler):
    """Per-profile disco handler that responds with the features of the caps.

    It responds to disco#info and disco#items requests for every handler of
    the stream that provides IDisco, itself included, so it must be the only
    DiscoHandler on a stream.
    """

    def __init__(self, plugin: "XEP_0115") -> None:
        super().__init__()
        self.plugin = plugin

    def getDiscoInfo(
        self, requestor: JID, target: JID, nodeIdentifier: str = ""
    ) -> list[Any]:
        if nodeIdentifier and nodeIdentifier != self.plugin.caps_disco_node:
            # wokkel responds with item-not-found to a node request given an empty list.
            return []
        # NOTE: wokkel's DiscoIdentity renders no xml:lang, so an identity
        # with a lang would be sent without it and peers would compute another ver.
        info: list[Any] = [
            disco.DiscoIdentity(identity.category, identity.type, identity.name or None)
            for identity in self.plugin.identities
        ]
        info.extend(disco.DiscoFeature(feature) for feature in self.plugin.features)
        return info

    def getDiscoItems(
        self, requestor: JID, target: JID, nodeIdentifier: str = ""
    ) -> list[Any]:
        return []


class XEP_0115:
    """Registry of the client's disco features and source of its caps.

    Plugins call :meth:`add_feature` from their constructor to declare a
    feature, and ``host.plugins["XEP-0115"].features`` lists them all.
    """

    def __init__(self, host: Any) -> None:
        self.host = host
        self.identities: list[Identity] = [
            Identity("client", "pc", name=DEFAULT_IDENTITY_NAME)
        ]
        self._features: set[str] = {NS_CAPS, NS_DISCO_INFO}
        self._ver: str | None = None
        host.trigger.add(TRIGGER_INITIAL_PRESENCE, self._add_caps_to_presence)

    @property
    def features(self) -> list[str]:
        """Return the disco features announced, sorted."""
        return sorted(self._features)

    def add_feature(self, feature: str) -> None:
        """Declare that the client supports a service discovery feature.

        Adding a feature already declared does nothing. Features added after
        a profile connected reach its caps at its next connection only.
        """
        if not feature or not isinstance(feature, str):
            raise InvalidValue(f"invalid disco feature {feature!r}: use a non-empty string")
        if feature in self._features:
            return
        self._features.add(feature)
        self._ver = None
        if getattr(self.host, "clients", None):
            log.warning(
                "disco feature %s added while profiles are connected: their caps "
                "announce it after they reconnect",
                feature,
            )

    @property
    def ver(self) -> str:
        """Return the verification string of the current identities and features."""
        if self._ver is None:
            self._ver = verification_string(self.identities, self._features)
        return self._ver

    @property
    def caps_disco_node(self) -> str:
        """Return the disco node that other entities query for this ``ver``."""
        return f"{CAPS_NODE}#{self.ver}"

    def caps_element(self) -> domish.Element:
        """Build the ``<c/>`` element to put in a presence."""
        element = domish.Element((NS_CAPS, "c"))
        element["hash"] = HASH_NAME
        element["node"] = CAPS_NODE
        element["ver"] = self.ver
        return element

    def get_handler(self, client: Any) -> CapsDiscoHandler:
        return CapsDiscoHandler(self)

    def _add_caps_to_presence(self, client: Any, presence: domish.Element) -> None:
        presence.addChild(self.caps_element())
        log.debug("profile %s: caps ver %s in the initial presence", client.profile, self.ver)
