"""``room-ctl``: admin commands for a running broker.

Its verbs come from the broker's table of verbs (``broker.admin.verbs``), which is pure data:
room-ctl loads the protocol and what it needs to talk to the broker and show its replies, never
the chat core that runs the verbs.
"""

from __future__ import annotations

import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec

from broker import config, options
from broker.admin.verbs import VERBS, Verb
from broker.config import Exit
from broker.security import keys as keyfiles
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p
from broker.wire.scram import verifier, verifier_text
from client.control import CurveKeys, Refused, Unreachable, request
from client.roster import user_status

_JSON_HELP = "Print the reply as one JSON document."
PASSWORD_ENV = "ROOM_PASSWORD"
"""Where room-ctl register and passwd, and room-client away from a terminal, read a password."""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@options.option(
    "--control",
    default=config.CONTROL,
    help="The broker's control endpoint.",
)
@options.data_dir
@options.option(
    "--timeout",
    default=config.CTL_TIMEOUT,
    type=click.FloatRange(min=0.1),
    help="Seconds to wait for the broker.",
)
@options.option(
    "--key",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The admin's secret key file [default: keys/admin.key_secret in the data dir].",
)
@options.option(
    "--server-key",
    default=None,
    help="The broker's public key, or its file [default: keys/broker.key in the data dir].",
)
@options.option("--json", "as_json", is_flag=True, help=_JSON_HELP)
@click.pass_context
def main(
    ctx: click.Context,
    control: str,
    data_dir: str | None,
    timeout: float,
    key: Path | None,
    server_key: str | None,
    as_json: bool,
) -> None:
    """Moderate a running room broker. The admin key is found in the broker's data dir, so the
    broker's user on its host needs no option."""
    ctx.obj = {
        "control": control,
        "timeout": timeout,
        "json": as_json,
        "data_dir": data_dir,
        "key": key,
        "server_key": server_key,
    }


def _keys(opts: dict[str, Any]) -> CurveKeys:
    """The admin's key pair and the broker's public key, from the options or the data dir."""
    kd = keyfiles.KeyDir.of(config.data_dir(opts["data_dir"]))
    key_file: Path = opts["key"] or kd.admin_secret
    try:
        public, secret = keyfiles.load_secret(key_file)
    except keyfiles.KeyFileError as exc:
        hint = "pass --key FILE" if opts["key"] else "run room-ctl as the broker's user, or --key"
        _fail(f"no usable admin key: {exc}: {hint}")
    try:
        if opts["server_key"]:
            server, server_source = keyfiles.key_or_file(opts["server_key"]), "--server-key"
        else:
            server, server_source = keyfiles.load_public(kd.broker_public), str(kd.broker_public)
    except keyfiles.KeyFileError as exc:
        _fail(f"no broker public key: {exc}: pass --server-key or --data-dir")
    hint = "use the key from the broker's data dir or --key"
    return CurveKeys(public, secret, server, f"the admin key {key_file}", server_source, hint)


def _run(ctx: click.Context, command: str, args: list[str], after: tuple[str, ...] = ()) -> None:
    """Send one request and show its reply; ``after``: lines shown after a success."""
    opts = ctx.find_root().obj
    keys = _keys(opts)
    try:
        reply = request(opts["control"], command, args, opts["timeout"], keys)
    except Unreachable as exc:
        _fail(f"{exc}: is room-broker running? check --control", Exit.UNREACHABLE)
    except Refused as exc:
        _fail(str(exc), Exit.REFUSED)
    except p.ProtocolError as exc:
        _fail(f"the broker at {opts['control']} sent a reply this room-ctl cannot read: {exc}")
    failed = Exit.REFUSED if reply.code == p.Code.REFUSED else Exit.ERROR
    if opts["json"]:
        document = {
            "ok": reply.ok,
            "message": reply.message,
            "code": reply.code,
            "data": cp.plain(reply.data),
        }
        click.echo(msgspec.json.encode(document).decode())
        sys.exit(Exit.OK if reply.ok else failed)
    if not reply.ok:
        _fail(reply.message, failed)
    click.echo(reply.message)
    for line in (*render(reply.data), *after):
        click.echo(line)
    sys.exit(Exit.OK)


