"""Search of the pubsub cache: full text, node and item filters, parsed data.

Bridge method ``ps_cache_search``: it searches the items cached for the
calling profile (``profile``, the default profile when None), or for the
profiles named in ``profiles``, and never the items of a profile that is not
named. The search itself is
:meth:`~libervia.backend.memory.sqla.Storage.search_pubsub_items`, and
doc/cache_search.rst describes its syntax with examples.

The arguments are JSON values as a frontend sends them:

- ``filters``: a list of ``[path, operator, value]`` lists or of
  ``{"path": ..., "operator": ..., "value": ...}`` objects. A path is a list
  of keys and list indexes, or a string naming one key.
- ``order_by``: a list of key names (``"created"``), or of ``{"key": name}``
  or ``{"path": [...]}`` objects, each with an optional ``"direction"``
  (``"asc"`` or ``"desc"``).
- Dates: parsed data stores dates as POSIX timestamps (seconds), so a
  filter value ``{"date": "2024-05-01T12:00:00+02:00"}`` (ISO 8601 with a
  UTC offset) or ``{"date": 1714557600}`` becomes that number of seconds,
  also inside the list of ``between`` or ``in``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from twisted.words.protocols.jabber.jid import InvalidFormat

from libervia.backend.core.exceptions import InvalidValue, ProfileNotFound
from libervia.backend.memory import search
from libervia.backend.memory.search import SearchHit
from libervia.backend.plugins.plugin_xep_0060 import make_jid

log = logging.getLogger(__name__)

PLUGIN_INFO = {
    "name": "Pubsub cache search",
    "import_name": "PUBSUB_CACHE_SEARCH",
    "type": "PUBSUB",
    "dependencies": ["PUBSUB_CACHE"],
    "recommendations": [],
    "main": "PubsubCacheSearch",
    "modes": ["client", "component"],
    "description": "Full-text and parsed-data search of the cached pubsub items",
}

#: Key of the filter value object that contains a date.
DATE_KEY = "date"


def date_timestamp(value: Any) -> float:
    """Convert a date (ISO 8601 with a UTC offset, or POSIX seconds) to POSIX seconds.

    Raises InvalidValue for another value or an ISO time without offset,
    because the daemon cannot know the time zone of the caller.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise InvalidValue(
            f"invalid date {value!r}: use ISO 8601 with a UTC offset, e.g. "
            f"2024-05-01T12:00:00+00:00, or POSIX seconds"
        )
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidValue(
            f"invalid date {value!r}: use ISO 8601 with a UTC offset, e.g. "
            f"2024-05-01T12:00:00+00:00"
        ) from None
    if moment.tzinfo is None:
        raise InvalidValue(f"invalid date {value!r}: add a UTC offset, e.g. {value}+00:00")
    return moment.timestamp()


def _filter_value(value: Any) -> Any:
    """Replace ``{"date": ...}`` objects of a filter value by POSIX timestamps."""
    if isinstance(value, dict):
        if set(value) != {DATE_KEY}:
            raise InvalidValue(
                f"invalid filter value {value!r}: the only object accepted is a date, "
                f'{{"date": "2024-05-01T12:00:00+00:00"}}'
            )
        return date_timestamp(value[DATE_KEY])
    if isinstance(value, list):
        return [_filter_value(entry) for entry in value]
    return value


def _path(path: Any) -> Any:
    """Return a path given as a list, or as one key string, as a list."""
    return [path] if isinstance(path, str) else path


def _filters(filters: Any) -> list[tuple[Any, Any, Any]]:
    """Convert the ``filters`` argument to Storage's ``(path, operator, value)`` tuples."""
    if filters is None:
        return []
    if not isinstance(filters, list):
        raise InvalidValue(f"filters must be a list, not {filters!r}")
    converted = []
    for entry in filters:
        if isinstance(entry, dict):
            unknown = set(entry) - {"path", "operator", "value"}
            if unknown or "path" not in entry or "operator" not in entry:
                raise InvalidValue(
                    f"invalid filter {entry!r}: use the keys path, operator and value "
                    f"(value may be left out for exists)"
                )
            path, operator, value = entry["path"], entry["operator"], entry.get("value")
        elif isinstance(entry, list) and len(entry) == 3:
            path, operator, value = entry
        else:
            raise InvalidValue(
                f'invalid filter {entry!r}: use [path, operator, value], e.g. '
                f'[["tags"], "overlap", ["xmpp"]]'
            )
        if operator == "exists" and value is None:
            value = True
        converted.append((_path(path), operator, _filter_value(value)))
    return converted


