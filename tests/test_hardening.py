"""No input can crash the broker (issue 11), end to end: a real broker process with its SQLite
store, real DEALER sockets, and a timeout on every receive.

Each request out of the protocol's ranges, of the wrong shape or in the wrong place gets its
``Error`` (or ``Refused``), and the broker serves on: the connection that sent it still chats, and
so does a pair of other users (the canary) whose every message must be acknowledged and published.
A handler that raises costs its request only: ``Error(internal)``, one log line with the traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import zmq
from procs import (
    MIDS,
    UNASKED,
    WAIT,
    BrokerProc,
    Canary,
    PreludedBroker,
    Raw,
    Replies,
    ctl,
    socket,
)

from broker.wire import protocol as p

# ---- helpers -------------------------------------------------------------------------------------


def fresh_name() -> str:
    return f"h{next(MIDS)}"


def answer(user: Raw | Replies, timeout: float = WAIT) -> p.ServerMsg:
    """The broker's next message that answers something (not ``UNASKED``)."""
    replies = user.replies if isinstance(user, Raw) else user
    while True:
        msg = replies.next(timeout)
        assert msg is not None, f"no answer within {timeout}s"
        if not isinstance(msg, UNASKED):
            return msg


def packed(tag: str, *items: object) -> bytes:
    """A client message packed by hand: any value MessagePack carries, in any field."""
    return msgspec.msgpack.encode([tag, *items])


# ---- the broker's log is one line per event ------------------------------------------------------

FORGED = "2030-01-01T00:00:00.000Z ! admin block alice: blocked alice (by root)"
"""A line of the broker's text log that no admin wrote."""


def forged_lines(broker: BrokerProc, witness: Raw) -> list[str]:
    """Log lines that start like ``FORGED``, up to the witness's next chat line (logged after
    everything before it)."""
    witness.say("witness")
    broker.expect(r"\] witness: witness$")
    return [line for line in broker.seen if line.startswith(FORGED)]


# A fresh broker each: bad frames past the first few of a heartbeat interval are not logged.


def test_a_bad_frame_cannot_forge_a_log_line(broker: BrokerProc, ctx: zmq.Context) -> None:
    witness = Raw(ctx, broker.router, "witness")
    replies = Replies(socket(ctx, zmq.DEALER, broker.router))
    replies.sock.send(packed(f"say\n{FORGED}", "hi", 1))
    error = answer(replies)
    assert isinstance(error, p.Error) and error.code == p.Code.BAD_FRAME, error
    assert not forged_lines(broker, witness)


def test_a_blocked_tell_cannot_forge_a_log_line(broker: BrokerProc, ctx: zmq.Context) -> None:
    witness = Raw(ctx, broker.router, "witness")
    user = Raw(ctx, broker.router, "mallory")
    assert ctl(broker, "block", "mallory").returncode == 0
    user.send(p.Tell(f"x\n{FORGED}", "hi", 7))
    refused = answer(user)
    assert isinstance(refused, p.Refused) and refused.code == p.Code.BLOCKED, refused
    assert not forged_lines(broker, witness)


# ---- a handler that raises -----------------------------------------------------------------------

FAULTS = """
import broker.store.sqlstore
import broker.chat.rooms

_fetch = broker.chat.rooms.Rooms.fetch
_range = broker.store.sqlstore.SQLiteStore.range


def _failing_fetch(self, user, msg, *args, **kwargs):
    if msg.room == "faulty":
        raise RuntimeError("injected fault in Chat._fetch")
    return _fetch(self, user, msg, *args, **kwargs)


def _failing_range(self, room, *args, **kwargs):
    if room == "fragile":
        raise OSError("injected fault in SQLiteStore.range")
    return _range(self, room, *args, **kwargs)


broker.chat.rooms.Rooms.fetch = _failing_fetch
broker.store.sqlstore.SQLiteStore.range = _failing_range
"""
"""A broker whose Fetch fails in the chat for room "faulty" and in the store for "fragile"."""


