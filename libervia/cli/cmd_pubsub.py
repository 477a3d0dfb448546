"""``li pubsub``: items, subscriptions, affiliations, nodes and the local cache."""

from __future__ import annotations

import argparse
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
from libervia.cli.output import format_date


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
    )
    add_service_node_options(cache_reset, node_required=True)
    cache_reset.set_defaults(handler=run_cache_reset)


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
    """Remove a node from the cache."""
    result = ctx.call(
        "ps_cache_reset", service=args.service, node=args.node, profile=ctx.profile
    )
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        ctx.output.line(
            f"node {result['node']} of {result['service']} removed from the cache"
        )
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
