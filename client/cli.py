"""``room-client``: parse options, then chat through the library (``client.app.run``)."""

from __future__ import annotations

import re
import sys
from typing import Final

import click

from broker import options
from broker.config import HISTORY, ROUTER, Exit
from broker.security.keys import KeyFileError
from broker.wire.protocol import HISTORY_MAX, LOBBY, NAME_RULE, valid_name
from client import account, app
from client.control import client_keys


def _check_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not valid_name(value):
        raise click.BadParameter(f"{value!r} is not a valid name: use {NAME_RULE}")
    return value


_ENDPOINT: Final = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
_TCP_ENDPOINT: Final = re.compile(r"^tcp://\S+:(\d+|\*)$")


def split_servers(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    """Every ``--server`` (and ``ROOM_SERVER``, which click splits on whitespace) may list several
    endpoints separated by commas: one flat list in the order given, each endpoint once, checked
    here so that a typo is one line at start and not a surprise at failover."""
    servers: list[str] = []
    for item in value:
        for endpoint in (part.strip() for part in item.split(",")):
            if not endpoint:
                continue
            if not _ENDPOINT.match(endpoint) or (
                endpoint.startswith("tcp://") and not _TCP_ENDPOINT.match(endpoint)
            ):
                raise click.BadParameter(f"{endpoint!r} is not an endpoint: use tcp://HOST:PORT")
            if endpoint not in servers:
                servers.append(endpoint)
    if not servers:
        raise click.BadParameter("give at least one endpoint: tcp://HOST:PORT")
    return tuple(servers)


def _prompted_name(value: str) -> str:
    if not valid_name(value):
        raise click.BadParameter(f"use {NAME_RULE}")
    return value


server_option = options.option(
    "--server",
    multiple=True,
    default=[ROUTER],
    show_default=True,
    callback=split_servers,
    help="The broker's client endpoint (its ROUTER). Repeat it or separate endpoints with commas "
    "to give several brokers: the first that answers is used, and the next ones in turn when "
    "it is lost. One --server-key applies to all of them.",
)
"""``--server``, shared by the commands that chat (``room-client join``, ``room-web``)."""
server_key_option = options.option(
    "--server-key",
    default=None,
    help="The broker's public key, or its file; needed only for a broker started with --curve "
    "[default: found in the data dir when such a broker runs on this host]. With several "
    "--server brokers it is used for all of them, so they must share one key pair.",
)
"""``--server-key``, shared as ``--server`` is."""
history_option = options.option(
    "--history",
    default=HISTORY,
    type=click.IntRange(0, HISTORY_MAX),
    show_default=True,
    help="How many recent messages to show on joining a room.",
)
"""``--history``, shared as ``--server`` is."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The room chat client."""


@main.command()
@options.option(
    "--room",
    default=LOBBY,
    show_default=True,
    callback=_check_name,
    help="The room to be in once connected.",
)
@options.option(
    "--name",
    callback=_check_name,
    help="Your name in the chat; asked for on a terminal, required when piped.",
)
@server_option
@history_option
@server_key_option
@options.data_dir
@options.option(
    "--sub-hwm",
    default=None,
    type=click.IntRange(min=1),
    hidden=True,
    help="RCVHWM of the room subscription (tests: a tiny queue forces gap repair).",
)
@click.pass_context
def join(
    ctx: click.Context,
    room: str,
    name: str | None,
    server: tuple[str, ...],
    history: int,
    server_key: str | None,
    data_dir: str | None,
    sub_hwm: int | None,
) -> None:
    """Chat in ROOM as NAME: interactive on a terminal, one line per event when piped."""
    try:
        curve = client_keys(server_key, data_dir)
    except KeyFileError as exc:
        click.echo(f"room-client: no usable server key: {exc}", err=True)
        ctx.exit(Exit.ERROR)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if name is None:
        if not sys.stdin.isatty():
            raise click.UsageError("--name is required when stdin is not a terminal", ctx)
        name = click.prompt("Your name", value_proc=_prompted_name)
    ctx.exit(
        app.run(
            servers=server,
            name=name,
            room=room,
            history=history,
            interactive=interactive,
            sub_hwm=sub_hwm,
            curve=curve,
            password=lambda: account.password_source(name),
        )
    )


@main.command()
@options.option(
    "--name",
    required=True,
    callback=_check_name,
    help="The name to register.",
)
@options.option(
    "--invite",
    default="",
    help="The one-time code the admin gave (room-ctl invite), when registration is by invite.",
)
@server_option
@server_key_option
@options.data_dir
@click.pass_context
def register(
    ctx: click.Context,
    name: str,
    invite: str,
    server: tuple[str, ...],
    server_key: str | None,
    data_dir: str | None,
) -> None:
    """Register NAME with a password (asked for on a terminal, else ROOM_PASSWORD): from then
    on, only that password lets anyone chat as NAME."""
    try:
        curve = client_keys(server_key, data_dir)
    except KeyFileError as exc:
        click.echo(f"room-client: no usable server key: {exc}", err=True)
        ctx.exit(Exit.ERROR)
    password = account.password_source(name, confirm=True)
    if not password:
        why = "the passwords differ" if sys.stdin.isatty() else "set ROOM_PASSWORD"
        click.echo(f"room-client: no password: {why}", err=True)
        ctx.exit(Exit.ERROR)
    try:
        account.register(server[0], name, invite, password, curve)
    except account.Failed as exc:
        click.echo(f"room-client: not registered: {exc}", err=True)
        ctx.exit(Exit.ERROR)
    click.echo(f"registered {name}: room-client join --name {name} logs in with its password")
