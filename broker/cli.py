"""``room-broker``: parse options, then start the library's broker, or manage its admin keys."""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import NoReturn

import click

from broker import config, options
from broker.backbone.layout import MAX_REPLICAS, default_replicas, split_urls
from broker.config import Exit, Limits
from broker.logfmt import LogWriter
from broker.loop.server import Broker, Endpoints
from broker.security import keys as keyfiles
from broker.store.datadir import StartError, open_store
from broker.store.sqlstore import DEFAULT_SYNC, SYNC_MODES
from broker.wire.protocol import LOBBY, NAME_RULE, valid_name


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """The room chat broker."""


@main.command()
@options.option(
    "--router",
    default=config.ROUTER,
    help="Endpoint for client commands (ROUTER).",
)
@options.option(
    "--pub",
    default=config.PUB,
    help="Endpoint for room messages (PUB); clients learn it from the broker.",
)
@options.option(
    "--control",
    default=config.CONTROL,
    help="Endpoint for room-ctl (admin commands).",
)
@options.data_dir
@options.option(
    "--rate",
    default=10.0,
    type=click.FloatRange(min=0),
    help="Room messages per second per user; 0 turns the limit off.",
)
@options.option(
    "--burst",
    default=30,
    type=click.IntRange(min=1),
    help="Messages a user may send at once before --rate applies.",
)
@options.option(
    "--max-message",
    default=config.DEFAULT_LIMITS.max_message,
    type=click.IntRange(min=1),
    help="Bytes of text in one message.",
)
@options.option(
    "--max-clients",
    default=config.DEFAULT_LIMITS.max_clients,
    type=click.IntRange(min=1),
    help="Connected users at once.",
)
@options.option(
    "--max-connections",
    default=config.DEFAULT_LIMITS.max_connections,
    type=click.IntRange(min=2),
    help="Chat connections open at once (ROUTER and PUB; a user holds two); more are refused.",
)
@options.option(
    "--max-per-address",
    default=config.DEFAULT_LIMITS.max_per_address,
    type=click.IntRange(min=2),
    help="Chat connections open at once from one IP address; more are refused.",
)
@options.option(
    "--max-rooms",
    default=config.DEFAULT_LIMITS.max_rooms,
    type=click.IntRange(min=1),
    help=f"Rooms someone is in, {LOBBY} included.",
)
@options.option(
    "--new-rooms",
    default=config.DEFAULT_LIMITS.new_rooms,
    type=click.IntRange(min=1),
    help="Rooms one user may create per minute.",
)
@options.option(
    "--keep-messages",
    default=config.DEFAULT_LIMITS.keep_messages,
    type=click.IntRange(min=1),
    help="Messages kept per room; older ones are deleted in the background.",
)
@options.option(
    "--keep-days",
    default=config.DEFAULT_LIMITS.keep_days,
    type=click.FloatRange(min=0),
    help="Days a message is kept; 0 keeps them for ever.",
)
@options.option(
    "--client-queue",
    default=config.DEFAULT_LIMITS.client_queue // 1024,
    type=click.IntRange(min=512),
    help="KiB of replies queued for one client that does not read; past it, replies are dropped.",
)
@options.option(
    "--subscriber-queue",
    default=config.DEFAULT_LIMITS.subscriber_queue // 1024,
    type=click.IntRange(min=128),
    help="KiB of room events queued for one slow subscriber; past it, it repairs by number.",
)
@options.option(
    "--hello-timeout",
    default=config.DEFAULT_LIMITS.hello_timeout,
    type=click.FloatRange(min=0.5),
    help="Seconds a connection may stay without saying hello before the guard closes it.",
)
@options.option(
    "--subscribers-per-session",
    default=config.DEFAULT_LIMITS.subscribers_per_session,
    type=click.IntRange(min=1),
    help="PUB connections one session may hold at once.",
)
@options.option(
    "--subscription-bytes",
    default=config.DEFAULT_LIMITS.subscription_bytes,
    type=click.IntRange(min=512),
    help="Bytes a subscriber may send the PUB besides its room changes; past it, it is evicted.",
)
@options.option(
    "--evict-for",
    default=config.DEFAULT_LIMITS.evict_for,
    type=click.FloatRange(min=0),
    help="Seconds an evicted connection's address is refused.",
)
@options.option(
    "--heartbeat",
    default=config.HEARTBEAT,
    type=click.FloatRange(min=0.05),
    help=f"Seconds between heartbeats; a client silent for {config.LIVENESS} of them is dropped.",
)
@options.option(
    "--sync",
    type=click.Choice(SYNC_MODES),
    default=DEFAULT_SYNC,
    help="full: an acknowledged message survives power loss; normal: a broker crash only.",
)
@options.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    help="Log lines for people or for tools.",
)
@options.option(
    "--quiet",
    is_flag=True,
    help="Hide chat lines; admin and error lines still show.",
)
@options.option(
    "--curve",
    is_flag=True,
    help="Encrypt chat traffic (CURVE); clients then need the broker's public key.",
)
@options.option(
    "--backbone",
    multiple=True,
    metavar="nats://HOST:PORT",
    help="Share rooms, names and the blocklist with other brokers over NATS JetStream. Repeat it "
    "or separate URLs with commas to give every server of a NATS cluster.",
)
@options.option(
    "--replicas",
    default=None,
    type=click.IntRange(1, MAX_REPLICAS),
    help="Copies of the backbone's stream and buckets [default: 1 for one --backbone URL, "
    "3 for three or more].",
)
@options.option(
    "--node-id",
    default=None,
    help="This broker's name on the backbone, unique among the brokers (needed with --backbone).",
)
@options.accounts
@options.registration
@options.option(
    "--room-keys/--no-room-keys",
    default=True,
    help="Seal room events on the PUB with keys only their members get [default: on].",
)
@options.option(
    "--metrics",
    default=None,
    metavar="HOST:PORT",
    callback=options.host_port("127.0.0.1:9560"),
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free one) "
    "[default: off].",
)
@options.option(
    "--pub-hwm",
    default=None,
    type=click.IntRange(min=0),
    hidden=True,
    help="SNDHWM of the PUB socket in sends (tests: a small one makes a subscriber lose some).",
)
@options.option(
    "--pub-sndbuf",
    default=None,
    type=click.IntRange(min=1),
    hidden=True,
    help="SO_SNDBUF of the PUB socket in bytes [default: the OS's].",
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
    max_connections: int,
    max_per_address: int,
    max_rooms: int,
    new_rooms: int,
    keep_messages: int,
    keep_days: float,
    client_queue: int,
    subscriber_queue: int,
    hello_timeout: float,
    subscribers_per_session: int,
    subscription_bytes: int,
    evict_for: float,
    heartbeat: float,
    sync: str,
    log_format: str,
    quiet: bool,
    curve: bool,
    backbone: tuple[str, ...],
    replicas: int | None,
    node_id: str | None,
    accounts: str,
    registration: str,
    room_keys: bool,
    metrics: tuple[str, int] | None,
    pub_hwm: int | None,
    pub_sndbuf: int | None,
) -> None:
    """Start the broker and serve until Ctrl-C, SIGTERM or `room-ctl close`."""
    max_frame = max(config.DEFAULT_LIMITS.max_frame, max_message + config.FRAME_OVERHEAD)
    limits = Limits(
        max_message=max_message,
        max_clients=max_clients,
        max_connections=max_connections,
        max_per_address=max_per_address,
        max_rooms=max_rooms,
        max_frame=max_frame,
        new_rooms=new_rooms,
        keep_messages=keep_messages,
        keep_days=keep_days,
        client_queue=client_queue * 1024,
        subscriber_queue=subscriber_queue * 1024,
        hello_timeout=hello_timeout,
        subscribers_per_session=subscribers_per_session,
        subscription_bytes=subscription_bytes,
        evict_for=evict_for,
    )
    plugin = None
    urls = split_urls(backbone)
    if urls:
        if node_id is None or not valid_name(node_id):
            _fail(f"--backbone needs --node-id, a name unique among the brokers: use {NAME_RULE}")
        # here: a broker without --backbone never loads nats
        from broker.backbone.node import Backbone
        from broker.backbone.plugin import BackbonePlugin

        copies = replicas or default_replicas(urls)
        plugin = BackbonePlugin(Backbone(urls, node_id, limits.history_keep, copies))
    elif replicas is not None:
        _fail("--replicas is for a broker on a backbone: give --backbone too")
    store = None
    home = config.data_dir(data_dir)
    try:
        store = open_store(home, sync)
        kd = keyfiles.ensure(home)  # under the data dir's lock: one broker creates the keys
        keyfiles.mark_chat(kd, curve)
        broker = Broker(
            Endpoints(router, pub, control),
            store=store,
            limits=limits,
            rate=rate,
            burst=burst,
            heartbeat=heartbeat,
            log=LogWriter(fmt=log_format, quiet=quiet),
            keys=kd,
            curve=curve,
            pub_hwm=pub_hwm,
            room_keys=room_keys,
            pub_sndbuf=pub_sndbuf,
            plugin=plugin,
            metrics=metrics,
            accounts=accounts,
            registration=registration,
        )
    except (StartError, keyfiles.KeyFileError) as exc:
        if store is not None:
            store.close()
        _fail(str(exc))
    broker.install_signal_handlers()
    # What exists now (modules, the store, the sockets) lives as long as the process: out of
    # the collector's sight, a full collection costs microseconds instead of about 5 ms, a
    # pause that every message waiting at that moment would wait through (the latency tail).
    gc.collect()
    gc.freeze()
    broker.run()
    sys.exit(Exit.OK)


