"""``li pubsub``: items, subscriptions, affiliations, nodes and the local cache."""

from __future__ import annotations

import argparse
import datetime
import json
import re
from collections.abc import Callable
from typing import Any
from xml.dom import minidom
from xml.parsers.expat import ExpatError

from libervia.cli.common import (
    CliError,
    Context,
    parse_key_values,
    positive_int,
    read_stdin,
)
from libervia.cli.bridge_client import BridgeTimeout
from libervia.cli.output import OUTPUT_JSON, format_date


def non_negative_int(text: str) -> int:
    """Parse an integer of at least 0 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value

NS_PUBSUB = "http://jabber.org/protocol/pubsub"

# Units of relative dates ("-7 days"), in seconds.
DATE_UNITS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
RELATIVE_DATE = re.compile(r"([+-])\s*(\d+)\s*([a-z]+)|(\d+)\s*([a-z]+)\s+ago")

# Operators of li pubsub cache search, as the backend names them.
SEARCH_LIST_OPERATORS = ("between", "in", "not_in", "overlap", "ioverlap", "disjoint", "idisjoint")
SEARCH_PATTERN_OPERATORS = ("like", "ilike", "not_like", "not_ilike")
# Operators whose values are read as dates when the path ends with a date key.
SEARCH_DATE_OPERATORS = (
    "eq", "ne", "lt", "le", "gt", "ge", "between", "in", "not_in", "overlap", "disjoint",
)
#: Keys of parsed data containing dates as POSIX seconds: those of the microblog model.
SEARCH_DATE_KEYS = ("published", "updated")
#: Order keys that are not paths of parsed data.
SEARCH_ORDER_NAMES = ("created", "updated", "item_id", "relevance")
#: Parsed keys shown by li pubsub cache search without -k.
SEARCH_DEFAULT_KEYS = ("title",)


def parse_date(text: str) -> str:
    """Parse a date option into an ISO 8601 UTC time (argparse type).

    Accepts ``now``, a relative time such as ``-7 days``, ``-2h``, ``3 weeks
    ago`` or ``+1 day`` (units s, m, h, d, w and their English names), or ISO
    8601 such as ``2024-05-01`` or ``2024-05-01T12:00:00+02:00``. An ISO time
    without a UTC offset is read in the local time zone.
    """
    value = text.strip().lower()
    now = datetime.datetime.now(datetime.timezone.utc)
    if value == "now":
        return now.isoformat()
    relative = RELATIVE_DATE.fullmatch(value)
    if relative:
        sign, amount, unit, ago_amount, ago_unit = relative.groups()
        if ago_amount is not None:
            sign, amount, unit = "-", ago_amount, ago_unit
        if unit not in DATE_UNITS:
            raise argparse.ArgumentTypeError(
                f"invalid date {text!r}: unknown unit {unit!r}, use one of s, m, h, d, w "
                f"(or seconds, minutes, hours, days, weeks)"
            )
        delta = datetime.timedelta(seconds=int(amount) * DATE_UNITS[unit])
        return (now - delta if sign == "-" else now + delta).isoformat()
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid date {text!r}: use ISO 8601 (2024-05-01 or 2024-05-01T12:00:00+02:00), "
            f"a relative time (-7 days, -2h, 3 weeks ago) or now"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.astimezone(datetime.timezone.utc).isoformat()


def format_size(size: int | None) -> str:
    """Format a number of bytes with a binary unit (KiB, MiB...)."""
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def add_cache_filter_options(parser: argparse.ArgumentParser) -> None:
    """Add the options selecting cached nodes: profiles, services, nodes, types and dates."""
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-P", "--profiles", action="extend", nargs="+", metavar="PROFILE",
        help="act on these profiles (default: the profile of -p)",
    )
    scope.add_argument(
        "-a", "--all-profiles", action="store_true", help="act on every profile"
    )
    parser.add_argument(
        "-s", "--service", dest="services", action="extend", nargs="+", metavar="JID",
        help="only nodes of these pubsub services (default: every service)",
    )
    parser.add_argument(
        "-n", "--node", dest="nodes", action="extend", nargs="+", metavar="NODE",
        help="only nodes with these names",
    )
    parser.add_argument(
        "-t", "--type", dest="types", action="extend", nargs="+", metavar="TYPE",
        help="only nodes of these types, as set by their analyser (e.g. blog)",
    )
    parser.add_argument(
        "-S", "--subtype", dest="subtypes", action="extend", nargs="+", metavar="SUBTYPE",
        help="only nodes of these subtypes",
    )
    parser.add_argument(
        "--created-before", type=parse_date, metavar="DATE",
        help="only nodes whose oldest cached item was stored before DATE (ISO 8601, "
        "or relative: -7 days, -2h)",
    )
    parser.add_argument(
        "--updated-before", type=parse_date, metavar="DATE",
        help="only nodes of which nothing changed since DATE (ISO 8601, or relative)",
    )


def cache_filters(args: argparse.Namespace) -> dict[str, Any]:
    """Return the node filters of the options added by add_cache_filter_options."""
    filters = {
        key: getattr(args, key)
        for key in ("services", "nodes", "types", "subtypes", "created_before", "updated_before")
    }
    return {key: value for key, value in filters.items() if value}


def call_cache_admin(ctx: Context, args: argparse.Namespace, method: str) -> Any:
    """Call a cache administration method on the profiles selected by the options.

    With -P or -a, the ``_all_profiles`` variant of ``method`` is called.
    """
    filters = cache_filters(args)
    if args.all_profiles or args.profiles:
        return ctx.call(f"{method}_all_profiles", profiles=args.profiles, **filters)
    return ctx.call(method, profile=ctx.profile, **filters)


def add_service_node_options(
    parser: argparse.ArgumentParser, node_required: bool, default_node: str | None = None,
) -> None:
    """Add -s/--service and -n/--node; ``default_node`` is named in the help."""
    parser.add_argument(
        "-s",
        "--service",
        help="JID of the pubsub service (default: the profile's own PEP service)",
    )
    node_help = "name of the pubsub node"
    if default_node:
        node_help += f" (default: {default_node})"
    parser.add_argument("-n", "--node", required=node_required, help=node_help)


def add_commands(
    subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Register ``li pubsub`` and its subcommands."""
    pubsub_parser = subparsers.add_parser(
        "pubsub", help="publish-subscribe (XEP-0060) nodes and items", parents=[common]
    )
    commands = pubsub_parser.add_subparsers(
        title="pubsub commands", dest="pubsub_command", required=True
    )

    get = commands.add_parser("get", help="get items of a node", parents=[common])
    add_service_node_options(get, node_required=True)
    get.add_argument(
        "-M", "--max", type=positive_int, help="maximum number of items to get"
    )
    get.add_argument(
        "-i", "--item", dest="item_ids", action="extend", nargs="+",
        metavar="ITEM_ID", help="get only these items",
    )
    get.add_argument(
        "-C", "--no-cache", action="store_true",
        help="ask the pubsub service even when the node is cached",
    )
    rsm = get.add_argument_group("result set management (XEP-0059)")
    rsm.add_argument(
        "--rsm-max", type=non_negative_int, metavar="COUNT",
        help="page size; 0 asks only for the item count",
    )
    position = rsm.add_mutually_exclusive_group()
    position.add_argument(
        "--after", metavar="ID", help="get the page after this RSM id (the 'last' of a page)"
    )
    position.add_argument(
        "--before", nargs="?", const="", metavar="ID",
        help="get the page before this RSM id; without ID, the last page",
    )
    position.add_argument(
        "--index", type=non_negative_int, help="get the page starting at this position (0 first)"
    )
    get.add_argument("--sub-id", help="subscription id, when the profile has several")
    get.set_defaults(handler=run_get)

    publish = commands.add_parser(
        "set",
        help="publish an item read from stdin",
        parents=[common],
        description="Publish the XML read from stdin: an item payload, wrapped "
        "into <item/> here, or a whole <item/> element.",
    )
    add_service_node_options(publish, node_required=True)
    publish.add_argument("-i", "--item", dest="item_id", help="id of the item")
    publish.add_argument(
        "-o", "--option", dest="options", action="append", metavar="KEY=VALUE",
        help="publish option, e.g. pubsub#access_model=open (repeatable)",
    )
    publish.set_defaults(handler=run_set)

    retract = commands.add_parser("retract", help="retract items", parents=[common])
    add_service_node_options(retract, node_required=True)
    retract.add_argument(
        "-i", "--item", dest="item_ids", action="extend", nargs="+", required=True,
        metavar="ITEM_ID", help="items to retract",
    )
    retract.add_argument(
        "--no-notify", action="store_true", help="do not notify the subscribers"
    )
    retract.set_defaults(handler=run_retract)

    subscribe = commands.add_parser("subscribe", help="subscribe to a node", parents=[common])
    add_service_node_options(subscribe, node_required=True)
    subscribe.add_argument(
        "-o", "--option", dest="options", action="append", metavar="KEY=VALUE",
        help="subscription option, e.g. pubsub#deliver=true (repeatable)",
    )
    subscribe.set_defaults(handler=run_subscribe)

    unsubscribe = commands.add_parser(
        "unsubscribe", help="remove a subscription to a node", parents=[common]
    )
    add_service_node_options(unsubscribe, node_required=True)
    unsubscribe.add_argument("--sub-id", help="subscription id, when there are several")
    unsubscribe.set_defaults(handler=run_unsubscribe)

    subscriptions = commands.add_parser(
        "subscriptions", help="list the profile's subscriptions on a service", parents=[common]
    )
    add_service_node_options(subscriptions, node_required=False)
    subscriptions.set_defaults(handler=run_subscriptions)

    affiliations = commands.add_parser(
        "affiliations", help="list the profile's affiliations on a service", parents=[common]
    )
    add_service_node_options(affiliations, node_required=False)
    affiliations.set_defaults(handler=run_affiliations)

    features = commands.add_parser(
        "features", help="list the features a pubsub service announces", parents=[common]
    )
    features.add_argument(
        "-s", "--service",
        help="JID of the pubsub service (default: the profile's own PEP service)",
    )
    features.set_defaults(handler=run_features)

    node_parser = commands.add_parser("node", help="manage nodes", parents=[common])
    node_commands = node_parser.add_subparsers(
        title="node commands", dest="node_command", required=True
    )
    node_create = node_commands.add_parser(
        "create", help="create a node", parents=[common]
    )
    add_service_node_options(node_create, node_required=True)
    node_create.add_argument(
        "-o", "--option", dest="options", action="append", metavar="KEY=VALUE",
        help="node configuration option, e.g. pubsub#max_items=100 (repeatable)",
    )
    node_create.set_defaults(handler=run_node_create)

    node_delete = node_commands.add_parser("delete", help="delete a node", parents=[common])
    add_service_node_options(node_delete, node_required=True)
    node_delete.add_argument(
        "--redirect", metavar="URI",
        help="XMPP URI of the node replacing it, sent to subscribers",
    )
    node_delete.set_defaults(handler=run_node_delete)

    node_purge = node_commands.add_parser(
        "purge", help="remove every item of a node", parents=[common]
    )
    add_service_node_options(node_purge, node_required=True)
    node_purge.set_defaults(handler=run_node_purge)

    node_config = node_commands.add_parser(
        "config", help="show or change a node's configuration", parents=[common]
    )
    config_commands = node_config.add_subparsers(
        title="config commands", dest="config_command", required=True
    )
    config_get = config_commands.add_parser(
        "get", help="show the configuration form", parents=[common]
    )
    add_service_node_options(config_get, node_required=True)
    config_get.set_defaults(handler=run_node_config_get)
    config_set = config_commands.add_parser(
        "set", help="change configuration options", parents=[common]
    )
    add_service_node_options(config_set, node_required=True)
    config_set.add_argument(
        "-o", "--option", dest="options", action="append", metavar="KEY=VALUE", required=True,
        help="configuration option, e.g. pubsub#title=News (repeatable)",
    )
    config_set.set_defaults(handler=run_node_config_set)

    node_subscriptions = node_commands.add_parser(
        "subscriptions", help="list or change a node's subscriptions (owner)", parents=[common]
    )
    add_service_node_options(node_subscriptions, node_required=True)
    node_subscriptions.add_argument(
        "-S", "--set", dest="changes", action="append", metavar="JID=STATE",
        help="set a subscription state: none, pending, subscribed or unconfigured (repeatable)",
    )
    node_subscriptions.set_defaults(handler=run_node_subscriptions)

    node_affiliations = node_commands.add_parser(
        "affiliations", help="list or change a node's affiliations (owner)", parents=[common]
    )
    add_service_node_options(node_affiliations, node_required=True)
    node_affiliations.add_argument(
        "-A", "--set", dest="changes", action="append", metavar="JID=AFFILIATION",
        help="set an affiliation: owner, publisher, publish-only, member, none or outcast "
        "(repeatable)",
    )
    node_affiliations.set_defaults(handler=run_node_affiliations)

    cache_parser = commands.add_parser(
        "cache", help="inspect or reset the local pubsub cache", parents=[common]
    )
    cache_commands = cache_parser.add_subparsers(
        title="cache commands", dest="cache_command", required=True
    )
    cache_get = cache_commands.add_parser(
        "get", help="show a cached node and its items", parents=[common]
    )
    add_service_node_options(cache_get, node_required=True)
    cache_get.set_defaults(handler=run_cache_get)
    cache_reset = cache_commands.add_parser(
        "reset",
        help="remove a node and its items from the cache; the next get syncs it again",
        parents=[common],
        description="Remove a node (-s SERVICE -n NODE) or the nodes matching the filters "
        "from the cache, with their items. The next get of a removed node goes to the "
        "service and analyses the node again.",
    )
    add_cache_filter_options(cache_reset)
    cache_reset.set_defaults(handler=run_cache_reset)

    cache_sync = cache_commands.add_parser(
        "sync",
        help="synchronise a node now, or again, and wait for the end",
        parents=[common],
        description="Start the sync of a node (analysing it first when it is not cached "
        "yet) and wait until it ends. A sync that is already running is waited for.",
    )
    add_service_node_options(cache_sync, node_required=True)
    cache_sync.add_argument(
        "--no-wait", action="store_true", help="return once the sync is started"
    )
    cache_sync.set_defaults(handler=run_cache_sync)

    cache_purge = cache_commands.add_parser(
        "purge",
        help="delete the cached nodes matching the filters, with their items",
        parents=[common],
        description="Delete from the cache every node matching all the filters, with all "
        "its items. Without filters, the profile's whole cache is deleted. The next get "
        "of a deleted node goes to the service and analyses the node again.",
    )
    add_cache_filter_options(cache_purge)
    cache_purge.set_defaults(handler=run_cache_purge)

    cache_stats = cache_commands.add_parser(
        "stats",
        help="count cached nodes and items, with the database size and cache hits",
        parents=[common],
    )
    add_cache_filter_options(cache_stats)
    cache_stats.set_defaults(handler=run_cache_stats)

    add_cache_search_parser(cache_commands, common)


