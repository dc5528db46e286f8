"""Security end to end: the control socket takes only admin keys, key management, the audit log,
encrypted chat (--curve), and attempts to act as another user. Real processes and sockets."""

from __future__ import annotations

import contextlib
import json
import re
import stat
import subprocess
import time
from pathlib import Path

import msgspec
import pytest
import zmq
from procs import (
    WAIT,
    BrokerProc,
    ClientFactory,
    ClientProc,
    Replies,
    _cmd,
    ctl,
    socket,
    unconnected,
)
from zmq.utils.monitor import recv_monitor_message

from broker.config import Exit
from broker.security import keys
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def keys_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = _cmd("broker.cli", "keys", "--data-dir", str(data_dir), *args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)


def one_line(text: str) -> str:
    assert text.count("\n") == 1, text
    assert "Traceback" not in text
    return text


def recv(sock: zmq.Socket, timeout: float = WAIT) -> list[bytes]:
    assert sock.poll(timeout * 1000), "no reply from the broker"
    return sock.recv_multipart()


def send_now(sock: zmq.Socket, frames: list[bytes]) -> None:
    """Send without blocking: a socket whose handshake it found failing has no peer left to queue
    for, and a blocking send would wait for ever."""
    with contextlib.suppress(zmq.Again):
        sock.send_multipart(frames, zmq.NOBLOCK)


def monitored(
    ctx: zmq.Context, kind: int, endpoint: str, **curve: bytes
) -> tuple[zmq.Socket, zmq.Socket]:
    """A socket and a monitor of its failed handshakes, attached before it connects (the side
    that detects a failure does not retry, so its one event must not be missed)."""
    sock = unconnected(ctx, kind, **curve)
    monitor = sock.get_monitor_socket(FAILED)
    sock.connect(endpoint)
    return sock, monitor


def broker_key(broker: BrokerProc) -> bytes:
    return keys.load_public(keys.KeyDir.of(broker.data_dir).broker_public)


def admin_pair(broker: BrokerProc) -> tuple[bytes, bytes]:
    return keys.load_secret(keys.KeyDir.of(broker.data_dir).admin_secret)


def first_failure(monitor: zmq.Socket, timeout: float = WAIT) -> dict:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if monitor.poll(left * 1000):
            event = recv_monitor_message(monitor)
            if event["event"] & FAILED:
                return event
    raise AssertionError("no failed handshake seen")


# ---- keys on first start -----------------------------------------------------------------------


def test_first_start_creates_keys_readable_by_the_owner_only(broker: BrokerProc):
    kd = keys.KeyDir.of(broker.data_dir)
    for directory in (kd.root, kd.admins):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    files = [f for f in kd.root.rglob("*") if f.is_file()]
    assert sorted(str(f.relative_to(kd.root)) for f in files) == [
        "admin.key",
        "admin.key_secret",
        "admins/admin.key",
        "broker.key",
        "broker.key_secret",
    ]
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    admin_public, _ = admin_pair(broker)
    assert keys.read_allow_list(kd.admins) == ({admin_public: "admin"}, [])
    assert not kd.chat_public.exists()  # chat is not encrypted without --curve
    broker.expect(r"! security: admin keys allowed: admin \(from .*admins\)$")


def test_a_restart_keeps_the_keys(tmp_path: Path):
    first = BrokerProc(tmp_path / "data")
    kd = keys.KeyDir.of(first.data_dir)
    before = kd.broker_public.read_text(), kd.admin_secret.read_text()
    assert first.stop() == 0
    second = BrokerProc(tmp_path / "data")
    try:
        assert (kd.broker_public.read_text(), kd.admin_secret.read_text()) == before
        assert ctl(second, "who").returncode == 0
    finally:
        second.stop()
        second.kill()


# ---- the control socket ------------------------------------------------------------------------


def test_room_ctl_with_the_data_dir_key_blocks_bob_from_another_process(
    broker: BrokerProc, clients: ClientFactory
):
    bob = clients.join("bob")
    done = ctl(broker.control, "block", "bob", env={"ROOM_DATA_DIR": str(broker.data_dir)})
    assert done.returncode == Exit.OK, done.stderr
    assert done.stdout == "blocked bob\n"
    broker.expect(rf"^{STAMP} ! admin block bob: blocked bob \(by admin\)$")
    bob.send("can anyone hear me?")
    broker.expect(r"bob \(blocked, not published\): can anyone hear me\?$")


