"""The three commands end to end: a real broker, real clients, real room-ctl, over loopback."""

from __future__ import annotations

import re
import subprocess
import sys

import zmq
from procs import WAIT, BrokerProc, ClientFactory, ctl

from broker.config import Exit
from broker.security.keys import KeyDir, load_public, load_secret
from broker.security.keys import ensure as ensure_keys
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_users_land_in_public_and_see_each_other(broker: BrokerProc, clients: ClientFactory):
    alice = clients.start("alice")
    alice.expect(r"^\* joined public$")
    bob = clients.join("bob")
    alice.send("hello everyone")
    bob.expect(r"^\[public\] alice: hello everyone$")
    alice.expect(r"^\[public\] alice: hello everyone$")
    broker.expect(rf"^{STAMP} \[public\] alice: hello everyone$")


def test_join_and_leave_move_between_rooms(broker: BrokerProc, clients: ClientFactory):
    alice = clients.join("alice")
    bob = clients.join("bob")
    alice.send("/join games")
    alice.expect(r"^\* joined games$")
    alice.send("only for games")
    alice.expect(r"^\[games\] alice: only for games$")
    bob.send("/join games")
    bob.expect(r"^\* joined games$")
    alice.send("now bob is here")
    bob.expect(r"^\[games\] alice: now bob is here$")
    bob.send("/leave")
    bob.expect(r"^\* joined public$")
    alice.send("bob left")
    alice.expect(r"^\[games\] alice: bob left$")
    bob.send("back in public")
    bob.expect(r"^\[public\] bob: back in public$")
    assert not any("bob left" in line for line in bob.seen + bob.drain())


def test_room_topics_do_not_prefix_match(broker: BrokerProc, clients: ClientFactory):
    short = clients.join("short", "pub")
    long = clients.join("long", "public")
    long.send("in public")
    long.expect(r"^\[public\] long: in public$")
    short.send("in pub")
    short.expect(r"^\[pub\] short: in pub$")
    long.send("second")
    long.expect(r"^\[public\] long: second$")
    assert not any("[public]" in line for line in short.seen + short.drain())


def test_taken_and_invalid_names_are_refused(broker: BrokerProc, clients: ClientFactory):
    clients.join("alice")
    twin = clients.start("alice")
    assert twin.wait() != Exit.OK
    assert any("taken" in line for line in twin.err), twin.err
    bad = clients.start("no spaces")
    assert bad.wait() != Exit.OK
    assert bad.err and "Traceback" not in "\n".join(bad.err)


def test_end_of_input_exits_cleanly_and_frees_the_name(broker: BrokerProc, clients: ClientFactory):
    watcher = clients.join("watcher")
    alice = clients.join("alice")
    alice.send("last words")
    alice.close_input()
    assert alice.wait() == Exit.OK
    watcher.expect(r"^\[public\] alice: last words$")
    again = clients.join("alice")
    again.send("/exit")
    assert again.wait() == Exit.OK


def test_blocked_messages_reach_only_the_log(broker: BrokerProc, clients: ClientFactory):
    alice = clients.join("alice")
    bob = clients.join("bob")
    done = ctl(broker, "block", "bob")
    assert done.returncode == 0 and "blocked bob" in done.stdout
    bob.send("spam one")
    bob.expect(r"^\* .*blocked")
    bob.expect(r"^\* not delivered \(you are blocked\): spam one$")  # not without a trace
    broker.expect(rf"^{STAMP} \[public\] bob \(blocked.*\): spam one$")
    bob.send("spam two")
    bob.expect(r"^\* not delivered \(you are blocked\): spam two$")
    broker.expect(r"bob \(blocked.*\): spam two$")
    alice.send("bob still hears me")
    bob.expect(r"^\[public\] alice: bob still hears me$")
    alice.expect(r"^\[public\] alice: bob still hears me$")
    assert not any("spam" in line for line in alice.seen + alice.drain())
    notices = [line for line in bob.seen + bob.drain() if "your messages reach only" in line]
    assert len(notices) == 1, bob.seen

    assert ctl(broker, "unblock", "bob").returncode == 0
    bob.send("free again")
    alice.expect(r"^\[public\] bob: free again$")


def test_block_ahead_of_time(broker: BrokerProc, clients: ClientFactory):
    done = ctl(broker, "block", "carol")
    assert done.returncode == 0
    assert "not connected" in done.stdout
    alice = clients.join("alice")
    carol = clients.join("carol")
    carol.send("hi")
    broker.expect(r"carol \(blocked.*\): hi$")
    alice.send("marker")
    alice.expect(r"^\[public\] alice: marker$")
    assert not any("carol: hi" in line for line in alice.seen)


