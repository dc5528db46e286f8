"""``room-broker``: parse options, then start the library's broker."""

from __future__ import annotations

import sys

import click

from . import config
from .config import Exit, Limits
from .logfmt import LogWriter
from .server import Broker, Endpoints, StartError, open_store
from .sqlstore import SYNC_MODES


def _env(name: str) -> str:
    return f"{config.ENV_PREFIX}_{name}"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """The room chat broker."""


@main.command()
@click.option(
    "--router",
    default=config.ROUTER,
    envvar=_env("ROUTER"),
    show_envvar=True,
    help="Endpoint for client commands (ROUTER).",
)
@click.option(
    "--pub",
    default=config.PUB,
    envvar=_env("PUB"),
    show_envvar=True,
    help="Endpoint for room messages (PUB); clients learn it from the broker.",
)
@click.option(
    "--control",
    default=config.CONTROL,
    envvar=_env("CONTROL"),
    show_envvar=True,
    help="Endpoint for room-ctl (admin commands).",
)
@click.option(
    "--data-dir",
    default=None,
    envvar=config.DATA_DIR_ENV,
    show_envvar=True,
    type=click.Path(file_okay=False),
    help="Where state lives [default: user data dir].",
)
@click.option(
    "--rate",
    default=10.0,
    type=click.FloatRange(min=0),
    envvar=_env("RATE"),
    show_envvar=True,
    help="Room messages per second per user; 0 turns the limit off.",
)
@click.option(
    "--burst",
    default=30,
    type=click.IntRange(min=1),
    envvar=_env("BURST"),
    show_envvar=True,
    help="Messages a user may send at once before --rate applies.",
)
@click.option(
    "--max-message",
    default=config.DEFAULT_LIMITS.max_message,
    type=click.IntRange(min=1),
    envvar=_env("MAX_MESSAGE"),
    show_envvar=True,
    help="Bytes of text in one message.",
)
@click.option(
    "--max-clients",
    default=config.DEFAULT_LIMITS.max_clients,
    type=click.IntRange(min=1),
    envvar=_env("MAX_CLIENTS"),
    show_envvar=True,
    help="Connected users at once.",
)
@click.option(
    "--max-rooms",
    default=config.DEFAULT_LIMITS.max_rooms,
    type=click.IntRange(min=1),
    envvar=_env("MAX_ROOMS"),
    show_envvar=True,
    help="Rooms, the lobby included.",
)
@click.option(
    "--heartbeat",
    default=config.HEARTBEAT,
    type=click.FloatRange(min=0.05),
    envvar=_env("HEARTBEAT"),
    show_envvar=True,
    help=f"Seconds between heartbeats; a client silent for {config.LIVENESS} is dropped.",
)
@click.option(
    "--sync",
    type=click.Choice(SYNC_MODES),
    default="full",
    envvar=_env("SYNC"),
    show_envvar=True,
    help="full: an acknowledged message survives power loss; normal: a broker crash only.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar=_env("LOG_FORMAT"),
    show_envvar=True,
    help="Log lines for people or for tools.",
)
@click.option(
    "--quiet",
    is_flag=True,
    envvar=_env("QUIET"),
    show_envvar=True,
    help="Hide chat lines; admin and error lines still show.",
)
def start(
    router: str,
    pub: str,
    control: str,
    data_dir: str | None,
    rate: float,
    burst: int,
    max_message: int,
    max_clients: int,
    max_rooms: int,
    heartbeat: float,
    sync: str,
    log_format: str,
    quiet: bool,
) -> None:
    """Start the broker and serve until Ctrl-C, SIGTERM or `room-ctl close`."""
    limits = Limits(max_message=max_message, max_clients=max_clients, max_rooms=max_rooms)
    store = None
    try:
        store = open_store(config.data_dir(data_dir), sync)
        broker = Broker(
            Endpoints(router, pub, control),
            store=store,
            limits=limits,
            rate=rate,
            burst=burst,
            heartbeat=heartbeat,
            log=LogWriter(fmt=log_format, quiet=quiet),
        )
    except StartError as exc:
        if store is not None:
            store.close()
        _fail(str(exc))
    broker.install_signal_handlers()
    broker.run()
    sys.exit(Exit.OK)


def _fail(message: str) -> None:
    click.echo(f"room-broker: {message}", err=True)
    sys.exit(Exit.ERROR)