def build_item(payload: str, item_id: str | None) -> str:
    """Return the XML of an ``<item/>`` from a payload or a whole item element.

    A payload is wrapped into ``<item id=item_id>``. An ``<item/>`` element
    gets ``item_id`` unless it has another id already. Raises CliError for
    invalid XML or conflicting ids.
    """
    try:
        document = minidom.parseString(payload.strip())
    except (ExpatError, ValueError) as exc:
        raise CliError(f"invalid XML on stdin: {exc}") from None
    if document.doctype is not None:
        raise CliError("invalid XML on stdin: XMPP forbids document type declarations")
    root = document.documentElement

    if root.localName == "item" and root.namespaceURI in (None, NS_PUBSUB):
        current_id = root.getAttribute("id")
        if item_id:
            if current_id and current_id != item_id:
                raise CliError(
                    f"the item on stdin has the id {current_id!r}, which differs "
                    f"from -i {item_id!r}"
                )
            root.setAttribute("id", item_id)
        return root.toxml()

    item = document.createElement("item")
    if item_id:
        item.setAttribute("id", item_id)
    document.replaceChild(item, root)
    item.appendChild(root)
    return item.toxml()


def format_metadata(metadata: dict[str, Any], count: int) -> str:
    """Describe the metadata returned with pubsub items in one line."""
    parts = [f"{count} item(s)"]
    if metadata.get("node"):
        parts.append(f"node {metadata['node']}")
    if metadata.get("service"):
        parts.append(f"service {metadata['service']}")
    if "complete" in metadata:
        parts.append("complete" if metadata["complete"] else "incomplete")
    if "from_cache" in metadata:
        parts.append("from cache" if metadata["from_cache"] else "from the service")
    if metadata.get("rsm_ignored"):
        parts.append("RSM ignored by the service")
    rsm = metadata.get("rsm")
    if isinstance(rsm, dict) and rsm:
        rsm_values = " ".join(f"{key}={value}" for key, value in rsm.items())
        parts.append(f"RSM {rsm_values}")
    return "-- " + ", ".join(parts)