def test_room_ctl_without_a_key_says_so_in_one_line(broker: BrokerProc, tmp_path: Path):
    done = ctl(broker.control, "block", "bob", data_dir=tmp_path / "elsewhere")
    assert done.returncode == Exit.ERROR
    line = one_line(done.stderr)
    assert line.startswith("room-ctl: no usable admin key:") and "--key" in line
    missing = ctl(broker, "--key", str(tmp_path / "nothing.key_secret"), "who")
    assert missing.returncode == Exit.ERROR
    assert "does not exist" in one_line(missing.stderr)


def test_room_ctl_with_a_wrong_key_is_refused_at_once(broker: BrokerProc, tmp_path: Path):
    other = keys.ensure(tmp_path / "other")
    started = time.monotonic()
    done = ctl(broker, "--timeout", "5", "--key", str(other.admin_secret), "block", "bob")
    assert time.monotonic() - started < 3, "a refusal must not wait for the timeout"
    assert done.returncode == Exit.REFUSED
    line = one_line(done.stderr)
    assert "refused the admin key" in line and "--key" in line, line
    broker.expect(r"! security: refused a control connection: key .{8}\.\.\. is not on the admin")
    who = ctl(broker, "--json", "who")
    assert json.loads(who.stdout)["data"]["blocked"] == []


def test_room_ctl_with_the_wrong_broker_key_fails_clearly(broker: BrokerProc, tmp_path: Path):
    other = keys.ensure(tmp_path / "other")
    done = ctl(broker, "--server-key", str(other.broker_public), "who")
    assert done.returncode == Exit.REFUSED
    assert "is --server-key the public key of this broker" in one_line(done.stderr)
    broker.expect(r"refused a control connection: the CURVE handshake failed")


def test_a_key_given_by_a_secret_file_others_can_read_is_refused(
    broker: BrokerProc, tmp_path: Path
):
    loose = tmp_path / "loose.key_secret"
    loose.write_text(keys.KeyDir.of(broker.data_dir).admin_secret.read_text())
    loose.chmod(0o644)
    done = ctl(broker, "--key", str(loose), "who")
    assert done.returncode == Exit.ERROR
    assert "chmod 600" in one_line(done.stderr)


def test_a_plain_socket_gets_no_answer_and_is_logged(broker: BrokerProc, ctx: zmq.Context):
    req, monitor = monitored(ctx, zmq.REQ, broker.control)
    send_now(req, [p.encode(cp.CtlRequest(1, "close", []))])
    first_failure(monitor)
    assert not req.poll(500), "a plain control request was answered"
    # Which side notices first is a race: the broker sees the mismatch, or the peer hanging up.
    broker.expect(r"! security: refused a control connection: .*(does not use CURVE|plain socket)")
    req.disable_monitor()
    assert ctl(broker, "who").returncode == Exit.OK  # still serving, not closed


def test_a_curve_socket_with_an_unknown_key_is_refused(broker: BrokerProc, ctx: zmq.Context):
    public, secret = zmq.curve_keypair()
    req, monitor = monitored(
        ctx, zmq.REQ, broker.control, public=public, secret=secret, server=broker_key(broker)
    )
    send_now(req, [p.encode(cp.CtlRequest(1, "reset", []))])
    event = first_failure(monitor)
    assert event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH and event["value"] == 400
    assert not req.poll(300)
    prefix = re.escape(public.decode()[:8])
    broker.expect(rf"key {prefix}\.\.\. is not on the admin allow-list \(ZAP 400\)")
    req.disable_monitor()


def test_a_flood_of_bad_handshakes_is_logged_briefly_and_changes_nothing(
    broker: BrokerProc, clients: ClientFactory, ctx: zmq.Context
):
    alice = clients.join("alice")
    server = broker_key(broker)
    flood = []
    for _ in range(60):  # kept open until the broker has seen them all
        public, secret = zmq.curve_keypair()
        sock = socket(ctx, zmq.DEALER, broker.control, public=public, secret=secret, server=server)
        send_now(sock, [b"", p.encode(cp.CtlRequest(1, "close", []))])
        flood.append(sock)
    broker.expect(r"! security: refused \d+ more control connections$")
    for sock in flood:
        sock.close(linger=0)
    alice.send("still here")
    alice.expect(r"^\[public\] alice: still here$")
    assert ctl(broker, "who").returncode == Exit.OK


# ---- managing admin keys -----------------------------------------------------------------------


