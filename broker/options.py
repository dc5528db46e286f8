"""Command-line options shared by room-broker, room-client and room-ctl, defined once.

Every option made here reads ``ROOM_<NAME>`` from the environment (``--max-rooms`` reads
``ROOM_MAX_ROOMS``): operators script these names, so they follow the flag and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .config import ENV_PREFIX


def option(flag: str, **kwargs: Any) -> Callable[[Any], Any]:
    """``click.option`` with the environment variable named after the flag, shown in --help."""
    env = f"{ENV_PREFIX}_{flag.lstrip('-').replace('-', '_').upper()}"
    return click.option(flag, envvar=env, show_envvar=True, **kwargs)


data_dir = option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where state lives: keys, database [default: the user data dir].",
)
