"""Command-line options of room-broker, room-client, room-ctl and room-bench, made one way.

Every option reads ``ROOM_<NAME>`` from the environment, after its flag (``--max-rooms`` reads
``ROOM_MAX_ROOMS``, ``room-client join --room`` reads ``ROOM_ROOM``), and ``--help`` shows it:
operators script these names, so they follow the flag and nothing else. A flag given on the
command line wins over its variable. Every option of the four commands is made here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

import click

from broker.config import ENV_PREFIX


def envvar(flag: str) -> str:
    """The variable an option reads: ``--max-rooms`` -> ``ROOM_MAX_ROOMS``; an on/off pair
    ``--room-keys/--no-room-keys`` reads ``ROOM_ROOM_KEYS`` (true or false)."""
    if not flag.startswith("--"):
        raise ValueError(f"an option's first name is its long flag, not {flag!r}")
    on = flag.split("/", 1)[0]
    return f"{ENV_PREFIX}_{on.removeprefix('--').replace('-', '_').upper()}"


_HOST_PORT: Final = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


def host_port(example: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback that makes ``HOST:PORT`` (``[::1]:PORT`` for IPv6; no host: every IPv4
    address) a (host, port) pair, and leaves an option not given None."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        m = _HOST_PORT.match(value)
        if m is None or int(m["port"]) > 65535:
            raise click.BadParameter(f"{value!r} is not HOST:PORT (such as {example})")
        return m["v6"] or m["host"] or "0.0.0.0", int(m["port"])

    return parse


def option(flag: str, *decls: str, **kwargs: Any) -> Callable[[Any], Any]:
    """``click.option`` with its environment variable, shown in --help. ``decls``: more names,
    such as the parameter's (``option("--json", "as_json", ...)``)."""
    return click.option(flag, *decls, envvar=envvar(flag), show_envvar=True, **kwargs)


def make(flag: str, *decls: str, **kwargs: Any) -> click.Option:
    """The same option as an object, for a command built at run time (room-ctl's verbs)."""
    return click.Option([flag, *decls], envvar=envvar(flag), show_envvar=True, **kwargs)


data_dir = option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where state lives: keys, database [default: the user data dir].",
)

ACCOUNT_POLICIES: Final = ("optional", "required")
REGISTRATION_POLICIES: Final = ("open", "invite", "closed")

accounts = option(
    "--accounts",
    type=click.Choice(ACCOUNT_POLICIES),
    default=ACCOUNT_POLICIES[0],
    help="optional: a free name needs no account, a registered one its password; required: "
    "only registered names may chat.",
)
registration = option(
    "--registration",
    type=click.Choice(REGISTRATION_POLICIES),
    default=REGISTRATION_POLICIES[0],
    help="Who may register a name: anyone, whoever has an invite code (room-ctl invite), "
    "or nobody (room-ctl register).",
)
