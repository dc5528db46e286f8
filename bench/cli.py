"""``room-bench``: the broker against a bare pyzmq relay in one run: a table, JSON, a plot."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from broker import options

from . import run as bench


def _fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def row(entry: dict[str, Any]) -> str:
    """One scenario: each broker figure beside the relay's."""
    room, relay, name = entry["room"], entry["relay"], entry["name"]
    if "connected" in room:
        return (f"{name:<14} {room['connected']} clients connected: broker CPU "
                f"{room['cpu_percent']:.1f}% of a core, peak {room['peak_mb']:.0f} MB "
                "(the relay has no clients to hold)")  # fmt: skip
    ratio = _fmt(entry["ratio"], ".2f")
    text = (
        f"{name:<14} {_fmt(room['rate']):>9} {_fmt(relay['rate']):>9} {ratio:>6}x"
        f" {room['lost']:>6} {relay['lost']:>6} {room['repaired']:>7}"
        f" {room['cpu_us_per_msg']:>7.1f} {relay['cpu_us_per_msg']:>7.1f}"
        f" {room['peak_mb']:>6.0f} {relay['peak_mb']:>6.0f}"
    )
    if "latency_ms" in room:
        a, b = room["latency_ms"], relay.get("latency_ms", {})
        text += "  latency ms p50/p99/p99.9: broker " + "/".join(f"{v:.2f}" for v in a.values())
        text += "  relay " + "/".join(f"{v:.2f}" for v in b.values())
    return text


HEADER = (
    f"{'scenario':<14} {'broker/s':>9} {'relay/s':>9} {'ratio':>7} {'lost':>6} {'lost':>6}"
    f" {'repair':>7} {'cpu us':>7} {'cpu us':>7} {'MB':>6} {'MB':>6}\n"
    f"{'':<14} {'':>9} {'':>9} {'':>7} {'broker':>6} {'relay':>6}"
    f" {'broker':>7} {'broker':>7} {'relay':>7} {'broker':>6} {'relay':>6}"
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
def main(
    quick: bool,
    json_path: str | None,
    plot_path: str | None,
    only: tuple[str, ...],
    cluster: bool,
    keys: bool,
    web: bool,
) -> None:
    """Measure the broker against a bare pyzmq ROUTER->PUB relay on this machine, in one run."""
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
    click.echo(HEADER)
    report = bench.run(quick, list(only) or None, echo=lambda e: click.echo(row(e)))
    _close(report, json_path)
    if plot_path:
        from .plot import draw

        draw(report, Path(plot_path))


def run_cluster(
    quick: bool, json_path: str | None, plot_path: str | None, only: list[str] | None
) -> None:
    """``--cluster``: imported only here, so the single-broker run starts nothing more."""
    from . import cluster

    if plot_path:
        click.echo("room-bench: --plot draws the single-broker family; drop it with --cluster",
                   err=True)  # fmt: skip
        sys.exit(1)
    nats = cluster.find_nats()
    if nats is None:
        click.echo("room-bench: --cluster needs nats-server, found neither in PATH nor in "
                   "/usr/sbin: apt install nats-server", err=True)  # fmt: skip
        sys.exit(1)
    click.echo(cluster.HEADER)
    report = cluster.run(quick, only, echo=lambda e: click.echo(cluster.rows(e)), nats=nats)
    _close(report, json_path)


def run_keys(quick: bool, json_path: str | None) -> None:
    """``--keys``: key changes in a big room, each round a member leaving and coming back."""
    from . import keys

    report = {"keys": keys.main(quick), "machine": bench.machine()}
    k = report["keys"]
    for what in ("leave", "join"):
        ms = sorted(k[f"{what}_ms"])
        click.echo(f"key change at {what} to {k['members']} members, ms over {k['rounds']} rounds: "
                   f"median {ms[len(ms) // 2]:.1f}, worst {ms[-1]:.1f}")  # fmt: skip
    _close(report, json_path)


def run_web(quick: bool, json_path: str | None) -> None:
    """``--web``: imported only here, so the other runs start nothing more."""
    from . import web

    click.echo(web.HEADER)
    report = web.run(quick, echo=lambda e: click.echo(web.row(e)))
    _close(report, json_path)


def _close(report: dict[str, Any], json_path: str | None) -> None:
    """The machine's line, and the whole report as JSON if asked."""
    m = report["machine"]
    click.echo(f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}")
    if json_path:
        Path(json_path).write_bytes(msgspec.json.encode(report))