def _faults(data_dir: Path, ctx: zmq.Context) -> list[str]:
    """Run the broker with ``FAULTS``: each fault answers ``internal`` and costs nothing else (the
    same user and the canary chat on, an unpatched Fetch works); the broker stops cleanly.
    Returns its whole log."""
    broker = PreludedBroker(data_dir, FAULTS)
    try:
        canary = Canary(ctx, broker)
        victim = Raw(ctx, broker.router, "victim")
        for room in ("faulty", "fragile"):
            victim.send(p.Join(room))
            assert isinstance(answer(victim), p.Joined)
            victim.send(p.Fetch(room, 0))
            error = answer(victim)
            assert isinstance(error, p.Error), error
            assert (error.code, error.request) == (p.Code.INTERNAL, "fetch"), error
            victim.say(f"{room}: the same user chats on")
            canary.chat()
        victim.send(p.Leave())
        assert isinstance(answer(victim), p.Joined)
        victim.send(p.Fetch(p.LOBBY, 0))  # an unpatched fetch still works
        assert isinstance(answer(victim), p.Messages)
        canary.chat()
        assert broker.popen.poll() is None, broker.err[-5:]
        code = broker.stop()
    finally:
        broker.kill()
    assert code == 0, broker.err[-10:]
    assert not any("Traceback" in line for line in broker.err), broker.err[-10:]
    broker.drain()
    assert broker.seen[-1] == "room-broker stopped", broker.seen[-5:]
    return broker.seen


def test_a_handler_that_raises_costs_its_request_only(tmp_path: Path, ctx: zmq.Context) -> None:
    internal = [line for line in _faults(tmp_path / "data", ctx) if "internal error" in line]
    assert len(internal) == 2, internal  # one line per fault, and only those
    for line, fault in zip(
        internal,
        [
            "RuntimeError: injected fault in Chat._fetch",
            "OSError: injected fault in SQLiteStore.range",
        ],
        strict=True,
    ):
        assert "Traceback" in line and fault in line, line


def test_an_internal_error_is_one_log_line(tmp_path: Path, ctx: zmq.Context) -> None:
    lines = _faults(tmp_path / "data", ctx)
    stray = [line for line in lines if not re.match(r"\d{4}-\d\d-\d\dT|room-broker ", line)]
    assert not stray, stray


# ---- one broker for the rest of the file, and a pair chatting in it -----------------------------
#
# After the tests above, which start brokers of their own: the canary must not be silent for
# longer than the heartbeat timeout (5 s) between two of the tests below, even on a loaded CI.


@dataclass
class Served:
    broker: BrokerProc
    canary: Canary

    def check(self) -> None:
        """The broker runs, the canary chats, and nothing so far was a crash or an internal
        error."""
        self.canary.chat()
        assert self.broker.popen.poll() is None, f"the broker exited: {self.broker.err[-5:]}"
        assert not any("Traceback" in line for line in self.broker.err), self.broker.err[-10:]
        self.broker.drain(0)  # what it has logged so far, without waiting for more
        errors = [line for line in self.broker.seen if "internal error" in line]
        assert not errors, errors


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    context = zmq.Context()
    broker = BrokerProc(tmp_path_factory.mktemp("hardening") / "data")
    try:
        yield Served(broker, Canary(context, broker))
    finally:
        context.destroy(linger=0)
        try:
            code = broker.stop()
        finally:
            broker.kill()
    assert code == 0, broker.err[-10:]


# ---- integers out of range -----------------------------------------------------------------------

ABOVE_MAX_ID = f"<= {p.MAX_ID}"
NEGATIVE = ">= 0"

