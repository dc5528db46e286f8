"""``room-bench``: the broker against its references in one run: a table, JSON, a plot."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from bench import run as bench
from bench.measure import SEALED
from broker import options


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


NAMES = {"room": "broker", "control": "again", "keys": "keys", "churn": "key churn",
         "relay": "bare relay", "batch": "batching", "redis": "redis"}  # fmt: skip


def row(entry: dict[str, Any]) -> str:
    """One scenario: a line per target, its ratio the broker's rate over the target's (a broker
    variant's: its rate over what it is measured against)."""
    name = entry["name"]
    room = entry["room"]
    if "connected" in room:
        return (f"{name:<14} {room['connected']} clients connected: broker CPU "
                f"{room['cpu_percent']:.1f}% of a core, peak {room['peak_mb']:.0f} MB")  # fmt: skip
    lines = []
    for kind in NAMES:
        f = entry.get(kind)
        if f is None:
            continue
        if kind == "room":
            ratio = ""
        elif kind in entry["variants"]:
            ratio = _fmt(entry["variants"][kind], ".2f") + "x"
        else:
            ratio = _fmt(entry["ratios"].get(kind), ".2f") + "x"
        text = (
            f"{name if kind == 'room' else '':<14} {NAMES[kind]:<10} {_fmt(f['rate']):>10}"
            f" {ratio:>7} {f['lost']:>6} {f['duplicates']:>5} {f['repaired']:>6}"
            f" {f['cpu_us_per_msg']:>7.1f} {f['peak_mb']:>5.0f}"
            f"  {f['load_us']['sender']:>4.1f}/{f['load_us']['subscribers']:.1f}"
        )
        if "latency_ms" in f:
            text += "  " + "/".join(f"{v:.2f}" for v in f["latency_ms"].values())
        if kind in SEALED:
            text += f"  keys {f['keys']['share']:.1%} of CPU"
        lines.append(text)
    return "\n".join(lines)


HEADER = (
    f"{'scenario':<14} {'target':<10} {'deliv/s':>10} {'ratio':>7} {'lost':>6} {'dup':>5}"
    f" {'repair':>6} {'cpu us':>7} {'MB':>5}  load us  latency ms\n"
    "(broker: without room keys; again: the same broker again, over the first (what this"
    " machine resolves). ratio: the broker's delivered/s over this target's; keys: the broker"
    " with room keys, its delivered/s over the broker's, and the share of the run's CPU time"
    " spent sealing and opening; key churn: with a member leaving and coming back each second,"
    " over keys; each ratio the median of the rounds' pairs."
    " cpu us: the target's CPU per message sent; load us: the load generator's, sender per"
    " message sent / subscribers per message delivered; latency p50/p99/p99.9)"
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@options.option("--quick", is_flag=True, help="A small run that takes seconds (CI's smoke test).")
@options.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write every figure.")
@options.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    help="Draw throughput and latency to a PNG (needs the 'plot' extra).",
)
@options.option("--only", multiple=True, help="Run only this scenario (repeatable).")
@options.option(
    "--rounds",
    default=1,
    type=click.IntRange(min=1),
    help="Run every scenario this many times, targets interleaved; medians are shown.",
)
@options.option(
    "--cluster",
    is_flag=True,
    help="Run the three-broker family instead: brokers a, b, c on a private nats-server "
    "(needs nats-server), beside one broker and the relay.",
)
@options.option(
    "--keys",
    is_flag=True,
    help="Run the room-key family instead: how long a key change takes to reach every member "
    "of a room of 1,000.",
)
@options.option(
    "--web",
    is_flag=True,
    help="Measure room-web instead: WebSocket clients in one room, fed by a terminal-protocol "
    "sender through the gateway (docs/performance.md#room-web).",
)
@options.option(
    "--chat-day",
    is_flag=True,
    help="Run a chat day instead: N users in long-tailed rooms, a line each every 30 s, some "
    "leaving and coming back, on the broker and on Redis (docs/performance.md#a-chat-day).",
)
@options.option(
    "--users",
    default="1000,2000",
    show_default=True,
    help="With --chat-day: the numbers of users, one step each, comma-separated.",
)
@options.option(
    "--seconds",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="With --chat-day: seconds of the steady phase of each step.",
)
@options.option(
    "--churn",
    default=0.01,
    show_default=True,
    type=click.FloatRange(min=0, max=1),
    help="With --chat-day: the share of the users that leave and come back each minute.",
)
def main(
    quick: bool,
    json_path: str | None,
    plot_path: str | None,
    only: tuple[str, ...],
    rounds: int,
    cluster: bool,
    keys: bool,
    web: bool,
    chat_day: bool,
    users: str,
    seconds: float,
    churn: float,
) -> None:
    """Measure the broker against a bare relay, a batching relay and Redis pub/sub (when
    redis-server is installed) on this machine, in one run."""
    if chat_day:
        run_chat_day(quick, json_path, users, seconds, churn)
        return
    given = click.get_current_context().get_parameter_source
    typed = click.core.ParameterSource.COMMANDLINE
    day_only = [f"--{name}" for name in ("users", "seconds", "churn") if given(name) is typed]
    if day_only:
        verb = "goes" if len(day_only) == 1 else "go"
        click.echo(f"room-bench: {', '.join(day_only)} {verb} with --chat-day", err=True)
        sys.exit(2)
    if web:
        run_web(quick, json_path)
        return
    if cluster:
        run_cluster(quick, json_path, plot_path, list(only) or None)
        return
    if keys:
        run_keys(quick, json_path)
        return
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            click.echo("room-bench: --plot needs matplotlib: pip install 'room[plot]'", err=True)
            sys.exit(1)
    # SIGTERM unwinds like Ctrl-C: every target and load process started is stopped on the way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    click.echo(HEADER)
    report = bench.run(quick, list(only) or None, echo=lambda e: click.echo(row(e)), rounds=rounds)
    for note in report.get("notes", ()):
        click.echo(f"note: {note}")
    _close(report, json_path)
    if plot_path:
        from bench.plot import draw

        draw(report, Path(plot_path))


def run_cluster(
    quick: bool, json_path: str | None, plot_path: str | None, only: list[str] | None
) -> None:
    """``--cluster``: imported only here, so the single-broker run starts nothing more."""
    from bench import cluster

    if plot_path:
        click.echo("room-bench: --plot draws the single-broker family; drop it with --cluster",
                   err=True)  # fmt: skip
        sys.exit(1)
    nats = cluster.find_nats()
    if nats is None:
        click.echo("room-bench: --cluster needs nats-server, found neither beside Python nor in "
                   f"PATH nor in /usr/sbin: {cluster.INSTALL}", err=True)  # fmt: skip
        sys.exit(1)
    click.echo(cluster.HEADER)
    report = cluster.run(quick, only, echo=lambda e: click.echo(cluster.rows(e)), nats=nats)
    _close(report, json_path)


def run_keys(quick: bool, json_path: str | None) -> None:
    """``--keys``: key changes in a big room, each round a member leaving and coming back."""
    from bench import keys

    report = {"keys": keys.main(quick), "machine": bench.machine()}
    k = report["keys"]
    for what in ("leave", "join"):
        ms = sorted(k[f"{what}_ms"])
        click.echo(f"key change at {what} to {k['members']} members, ms over {k['rounds']} rounds: "
                   f"median {ms[len(ms) // 2]:.1f}, worst {ms[-1]:.1f}")  # fmt: skip
    _close(report, json_path)


def run_web(quick: bool, json_path: str | None) -> None:
    """``--web``: imported only here, so the other runs start nothing more."""
    from bench import web

    click.echo(web.HEADER)
    report = web.run(quick, echo=lambda e: click.echo(web.row(e)))
    _close(report, json_path)


def run_chat_day(
    quick: bool, json_path: str | None, users: str, seconds: float, churn: float
) -> None:
    """``--chat-day``: imported only here, so the other runs start nothing more."""
    from bench import chatday

    try:
        sizes = sorted({int(n) for n in users.split(",") if n.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < chatday.MIN_USERS:
        click.echo(f"room-bench: --users wants numbers of at least {chatday.MIN_USERS}, "
                   f"comma-separated, not {users!r}", err=True)  # fmt: skip
        sys.exit(2)
    # SIGTERM unwinds like Ctrl-C: the broker, redis-server and the generators are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    click.echo(chatday.HEADER)
    report = chatday.run(sizes, seconds, quick, churn, echo=lambda s: click.echo(chatday.row(s)))
    for step in report["steps"]:
        for line in chatday.notes(step):
            click.echo(line)
    capacity = report["capacity"]
    click.echo(f"capacity: {capacity:,} users" if capacity else "capacity: no step fits", nl=False)
    click.echo(f" (everyone in, none dropped, p99 under {chatday.CAPACITY_P99_MS:.0f} ms)")
    _close(report, json_path)


def _close(report: dict[str, Any], json_path: str | None) -> None:
    """The machine's line, and the whole report as JSON if asked."""
    m = report["machine"]
    click.echo(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}")
    if json_path:
        Path(json_path).write_bytes(msgspec.json.encode(report))