def test_keys_new_and_remove_take_effect_without_a_restart(broker: BrokerProc, tmp_path: Path):
    made = keys_cli(broker.data_dir, "new", "carol", "--out", str(tmp_path / "carol"))
    assert made.returncode == 0, made.stderr
    secret = tmp_path / "carol" / "carol.key_secret"
    assert f"room-ctl --key {secret}" in made.stdout
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    broker.expect(r"! security: admin keys allowed: admin, carol ")
    done = ctl(broker, "--key", str(secret), "block", "mallory")
    assert done.returncode == Exit.OK, done.stderr
    broker.expect(r"! admin block mallory: .* \(by carol\)$")
    listing = keys_cli(broker.data_dir, "list")
    assert listing.returncode == 0
    names = [line.split()[0] for line in listing.stdout.splitlines()[2:]]
    assert names == ["admin", "carol"]

    removed = keys_cli(broker.data_dir, "remove", "carol")
    assert removed.returncode == 0 and removed.stdout == "removed carol\n"
    broker.expect(r"! security: admin keys allowed: admin \(")
    refused = ctl(broker, "--key", str(secret), "unblock", "mallory")
    assert refused.returncode == Exit.REFUSED
    assert ctl(broker, "who").returncode == Exit.OK  # the first admin is untouched


def test_keys_add_copies_only_the_public_key(broker: BrokerProc, tmp_path: Path):
    elsewhere = keys.ensure(tmp_path / "dave-home")
    added = keys_cli(broker.data_dir, "add", "dave", str(elsewhere.admin_secret))
    assert added.returncode == 0, added.stderr
    copied = keys.KeyDir.of(broker.data_dir).allowed("dave").read_text()
    assert "secret" not in copied
    broker.expect(r"admin keys allowed: admin, dave ")
    assert ctl(broker, "--key", str(elsewhere.admin_secret), "who").returncode == Exit.OK


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "bad name", "x.key"), "invalid admin name"),
        (("add", "admin", "{admin_public}"), "exists"),
        (("add", "again", "{admin_public}"), "already allowed as admin"),
        (("add", "eve", "/nonexistent.key"), "does not exist"),
        (("remove", "nobody"), "no admin key named nobody"),
        (("new", "admin"), "exists"),
    ],
)
def test_keys_commands_refuse_clearly(tmp_path: Path, args: tuple[str, ...], message: str):
    home = tmp_path / "data"
    kd = keys.ensure(home)
    argv = [a.format(admin_public=kd.root / "admin.key") for a in args]
    done = keys_cli(home, *argv)
    assert done.returncode == Exit.ERROR
    assert message in one_line(done.stderr)


def test_a_removed_key_is_refused_even_on_an_open_connection(
    broker: BrokerProc, tmp_path: Path, ctx: zmq.Context
):
    assert keys_cli(broker.data_dir, "new", "erin", "--out", str(tmp_path)).returncode == 0
    broker.expect(r"admin keys allowed: admin, erin ")
    public, secret = keys.load_secret(tmp_path / "erin.key_secret")
    req = socket(
        ctx, zmq.REQ, broker.control, public=public, secret=secret, server=broker_key(broker)
    )
    req.send(p.encode(cp.CtlRequest(1, "who", [])))
    assert cp.decode_ctl_reply(recv(req)[0]).ok
    assert keys_cli(broker.data_dir, "remove", "erin").returncode == 0
    broker.expect(r"admin keys allowed: admin \(")
    req.send(p.encode(cp.CtlRequest(2, "close", [])))
    reply = cp.decode_ctl_reply(recv(req)[0])
    assert not reply.ok and reply.code == p.Code.REFUSED
    assert ctl(broker, "who").returncode == Exit.OK  # not closed


# ---- the audit log -----------------------------------------------------------------------------