OUT_OF_RANGE = {
    # the body, the position of the bad value in the array, and the bound the reason names
    "say.mid=2**63": (packed("say", "hi", 2**63), 2, ABOVE_MAX_ID),
    "say.mid=2**64-1": (packed("say", "hi", 2**64 - 1), 2, ABOVE_MAX_ID),
    "say.mid=MAX_ID+1": (packed("say", "hi", p.MAX_ID + 1), 2, ABOVE_MAX_ID),
    "say.mid=-1": (packed("say", "hi", -1), 2, NEGATIVE),
    "say.mid=-2**63": (packed("say", "hi", -(2**63)), 2, NEGATIVE),
    "fetch.after=2**63": (packed("fetch", p.LOBBY, 2**63, 0, 10), 2, ABOVE_MAX_ID),
    "fetch.upto=2**63": (packed("fetch", p.LOBBY, 0, 2**63, 10), 3, ABOVE_MAX_ID),
    "fetch.limit=0": (packed("fetch", p.LOBBY, 0, 0, 0), 4, ">= 1"),
    "fetch.limit=5000": (packed("fetch", p.LOBBY, 0, 0, 5000), 4, f"<= {p.HISTORY_MAX}"),
    "join.history=-1": (packed("join", "games", -1), 2, NEGATIVE),
    "join.history=2**63": (packed("join", "games", 2**63), 2, f"<= {p.HISTORY_MAX}"),
    "sync.nonce=2**64-1": (packed("sync", 2**64 - 1), 1, ABOVE_MAX_ID),
    "ping.seq=2**63": (packed("ping", p.LOBBY, 2**63), 2, ABOVE_MAX_ID),
    "tell.mid=2**63": (packed("tell", "canary1", "hi", 2**63), 3, ABOVE_MAX_ID),
}


@pytest.mark.parametrize(("body", "position", "bound"), OUT_OF_RANGE.values(), ids=OUT_OF_RANGE)
def test_an_integer_out_of_range_is_a_bad_frame_and_everyone_chats_on(
    served: Served, ctx: zmq.Context, body: bytes, position: int, bound: str
) -> None:
    user = Raw(ctx, served.broker.router, fresh_name())
    user.sock.send(body)
    error = answer(user)
    assert isinstance(error, p.Error), error
    assert (error.code, error.request) == (p.Code.BAD_FRAME, ""), error
    assert f"`$[{position}]`" in error.reason and bound in error.reason, error.reason
    user.say("a bad frame does not end the session")
    served.check()


def test_the_edges_of_the_ranges_are_accepted(served: Served, ctx: zmq.Context) -> None:
    name = fresh_name()
    user = Raw(ctx, served.broker.router, name)
    assert user.say("the largest id", mid=p.MAX_ID).mid == p.MAX_ID
    user.send(p.Fetch(p.LOBBY, after=p.MAX_ID, upto=p.MAX_ID, limit=p.HISTORY_MAX))
    assert answer(user) == p.Messages(p.LOBBY, [], 1)
    user.send(p.Fetch(p.LOBBY, after=0, limit=1))
    batch = answer(user)
    assert isinstance(batch, p.Messages) and len(batch.messages) == 1, batch
    user.send(p.Join("edges", history=p.HISTORY_MAX))
    joined = answer(user)
    assert isinstance(joined, p.Joined) and joined.room == "edges", joined
    user.sock.send(packed("sync", p.MAX_ID))  # answered on the room's topic, not here
    user.sock.send(packed("ping", "edges", p.MAX_ID))  # not answered at all
    user.send(p.Tell(name, "to myself", p.MAX_ID))
    told = answer(user)
    assert isinstance(told, p.Told) and (told.sender, told.to) == (name, name), told
    assert answer(user) == p.Ack(p.MAX_ID, "", 0)
    served.check()


def test_hello_out_of_range_is_a_bad_frame_and_a_good_hello_follows(
    served: Served, ctx: zmq.Context
) -> None:
    sock = socket(ctx, zmq.DEALER, served.broker.router)
    replies = Replies(sock)
    name = fresh_name()
    for body, position in [
        (packed("hello", 2**63, name, ""), 1),
        (packed("hello", 0x10000, name, ""), 1),
        (packed("hello", -1, name, ""), 1),
        (packed("hello", p.VERSION, name, "x" * (p.SESSION_MAX + 1)), 3),
    ]:
        sock.send(body)
        error = answer(replies)
        assert isinstance(error, p.Error) and error.code == p.Code.BAD_FRAME, error
        assert f"`$[{position}]`" in error.reason, error.reason
    sock.send(p.encode(p.Hello(p.VERSION, name)))
    welcome = answer(replies)
    assert isinstance(welcome, p.Welcome) and welcome.name == name, welcome
    served.check()


