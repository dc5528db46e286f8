"""One environment variable per option, one way: every option of room-broker, room-client, room-ctl,
room-web and room-bench reads ``ROOM_<OPTION>`` (``broker.options``) and --help shows it. The five
commands through click's CliRunner, with the library calls they make replaced: no socket is
opened."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import click
import pytest
from click.testing import CliRunner

import bench.cli
import broker.cli
import client.cli
import client.ctl
import client.web.cli
from broker import options
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p
from client import app

PROGRAMS: dict[str, click.Command] = {
    "room-broker": broker.cli.main,
    "room-client": client.cli.main,
    "room-ctl": client.ctl.main,
    "room-bench": bench.cli.main,
    "room-web": client.web.cli.main,
}

PENDING: set[tuple[str, str]] = set()
"""Options of broker/cli.py still made with ``click.option``: that file was outside the change
that moved every other option to ``options.option``. Empty this set once they are moved."""


def _commands(name: str, command: click.Command) -> Iterator[tuple[str, click.Command]]:
    """The command and, for a group, every subcommand under it, each with its full name."""
    yield name, command
    if isinstance(command, click.Group):
        for sub_name, sub in command.commands.items():
            yield from _commands(f"{name} {sub_name}", sub)


def _options() -> Iterator[tuple[str, click.Option]]:
    """Every option of every command but --help (click's own, on every command)."""
    for program, main in PROGRAMS.items():
        for name, command in _commands(program, main):
            help_option = command.get_help_option(click.Context(command, info_name=name))
            for param in command.params:
                if isinstance(param, click.Option) and param is not help_option:
                    yield name, param


def _long_flag(option: click.Option) -> str:
    return max(option.opts, key=len)


def test_every_option_reads_room_and_its_name() -> None:
    found = list(_options())
    assert len(found) > 40, "the walk found the commands' options"
    assert {name for name, _ in found} >= {"room-broker start", "room-client join", "room-ctl"}
    wrong = set()
    for name, option in found:
        flag = _long_flag(option)
        expected = "ROOM_" + flag.removeprefix("--").replace("-", "_").upper()
        if option.envvar != expected or not option.show_envvar:
            wrong.add((name, flag))
        assert options.envvar(flag) == expected
    assert wrong == PENDING, f"not reading ROOM_<OPTION>: {sorted(wrong - PENDING)}; " + (
        f"now right, drop from PENDING: {sorted(PENDING - wrong)}"
    )


def test_help_shows_the_variable() -> None:
    done = CliRunner().invoke(client.cli.main, ["join", "--help"], terminal_width=200)
    assert done.exit_code == 0, done.output
    for var in ("ROOM_ROOM", "ROOM_NAME", "ROOM_SERVER", "ROOM_HISTORY", "ROOM_DATA_DIR"):
        assert f"env var: {var}" in done.output, var


# ---- the variables are read --------------------------------------------------------------------


@pytest.fixture
def joined(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What ``room-client join`` would chat with: ``app.run``'s arguments."""
    seen: dict[str, Any] = {}

    def run(**kwargs: Any) -> int:
        seen.update(kwargs)
        return 0

    monkeypatch.setattr(app, "run", run)
    monkeypatch.setattr(client.cli, "client_keys", lambda server_key, data_dir: None)
    return seen


def test_room_client_reads_its_variables(joined: dict[str, Any]) -> None:
    env = {
        "ROOM_NAME": "alice",
        "ROOM_ROOM": "games",
        "ROOM_HISTORY": "7",
        "ROOM_SERVER": "tcp://127.0.0.1:7001 tcp://127.0.0.1:7002,tcp://127.0.0.1:7003",
    }
    done = CliRunner().invoke(client.cli.main, ["join"], env=env)
    assert done.exit_code == 0, done.output
    assert (joined["name"], joined["room"], joined["history"]) == ("alice", "games", 7)
    assert joined["servers"] == tuple(f"tcp://127.0.0.1:{port}" for port in (7001, 7002, 7003))


def test_a_flag_wins_over_its_variable(joined: dict[str, Any]) -> None:
    env = {"ROOM_ROOM": "games"}
    done = CliRunner().invoke(client.cli.main, ["join", "--name", "bob", "--room", "x"], env=env)
    assert done.exit_code == 0, done.output
    assert joined["room"] == "x"


def test_a_variable_is_checked_like_its_flag(joined: dict[str, Any]) -> None:
    done = CliRunner().invoke(client.cli.main, ["join", "--name", "bob"], env={"ROOM_ROOM": "-x"})
    assert done.exit_code == 2
    assert "'-x' is not a valid name" in done.output
    assert joined == {}


def test_the_command_name_is_not_part_of_the_variable(joined: dict[str, Any]) -> None:
    """``ROOM_JOIN_ROOM`` (click's auto_envvar_prefix, before) is not read: one name per option."""
    env = {"ROOM_JOIN_ROOM": "games", "ROOM_ROOM": None}
    done = CliRunner().invoke(client.cli.main, ["join", "--name", "bob"], env=env)
    assert done.exit_code == 0, done.output
    assert joined["room"] == p.LOBBY


def test_room_ctl_reads_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str, list[str], float]] = []

    def request(endpoint: str, command: str, args: list[str], timeout: float, keys: Any):
        asked.append((endpoint, command, args, timeout))
        return cp.CtlReply(1, True, "0 audit entries, oldest first", "", cp.AuditLog([]))

    monkeypatch.setattr(client.ctl, "request", request)
    monkeypatch.setattr(client.ctl, "_keys", lambda opts: None)
    env = {
        "ROOM_CONTROL": "tcp://127.0.0.1:7009",
        "ROOM_TIMEOUT": "2.5",
        "ROOM_LIMIT": "3",
        "ROOM_JSON": "1",
    }
    done = CliRunner().invoke(client.ctl.main, ["audit"], env=env)
    assert done.exit_code == 0, done.output
    assert asked == [("tcp://127.0.0.1:7009", "audit", ["3"], 2.5)]
    assert json.loads(done.stdout) == {
        "ok": True,
        "message": "0 audit entries, oldest first",
        "code": "",
        "data": {"audit": []},
    }


