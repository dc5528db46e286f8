"""What people and scripts read: direct messages in piped mode, room-ctl's tables and JSON, and the
broker's log in JSON and quiet modes. Real processes over loopback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import WAIT, BrokerProc, ClientFactory, ctl

from broker.admin.verbs import VERBS
from broker.config import Exit


def test_a_direct_message_reaches_only_its_target(broker: BrokerProc, clients: ClientFactory):
    alice = clients.join("alice")
    bob = clients.join("bob")
    carol = clients.join("carol")
    alice.send("/msg bob meet me at  noon")
    bob.expect(r"^\[@bob\] alice: meet me at  noon$")
    alice.expect(r"^\[@bob\] alice: meet me at  noon$")
    broker.expect(r"\[@bob\] alice: meet me at  noon$")
    alice.send("/msg nobody hello?")
    alice.expect(r"^\* not delivered: nobody is not connected")
    alice.send("room marker")
    carol.expect(r"^\[public\] alice: room marker$")
    bob.expect(r"^\[public\] alice: room marker$")
    assert not any("noon" in line or "hello?" in line for line in carol.seen + carol.drain())
    assert not any("hello?" in line for line in bob.seen)

    assert ctl(broker, "block", "alice").returncode == 0  # the block rules apply too
    alice.expect(r"^\* you were blocked by the admin$")
    alice.send("/msg bob still there?")
    alice.expect(r"^\* you are blocked")
    alice.send("/msg carol anyone?")
    bob.send("room marker 2")
    carol.expect(r"^\[public\] bob: room marker 2$")
    assert not any("still there" in line for line in bob.seen + bob.drain())
    assert not any("anyone" in line for line in carol.seen + carol.drain())


def _document(done) -> dict:
    """The one JSON document room-ctl printed: all of stdout parses, as one value."""
    assert done.stdout.count("\n") == 1, done.stdout
    doc = json.loads(done.stdout)
    assert set(doc) == {"ok", "message", "code", "data"}
    return doc


def test_every_room_ctl_command_prints_one_json_document(
    broker: BrokerProc, clients: ClientFactory
):
    clients.join("alice", "games")
    clients.join("bob")
    clients.join("carol", "games")
    runs = {
        "block": ["block", "bob"],
        "unblock": ["unblock", "bob"],
        "out": ["out", "alice"],
        "fire": ["fire", "bob"],
        "who": ["who"],
        "rooms": ["rooms"],
        "private": ["private", "vip"],
        "requests": ["requests"],
        "allow": ["allow", "carol", "vip"],
        "deny": ["deny", "carol", "vip"],
        "open": ["open", "vip"],
        "remove": ["remove", "games"],
        "register": ["register", "dave"],
        "passwd": ["passwd", "dave"],
        "ban": ["ban", "dave"],
        "unban": ["unban", "dave"],
        "invite": ["invite", "--hours", "1"],
        "accounts": ["accounts"],
        "stats": ["stats"],
        "audit": ["audit", "--limit", "3"],
        "reset": ["reset"],
        "close": ["close"],
    }
    assert set(runs) == set(VERBS), "a new verb needs a --json check here"
    docs = {}
    for verb, argv in runs.items():
        if verb in ("who", "rooms", "stats"):  # the group option works as well
            docs["--json " + verb] = _document(ctl(broker, "--json", *argv))
        if verb == "close":
            docs["fire ghost"] = _document(ctl(broker, "fire", "ghost", "--json"))
        docs[verb] = _document(ctl(broker, *argv, "--json"))
    assert all(d["ok"] for k, d in docs.items() if k != "fire ghost")
    assert docs["fire ghost"]["ok"] is False and docs["fire ghost"]["code"] == "no_such_user"
    users = {u["name"]: u["room"] for u in docs["who"]["data"]["users"]}
    assert users == {"alice": "public", "carol": "games"}
    assert docs["remove"]["message"] == "removed games and its history; moved to public: carol"
    assert docs["--json who"] == docs["who"]
    assert [a["name"] for a in docs["accounts"]["data"]["accounts"]] == ["dave"]
    assert {r["name"] for r in docs["rooms"]["data"]["rooms"]} >= {"public", "games"}
    stats = docs["stats"]["data"]["stats"]
    for key in ("clients", "rooms", "messages_in", "messages_out", "messages_per_second"):
        assert isinstance(stats[key], int | float), key
    for key in ("drops", "uptime_seconds", "database_bytes"):
        assert isinstance(stats[key], int | float), key
    assert stats["sealing_ms"] > 0  # the joins went out on the PUB sealed with room keys
    audit = [e["command"] for e in docs["audit"]["data"]["audit"]]
    assert audit == ["accounts", "stats", "stats"]  # the last three, oldest first
    assert broker.wait() == Exit.OK


def test_stats_prints_an_aligned_table(broker: BrokerProc, clients: ClientFactory):
    alice = clients.join("alice")
    alice.send("one")
    alice.expect(r"^\[public\] alice: one$")
    done = ctl(broker, "stats")
    assert done.returncode == 0, done.stderr
    head, *table = done.stdout.splitlines()
    assert head.startswith("up ")
    assert re.fullmatch(r"COUNTER +VALUE", table[0])
    rows = {re.split(r"  +", line)[0]: re.split(r"  +", line)[1] for line in table[1:]}
    for name in ("clients", "rooms", "messages in", "messages out", "messages per second"):
        assert name in rows, rows
    assert {"drops", "uptime", "database size"} <= set(rows)
    assert rows["clients"] == "1" and rows["messages in"] == "1"
    assert re.fullmatch(r"\d+m \d\ds", rows["uptime"])
    assert re.fullmatch(r"[\d,.]+ (B|KiB|MiB|GiB)", rows["database size"])
    assert len({len(line) for line in table}) == 1, "values are right-aligned"


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[list[BrokerProc]]:
    """Brokers a test starts with its own options; every one is stopped."""
    started: list[BrokerProc] = []
    try:
        yield started
    finally:
        for proc in started:
            try:
                proc.stop()
            finally:
                proc.kill()


def _chat_then_stop(proc: BrokerProc) -> list[str]:
    """Some chat and an admin action on ``proc``; then every line it logged."""
    clients = ClientFactory(proc)
    try:
        alice = clients.join("alice")
        alice.send("secret words")
        alice.expect(r"^\[public\] alice: secret words$")
        alice.send("/msg alice note to self")
        alice.expect(r"^\[@alice\] alice: note to self$")
        assert ctl(proc, "block", "mallory").returncode == 0
        alice.close_input()
        assert alice.wait() == Exit.OK
    finally:
        clients.kill_all()
    assert proc.stop() == Exit.OK
    return proc.seen + proc.drain()


def test_json_log_lines_all_parse(own_broker: list[BrokerProc], tmp_path: Path):
    own_broker.append(BrokerProc(tmp_path / "data", "--log-format", "json"))
    lines = _chat_then_stop(own_broker[0])
    records = [json.loads(line) for line in lines]  # every line, status lines included
    assert all(set(r) == {"ts", "kind", "room", "user", "text"} for r in records)
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "status" and "listening" in records[0]["text"]
    assert {"status", "connect", "msg", "direct", "admin", "disconnect"} <= set(kinds)
    said = next(r for r in records if r["kind"] == "msg")
    assert (said["room"], said["user"], said["text"]) == ("public", "alice", "secret words")
    assert records[-1] == {**records[-1], "kind": "status", "text": "room-broker stopped"}


def test_quiet_hides_chat_lines_but_keeps_admin_lines(own_broker: list[BrokerProc], tmp_path: Path):
    own_broker.append(BrokerProc(tmp_path / "data", "--quiet"))
    lines = _chat_then_stop(own_broker[0])
    text = "\n".join(lines)
    assert "secret words" not in text and "note to self" not in text
    assert re.search(r"! admin block mallory", text), text
    assert "alice connected in public" in text
    assert lines[-1] == "room-broker stopped"


def test_shell_completion_as_the_readme_says():
    """The README's completion lines: click completes each command's verbs and options."""
    cases = {
        "room-ctl": ("room-ctl st", "plain,stats"),
        "room-broker": ("room-broker start --log", "plain,--log-format"),
        "room-client": ("room-client join --hist", "plain,--history"),
    }
    modules = {"room-ctl": "client.ctl", "room-broker": "broker.cli", "room-client": "client.cli"}
    for prog, (words, expected) in cases.items():
        var = "_" + prog.upper().replace("-", "_") + "_COMPLETE"
        argv = [sys.executable, "-c", f"from {modules[prog]} import main; main(prog_name={prog!r})"]
        env = {**os.environ, var: "bash_complete", "COMP_WORDS": words, "COMP_CWORD": "2"}
        if words.count(" ") == 1:
            env["COMP_CWORD"] = "1"
        done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT, env=env)
        assert expected in done.stdout.splitlines(), (prog, done.stdout, done.stderr)
