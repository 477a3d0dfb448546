"""``li blog``: read and write microblog posts (XEP-0277)."""

from __future__ import annotations

import argparse
from typing import Any

from libervia.cli.cmd_pubsub import add_service_node_options, format_metadata

# The XEP-0277 node; the CLI does not import the backend plugin to stay fast.
NS_MICROBLOG = "urn:xmpp:microblog:0"
from libervia.cli.common import CliError, Context, positive_int, read_stdin
from libervia.cli.output import format_date


def add_commands(
    subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Register ``li blog`` and its subcommands."""
    blog_parser = subparsers.add_parser(
        "blog", help="microblogging (XEP-0277)", parents=[common]
    )
    commands = blog_parser.add_subparsers(
        title="blog commands", dest="blog_command", required=True
    )

    get = commands.add_parser("get", help="get blog posts", parents=[common])
    add_service_node_options(get, node_required=False, default_node=NS_MICROBLOG)
    get.add_argument(
        "-M", "--max", type=positive_int, help="maximum number of posts to get"
    )
    get.add_argument(
        "-C", "--no-cache", action="store_true",
        help="ask the pubsub service even when the blog is cached",
    )
    get.set_defaults(handler=run_get)

    publish = commands.add_parser(
        "set",
        help="publish a blog post",
        parents=[common],
        description="Publish a blog post; its content comes from -c or from stdin.",
    )
    add_service_node_options(publish, node_required=False, default_node=NS_MICROBLOG)
    publish.add_argument("-t", "--title", help="title of the post")
    publish.add_argument(
        "-T", "--tag", dest="tags", action="append", metavar="TAG",
        help="tag of the post (repeatable)",
    )
    publish.add_argument(
        "-i", "--item", dest="item_id", help="id of the post (an existing id edits it)"
    )
    publish.add_argument("-c", "--content", help="content of the post (default: stdin)")
    publish.set_defaults(handler=run_set)


def describe_post(post: dict[str, Any]) -> str:
    """Return the line under a post's title: date, author and tags."""
    parts = []
    date = format_date(post.get("published") or post.get("updated"))
    if date:
        parts.append(date)
    author = post.get("author") or post.get("author_jid")
    if author:
        parts.append(f"by {author}")
    tags = post.get("tags") or []
    if tags:
        parts.append("tags: " + ", ".join(str(tag) for tag in tags))
    return " | ".join(parts)


def run_get(ctx: Context, args: argparse.Namespace) -> int:
    """Print blog posts: title, date, author, tags and content."""
    extra = {"use_cache": False} if args.no_cache else {}
    result = ctx.call(
        "mb_get",
        service=args.service,
        node=args.node,
        max_items=args.max,
        extra=extra,
        profile=ctx.profile,
    )
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0

    posts = result.get("items", [])
    if not posts:
        ctx.output.line("no blog post")
    else:
        ctx.output.line(format_metadata(result.get("metadata", {}), len(posts)), style="dim")
        ctx.output.line()
    for index, post in enumerate(posts):
        if index:
            ctx.output.line()
        ctx.output.line(post.get("title") or "(no title)", style="bold")
        details = describe_post(post)
        if details:
            ctx.output.line(details, style="dim")
        content = post.get("content") or post.get("content_xhtml") or ""
        if content:
            ctx.output.line(content)
    return 0


def run_set(ctx: Context, args: argparse.Namespace) -> int:
    """Publish a blog post and print its item id."""
    content = args.content if args.content is not None else read_stdin("post content")
    if not content.strip():
        raise CliError("the post content is empty")
    data: dict[str, Any] = {"content": content}
    if args.title:
        data["title"] = args.title
    if args.tags:
        data["tags"] = args.tags
    if args.item_id:
        data["id"] = args.item_id

    result = ctx.call(
        "mb_send", service=args.service, node=args.node, data=data, profile=ctx.profile
    )
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        ctx.output.line(result["item_id"])
    return 0