def test_fire_disconnects_the_user(broker: BrokerProc, clients: ClientFactory):
    alice = clients.join("alice")
    bob = clients.join("bob")
    done = ctl(broker, "fire", "bob")
    assert done.returncode == 0, done.stderr
    assert bob.wait() == Exit.FIRED
    assert len(bob.err) == 1 and "fired" in bob.err[0], bob.err
    who = ctl(broker, "who")
    assert "alice" in who.stdout and "bob" not in who.stdout
    alice.send("still here")
    alice.expect(r"^\[public\] alice: still here$")
    missing = ctl(broker, "fire", "nobody")
    assert missing.returncode != 0
    assert "nobody is not connected" in missing.stderr
    assert missing.stderr.count("\n") == 1


def test_out_sends_the_user_back_to_public(broker: BrokerProc, clients: ClientFactory):
    bob = clients.join("bob", "games")
    done = ctl(broker, "out", "bob")
    assert done.returncode == 0, done.stderr
    bob.expect(r"^\* joined public$")
    bob.send("where am i")
    bob.expect(r"^\[public\] bob: where am i$")
    assert ctl(broker, "out", "ghost").returncode != 0


def test_reset_drops_every_client_and_room(broker: BrokerProc, clients: ClientFactory):
    alice = clients.join("alice", "games")
    bob = clients.join("bob")
    rooms = ctl(broker, "rooms")
    assert "games" in rooms.stdout
    done = ctl(broker, "reset")
    assert done.returncode == 0, done.stderr
    assert alice.wait() != Exit.OK
    assert bob.wait() != Exit.OK
    assert alice.err and "reset" in alice.err[-1]
    rooms = ctl(broker, "rooms")
    assert "games" not in rooms.stdout and "public" in rooms.stdout
    assert "0 users" in ctl(broker, "who").stdout


def test_close_shuts_the_broker_down(broker: BrokerProc, clients: ClientFactory):
    alice = clients.join("alice")
    done = ctl(broker, "close")
    assert done.returncode == 0, done.stderr
    assert broker.wait() == 0
    assert alice.wait() != Exit.OK
    assert alice.err and "Traceback" not in "\n".join(alice.err)


def test_sigterm_is_a_restart_for_the_users(broker: BrokerProc, clients: ClientFactory):
    """A broker stopped by a signal (a service manager, Ctrl-C) comes back: its clients keep
    trying, resume their sessions and rooms, and catch up on what was said meanwhile."""
    alice = clients.join("alice", "games")
    bob = clients.join("bob", "games")
    assert broker.stop() == 0
    for client in (alice, bob):
        client.expect(r"^\* the broker is restarting; still trying$")
    again = broker.restart()
    try:
        bob.expect(r"^\* reconnected to the broker$")
        bob.send("said while alice was away")
        bob.expect(r"^\[games\] bob: said while alice was away$")
        alice.expect(r"^\[games\] bob: said while alice was away$")
        alice.send("back")
        bob.expect(r"^\[games\] alice: back$")
        assert alice.popen.poll() is None and bob.popen.poll() is None
    finally:
        assert again.stop() == 0


def test_who_and_rooms_list_users_and_counts(broker: BrokerProc, clients: ClientFactory):
    clients.join("alice", "games")
    clients.join("bob")
    ctl(broker, "block", "bob")
    who = ctl(broker, "who")
    assert who.returncode == 0
    rows = {line.split()[0]: line.split()[1:] for line in who.stdout.splitlines()[1:] if line}
    assert rows["alice"] == ["games"]
    assert rows["bob"] == ["public", "blocked"]
    rooms = ctl(broker, "rooms")
    counts = {line.split()[0]: line.split()[1] for line in rooms.stdout.splitlines()[2:] if line}
    assert counts == {"games": "1", "public": "1"}
    listing = ctl(broker, "--json", "who")
    assert '"alice"' in listing.stdout