def render(data: cp.CtlData | None) -> list[str]:
    """Aligned tables for listings (`who`, `rooms`, `requests`, `stats`, `audit`), without a
    header when a listing is empty; nothing for other replies."""
    match data:
        case cp.UserList(users=users, blocked=blocked):
            rows = [(u.name, u.room, _status(u)) for u in users]
            lines = _table(("USER", "ROOM", "STATUS"), rows)
            connected = {u.name for u in users}
            if offline := [name for name in blocked if name not in connected]:
                lines.append("blocked, not connected: " + ", ".join(offline))
            return lines
        case cp.RoomList(rooms=rooms):
            rows = [(r.name, str(r.members), str(r.seq)) for r in rooms]
            if not any(r.private for r in rooms):
                return _table(("ROOM", "MEMBERS", "MESSAGES"), rows)
            access = [
                f"private: {', '.join(r.allowed) or 'nobody allowed'}" if r.private else "open"
                for r in rooms
            ]
            rows = [(*row, shown) for row, shown in zip(rows, access, strict=True)]
            return _table(("ROOM", "MEMBERS", "MESSAGES", "ACCESS"), rows)
        case cp.RequestList(requests=waiting):
            rows = [(stamp(r.ts), r.room, r.user) for r in waiting]
            return _table(("ASKED", "ROOM", "USER"), rows)
        case cp.Stats(stats=counters):
            rows = [
                (_STAT_NAMES.get(k, k.replace("_", " ")), _stat(k, getattr(counters, k)))
                for k in counters.__struct_fields__
            ]
            return _table(("COUNTER", "VALUE"), rows, right={1})
        case cp.AccountList(accounts=accounts):
            rows = [
                (a.name, stamp(a.created), stamp(a.last_login) if a.last_login else "never",
                 "banned" if a.banned else "")
                for a in accounts
            ]  # fmt: skip
            return _table(("ACCOUNT", "CREATED", "LAST LOGIN", "STATUS"), rows)
        case cp.Invite(code=code, expires=expires):
            return [f"valid until {stamp(expires)}; room-client register --invite {code}"]
        case cp.AuditLog(audit=entries):
            rows = [
                (
                    stamp(e.ts),
                    e.admin or "(refused)",
                    keyfiles.short(e.key),
                    " ".join((e.command, *e.args)) or "(unreadable request)",
                    ("ok: " if e.ok else "failed: ") + e.message,
                )
                for e in entries
            ]
            return _table(("TIME", "ADMIN", "KEY", "COMMAND", "RESULT"), rows)
    return []


def _status(user: p.UserInfo) -> str:
    """``blocked``, ``logged in`` (to an account), both, or nothing (``/who`` says the same)."""
    return user_status(user.blocked, user.account)


def stamp(ts: float) -> str:
    """UTC time with milliseconds, ISO 8601: the broker's log writes the same
    (``broker.logfmt.stamp``, not imported here: it belongs to the broker)."""
    whole = int(ts)
    second = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{second}.{int((ts - whole) * 1000):03d}Z"


_STAT_NAMES = {"uptime_seconds": "uptime", "database_bytes": "database size",
               "sealing_ms": "sealing ms"}  # fmt: skip


def _stat(key: str, value: Any) -> str:
    """A counter for people: sizes in KiB or MiB, the uptime in h/m/s, thousands grouped."""
    if not isinstance(value, int | float):
        return str(value)
    if key.endswith("_bytes"):
        for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
            if value >= size:
                return f"{value / size:,.1f} {unit}"
        return f"{value} B"
    if key.endswith("_seconds"):
        whole = int(value)
        hours, rest = divmod(whole, 3600)
        return (
            f"{hours}h {rest // 60:02d}m {rest % 60:02d}s"
            if hours
            else f"{rest // 60}m {rest % 60:02d}s"
        )
    return f"{value:,}"


def _table(
    header: tuple[str, ...],
    rows: list[tuple[str, ...]],
    right: frozenset[int] | set[int] = frozenset(),
) -> list[str]:
    """Aligned columns; the columns in ``right`` (numbers) aligned to the right. No rows, no
    lines: the reply's message has said there are none."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in [header, *rows]
    ]


def _fail(message: str, code: Exit = Exit.ERROR) -> NoReturn:
    click.echo(f"room-ctl: {message}", err=True)
    sys.exit(code)


def _verb(name: str, verb: Verb) -> click.Command:
    """The click command of one verb: its args as arguments, its options as ``--option``."""

    def callback(as_json: bool, **kwargs: str | None) -> None:
        ctx = click.get_current_context()
        if as_json:  # `room-ctl who --json` as well as `room-ctl --json who`
            ctx.find_root().obj["json"] = True
        args = [kwargs[a.lower()] for a in verb.args]
        after: tuple[str, ...] = ()
        if verb.verifier:  # the password stays here: the broker gets its SCRAM verifier
            password = os.environ.get(PASSWORD_ENV, "")
            if not password:
                password = secrets.token_urlsafe(12)
                after = (f"password of {args[0]}: {password} (shown once: pass it on)",)
            args.append(verifier_text(verifier(password)))
        for o in verb.options:  # a value (LIMIT) passes its value; a flag (all) passes its name
            value = kwargs[o.lower()]
            if value:
                args.append(o if o.islower() else value)
        _run(ctx, name, [str(a) for a in args], after)

    params: list[click.Parameter] = [click.Argument([a.lower()]) for a in verb.args]
    params += [
        options.make(f"--{o}", is_flag=True, help=f"{o} (see the command's help)")
        if o.islower()
        else options.make(f"--{o.lower()}", metavar=o, default=None, help=f"{o} (optional)")
        for o in verb.options
    ]
    params.append(options.make("--json", "as_json", is_flag=True, help=_JSON_HELP))
    return click.Command(name, callback=callback, params=params, help=verb.help)


for _name, _described in VERBS.items():
    main.add_command(_verb(_name, _described))