def run_get(ctx: Context, args: argparse.Namespace) -> int:
    """Print the items of a node with their metadata."""
    extra = {"use_cache": False} if args.no_cache else {}
    params: dict[str, Any] = {}
    rsm = {
        key: value for key, value in (
            ("max", args.rsm_max), ("after", args.after), ("before", args.before),
            ("index", args.index),
        ) if value is not None
    }
    if rsm:
        params["rsm"] = rsm
    if args.sub_id:
        params["sub_id"] = args.sub_id
    result = ctx.call(
        "ps_items_get",
        service=args.service,
        node=args.node,
        max_items=args.max,
        item_ids=args.item_ids,
        extra=extra,
        profile=ctx.profile,
        **params,
    )
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0

    items = result.get("items", [])
    for item_xml in items:
        ctx.output.xml(item_xml)
    ctx.output.line(format_metadata(result.get("metadata", {}), len(items)), style="dim")
    return 0


def run_set(ctx: Context, args: argparse.Namespace) -> int:
    """Publish the item read from stdin and print its id."""
    options = parse_key_values(args.options)
    item_xml = build_item(read_stdin("item XML"), args.item_id)
    result = ctx.call(
        "ps_publish",
        service=args.service,
        node=args.node,
        items=[item_xml],
        options=options,
        profile=ctx.profile,
    )
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        for item_id in result.get("item_ids", []):
            ctx.output.line(item_id)
    return 0