def _fail(message: str) -> NoReturn:
    click.echo(f"room-broker: {message}", err=True)
    sys.exit(Exit.ERROR)


# ---- room-broker keys --------------------------------------------------------------------------


@main.group()
@options.data_dir
@click.pass_context
def keys(ctx: click.Context, data_dir: str | None) -> None:
    """Manage the admin keys that room-ctl may use. A running broker picks changes up within a
    heartbeat; no restart is needed."""
    try:
        ctx.obj = keyfiles.ensure(config.data_dir(data_dir))
    except keyfiles.KeyFileError as exc:
        _fail(str(exc))


@keys.command("list")
@click.pass_obj
def keys_list(kd: keyfiles.KeyDir) -> None:
    """The allowed admin keys, and the broker's public key."""
    try:
        rows = keyfiles.listing(kd)
        broker_key = keyfiles.load_public(kd.broker_public).decode()
    except keyfiles.KeyFileError as exc:
        _fail(str(exc))
    click.echo(f"broker public key {broker_key} ({kd.broker_public})")
    if not rows:
        click.echo(
            "no admin key: room-ctl is refused until `room-broker keys new NAME` "
            "(or `keys add NAME FILE`)"
        )
        return
    width = max(len("ADMIN"), *(len(name) for name, _ in rows))
    click.echo(f"{'ADMIN'.ljust(width)}  PUBLIC KEY")
    for name, key in rows:
        click.echo(f"{name.ljust(width)}  {key}")