def test_every_admin_request_is_audited_and_the_log_survives_a_restart(
    tmp_path: Path, ctx: zmq.Context
):
    first = BrokerProc(tmp_path / "data")
    try:
        assert ctl(first, "block", "bob").returncode == Exit.OK
        assert ctl(first, "fire", "nobody").returncode == Exit.ERROR
        public, _ = admin_pair(first)
        stranger = ctl(first, "--key", str(keys.ensure(tmp_path / "x").admin_secret), "reset")
        assert stranger.returncode == Exit.REFUSED  # refused at the handshake: not an action
        table = ctl(first, "audit")
        assert table.returncode == Exit.OK, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0] == "2 audit entries, oldest first"
        assert lines[1].split() == ["TIME", "ADMIN", "KEY", "COMMAND", "RESULT"]
        assert lines[2].split()[1:5] == ["admin", public.decode()[:8], "block", "bob"]
        assert lines[2].endswith(
            "ok: blocked bob (not connected: the block holds when they connect)"
        )
        assert "fire nobody  failed: nobody is not connected" in lines[3]
        # An aligned table: each row's key starts under the KEY header.
        assert {line.index(public.decode()[:8]) for line in lines[2:]} == {lines[1].index("KEY")}
        assert ctl(first, "close").returncode == Exit.OK
        first.wait()
    finally:
        first.kill()
    second = BrokerProc(tmp_path / "data")
    try:
        done = ctl(second, "--json", "audit", "--limit", "10")
        entries = json.loads(done.stdout)["data"]["audit"]
        assert [(e["command"], e["args"], e["ok"]) for e in entries] == [
            ("block", ["bob"], True),
            ("fire", ["nobody"], False),
            ("audit", [], True),
            ("close", [], True),
        ]
        assert {e["key"] for e in entries} == {public.decode()}
        assert {e["admin"] for e in entries} == {"admin"}
        bad = ctl(second, "audit", "--limit", "0")
        assert bad.returncode == Exit.ERROR and "LIMIT" in one_line(bad.stderr)
    finally:
        second.stop()
        second.kill()


# ---- encrypted chat (--curve) ------------------------------------------------------------------


def test_curve_chat_works_end_to_end(
    curve_broker: BrokerProc, curve_clients: ClientFactory, tmp_path: Path, ctx: zmq.Context
):
    kd = keys.KeyDir.of(curve_broker.data_dir)
    assert kd.chat_public.read_text().count(broker_key(curve_broker).decode()) == 1
    alice = curve_clients.join("alice")  # finds the key in the data dir, as on the broker's host
    bob = ClientProc(  # a client elsewhere: the key given, as a file
        curve_broker.router,
        "bob",
        "--server-key",
        str(kd.broker_public),
        env={"ROOM_DATA_DIR": str(tmp_path / "bob-home")},
    )
    carol = ClientProc(  # or as the key itself
        curve_broker.router,
        "carol",
        "--server-key",
        broker_key(curve_broker).decode(),
        env={"ROOM_DATA_DIR": str(tmp_path / "carol-home")},
    )
    curve_clients.started += [bob, carol]
    bob.expect(r"^\* joined public$")
    carol.expect(r"^\* joined public$")
    eavesdropper = socket(ctx, zmq.SUB, curve_broker.pub)  # plain: the PUB refuses it
    eavesdropper.subscribe(b"")
    alice.send("secret plans")
    bob.expect(r"^\[public\] alice: secret plans$")
    carol.expect(r"^\[public\] alice: secret plans$")
    bob.send("got it")
    alice.expect(r"^\[public\] bob: got it$")
    assert not eavesdropper.poll(300)
    assert ctl(curve_broker, "block", "bob").returncode == Exit.OK


def test_a_curve_client_without_the_server_key_fails_clearly(
    curve_broker: BrokerProc, tmp_path: Path
):
    started = time.monotonic()
    lost = ClientProc(
        curve_broker.router, "alice", env={"ROOM_DATA_DIR": str(tmp_path / "no-keys-here")}
    )
    try:
        assert lost.wait() == Exit.REFUSED
        assert time.monotonic() - started < 4, "must not wait for the timeout"
        assert len(lost.err) == 1 and "pass --server-key" in lost.err[0], lost.err
    finally:
        lost.kill()


def test_a_client_with_the_wrong_server_key_fails_clearly(curve_broker: BrokerProc, tmp_path: Path):
    other = keys.ensure(tmp_path / "other")
    lost = ClientProc(curve_broker.router, "alice", "--server-key", str(other.broker_public))
    try:
        assert lost.wait() == Exit.REFUSED
        assert len(lost.err) == 1, lost.err
        assert "is --server-key the public key of this broker" in lost.err[0]
    finally:
        lost.kill()


def test_a_server_key_for_a_plain_broker_fails_clearly(broker: BrokerProc):
    wrong = ClientProc(broker.router, "alice", "--server-key", broker_key(broker).decode())
    try:
        assert wrong.wait() == Exit.REFUSED
        assert len(wrong.err) == 1, wrong.err
        # The broker hangs up at once, so the reason is a guess that names both causes.
        assert "does not use CURVE" in wrong.err[0] or "--curve" in wrong.err[0]
    finally:
        wrong.kill()