def run_retract(ctx: Context, args: argparse.Namespace) -> int:
    """Retract items from a node."""
    result = ctx.call(
        "ps_retract",
        service=args.service,
        node=args.node,
        item_ids=args.item_ids,
        notify=not args.no_notify,
        profile=ctx.profile,
    )
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        ctx.output.line(f"retracted {len(args.item_ids)} item(s): {', '.join(args.item_ids)}")
    return 0


def run_node_create(ctx: Context, args: argparse.Namespace) -> int:
    """Create a node and print its name (the service may choose it)."""
    result = ctx.call(
        "ps_node_create",
        service=args.service,
        node=args.node,
        options=parse_key_values(args.options),
        profile=ctx.profile,
    )
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        ctx.output.line(result["node"])
    return 0


def run_cache_get(ctx: Context, args: argparse.Namespace) -> int:
    """Print the cache state of a node and a table of its cached items."""
    result = ctx.call(
        "ps_cache_get", service=args.service, node=args.node, profile=ctx.profile
    )
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0

    node = result["node"]
    kind = node.get("type") or "no type"
    if node.get("subtype"):
        kind = f"{kind}/{node['subtype']}"
    state = node.get("sync_state") or "not synchronised"
    since = format_date(node.get("sync_state_updated"))
    since_text = f" since {since}" if since else ""
    ctx.output.line(
        f"node {node.get('node')} on {node.get('service')}: {kind}, "
        f"sync state {state}{since_text}",
        style="bold",
    )
    if node.get("max_items") is not None or node.get("item_order"):
        max_items = node.get("max_items")
        ctx.output.line(
            f"max items {'unknown' if max_items is None else max_items}, "
            f"items ordered by {node.get('item_order') or 'creation (assumed)'}"
        )

    rows = []
    for item in result.get("items", []):
        parsed = item.get("parsed")
        title = parsed.get("title", "") if isinstance(parsed, dict) else ""
        rows.append(
            (item["id"], format_date(item.get("created")), format_date(item.get("updated")), title)
        )
    ctx.output.table(("item id", "created", "updated", "title"), rows)
    return 0


def run_cache_reset(ctx: Context, args: argparse.Namespace) -> int:
    """Remove a node, or the nodes matching the filters, from the cache."""
    filters = cache_filters(args)
    services = filters.pop("services", [])
    nodes = filters.pop("nodes", [])
    one_node = (
        len(nodes) == 1 and len(services) <= 1 and not filters
        and not args.profiles and not args.all_profiles
    )
    if one_node:
        result = ctx.call(
            "ps_cache_reset", service=services[0] if services else None, node=nodes[0],
            profile=ctx.profile,
        )
        if ctx.output.is_json:
            ctx.output.json(result)
        else:
            ctx.output.line(
                f"node {result['node']} of {result['service']} removed from the cache"
            )
        return 0
    if not cache_filters(args):
        raise CliError(
            "name the node to reset with -n NODE, or select nodes with filters; "
            "li pubsub cache purge deletes a profile's whole cache"
        )
    return run_cache_purge(ctx, args)