def _order_by(order_by: Any) -> list[tuple[Any, Any]]:
    """Convert the ``order_by`` argument to Storage's ``(key, direction)`` pairs."""
    if order_by is None:
        return []
    if isinstance(order_by, (str, dict)):
        order_by = [order_by]
    if not isinstance(order_by, list):
        raise InvalidValue(f"order_by must be a list, not {order_by!r}")
    converted = []
    for entry in order_by:
        if isinstance(entry, str):
            converted.append((entry, None))
            continue
        if not isinstance(entry, dict) or ("key" in entry) == ("path" in entry) or (
            set(entry) - {"key", "path", "direction"}
        ):
            raise InvalidValue(
                f'invalid order key {entry!r}: use a name such as "created", or '
                f'{{"key": "created", "direction": "desc"}}, or '
                f'{{"path": ["published"], "direction": "desc"}}'
            )
        key = entry["key"] if "key" in entry else _path(entry["path"])
        if "path" in entry and not isinstance(key, list):
            raise InvalidValue(f"invalid order path {entry['path']!r}: use a list of keys")
        converted.append((key, entry.get("direction")))
    return converted


def _string_list(value: Any, label: str) -> list[str] | None:
    """Check a list of strings from the bridge; None and [] give None (no filter)."""
    if value is None or value == []:
        return None
    if isinstance(value, str) or not isinstance(value, list):
        raise InvalidValue(f"{label} must be a list of strings, not {value!r}")
    if not all(isinstance(entry, str) and entry for entry in value):
        raise InvalidValue(f"{label} must contain non-empty strings, not {value!r}")
    return value


def _service_jids(services: Any) -> list[str] | None:
    """Normalise the service JIDs of the ``services`` filter, as the cache stores them."""
    names = _string_list(services, "services")
    if names is None:
        return None
    jids = []
    for name in names:
        try:
            jids.append(make_jid(name).full())
        except InvalidFormat as exc:
            raise InvalidValue(f"invalid service JID {name!r}: {exc}") from None
    return jids


def _integer(value: Any, label: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"{label} must be an integer, not {value!r}")
    return value


def hit_data(hit: SearchHit) -> dict[str, Any]:
    """Return a search hit as the JSON object sent to frontends."""
    data: dict[str, Any] = {
        "profile": hit.profile,
        "service": hit.service,
        "node": hit.node,
        "node_type": hit.node_type,
        "node_subtype": hit.node_subtype,
        "item_id": hit.item_id,
        "created": hit.created.isoformat(),
        "updated": hit.updated.isoformat(),
        "publisher": hit.publisher,
        "parsed": hit.parsed,
    }
    if hit.payload is not None:
        data["payload"] = hit.payload
    return data


