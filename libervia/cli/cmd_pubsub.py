"""``li pubsub``: get, publish and retract items, create nodes, show the cache."""

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
    rsm = metadata.get("rsm")
    if isinstance(rsm, dict) and rsm:
        rsm_values = " ".join(f"{key}={value}" for key, value in rsm.items())
        parts.append(f"RSM {rsm_values}")
    return "-- " + ", ".join(parts)


def run_get(ctx: Context, args: argparse.Namespace) -> int:
    """Print the items of a node with their metadata."""
    extra = {"use_cache": False} if args.no_cache else {}
    result = ctx.call(
        "ps_items_get",
        service=args.service,
        node=args.node,
        max_items=args.max,
        item_ids=args.item_ids,
        extra=extra,
        profile=ctx.profile,
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