def run_cache_sync(ctx: Context, args: argparse.Namespace) -> int:
    """Start the sync of a node and, unless --no-wait, wait for its end signal."""
    result = ctx.call(
        "ps_cache_sync", service=args.service, node=args.node, profile=ctx.profile
    )
    what = f"node {result['node']} of {result['service']}"
    if args.no_wait:
        if ctx.output.is_json:
            ctx.output.json({**result, "sync_state": "IN_PROGRESS"})
        else:
            ctx.output.line(f"sync of {what} started")
        return 0

    if ctx.output.styled:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            console=ctx.output.console, transient=True,
        ) as progress:
            # The total stays unknown (a pulsing bar) until the service
            # reports a count, which services that ignore RSM never do.
            task = progress.add_task(f"synchronising {what}", total=None)

            def show(signal: dict[str, Any]) -> None:
                progress.update(task, completed=signal.get("items") or 0,
                                total=signal.get("count"))

            end = wait_sync_end(ctx, result, show)
    else:
        end = wait_sync_end(ctx, result)
    if end.get("state") == "REMOVED":
        raise CliError(f"sync of {what} stopped: the node was removed from the cache meanwhile")
    if end.get("state") == "LOCKED":
        raise CliError(
            f"sync of {what} not started: another daemon sharing the database is "
            f"synchronising it; see li pubsub cache get for its state"
        )
    if end.get("state") != "COMPLETED":
        raise CliError(f"sync of {what} failed: {end.get('error') or end.get('state')}")
    if ctx.output.is_json:
        ctx.output.json({**result, "sync_state": end["state"], "items": end.get("items")})
    else:
        ctx.output.line(f"{what} synchronised: {end.get('items')} item(s) cached")
    return 0


