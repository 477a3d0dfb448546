"""``li blog``: read, write and retract microblog posts (XEP-0277)."""

from __future__ import annotations

import argparse
from typing import Any

from libervia.cli.cmd_pubsub import add_service_node_options, format_metadata
from libervia.cli.common import CliError, Context, positive_int, read_stdin
from libervia.cli.output import format_date

# The XEP-0277 node; the CLI does not import the backend plugin to stay fast.
NS_MICROBLOG = "urn:xmpp:microblog:0"
# Indentation of the comments printed under a post.
COMMENT_INDENT = "    "


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
    _add_get_command(commands, common)
    _add_set_command(commands, common)
    _add_delete_command(commands, common)


def _add_get_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    get = commands.add_parser("get", help="get blog posts", parents=[common])
    add_service_node_options(get, node_required=False, default_node=NS_MICROBLOG)
    get.add_argument(
        "-M", "--max", type=positive_int, help="maximum number of posts to get"
    )
    get.add_argument(
        "-i", "--item", dest="item_ids", action="extend", nargs="+", metavar="ITEM_ID",
        help="get only the posts with these item ids",
    )
    get.add_argument(
        "-C", "--no-cache", action="store_true",
        help="ask the pubsub service even when the blog is cached",
    )
    get.add_argument(
        "--comments", action="store_true",
        help="also get the comments of each post from its comments nodes",
    )
    get.set_defaults(handler=run_get)


def _add_set_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    publish = commands.add_parser(
        "set",
        help="publish or edit a blog post",
        parents=[common],
        description="Publish a blog post; its content comes from -c or from stdin. "
        "Giving the id of an existing post edits it: the post keeps its "
        "publication date and its comments node.",
    )
    add_service_node_options(publish, node_required=False, default_node=NS_MICROBLOG)
    publish.add_argument("-t", "--title", help="title of the post, as plain text")
    publish.add_argument(
        "-T", "--tag", dest="tags", action="append", metavar="TAG",
        help="tag of the post (repeatable)",
    )
    publish.add_argument(
        "-i", "--item", dest="item_id", help="id of the post (an existing id edits it)"
    )
    publish.add_argument("-c", "--content", help="content of the post (default: stdin)")
    publish.add_argument(
        "-x", "--xhtml", action="store_true",
        help="the content is XHTML or HTML markup; it is sanitised and published as "
        "XHTML (default: plain text)",
    )
    publish.add_argument(
        "-l", "--language", metavar="LANG", help="language of the post, such as en or fr-CA"
    )
    publish.add_argument(
        "--comments", action="store_true",
        help="create a comments node for the post and link it, so readers can comment",
    )
    publish.add_argument(
        "--comments-service", metavar="JID",
        help="pubsub service of the comments node (default: the service of the blog)",
    )
    publish.set_defaults(handler=run_set)


