"""``li roster``: show the contact list and add contacts."""

from __future__ import annotations

import argparse

from libervia.cli.common import Context


def add_commands(
    subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Register ``li roster`` and its subcommands."""
    roster_parser = subparsers.add_parser(
        "roster", help="contact list (roster) and presence subscriptions", parents=[common]
    )
    commands = roster_parser.add_subparsers(
        title="roster commands", dest="roster_command", required=True
    )

    get = commands.add_parser(
        "get",
        help="show the roster",
        parents=[common],
        description="Show the profile's contacts with their subscription state and "
        "available resources.",
    )
    get.set_defaults(handler=run_get)

    add = commands.add_parser(
        "add",
        help="add a contact and ask to see its presence",
        parents=[common],
        description="Send a presence subscription request to JID, which the server "
        "adds to the roster. A pending request of JID is approved at the same time "
        "unless the daemon's [presence] auto_accept option is none, so running it "
        "on both sides gives a mutual subscription.",
    )
    add.add_argument("jid", help="bare JID of the contact")
    add.set_defaults(handler=run_add)


def run_get(ctx: Context, args: argparse.Namespace) -> int:
    """Print the roster: JID, name, subscription, pending request, groups, resources."""
    items = ctx.call("roster_get", profile=ctx.profile)
    if ctx.output.is_json:
        ctx.output.json(items)
        return 0
    if not items:
        ctx.output.line("the roster is empty: add a contact with 'li roster add JID'")
        return 0
    rows = [
        (
            item["jid"],
            item.get("name", ""),
            item["subscription"],
            "yes" if item.get("ask") else "",
            ", ".join(item.get("groups") or []),
            len(item.get("resources") or []),
        )
        for item in items
    ]
    ctx.output.table(("jid", "name", "subscription", "asked", "groups", "online"), rows)
    return 0


def run_add(ctx: Context, args: argparse.Namespace) -> int:
    """Request a presence subscription from a contact."""
    result = ctx.call("presence_subscribe", jid=args.jid, profile=ctx.profile)
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    message = f"presence subscription requested from {result['jid']}"
    if result.get("approved"):
        message += "; its pending request was approved"
    ctx.output.line(message)
    return 0