def test_room_bench_reads_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[bool, list[str] | None]] = []

    def run(quick: bool, only: list[str] | None, echo: Any, **_: Any) -> dict[str, Any]:
        ran.append((quick, only))
        return {"machine": {"cpu": "cpu", "cores": 1, "python": "3"}}

    monkeypatch.setattr(bench.cli.bench, "run", run)
    env = {"ROOM_QUICK": "1", "ROOM_ONLY": "fanout direct"}
    done = CliRunner().invoke(bench.cli.main, [], env=env)
    assert done.exit_code == 0, done.output
    assert ran == [(True, ["fanout", "direct"])]


def test_room_broker_reads_its_variables() -> None:
    done = CliRunner().invoke(broker.cli.main, ["start"], env={"ROOM_MAX_ROOMS": "0"})
    assert done.exit_code == 2
    assert "--max-rooms" in done.output and "0 is not in the range x>=1" in done.output


def test_room_web_reads_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[tuple[str, int, Any, Any]] = []

    def serve(host: str, port: int, upstream: Any, settings: Any) -> int:
        served.append((host, port, upstream, settings))
        return 0

    monkeypatch.setattr(client.web.cli, "serve", serve)
    env = {
        "ROOM_LISTEN": "0.0.0.0:9000",
        "ROOM_SERVER": "tcp://a:1,tcp://b:2",
        "ROOM_ALLOW_ORIGIN": "https://chat.example.org",
        "ROOM_DATA_DIR": "/nonexistent-room-dir",
    }
    done = CliRunner().invoke(client.web.cli.main, [], env=env)
    assert done.exit_code == 0, done.output
    [(host, port, upstream, settings)] = served
    assert (host, port, tuple(upstream.servers)) == ("0.0.0.0", 9000, ("tcp://a:1", "tcp://b:2"))
    assert settings.allow_origins == {"https://chat.example.org"}
    upstream.ctx.term()
    bad = CliRunner().invoke(client.web.cli.main, [], env={"ROOM_LISTEN": "nowhere"})
    assert bad.exit_code == 2 and "is not HOST:PORT" in bad.output