def test_a_bad_server_key_option_is_one_line(broker: BrokerProc):
    bad = ClientProc(broker.router, "alice", "--server-key", "not-a-key")
    try:
        assert bad.wait() == Exit.ERROR
        assert len(bad.err) == 1 and "no usable server key" in bad.err[0], bad.err
    finally:
        bad.kill()


# ---- acting as another user --------------------------------------------------------------------


def hello(sock: zmq.Socket, name: str, session: str = "") -> p.ServerMsg:
    sock.send(p.encode(p.Hello(p.VERSION, name, session)))
    return next_reply(sock, (p.Welcome, p.Error))


def next_reply(sock: zmq.Socket, kinds: tuple[type, ...]) -> p.ServerMsg:
    """The next reply of one of ``kinds`` (skipping heartbeats and the like)."""
    return Replies(sock).expect(kinds)


def test_a_message_cannot_name_its_sender(broker: BrokerProc, ctx: zmq.Context):
    mallory = socket(ctx, zmq.DEALER, broker.router)
    assert isinstance(hello(mallory, "mallory"), p.Welcome)
    mallory.send(msgpack_say_as("alice"))
    reply = next_reply(mallory, (p.Error, p.Ack))
    assert isinstance(reply, p.Error) and reply.code == p.Code.BAD_FRAME


def msgpack_say_as(sender: str) -> bytes:
    """A Say with one more field, the way a modified client would name a sender."""
    return msgspec.msgpack.encode(["say", "I am someone else", 1, sender])


def test_a_taken_name_cannot_be_claimed_without_its_session_secret(
    broker: BrokerProc, ctx: zmq.Context
):
    alice = socket(ctx, zmq.DEALER, broker.router)
    welcome = hello(alice, "alice")
    assert isinstance(welcome, p.Welcome) and len(welcome.session) == 32
    for guess in ("", "0" * 32, welcome.session[:-1] + "x", welcome.session.upper() + " "):
        thief = socket(ctx, zmq.DEALER, broker.router)
        reply = hello(thief, "alice", guess)
        assert isinstance(reply, p.Error) and reply.code == p.Code.NAME_TAKEN, guess
        thief.close(linger=0)
    # The secret itself resumes the session on a new connection; the old one is told.
    again = socket(ctx, zmq.DEALER, broker.router)
    assert isinstance(hello(again, "alice", welcome.session), p.Welcome)
    bye = next_reply(alice, (p.Goodbye,))
    assert bye.reason == p.Bye.REPLACED


def test_leave_and_say_act_only_on_the_sender(
    broker: BrokerProc, clients: ClientFactory, ctx: zmq.Context
):
    alice = clients.join("alice", "games")
    mallory = socket(ctx, zmq.DEALER, broker.router)
    assert isinstance(hello(mallory, "mallory"), p.Welcome)
    mallory.send(p.encode(p.Join("games")))
    assert next_reply(mallory, (p.Joined,)).room == "games"
    mallory.send(p.encode(p.Leave()))
    assert next_reply(mallory, (p.Joined,)).room == p.LOBBY
    mallory.send(p.encode(p.Say("hello from public", 1)))
    assert isinstance(next_reply(mallory, (p.Ack,)), p.Ack)
    rows = {
        u["name"]: u["room"]
        for u in json.loads(ctl(broker, "--json", "who").stdout)["data"]["users"]
    }
    assert rows == {"alice": "games", "mallory": p.LOBBY}
    alice.send("still in games")
    alice.expect(r"^\[games\] alice: still in games$")
    broker.expect(r"\[public\] mallory: hello from public$")


def test_a_live_connection_id_cannot_be_shared(
    broker: BrokerProc, clients: ClientFactory, ctx: zmq.Context
):
    watcher = clients.join("watcher")
    alice = ctx.socket(zmq.DEALER)
    alice.linger = 0
    alice.routing_id = b"alice-connection"
    alice.connect(broker.router)
    assert isinstance(hello(alice, "alice"), p.Welcome)
    twin = ctx.socket(zmq.DEALER)  # the same id while alice's connection lives: ROUTER drops it
    twin.linger = 0
    twin.routing_id = b"alice-connection"
    twin.connect(broker.router)
    send_now(twin, [p.encode(p.Say("spoofed", 7))])
    assert not twin.poll(500)
    alice.send(p.encode(p.Say("the real alice", 8)))
    watcher.expect(r"^\[public\] alice: the real alice$")
    assert not any("spoofed" in line for line in watcher.seen + watcher.drain())