@keys.command("add")
@click.argument("name")
@click.argument("public_key_file", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def keys_add(kd: keyfiles.KeyDir, name: str, public_key_file: Path) -> None:
    """Allow the admin key in PUBLIC_KEY_FILE (a .key file; only its public key is copied)."""
    try:
        key = keyfiles.add(kd, name, public_key_file)
    except keyfiles.KeyFileError as exc:
        _fail(str(exc))
    click.echo(f"allowed {name} ({keyfiles.short(key)}...)")


@keys.command("remove")
@click.argument("name")
@click.pass_obj
def keys_remove(kd: keyfiles.KeyDir, name: str) -> None:
    """Refuse the admin key NAME from now on."""
    try:
        keyfiles.remove(kd, name)
    except keyfiles.KeyFileError as exc:
        _fail(str(exc))
    click.echo(f"removed {name}")


@keys.command("new")
@click.argument("name")
@options.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write the key pair [default: the data dir's keys dir].",
)
@click.pass_obj
def keys_new(kd: keyfiles.KeyDir, name: str, out: Path | None) -> None:
    """Make a key pair for a new admin NAME and allow it."""
    try:
        secret, key = keyfiles.new(kd, name, out)
    except keyfiles.KeyFileError as exc:
        _fail(str(exc))
    click.echo(f"allowed {name} ({keyfiles.short(key)}...): room-ctl --key {secret}")
