"""``room-web``: parse options, then serve the page and its WebSockets (``client.web.gateway``)."""

from __future__ import annotations

import re
from typing import Final

import click
import zmq
import zmq.asyncio

from broker import options
from broker.config import DEFAULT_LIMITS, Exit
from broker.security.keys import KeyFileError
from client.cli import history_option, server_key_option, server_option
from client.control import client_keys
from client.web.gateway import WEB, Settings, serve
from client.web.tab import Upstream

LISTEN: Final = "127.0.0.1:8080"
_ORIGIN: Final = re.compile(r"^https?://[^/\s]+$")
SOCKETS_PER_TAB: Final = 2


def _origins(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> frozenset[str]:
    found = {o.rstrip("/") for item in value for o in item.split(",") if o.strip()}
    for origin in found:
        if not _ORIGIN.match(origin):
            raise click.BadParameter(f"{origin!r} is not an origin: use https://HOST[:PORT]")
    return frozenset(found)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@options.option(
    "--listen",
    default=LISTEN,
    show_default=True,
    callback=options.host_port(LISTEN),
    help="Where to serve the page and its WebSocket: HOST:PORT (port 0: any free one). Anything "
    "but loopback or a trusted LAN belongs behind a TLS reverse proxy (docs/web.md).",
)
@server_option
@server_key_option
@options.data_dir
@history_option
@options.option(
    "--allow-origin",
    multiple=True,
    callback=_origins,
    help="Another origin whose pages may open the WebSocket (https://HOST[:PORT]), besides "
    "this gateway's own host; repeat it or separate origins with commas.",
)
@options.option(
    "--max-message",
    default=DEFAULT_LIMITS.max_message,
    show_default=True,
    type=click.IntRange(min=1),
    help="The broker's --max-message: a browser's frame may carry this many bytes of text.",
)
@options.option(
    "--max-sessions",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Browser tabs chatting through this gateway at once.",
)
@options.option(
    "--metrics",
    default=None,
    metavar="HOST:PORT",
    callback=options.host_port("127.0.0.1:9561"),
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free one) "
    "[default: off].",
)
@click.pass_context
def main(
    ctx: click.Context,
    listen: tuple[str, int],
    server: tuple[str, ...],
    server_key: str | None,
    data_dir: str | None,
    history: int,
    allow_origin: frozenset[str],
    max_message: int,
    max_sessions: int,
    metrics: tuple[str, int] | None,
) -> None:
    """Serve the chat to browsers: one page, and a WebSocket per tab that chats with the broker
    as room-client does."""
    try:
        curve = client_keys(server_key, data_dir)
    except KeyFileError as exc:
        click.echo(f"{WEB}: no usable server key: {exc}", err=True)
        ctx.exit(Exit.ERROR)
    zctx = zmq.asyncio.Context()
    zctx.set(zmq.MAX_SOCKETS, SOCKETS_PER_TAB * max_sessions + 64)
    upstream = Upstream(server, curve, zctx, history, max_message)
    settings = Settings(max_message, allow_origin, max_sessions, metrics)
    host, port = listen
    ctx.exit(serve(host, port, upstream, settings))
