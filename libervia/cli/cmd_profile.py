"""``li profile``: create, connect, disconnect, list and delete profiles.

A password never comes from a command-line value, which other users can read
in the process list and which lands in the shell history. It comes from a
file, from an environment variable, or from a prompt on a terminal.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from libervia.cli.common import CliError, Context, positive_int

#: Environment variable read for the password when no other source is given.
PASSWORD_ENV = "LIBERVIA_PASSWORD"

PASSWORD_SOURCES_HELP = (
    f"give it with --password-file FILE, with --password-env VAR (the variable "
    f"{PASSWORD_ENV} is read by default), or run li on a terminal to be prompted"
)


def add_commands(
    subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    """Register ``li profile`` and its subcommands."""
    profile_parser = subparsers.add_parser(
        "profile", help="manage XMPP accounts (profiles)", parents=[common]
    )
    commands = profile_parser.add_subparsers(
        title="profile commands", dest="profile_command", required=True
    )

    create = commands.add_parser(
        "create",
        help="create a profile",
        parents=[common],
        description=f"Create a profile. The password is read from --password-file "
        f"FILE, from --password-env VAR (${PASSWORD_ENV} by default), or from a "
        f"prompt on a terminal.",
    )
    create.add_argument("name", help="name of the new profile")
    create.add_argument(
        "-j", "--jid", required=True,
        help="bare JID of the account, or the component's domain with --component",
    )
    create.add_argument(
        "--component",
        action="store_true",
        help="connect as an XMPP component (XEP-0114) instead of a client: the JID is "
        "the component's domain, the password the secret shared with the server, and "
        "--host/--port name the server's component listener (default port: 5347)",
    )
    create.add_argument("--host", help="XMPP server host name or address (default: the JID's domain)")
    create.add_argument("--port", type=positive_int, help="XMPP server port (default: 5222)")
    create.add_argument(
        "--ca-file", type=Path, help="PEM file of the CA certificates to trust"
    )
    create.add_argument(
        "--allow-plaintext",
        action="store_true",
        help="allow a connection without TLS, and SASL PLAIN over it (for local test "
        "servers only)",
    )
    create.add_argument(
        "--direct-tls",
        action="store_true",
        help="open TLS from the first byte (XEP-0368) instead of STARTTLS; give the "
        "server's direct TLS port with --port",
    )
    create.add_argument(
        "--sasl-mechanisms",
        metavar="NAMES",
        help="comma-separated SASL mechanisms allowed, among SCRAM-SHA-256, "
        "SCRAM-SHA-1 and PLAIN (default: all; the strongest one offered is used)",
    )
    create.add_argument(
        "--default", action="store_true", help="make it the default profile"
    )
    _add_password_options(create)
    create.set_defaults(handler=run_create)

    connect = commands.add_parser(
        "connect",
        help="connect a profile",
        parents=[common],
        description="Connect a profile with its stored password, or with the "
        "password given by --password-file, --password-env or --password-prompt.",
    )
    connect.add_argument("name", nargs="?", help="profile (default: as -p)")
    _add_password_options(connect, prompt_option=True)
    connect.set_defaults(handler=run_connect)

    disconnect = commands.add_parser(
        "disconnect", help="disconnect a profile", parents=[common]
    )
    disconnect.add_argument("name", nargs="?", help="profile (default: as -p)")
    disconnect.set_defaults(handler=run_disconnect)

    list_parser = commands.add_parser("list", help="list the profiles", parents=[common])
    list_parser.set_defaults(handler=run_list)

    delete = commands.add_parser(
        "delete", help="delete a profile and its cached data", parents=[common]
    )
    delete.add_argument("name", help="profile to delete")
    delete.set_defaults(handler=run_delete)


def _add_password_options(
    parser: argparse.ArgumentParser, prompt_option: bool = False
) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from the first line of FILE ('-': stdin)",
    )
    group.add_argument(
        "--password-env",
        metavar="VAR",
        help="read the password from the environment variable VAR",
    )
    if prompt_option:
        group.add_argument(
            "--password-prompt",
            action="store_true",
            help="prompt for the password on the terminal",
        )


def read_password(args: argparse.Namespace, fallback: bool, confirm: bool) -> str | None:
    """Return the password from the source chosen in ``args``.

    With ``fallback``, a password is required: $LIBERVIA_PASSWORD is used
    when set, else a prompt when stdin is a terminal. Without it, None is
    returned when no source is given. Raises CliError when the password
    cannot be read or is empty.
    """
    if args.password_file:
        password = _read_password_file(args.password_file)
    elif args.password_env:
        password = _read_password_env(args.password_env)
    elif getattr(args, "password_prompt", False):
        password = _prompt_password(confirm)
    elif not fallback:
        return None
    elif PASSWORD_ENV in os.environ:
        password = _read_password_env(PASSWORD_ENV)
    elif sys.stdin.isatty():
        password = _prompt_password(confirm)
    else:
        raise CliError(f"missing password: {PASSWORD_SOURCES_HELP}")

    if not password:
        raise CliError("the password is empty")
    return password


def _read_password_file(name: str) -> str:
    try:
        if name == "-":
            text = sys.stdin.readline()
        else:
            with open(name, encoding="utf-8") as password_file:
                text = password_file.readline()
    except OSError as exc:
        raise CliError(f"cannot read the password file {name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"the password file {name} is not valid UTF-8") from None
    return text.rstrip("\r\n")


def _read_password_env(variable: str) -> str:
    try:
        return os.environ[variable]
    except KeyError:
        raise CliError(f"the environment variable {variable} is not set") from None


def _prompt_password(confirm: bool) -> str:
    if not sys.stdin.isatty():
        raise CliError(
            f"cannot prompt for the password because stdin is not a terminal: "
            f"{PASSWORD_SOURCES_HELP}"
        )
    try:
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Password (again): ") != password:
            raise CliError("the passwords do not match")
    except EOFError:
        raise CliError("no password typed (end of input at the prompt)") from None
    return password


def run_create(ctx: Context, args: argparse.Namespace) -> int:
    """Create a profile, then make it the default one with --default."""
    options: dict[str, Any] = {}
    if args.component:
        options["component"] = True
    if args.host:
        options["host"] = args.host
    if args.port:
        options["port"] = args.port
    if args.ca_file:
        # The daemon has another working directory: send an absolute path.
        ca_file = args.ca_file.expanduser().resolve()
        if not ca_file.is_file():
            raise CliError(f"CA file not found: {ca_file}")
        options["ca_file"] = str(ca_file)
    if args.allow_plaintext:
        options["allow_plaintext"] = True
    if args.direct_tls:
        options["direct_tls"] = True
    if args.sasl_mechanisms is not None:
        mechanisms = [name.strip() for name in args.sasl_mechanisms.split(",") if name.strip()]
        if not mechanisms:
            raise CliError("--sasl-mechanisms is empty: name at least one mechanism")
        options["sasl_mechanisms"] = mechanisms
    password = read_password(args, fallback=True, confirm=True)

    result = ctx.call(
        "profile_create", name=args.name, jid=args.jid, password=password, options=options
    )
    if args.default:
        ctx.call("profile_default_set", name=args.name)

    if ctx.output.is_json:
        ctx.output.json({**result, "default": args.default})
    else:
        default = " (default profile)" if args.default else ""
        kind = " (component)" if result.get("kind") == "component" else ""
        ctx.output.line(
            f"profile {result['name']} created for {result['jid']}{kind}{default}"
        )
    return 0


def run_connect(ctx: Context, args: argparse.Namespace) -> int:
    """Connect a profile and wait until its session is open."""
    name = args.name or ctx.profile
    password = read_password(args, fallback=False, confirm=False)
    params: dict[str, Any] = {"name": name}
    if password is not None:
        params["password"] = password
    result = ctx.call("profile_connect", **params)

    if ctx.output.is_json:
        ctx.output.json(result)
        return 0
    details = []
    if result.get("kind") == "component":
        details.append("component")
    if result.get("mechanism"):
        details.append(f"SASL {result['mechanism']}")
    if "tls" in result:
        details.append("TLS" if result["tls"] else "no TLS")
    suffix = f" ({', '.join(details)})" if details else ""
    ctx.output.line(f"connected as {result['jid']}{suffix}")
    return 0


def run_disconnect(ctx: Context, args: argparse.Namespace) -> int:
    """Disconnect a profile."""
    name = args.name or ctx.profile
    result = ctx.call("profile_disconnect", name=name)
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        ctx.output.line(f"profile {name or '(default)'} disconnected")
    return 0


def run_list(ctx: Context, args: argparse.Namespace) -> int:
    """List the profiles with their JID and state."""
    profiles = ctx.call("profile_list")
    if ctx.output.is_json:
        ctx.output.json(profiles)
        return 0
    if not profiles:
        ctx.output.line("no profile: create one with 'li profile create NAME -j JID'")
        return 0
    rows = [
        (
            profile["name"],
            profile["jid"],
            "yes" if profile.get("connected") else "no",
            "yes" if profile.get("default") else "",
        )
        for profile in profiles
    ]
    header: tuple[str, ...] = ("name", "jid", "connected", "default")
    # The kind column appears once a component profile exists, so that the
    # usual list of client profiles keeps its layout.
    if any(profile.get("kind") == "component" for profile in profiles):
        header += ("kind",)
        rows = [row + (profile.get("kind", "client"),) for row, profile in zip(rows, profiles)]
    ctx.output.table(header, rows)
    return 0


def run_delete(ctx: Context, args: argparse.Namespace) -> int:
    """Delete a profile."""
    result = ctx.call("profile_delete", name=args.name)
    if ctx.output.is_json:
        ctx.output.json(result)
    else:
        ctx.output.line(f"profile {args.name} deleted")
    return 0