def test_with_curve_a_dead_connection_id_cannot_be_taken_over(
    curve_broker: BrokerProc, curve_clients: ClientFactory, ctx: zmq.Context
):
    watcher = curve_clients.join("watcher")
    server = broker_key(curve_broker)

    def connect(key: tuple[bytes, bytes]) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.routing_id = b"alice-connection"
        sock.curve_publickey, sock.curve_secretkey = key
        sock.curve_serverkey = server
        sock.connect(curve_broker.router)
        return sock

    alice = connect(zmq.curve_keypair())
    assert isinstance(hello(alice, "alice"), p.Welcome)
    alice.close(linger=0)  # gone, but the broker keeps the session until the liveness timeout
    # Until the broker's ROUTER has seen that connection close, it ignores a new one with the same
    # id (as above), and nothing comes back: try again until one is answered.
    thief_key = zmq.curve_keypair()
    deadline = time.monotonic() + WAIT
    while True:
        thief = connect(thief_key)
        thief.send(p.encode(p.Say("spoofed", 7)))
        if thief.poll(500):
            break
        thief.close(linger=0)
        assert time.monotonic() < deadline, "the broker never let go of alice's connection id"
    reply = next_reply(thief, (p.Error, p.Ack))
    assert isinstance(reply, p.Error) and reply.code == p.Code.HELLO_FIRST
    curve_broker.expect(r"\* alice disconnected from public: its connection id was taken")
    watcher.send("marker")
    watcher.expect(r"^\[public\] watcher: marker$")
    assert not any("spoofed" in line for line in watcher.seen)


# ---- broker/security/keys.py on its own ------------------------------------------------------


def test_allow_list_reloads_only_when_its_directory_changes(tmp_path: Path):
    kd = keys.ensure(tmp_path / "data")
    allow = keys.AllowList(kd.admins)
    assert allow.refresh() == []
    assert set(allow.keys.values()) == {"admin"}
    assert allow.refresh() is None  # unchanged: not read again
    (kd.admins / "junk.key").write_text("not a certificate\n")
    problems = allow.refresh()
    assert problems is not None and len(problems) == 1 and "junk.key" in problems[0]
    assert set(allow.keys.values()) == {"admin"}  # the bad file is skipped, the rest still works
    other = keys.ensure(tmp_path / "other")
    keys.add(kd, "zoe", other.admin_secret)
    assert allow.refresh() is not None
    public, _ = keys.load_secret(other.admin_secret)
    assert allow.name(public) == "zoe" and allow.name(public.decode()) == "zoe"
    assert allow.admits(public) is True
    assert allow.admits(b"x" * 40) is False
    assert allow.refused == [b"x" * 40]
    keys.remove(kd, "zoe")
    allow.refresh()
    assert allow.name(public) is None and allow.name("") is None


def test_a_missing_allow_list_allows_nobody(tmp_path: Path):
    allow = keys.AllowList(tmp_path / "nowhere")
    problems = allow.refresh()
    assert problems and "does not exist" in problems[0]
    assert allow.keys == {}


def test_keys_are_given_as_text_or_as_files(tmp_path: Path):
    kd = keys.ensure(tmp_path / "data")
    public = keys.load_public(kd.broker_public)
    assert keys.key_or_file(public.decode()) == public
    assert keys.key_or_file(str(kd.broker_public)) == public
    assert keys.key_or_file(str(kd.broker_secret)) == public  # only the public half is taken
    for bad in ("short", "x" * 40 + "y"):
        with pytest.raises(keys.KeyFileError):
            keys.key_or_file(bad)
    assert not keys.valid_key(b" " * 40) and keys.valid_key(public)
    with pytest.raises(keys.KeyFileError, match="only a public key"):
        keys.load_secret(kd.broker_public)


def test_ensure_keeps_existing_keys_and_a_removed_first_admin_stays_removed(tmp_path: Path):
    kd = keys.ensure(tmp_path / "data")
    before = kd.broker_secret.read_text(), kd.admin_secret.read_text()
    keys.remove(kd, "admin")
    keys.ensure(tmp_path / "data")
    assert (kd.broker_secret.read_text(), kd.admin_secret.read_text()) == before
    assert keys.listing(kd) == []


def test_chat_key_is_published_only_while_chat_is_encrypted(tmp_path: Path):
    kd = keys.ensure(tmp_path / "data")
    keys.mark_chat(kd, True)
    assert keys.load_public(kd.chat_public) == keys.load_public(kd.broker_public)
    keys.mark_chat(kd, False)
    assert not kd.chat_public.exists()
    keys.mark_chat(kd, False)  # and again: nothing to remove is fine