def test_ctl_counts_in_words_and_shows_no_table_for_an_empty_listing(
    broker: BrokerProc, clients: ClientFactory
):
    def shown(*args: str) -> str:
        done = ctl(broker, *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert shown("requests") == "0 join requests waiting\n"
    assert shown("who") == "0 users connected\n"
    assert shown("rooms").splitlines()[0] == "1 room"
    clients.join("alice")
    assert shown("who").splitlines() == [
        "1 user connected",
        "USER   ROOM    STATUS",
        "alice  public",
    ]
    assert shown("stats").splitlines()[0].endswith(", 1 client, 0 messages")
    assert "1 client disconnected" in shown("reset")


def test_ctl_help_calls_the_lobby_public():
    done = subprocess.run(
        [sys.executable, "-c", "from client.ctl import main; main()", "--help"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr
    assert "lobby" not in done.stdout
    assert "every room but public" in done.stdout


def test_ctl_against_a_dead_endpoint_times_out(tmp_path):
    home = tmp_path / "data"
    _, secret = load_secret(ensure_keys(home).broker_secret)
    with zmq.Context() as ctx:
        sock = ctx.socket(zmq.ROUTER)  # bound, so connect succeeds, but it never answers
        sock.linger = 0
        sock.curve_server = True  # the broker's key: the handshake succeeds (no ZAP handler)
        sock.curve_secretkey = secret
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        done = ctl(f"tcp://127.0.0.1:{port}", "--timeout", "0.5", "who", data_dir=home)
        sock.close(0)
    assert done.returncode == Exit.UNREACHABLE
    assert done.stderr.count("\n") == 1 and "no answer" in done.stderr


def test_client_against_no_broker_fails_clearly(clients: ClientFactory, broker: BrokerProc):
    broker.stop()
    lost = clients.start("alice")
    assert lost.wait(WAIT + 5) == Exit.UNREACHABLE
    assert len(lost.err) == 1 and "no answer" in lost.err[0]


def _recv(sock: zmq.Socket, timeout: float = WAIT) -> list[bytes]:
    assert sock.poll(timeout * 1000), "no reply from the broker"
    return sock.recv_multipart()


def test_malformed_frames_never_stop_the_broker(broker: BrokerProc, clients: ClientFactory):
    alice = clients.join("alice")
    with zmq.Context() as ctx:
        rogue = ctx.socket(zmq.DEALER)
        rogue.linger = 0
        rogue.connect(broker.router)
        for frames in (
            [b""],
            [b"\xff" * 100],
            [b"a", b"b", b"c"],
            [p.encode(p.Posted("x", 1, 0, "a", "b"))],
        ):
            rogue.send_multipart(frames)
            [reply] = p.decode_server(_recv(rogue)[0])
            assert isinstance(reply, p.Error) and reply.code == p.Code.BAD_FRAME
        rogue.send(p.encode(p.Join("games")))
        [reply] = p.decode_server(_recv(rogue)[0])
        assert isinstance(reply, p.Error) and reply.code == p.Code.HELLO_FIRST

        kd = KeyDir.of(broker.data_dir)
        public, secret = load_secret(kd.admin_secret)
        server = load_public(kd.broker_public)

        def as_admin(sock: zmq.Socket) -> zmq.Socket:  # the control socket takes only admins
            sock.linger = 0
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = (
                public,
                secret,
                server,
            )
            sock.connect(broker.control)
            return sock

        admin = as_admin(ctx.socket(zmq.REQ))
        admin.send(b"not msgpack at all")
        reply = cp.decode_ctl_reply(_recv(admin)[0])
        assert not reply.ok and reply.code == p.Code.BAD_FRAME
        raw = as_admin(ctx.socket(zmq.DEALER))  # no empty delimiter: unanswerable, ignored
        raw.send(b"junk")
        admin.send(p.encode(cp.CtlRequest(9, "launch", [])))
        reply = cp.decode_ctl_reply(_recv(admin)[0])
        assert reply.id == 9 and reply.code == p.Code.UNKNOWN_COMMAND
        for sock in (rogue, admin, raw):
            sock.close(0)
    alice.send("still serving")
    alice.expect(r"^\[public\] alice: still serving$")
    assert ctl(broker, "who").returncode == 0


def test_broker_refuses_a_busy_endpoint(broker: BrokerProc, tmp_path):
    free = "tcp://127.0.0.1:0"
    argv = [sys.executable, "-c", "from broker.cli import main; main()", "start"]
    argv += ["--router", broker.router, "--pub", free, "--control", free]
    argv += ["--data-dir", str(tmp_path / "d2")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode != 0
    assert re.match(r"^room-broker: cannot bind .*in use", done.stderr)
    assert done.stderr.count("\n") == 1