# ---- the wrong shape, the wrong room, the wrong session, the wrong user -------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_a_body_of_several_frames_is_a_bad_frame(
    served: Served, ctx: zmq.Context, count: int
) -> None:
    user = Raw(ctx, served.broker.router, fresh_name())
    user.sock.send_multipart([p.encode(p.Say("split", 1))] + [b"more"] * (count - 1))
    error = answer(user)
    assert isinstance(error, p.Error), error
    assert (error.code, error.request) == (p.Code.BAD_FRAME, ""), error
    assert f"got {count}" in error.reason, error.reason
    user.say("one frame again")
    served.check()


def test_fetch_of_a_room_the_user_is_not_in_is_refused(served: Served, ctx: zmq.Context) -> None:
    user = Raw(ctx, served.broker.router, fresh_name())
    for room in (served.canary.room, "nowhere"):  # a room with history, and one never made
        user.send(p.Fetch(room, 0))
        error = answer(user)
        assert isinstance(error, p.Error), error
        assert (error.code, error.request) == (p.Code.NOT_MEMBER, "fetch"), error
        assert room in error.reason
    user.send(p.Fetch("no such room!", 0))
    error = answer(user)
    assert isinstance(error, p.Error) and (error.code, error.request) == (p.Code.BAD_ROOM, "fetch")
    served.check()


def _hello(replies: Replies, name: str, session: str = "") -> p.ServerMsg:
    replies.sock.send(p.encode(p.Hello(p.VERSION, name, session)))
    return answer(replies)


def test_hello_resuming_a_session_the_broker_does_not_have(
    served: Served, ctx: zmq.Context
) -> None:
    replies = Replies(socket(ctx, zmq.DEALER, served.broker.router))
    name = fresh_name()
    error = _hello(replies, name, "0123456789abcdef" * 2)  # made up: never issued
    assert isinstance(error, p.Error), error
    assert (error.code, error.request) == (p.Code.BAD_SESSION, "hello"), error
    welcome = _hello(replies, name)  # the same connection, without the secret
    assert isinstance(welcome, p.Welcome), welcome
    replies.sock.send(p.encode(p.Quit()))  # ends the session
    again = Replies(socket(ctx, zmq.DEALER, served.broker.router))
    error = _hello(again, name, welcome.session)
    assert isinstance(error, p.Error) and error.code == p.Code.BAD_SESSION, error
    served.check()


def test_tell_to_a_user_who_is_not_connected_is_refused(served: Served, ctx: zmq.Context) -> None:
    user = Raw(ctx, served.broker.router, fresh_name())
    mid = next(MIDS)
    user.send(p.Tell("nobody-here", "are you there?", mid))
    refused = answer(user)
    assert isinstance(refused, p.Refused), refused
    assert (refused.mid, refused.code) == (mid, p.Code.NOT_CONNECTED), refused
    assert "nobody-here" in refused.reason
    served.check()


def test_valid_requests_in_the_wrong_order(served: Served, ctx: zmq.Context) -> None:
    replies = Replies(socket(ctx, zmq.DEALER, served.broker.router))
    send = replies.sock.send
    name = fresh_name()
    send(p.encode(p.Say("too early", 1)))
    error = answer(replies)
    assert isinstance(error, p.Error), error
    assert (error.code, error.request) == (p.Code.HELLO_FIRST, "say"), error
    assert isinstance(_hello(replies, name), p.Welcome)
    error = _hello(replies, name)
    assert isinstance(error, p.Error) and (error.code, error.request) == (p.Code.ALREADY, "hello")
    send(p.encode(p.Quit()))
    send(p.encode(p.Say("too late", 2)))
    error = answer(replies)
    assert isinstance(error, p.Error), error
    assert (error.code, error.request) == (p.Code.HELLO_FIRST, "say"), error
    served.check()


# ---- and after all that --------------------------------------------------------------------------


def test_the_broker_outlived_everything_above(served: Served) -> None:
    served.check()
    served.broker.drain()
    assert not [line for line in served.broker.seen if "internal error" in line]
    assert not any(re.search(r"Traceback|Error:", line) for line in served.broker.err)