def _add_delete_command(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    delete = commands.add_parser(
        "delete",
        help="retract a blog post",
        parents=[common],
        description="Retract a blog post; the subscribers of the blog are notified.",
    )
    add_service_node_options(delete, node_required=False, default_node=NS_MICROBLOG)
    delete.add_argument("-i", "--item", dest="item_id", required=True, help="id of the post")
    delete.add_argument(
        "--delete-comments", action="store_true",
        help="also delete the comments nodes that the post links",
    )
    delete.set_defaults(handler=run_delete)


def describe_post(post: dict[str, Any]) -> str:
    """Return the line under a post's title: dates, author and tags."""
    parts = []
    published = post.get("published") or post.get("updated")
    date = format_date(published)
    if date:
        parts.append(date)
    updated = post.get("updated")
    if updated and published and updated != published:
        parts.append(f"edited {format_date(updated)}")
    author = post.get("author") or post.get("author_jid")
    if author:
        if post.get("author_jid") and post.get("author_jid_verified") is False:
            # The publisher's address did not confirm the author's JID.
            author += " (not verified)"
        parts.append(f"by {author}")
    tags = post.get("tags") or []
    if tags:
        parts.append("tags: " + ", ".join(str(tag) for tag in tags))
    return " | ".join(parts)


def _print_post(ctx: Context, post: dict[str, Any], indent: str = "") -> None:
    ctx.output.line(indent + (post.get("title") or "(no title)"), style="bold")
    details = describe_post(post)
    if details:
        ctx.output.line(indent + details, style="dim")
    for comment in post.get("comments") or []:
        ctx.output.line(f"{indent}comments: {comment.get('uri', '')}", style="dim")
    content = post.get("content") or post.get("content_xhtml") or ""
    for line in content.splitlines():
        ctx.output.line(indent + line)


def _fetch_comments(ctx: Context, args: argparse.Namespace, posts: list[dict[str, Any]]) -> None:
    """Add ``items`` to each comments entry of ``posts``: the comments of that node."""
    for post in posts:
        for comment in post.get("comments") or []:
            params: dict[str, Any] = {
                "service": comment["service"], "node": comment["node"], "profile": ctx.profile,
            }
            if args.no_cache:
                params["extra"] = {"use_cache": False}
            comment["items"] = ctx.call("mb_get", **params).get("items", [])


def run_get(ctx: Context, args: argparse.Namespace) -> int:
    """Print blog posts: title, dates, author, tags, comments node and content."""
    params: dict[str, Any] = {
        "service": args.service,
        "node": args.node,
        "max_items": args.max,
        "extra": {"use_cache": False} if args.no_cache else {},
        "profile": ctx.profile,
    }
    if args.item_ids:
        params["item_ids"] = args.item_ids
    result = ctx.call("mb_get", **params)
    posts = result.get("items", [])
    if args.comments:
        _fetch_comments(ctx, args, posts)
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0

    if not posts:
        ctx.output.line("no blog post")
    else:
        ctx.output.line(format_metadata(result.get("metadata", {}), len(posts)), style="dim")
        ctx.output.line()
    for index, post in enumerate(posts):
        if index:
            ctx.output.line()
        _print_post(ctx, post)
        for comment in post.get("comments") or []:
            for comment_post in comment.get("items", []):
                ctx.output.line()
                _print_post(ctx, comment_post, indent=COMMENT_INDENT)
    return 0


def run_set(ctx: Context, args: argparse.Namespace) -> int:
    """Publish a blog post and print its item id, then its comments node if any."""
    content = args.content if args.content is not None else read_stdin("post content")
    if not content.strip():
        raise CliError("the post content is empty")
    if args.comments_service and not args.comments:
        raise CliError("--comments-service needs --comments")
    data: dict[str, Any] = {"content_xhtml" if args.xhtml else "content": content}
    if args.title:
        data["title"] = args.title
    if args.tags:
        data["tags"] = args.tags
    if args.item_id:
        data["id"] = args.item_id
    if args.language:
        data["language"] = args.language
    if args.comments:
        data["allow_comments"] = True
    if args.comments_service:
        data["comments_service"] = args.comments_service

    result = ctx.call(
        "mb_send", service=args.service, node=args.node, data=data, profile=ctx.profile
    )
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    ctx.output.line(result["item_id"])
    for comment in result.get("comments") or []:
        ctx.output.line(f"comments: {comment.get('uri', '')}")
    return 0


def run_delete(ctx: Context, args: argparse.Namespace) -> int:
    """Retract a blog post and print what was removed."""
    result = ctx.call(
        "mb_retract",
        service=args.service,
        node=args.node,
        item_id=args.item_id,
        delete_comments=args.delete_comments,
        profile=ctx.profile,
    )
    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    ctx.output.line(
        f"post {result['item_id']} retracted from node {result['node']} of {result['service']}"
    )
    for uri in result.get("deleted_comments") or []:
        ctx.output.line(f"comments node deleted: {uri}")
    return 0