class PubsubCacheSearch:
    """Bridge method searching the items of the PUBSUB_CACHE plugin's database."""

    def __init__(self, host: Any) -> None:
        self.host = host
        host.bridge.register_method("ps_cache_search", self._bridge_search)
        host.bridge.register_method(
            "ps_cache_search_all_profiles", self._bridge_search_all_profiles
        )

    async def _profile_names(self, profiles: Any, profile: str | None) -> dict[int, str]:
        """Map the ids of the searched profiles to their names.

        The ``profiles`` named, else the calling profile. Raises
        ProfileNotFound naming each unknown profile.
        """
        names = _string_list(profiles, "profiles")
        if names is None:
            names = [self.host.resolve_profile(profile)]
        known = {row.name: row.id for row in await self.host.storage.list_profiles()}
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ProfileNotFound(
                f"profile(s) not found: {', '.join(unknown)} (see li profile list)"
            )
        return {known[name]: name for name in names}

    async def search(
        self, profile_names: dict[int, str], **arguments: Any
    ) -> dict[str, Any]:
        """Search the items cached for the profiles of ``profile_names`` (ids to names).

        ``arguments`` are those of Storage.search_pubsub_items, except
        ``profile_ids``. Returns the hits as JSON objects (see
        :func:`hit_data`), the count (``total``, ``total_exact``), whether
        relevance was ignored, the offset, the limit and the names of the
        profiles searched.
        """
        arguments.setdefault("limit", search.DEFAULT_LIMIT)
        arguments.setdefault("offset", 0)
        result = await self.host.storage.search_pubsub_items(
            profile_ids=list(profile_names), **arguments
        )
        log.debug(
            "cache search for profile(s) %s: %d of %s match(es)",
            ", ".join(sorted(profile_names.values())), len(result.hits), result.total,
        )
        return {
            "items": [hit_data(hit) for hit in result.hits],
            "total": result.total,
            "total_exact": result.total_exact,
            "relevance_ignored": result.relevance_ignored,
            "offset": arguments["offset"],
            "limit": arguments["limit"],
            "profiles": sorted(profile_names.values()),
        }

    async def _bridge_search(
        self,
        fts: str | None = None,
        fts_mode: str | None = None,
        filters: list[Any] | None = None,
        order_by: list[Any] | None = None,
        services: list[str] | None = None,
        nodes: list[str] | None = None,
        types: list[str] | None = None,
        subtypes: list[str] | None = None,
        item_ids: list[str] | None = None,
        offset: int | None = None,
        limit: int | None = None,
        payload: bool = False,
        count_limit: int | None = None,
        exact_count: bool = False,
        profile: str | None = None,
    ) -> dict[str, Any]:
        """Search the cached items of the calling profile.

        ``fts`` is full-text search in ``fts_mode`` (words, phrase or
        prefix); ``payload`` adds each item's XML. ``count_limit`` bounds
        the count (default :data:`search.DEFAULT_COUNT_LIMIT`, 0: no count),
        ``exact_count`` counts every match instead. See the module docstring
        for ``filters``, ``order_by`` and dates. Raises InvalidValue naming
        an invalid argument, ProfileNotFound for an unknown profile.
        """
        return await self._search_profiles(
            await self._profile_names(None, profile), fts=fts, fts_mode=fts_mode,
            filters=filters, order_by=order_by, services=services, nodes=nodes,
            types=types, subtypes=subtypes, item_ids=item_ids, offset=offset,
            limit=limit, payload=payload, count_limit=count_limit, exact_count=exact_count,
        )

    async def _bridge_search_all_profiles(
        self, profiles: list[str] | None = None, **arguments: Any,
    ) -> dict[str, Any]:
        """Search the cached items of several profiles: the ``profiles`` named, or all of them.

        Takes the arguments of ``ps_cache_search`` except ``profile``. Each
        hit names its profile. Raises ProfileNotFound naming each unknown
        profile.
        """
        if "profile" in arguments:
            raise InvalidValue(
                "ps_cache_search_all_profiles takes 'profiles', a list of profile names, "
                "not 'profile'"
            )
        if profiles is None or profiles == []:
            profiles = [row.name for row in await self.host.storage.list_profiles()]
            if not profiles:
                raise ProfileNotFound("no profile exists: create one with li profile create")
        return await self._search_profiles(
            await self._profile_names(profiles, None), **arguments
        )

    async def _search_profiles(
        self,
        profile_names: dict[int, str],
        fts: str | None = None,
        fts_mode: str | None = None,
        filters: list[Any] | None = None,
        order_by: list[Any] | None = None,
        services: list[str] | None = None,
        nodes: list[str] | None = None,
        types: list[str] | None = None,
        subtypes: list[str] | None = None,
        item_ids: list[str] | None = None,
        offset: int | None = None,
        limit: int | None = None,
        payload: bool = False,
        count_limit: int | None = None,
        exact_count: bool = False,
    ) -> dict[str, Any]:
        if not isinstance(payload, bool):
            raise InvalidValue(f"payload must be true or false, not {payload!r}")
        if not isinstance(exact_count, bool):
            raise InvalidValue(f"exact_count must be true or false, not {exact_count!r}")
        if exact_count and count_limit is not None:
            raise InvalidValue(
                "give count_limit or exact_count, not both: exact_count counts every match"
            )
        checked_count_limit: int | None = _integer(
            count_limit, "count_limit", search.DEFAULT_COUNT_LIMIT
        )
        if exact_count:
            checked_count_limit = None
        return await self.search(
            profile_names,
            fts=fts,
            fts_mode=fts_mode or "words",
            filters=_filters(filters),
            order_by=_order_by(order_by),
            services=_service_jids(services),
            nodes=_string_list(nodes, "nodes"),
            types=_string_list(types, "types"),
            subtypes=_string_list(subtypes, "subtypes"),
            item_ids=_string_list(item_ids, "item_ids"),
            offset=_integer(offset, "offset", 0),
            limit=_integer(limit, "limit", search.DEFAULT_LIMIT),
            with_payload=payload,
            count_limit=checked_count_limit,
        )
