"""``room-ctl``: admin commands for a running broker. Verbs come from the broker's own table."""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec

from broker import config
from broker.admin import COMMANDS
from broker.config import Exit
from broker.protocol import ProtocolError

from .control import Unreachable, request


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--control",
    default=config.CONTROL,
    envvar=f"{config.ENV_PREFIX}_CONTROL",
    show_envvar=True,
    help="The broker's control endpoint.",
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
    "--timeout",
    default=config.CTL_TIMEOUT,
    type=click.FloatRange(min=0.1),
    envvar=f"{config.ENV_PREFIX}_TIMEOUT",
    show_envvar=True,
    help="Seconds to wait for the broker.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reply as one JSON document.")
@click.pass_context
def main(
    ctx: click.Context, control: str, data_dir: str | None, timeout: float, as_json: bool
) -> None:
    """Moderate a running room broker."""
    ctx.obj = {"control": control, "timeout": timeout, "json": as_json}


def _run(ctx: click.Context, command: str, args: list[str]) -> None:
    opts = ctx.find_root().obj
    try:
        reply = request(opts["control"], command, args, opts["timeout"])
    except Unreachable as exc:
        _fail(f"{exc}: is room-broker running? check --control", Exit.UNREACHABLE)
    except ProtocolError as exc:
        _fail(f"the broker at {opts['control']} sent a reply this room-ctl cannot read: {exc}")
    if opts["json"]:
        document = {
            "ok": reply.ok,
            "message": reply.message,
            "code": reply.code,
            "data": reply.data,
        }
        click.echo(msgspec.json.encode(document).decode())
        sys.exit(Exit.OK if reply.ok else Exit.ERROR)
    if not reply.ok:
        _fail(reply.message)
    click.echo(reply.message)
    if isinstance(reply.data, dict):
        for line in render(reply.data):
            click.echo(line)
    sys.exit(Exit.OK)


def render(data: dict[str, Any]) -> list[str]:
    """Aligned tables for listings (`who`, `rooms`)."""
    lines: list[str] = []
    if "users" in data:
        rows = [(u["name"], u["room"], "blocked" if u["blocked"] else "") for u in data["users"]]
        lines += _table(("USER", "ROOM", "STATUS"), rows)
        offline = [
            n for n in data.get("blocked", []) if n not in {u["name"] for u in data["users"]}
        ]
        if offline:
            lines.append("blocked, not connected: " + ", ".join(offline))
    if "rooms" in data:
        rows = [(r["name"], str(r["members"]), str(r["seq"])) for r in data["rooms"]]
        lines += _table(("ROOM", "MEMBERS", "MESSAGES"), rows)
    return lines


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]


def _fail(message: str, code: Exit = Exit.ERROR) -> None:
    click.echo(f"room-ctl: {message}", err=True)
    sys.exit(code)


def _verb(name: str, argnames: tuple[str, ...], help_text: str) -> click.Command:
    def callback(**kwargs: str) -> None:
        _run(click.get_current_context(), name, [kwargs[a.lower()] for a in argnames])

    params: list[click.Parameter] = [click.Argument([a.lower()]) for a in argnames]
    return click.Command(name, callback=callback, params=params, help=help_text)


for _name, _command in COMMANDS.items():
    main.add_command(_verb(_name, _command.args, _command.help))