def wait_sync_end(
    ctx: Context, node: dict[str, Any],
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Wait for the ``ps_cache_sync`` signal ending a node's sync; return its arguments.

    IN_PROGRESS signals go to ``on_progress``. Raises CliError when no
    signal comes within the --timeout.
    """
    try:
        for name, signal in ctx.bridge.iter_signals(timeout=ctx.timeout):
            if name != "ps_cache_sync":
                continue
            if not all(signal.get(key) == node[key] for key in ("profile", "service", "node")):
                continue
            if signal.get("state") == "IN_PROGRESS":
                if on_progress is not None:
                    on_progress(signal)
                continue
            return signal
    except BridgeTimeout:
        raise CliError(
            f"the sync of node {node['node']} of {node['service']} did not end within "
            f"{ctx.timeout:g} s; it goes on in the daemon: see li pubsub cache get, or "
            f"wait longer with --timeout"
        ) from None
    raise AssertionError("iter_signals only ends by raising")


def run_cache_purge(ctx: Context, args: argparse.Namespace) -> int:
    """Delete the cached nodes matching the filters, and print them."""
    result = call_cache_admin(ctx, args, "ps_cache_purge")
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    rows = [(node["profile"], node["service"], node["node"]) for node in result["nodes"]]
    if rows:
        ctx.output.table(("profile", "service", "node"), rows)
    ctx.output.line(
        f"{result['node_count']} node(s) and {result['item_count']} item(s) deleted "
        f"from the cache"
    )
    return 0


def run_cache_stats(ctx: Context, args: argparse.Namespace) -> int:
    """Print the cache's node and item counts, database size, hits and misses."""
    result = call_cache_admin(ctx, args, "ps_cache_stats")
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    rows = [
        (group["sync_state"], group["type"] or "", group["subtype"] or "", group["nodes"],
         group["items"])
        for group in result["groups"]
    ]
    ctx.output.table(("sync state", "type", "subtype", "nodes", "items"), rows)
    database = result["database"]
    ctx.output.line()
    ctx.output.fields(
        [
            ("profiles", ", ".join(result["profiles"])),
            ("nodes", result["nodes"]["total"]),
            ("items", result["items"]["total"]),
            ("database size", f"{format_size(database['size'])} ({database['engine']})"),
            ("cache hits", result["hits"]),
            ("cache misses", result["misses"]),
        ]
    )
    return 0


def add_cache_search_parser(
    cache_commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Register ``li pubsub cache search``."""
    search = cache_commands.add_parser(
        "search",
        help="search the cached items by full text, node and parsed data",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search the items cached for the profile (or for --profiles) and\n"
        "print them: the newest first, or the best full-text matches first.",
        epilog="""\
PATH is a path in the parsed data of items: keys separated by dots, integers
being list indexes (links.0.href), or a JSON list for keys containing dots or
made of digits ('["a.b", 0]', '["0"]').

VALUE is read as JSON when it is valid JSON (5, 1.5, true, "5", ["a", "b"])
and as text otherwise (Alice). The list operators take a JSON list or one
value, between takes [LOW, HIGH], and the like operators take the text as it
is. When PATH ends with a date key (published, updated, or a key of
--date-key), values are dates: POSIX seconds, ISO 8601 (2024-05-01,
2024-05-01T12:00:00+02:00; local time without an offset), now, or relative
times written with a space or "ago": "-7 days", "-2 h", "+1 day", "2 weeks ago"
(units s, m, h, d, w or their names).

Operators: eq ne lt le gt ge between in not_in overlap ioverlap disjoint
idisjoint like ilike not_like not_ilike exists. See doc/cache_search.rst.""",
    )
    search.add_argument(
        "-f", "--fts", metavar="TEXT",
        help="full-text search: items whose text contains every word of TEXT, ignoring "
        "case and accents",
    )
    mode = search.add_mutually_exclusive_group()
    mode.add_argument(
        "--phrase", dest="fts_mode", action="store_const", const="phrase",
        help="search the words of --fts as a phrase: next to each other, in that order",
    )
    mode.add_argument(
        "--prefix", dest="fts_mode", action="store_const", const="prefix",
        help="search each word of --fts as the beginning of a word (caf finds café)",
    )
    search.add_argument(
        "-F", "--filter", dest="filters", action="append", nargs=3,
        metavar=("PATH", "OP", "VALUE"),
        help="keep the items whose parsed data at PATH matches OP VALUE (repeatable, "
        "all must match), e.g. -F tags overlap xmpp",
    )
    search.add_argument(
        "-o", "--order", dest="order", action="append", nargs="+", metavar=("KEY", "DIRECTION"),
        help="order by KEY, then by the next -o: created, updated, item_id, relevance (with "
        "--fts) or a PATH; DIRECTION asc or desc (default asc, desc for relevance)",
    )
    search.add_argument(
        "-l", "--limit", type=non_negative_int,
        help="maximum number of items to print (default 50, at most 1000; 0 prints only "
        "the count)",
    )
    search.add_argument(
        "-i", "--offset", type=non_negative_int, default=0,
        help="number of matching items to skip, for the next pages (default 0)",
    )
    count = search.add_mutually_exclusive_group()
    count.add_argument(
        "--count-limit", type=non_negative_int, metavar="N",
        help="count the matches up to N, then print 'at least N' (default 1000; 0: no count)",
    )
    count.add_argument(
        "--exact-count", action="store_true",
        help="count every match, which takes longer when many items match",
    )
    search.add_argument(
        "-P", "--payload", action="store_true", help="print the XML payload of each item"
    )
    search.add_argument(
        "-k", "--keys", action="extend", nargs="+", metavar="PATH",
        help=f"parsed data to show as columns (default: {', '.join(SEARCH_DEFAULT_KEYS)})",
    )
    search.add_argument(
        "--date-key", dest="date_keys", action="extend", nargs="+", metavar="KEY",
        help=f"more keys whose values are dates (always: {', '.join(SEARCH_DATE_KEYS)})",
    )
    search.add_argument(
        "-s", "--service", dest="services", action="extend", nargs="+", metavar="JID",
        help="only items of these pubsub services",
    )
    search.add_argument(
        "-n", "--node", dest="nodes", action="extend", nargs="+", metavar="NODE",
        help="only items of nodes with these names",
    )
    search.add_argument(
        "-t", "--type", dest="types", action="extend", nargs="+", metavar="TYPE",
        help="only items of nodes of these types, as set by their analyser (e.g. blog)",
    )
    search.add_argument(
        "-S", "--subtype", dest="subtypes", action="extend", nargs="+", metavar="SUBTYPE",
        help="only items of nodes of these subtypes (e.g. comment)",
    )
    search.add_argument(
        "--item-id", dest="item_ids", action="extend", nargs="+", metavar="ITEM_ID",
        help="only the items with these ids",
    )
    search.add_argument(
        "--profiles", action="extend", nargs="+", metavar="PROFILE",
        help="search the items of these profiles instead of the profile of -p",
    )
    search.add_argument(
        "--json", dest="output", action="store_const", const=OUTPUT_JSON,
        default=argparse.SUPPRESS, help="print the result as JSON (as -O json)",
    )
    search.set_defaults(handler=run_cache_search, fts_mode="words")


def parse_search_path(text: str, label: str = "path") -> list[str | int]:
    """Parse a PATH of li pubsub cache search: dotted keys, or a JSON list.

    In the dotted form, an integer is a list index. Raises CliError for an
    empty path, an empty key or an invalid JSON list.
    """
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            path = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise CliError(f"invalid {label} {text!r}: not a JSON list ({exc})") from None
        valid = isinstance(path, list) and bool(path) and all(
            isinstance(element, (str, int)) and not isinstance(element, bool)
            for element in path
        )
        if not valid:
            raise CliError(
                f"invalid {label} {text!r}: a JSON path must be a non-empty list of keys "
                f'(strings) and list indexes (integers), e.g. \'["a.b", 0]\''
            )
        return path
    if not stripped:
        raise CliError(f"invalid {label} {text!r}: give at least one key, e.g. title")
    path: list[str | int] = []
    for part in stripped.split("."):
        if not part:
            raise CliError(
                f"invalid {label} {text!r}: empty key. Write a key containing a dot as a "
                f'JSON list, e.g. \'["a.b"]\''
            )
        path.append(int(part) if re.fullmatch(r"-?\d+", part) else part)
    return path


def _reject_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_search_value(text: str) -> Any:
    """Read a VALUE as JSON when it is valid JSON, else as the text itself.

    Python's json module accepts NaN and Infinity, which are not JSON: they
    stay text here.
    """
    try:
        return json.loads(text, parse_constant=_reject_json_constant)
    except ValueError:
        return text


def search_date(value: Any, option: str) -> float:
    """Convert a date VALUE (POSIX seconds, ISO 8601, now or relative) to POSIX seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise CliError(f"{option}: invalid date {value!r}, use a date such as 2024-05-01")
    try:
        iso = parse_date(value)
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"{option}: {exc}") from None
    return datetime.datetime.fromisoformat(iso).timestamp()


def parse_search_filter(
    path_text: str, operator: str, value_text: str, date_keys: set[str]
) -> list[Any]:
    """Turn the PATH OP VALUE of -F into the [path, operator, value] sent to the daemon."""
    option = f"-F {path_text} {operator} {value_text}"
    path = parse_search_path(path_text)
    if operator in SEARCH_PATTERN_OPERATORS:
        return [path, operator, value_text]
    value = parse_search_value(value_text)
    if operator == "exists":
        if not isinstance(value, bool):
            raise CliError(f"invalid value {value_text!r} in {option}: use true or false")
        return [path, operator, value]
    if operator in SEARCH_LIST_OPERATORS and not isinstance(value, list):
        if operator == "between":
            raise CliError(
                f"invalid value {value_text!r} in {option}: use a JSON list of two bounds, "
                f"e.g. '[1, 5]' or '[\"-7 days\", \"now\"]'"
            )
        value = [value]
    is_date = isinstance(path[-1], str) and path[-1] in date_keys
    if is_date and operator in SEARCH_DATE_OPERATORS:
        if isinstance(value, list):
            value = [search_date(entry, option) for entry in value]
        else:
            value = search_date(value, option)
    return [path, operator, value]


def parse_search_order(words: list[str]) -> dict[str, Any]:
    """Turn the KEY [DIRECTION] of -o into the order key sent to the daemon."""
    if len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
        raise CliError(
            f"invalid order -o {' '.join(words)}: use -o KEY, -o KEY asc or -o KEY desc"
        )
    key = words[0]
    order: dict[str, Any] = (
        {"key": key} if key in SEARCH_ORDER_NAMES else {"path": parse_search_path(key, "order")}
    )
    if len(words) == 2:
        order["direction"] = words[1]
    return order


def format_parsed_value(value: Any, is_date: bool) -> str:
    """Show a value of parsed data in a table cell."""
    if value is None:
        return ""
    if is_date and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_date(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(isinstance(entry, (str, int, float)) for entry in value):
        return ", ".join(str(entry) for entry in value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def parsed_value(parsed: Any, path: list[str | int]) -> Any:
    """Return the value at ``path`` of parsed data, None when there is none."""
    value = parsed
    for element in path:
        if isinstance(element, int) and isinstance(value, list):
            if not -len(value) <= element < len(value):
                return None
            value = value[element]
        elif isinstance(element, str) and isinstance(value, dict):
            value = value.get(element)
        else:
            return None
    return value


def run_cache_search(ctx: Context, args: argparse.Namespace) -> int:
    """Search the cached items and print them as a table, or with their payload."""
    date_keys = {*SEARCH_DATE_KEYS, *(args.date_keys or [])}
    params: dict[str, Any] = {
        "fts": args.fts,
        "fts_mode": args.fts_mode,
        "filters": [
            parse_search_filter(path, operator, value, date_keys)
            for path, operator, value in args.filters or []
        ],
        "order_by": [parse_search_order(words) for words in args.order or []],
        "services": args.services,
        "nodes": args.nodes,
        "types": args.types,
        "subtypes": args.subtypes,
        "item_ids": args.item_ids,
        "offset": args.offset,
        "limit": args.limit,
        "payload": args.payload,
        "count_limit": args.count_limit,
        "exact_count": args.exact_count,
    }
    key_texts = args.keys or list(SEARCH_DEFAULT_KEYS)
    keys = [(text, parse_search_path(text, "key")) for text in key_texts]
    params = {
        name: value for name, value in params.items() if value not in (None, []) and (
            value is not False or name != "exact_count"
        )
    }
    if args.profiles:
        result = ctx.call("ps_cache_search_all_profiles", profiles=args.profiles, **params)
    else:
        result = ctx.call("ps_cache_search", profile=ctx.profile, **params)
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0

    items = result["items"]
    show_profile = len(result["profiles"]) > 1

    def key_cells(item: dict[str, Any]) -> list[tuple[str, str]]:
        cells = []
        for text, path in keys:
            is_date = isinstance(path[-1], str) and path[-1] in date_keys
            value = parsed_value(item.get("parsed"), path)
            cells.append((text, format_parsed_value(value, is_date)))
        return cells

    if args.payload:
        for item in items:
            where = f"{item['service']} {item['node']} {item['item_id']}"
            if show_profile:
                where = f"{item['profile']}: {where}"
            ctx.output.line(where, style="bold")
            ctx.output.fields(
                [("created", format_date(item["created"])), *key_cells(item)]
            )
            ctx.output.xml(item.get("payload") or "")
            ctx.output.line()
    elif items:
        columns = ["profile"] if show_profile else []
        columns += ["service", "node", "item id", "created", *key_texts]
        rows = []
        for item in items:
            row = [item["profile"]] if show_profile else []
            row += [item["service"], item["node"], item["item_id"], format_date(item["created"])]
            row += [cell for _, cell in key_cells(item)]
            rows.append(row)
        ctx.output.table(columns, rows)

    total = result["total"]
    offset = result["offset"]
    # The backend stops counting at the count limit: the total is then a minimum.
    if total is None:
        matching = "uncounted"
    elif result.get("total_exact", True):
        matching = f"{total}"
    else:
        matching = f"at least {total}"
    if items:
        summary = f"-- items {offset + 1} to {offset + len(items)} of {matching}"
    elif total == 0:
        summary = "-- no cached item matches"
    elif result["limit"] == 0:
        summary = f"-- {matching} item(s) match"
    else:
        summary = f"-- no item from offset {offset}: {matching} item(s) match"
    if result.get("relevance_ignored"):
        summary += " (too many matches to rank by relevance: most recently cached first)"
    ctx.output.line(summary, style="dim")
    return 0


def run_subscribe(ctx: Context, args: argparse.Namespace) -> int:
    """Subscribe to a node and print the subscription state."""
    result = ctx.call(
        "ps_subscribe", service=args.service, node=args.node,
        options=parse_key_values(args.options), profile=ctx.profile,
    )
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    line = f"{result.get('subscription')} to node {result.get('node')}"
    if result.get("subid"):
        line += f" (subscription id {result['subid']})"
    ctx.output.line(line)
    if result.get("options_required"):
        ctx.output.line("the service requires subscription options before delivering items")
    return 0


def run_unsubscribe(ctx: Context, args: argparse.Namespace) -> int:
    """Remove a subscription."""
    params = {"sub_id": args.sub_id} if args.sub_id else {}
    result = ctx.call(
        "ps_unsubscribe", service=args.service, node=args.node, profile=ctx.profile, **params
    )
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        ctx.output.line(f"unsubscribed from node {args.node}")
    return 0


def run_subscriptions(ctx: Context, args: argparse.Namespace) -> int:
    """Print the profile's subscriptions as a table."""
    result = ctx.call(
        "ps_subscriptions_get", service=args.service, node=args.node, profile=ctx.profile
    )
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    rows = [
        (entry.get("node"), entry.get("subscription"), entry.get("subid") or "")
        for entry in result
    ]
    ctx.output.table(("node", "subscription", "subscription id"), rows)
    return 0


def run_affiliations(ctx: Context, args: argparse.Namespace) -> int:
    """Print the profile's affiliations as a table."""
    result = ctx.call(
        "ps_affiliations_get", service=args.service, node=args.node, profile=ctx.profile
    )
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    ctx.output.table(("node", "affiliation"), sorted(result.items()))
    return 0


def run_features(ctx: Context, args: argparse.Namespace) -> int:
    """Print the features of a service, one a line."""
    result = ctx.call("ps_features_get", service=args.service, profile=ctx.profile)
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        for feature in result:
            ctx.output.line(feature)
    return 0


def run_node_delete(ctx: Context, args: argparse.Namespace) -> int:
    """Delete a node."""
    params = {"redirect": args.redirect} if args.redirect else {}
    result = ctx.call(
        "ps_node_delete", service=args.service, node=args.node, profile=ctx.profile, **params
    )
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        ctx.output.line(f"node {args.node} deleted")
    return 0


def run_node_purge(ctx: Context, args: argparse.Namespace) -> int:
    """Remove every item of a node."""
    result = ctx.call(
        "ps_node_purge", service=args.service, node=args.node, profile=ctx.profile
    )
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        ctx.output.line(f"node {args.node} purged")
    return 0


def format_form_value(value: Any) -> str:
    """Show a form value: lists joined with commas, None as an empty string."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def run_node_config_get(ctx: Context, args: argparse.Namespace) -> int:
    """Print a node's configuration: option, value and label."""
    result = ctx.call(
        "ps_node_configuration_get", service=args.service, node=args.node, profile=ctx.profile
    )
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    values = result.get("values", {})
    rows = [
        (field["var"], format_form_value(values.get(field["var"])), field.get("label") or "")
        for field in result.get("fields", []) if field.get("var")
    ]
    ctx.output.table(("option", "value", "label"), rows)
    return 0


def run_node_config_set(ctx: Context, args: argparse.Namespace) -> int:
    """Change configuration options of a node."""
    options = parse_key_values(args.options)
    result = ctx.call(
        "ps_node_configuration_set", service=args.service, node=args.node, options=options,
        profile=ctx.profile,
    )
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        ctx.output.line(f"node {args.node}: {len(options)} option(s) set")
    return 0


def run_node_subscriptions(ctx: Context, args: argparse.Namespace) -> int:
    """List a node's subscriptions, or change them with -S."""
    if args.changes:
        changes = parse_key_values(args.changes)
        result = ctx.call(
            "ps_node_subscriptions_set", service=args.service, node=args.node,
            subscriptions=changes, profile=ctx.profile,
        )
        if ctx.output.is_json:
            ctx.output.json(result)
        else:
            ctx.output.line(f"node {args.node}: {len(changes)} subscription(s) set")
        return 0
    result = ctx.call(
        "ps_node_subscriptions_get", service=args.service, node=args.node, profile=ctx.profile
    )
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    rows = [
        (entry.get("jid"), entry.get("subscription"), entry.get("subid") or "")
        for entry in result
    ]
    ctx.output.table(("jid", "subscription", "subscription id"), rows)
    return 0


def run_node_affiliations(ctx: Context, args: argparse.Namespace) -> int:
    """List a node's affiliations, or change them with -A."""
    if args.changes:
        changes = parse_key_values(args.changes)
        result = ctx.call(
            "ps_node_affiliations_set", service=args.service, node=args.node,
            affiliations=changes, profile=ctx.profile,
        )
        if ctx.output.is_json:
            ctx.output.json(result)
        else:
            ctx.output.line(f"node {args.node}: {len(changes)} affiliation(s) set")
        return 0
    result = ctx.call(
        "ps_node_affiliations_get", service=args.service, node=args.node, profile=ctx.profile
    )
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    ctx.output.table(("jid", "affiliation"), sorted(result.items()))
    return 0
