"""The client session in memory: no sockets, no clock; every input and every effect is explicit."""

from __future__ import annotations

import random

import pytest

from broker.config import HEARTBEAT, Exit
from broker.wire import protocol as p
from client.core import BLOCKED_LINE, LOST_LINE, RESEND_AFTER, SYNC_RETRY, Session
from client.delivery import JOIN_RETRY, SYNC_RETRY_MAX
from client.effects import Effect, Kind, Line, Reconnect, Send, Stop, Subscribe, Unsubscribe

T0 = 1000.0


def lines(effects: list[Effect]) -> list[str]:
    return [e.render() for e in effects if isinstance(e, Line)]


def sent(effects: list[Effect]) -> list[p.ClientMsg]:
    return [e.msg for e in effects if isinstance(e, Send)]


def one_sent(effects: list[Effect], kind: type) -> p.ClientMsg:
    found = [m for m in sent(effects) if isinstance(m, kind)]
    assert len(found) == 1, effects
    return found[0]


def post(room: str, seq: int, text: str = "", sender: str = "bob") -> p.Posted:
    return p.Posted(room, seq, T0, sender, text or f"m{seq}")


def welcome(name: str = "alice", blocked: bool = False) -> p.Welcome:
    return p.Welcome(p.VERSION, name, p.LOBBY, "tcp://127.0.0.1:1", "secret", HEARTBEAT, blocked)


def started(room: str = p.LOBBY, history: int = 0) -> Session:
    """A session that has been welcomed and sent its Join."""
    s = Session("alice", room, history, rng=random.Random(7))
    out = s.on_server(welcome(), T0)
    assert sent(out) == [p.Join(room, history)]
    return s


def joined(room: str = p.LOBBY, seq: int = 0) -> Session:
    """A session in ``room`` whose subscription is confirmed and announced."""
    s = started(room)
    s.on_server(p.Joined(room, seq), T0)
    out = s.on_room([p.Synced(room, s.sync_nonce, seq)], T0)
    assert lines(out) == [f"* joined {room}"]
    return s


# ---- joining ----------------------------------------------------------------------------------


def test_joined_subscribes_and_syncs_but_announces_only_after_synced() -> None:
    s = started(history=2)
    history = [post("public", 4, "old one"), post("public", 5, "old two")]
    out = s.on_server(p.Joined("public", 5, history), T0)
    assert lines(out) == [
        "* history public (2 messages)",
        "[public] bob: old one",
        "[public] bob: old two",
    ]
    assert [e.kind for e in out if isinstance(e, Line)][1:] == [Kind.HISTORY, Kind.HISTORY]
    assert Subscribe(p.topic("public")) in out
    sync = one_sent(out, p.Sync)
    assert sync.nonce == s.sync_nonce and 0 <= sync.nonce < 2**63
    assert not any("joined" in line for line in lines(out))

    # A Synced with someone else's nonce proves nothing.
    assert lines(s.on_room([p.Synced("public", sync.nonce + 1, 5)], T0)) == []
    out = s.on_room([p.Synced("public", sync.nonce, 5)], T0)
    assert lines(out) == ["* joined public"]
    assert sent(out) == []


def test_synced_ahead_fetches_the_gap_and_announces_after_it_is_filled() -> None:
    s = started()
    s.on_server(p.Joined("public", 3), T0)
    out = s.on_room([p.Synced("public", s.sync_nonce, 5)], T0)
    assert lines(out) == []
    assert one_sent(out, p.Fetch) == p.Fetch("public", after=3, upto=5)
    out = s.on_server(p.Messages("public", [post("public", 4), post("public", 5)]), T0)
    assert lines(out) == ["[public] bob: m4", "[public] bob: m5", "* joined public"]


def test_carry_on_resumes_by_secret_and_fetches_what_came_since_as_live_messages() -> None:
    """room-web after a restart: the page knows its secret and the newest message it showed."""
    s = Session("alice", "ops", 0, rng=random.Random(7))
    s.carry_on("old-secret", 3)
    assert s.hello() == p.Hello(p.VERSION, "alice", "old-secret")
    out = s.on_server(welcome(), T0)
    assert sent(out) == [p.Join("ops", 0)]  # a first Welcome: joins, no history
    out = s.on_room([post("ops", 6)], T0)  # on the SUB before Joined: held, not shown
    assert lines(out) == []
    out = s.on_server(p.Joined("ops", 6), T0)
    assert lines(out) == []
    out = s.on_room([p.Synced("ops", s.sync_nonce, 6)], T0)
    assert one_sent(out, p.Fetch) == p.Fetch("ops", after=3, upto=5)
    out = s.on_server(p.Messages("ops", [post("ops", 4), post("ops", 5)]), T0)
    assert lines(out) == ["[ops] bob: m4", "[ops] bob: m5", "[ops] bob: m6", "* joined ops"]
    assert [e.seq for e in out if isinstance(e, Line) and e.kind is Kind.MESSAGE] == [4, 5, 6]


def test_a_join_whose_answer_was_lost_is_sent_again_until_answered() -> None:
    """A reply can be dropped (the client's queue at the broker was full): the Join is sent
    again every JOIN_RETRY seconds until its Joined comes, and then no more."""
    s = joined()
    out = s.join("games", T0 + 1)
    assert sent(out) == [p.Join("games", 0)]
    assert p.Join("games", 0) not in sent(s.tick(T0 + 1 + JOIN_RETRY / 2))
    assert p.Join("games", 0) in sent(s.tick(T0 + 1 + JOIN_RETRY))  # no answer yet: again
    assert p.Join("games", 0) not in sent(s.tick(T0 + 1 + 1.5 * JOIN_RETRY))
    s.on_server(p.Ping(p.LOBBY, 0), T0 + 4)  # the broker is there; the answer was lost
    assert p.Join("games", 0) in sent(s.tick(T0 + 1 + 2 * JOIN_RETRY))
    s.on_server(p.Joined("games", 3), T0 + 6)
    out = s.on_room([p.Synced("games", s.sync_nonce, 3)], T0 + 6)
    assert lines(out) == ["* joined games"]
    assert not any(isinstance(m, p.Join) for m in sent(s.tick(T0 + 20)))
    assert s.settled


def test_the_second_answer_to_a_retried_join_is_passed_over() -> None:
    """The first answer was only slow: the retry's answer shows no history and no join twice."""
    s = joined()
    s.join("games", T0)
    s.tick(T0 + JOIN_RETRY)  # sent again
    answer = p.Joined("games", 2, [post("games", 1), post("games", 2)])
    out = s.on_server(answer, T0 + 3)
    assert lines(out) == ["* history games (2 messages)", "[games] bob: m1", "[games] bob: m2"]
    assert lines(s.on_room([p.Synced("games", s.sync_nonce, 2)], T0 + 3)) == ["* joined games"]
    assert s.on_server(answer, T0 + 3) == []  # the retry's answer
    assert s.settled and s.room == "games"
    assert s.on_server(p.JoinRequested("vip"), T0 + 4) == []  # likewise: nothing asked it


def test_sync_is_resent_until_synced_arrives() -> None:
    s = started()
    out = s.on_server(p.Joined("public", 0), T0)
    nonce = one_sent(out, p.Sync).nonce
    assert sent(s.tick(T0 + SYNC_RETRY / 2)) == []
    assert sent(s.tick(T0 + SYNC_RETRY + 0.01)) == [p.Sync(nonce)]
    s.on_room([p.Synced("public", nonce, 0)], T0 + 0.3)
    assert not any(isinstance(m, p.Sync) for m in sent(s.tick(T0 + 1)))


def test_sync_retries_wait_twice_as_long_each_time_up_to_the_most() -> None:
    s = started()
    nonce = one_sent(s.on_server(p.Joined("public", 0), T0), p.Sync).nonce
    at, resent = T0, []
    while at < T0 + 10:
        at += 0.01
        s.on_server(p.Ping(), at)  # the broker is alive throughout
        if any(isinstance(m, p.Sync) for m in sent(s.tick(at))):
            resent.append(at)
    gaps = [round(b - a, 1) for a, b in zip([T0, *resent], resent, strict=False)]
    assert gaps[:4] == [SYNC_RETRY, 2 * SYNC_RETRY, 4 * SYNC_RETRY, 8 * SYNC_RETRY]
    assert max(gaps) == SYNC_RETRY_MAX and gaps[-1] == SYNC_RETRY_MAX
    assert one_sent(s.tick(at + SYNC_RETRY_MAX), p.Sync).nonce == nonce  # the same Sync


def test_messages_before_synced_are_buffered_and_gaps_fetched() -> None:
    s = started()
    s.on_server(p.Joined("public", 2), T0)
    out = s.on_room([post("public", 5)], T0)
    assert lines(out) == []
    assert one_sent(out, p.Fetch) == p.Fetch("public", after=2, upto=4)
    assert lines(s.on_room([p.Synced("public", s.sync_nonce, 5)], T0)) == []
    out = s.on_server(p.Messages("public", [post("public", 3), post("public", 4)]), T0)
    assert lines(out) == [
        "[public] bob: m3",
        "[public] bob: m4",
        "[public] bob: m5",
        "* joined public",
    ]


def test_switching_rooms_moves_the_subscription_and_ignores_the_old_room() -> None:
    s = joined("public", 1)
    out = s.on_input("/join games", T0)
    assert sent(out) == [p.Join("games", 0)]
    out = s.on_server(p.Joined("games", 0), T0)
    assert Unsubscribe(p.topic("public")) in out and Subscribe(p.topic("games")) in out
    assert lines(s.on_room([post("public", 2)], T0)) == []
    out = s.on_room([p.Synced("games", s.sync_nonce, 0)], T0)
    assert lines(out) == ["* joined games"]
    assert lines(s.on_room([post("games", 1)], T0)) == ["[games] bob: m1"]


def test_forced_join_tells_the_user_then_joins_public() -> None:
    s = joined("games", 0)
    out = s.on_server(p.Joined("public", 7, [], forced=True), T0)
    assert lines(out) == ["* you were put out of games"]
    out = s.on_room([p.Synced("public", s.sync_nonce, 7)], T0)
    assert lines(out) == ["* joined public"]


def test_failed_first_join_falls_back_to_the_lobby() -> None:
    s = started("games")
    out = s.on_server(p.Error(p.Code.FULL, "the broker is at its room limit"), T0)
    assert lines(out) == ["* error: the broker is at its room limit"]
    assert sent(out) == [p.Join(p.LOBBY, 0)]


# ---- sequence and gaps ------------------------------------------------------------------------


def test_in_order_messages_are_delivered_and_duplicates_dropped() -> None:
    s = joined("public", 0)
    assert lines(s.on_room([post("public", 1), post("public", 2)], T0)) == [
        "[public] bob: m1",
        "[public] bob: m2",
    ]
    assert lines(s.on_room([post("public", 2), post("public", 1)], T0)) == []
    assert s.last["public"] == 2


def test_a_gap_is_fetched_and_later_messages_wait_for_it() -> None:
    s = joined("public", 1)
    out = s.on_room([post("public", 4)], T0)
    assert lines(out) == []
    assert one_sent(out, p.Fetch) == p.Fetch("public", after=1, upto=3)
    out = s.on_room([post("public", 5)], T0)
    assert lines(out) == [] and sent(out) == []  # one fetch at a time
    out = s.on_server(p.Messages("public", [post("public", 2), post("public", 3)]), T0)
    assert lines(out) == [f"[public] bob: m{n}" for n in (2, 3, 4, 5)]
    assert sent(out) == []


def test_out_of_order_messages_are_delivered_in_order() -> None:
    s = joined("public", 0)
    out = s.on_room([post("public", 3), post("public", 2)], T0)
    assert lines(out) == []
    out = s.on_room([post("public", 1)], T0)
    assert lines(out) == ["[public] bob: m1", "[public] bob: m2", "[public] bob: m3"]
    # The fetch for 1 and 2 may still be answered: nothing is shown twice.
    assert (
        lines(s.on_server(p.Messages("public", [post("public", 1), post("public", 2)]), T0)) == []
    )


def test_messages_gone_for_good_are_reported_and_skipped() -> None:
    s = joined("public", 1)
    s.on_room([post("public", 6)], T0)
    out = s.on_server(p.Messages("public", [post("public", 5)], first=5), T0)
    assert lines(out) == ["* 3 messages were lost", "[public] bob: m5", "[public] bob: m6"]
    assert s.last["public"] == 6


def test_one_message_gone_for_good_is_said_in_the_singular() -> None:
    s = joined("public", 1)
    s.on_room([post("public", 3)], T0)
    out = s.on_server(p.Messages("public", [], first=3), T0)
    assert lines(out) == ["* 1 message was lost", "[public] bob: m3"]


def test_broker_ping_ahead_fetches_the_tail() -> None:
    s = joined("public", 2)
    assert sent(s.on_server(p.Ping("public", 2), T0)) == []
    assert sent(s.on_server(p.Ping("other", 9), T0)) == []
    out = s.on_server(p.Ping("public", 4), T0)
    assert sent(out) == [p.Fetch("public", after=2, upto=4)]
    out = s.on_server(p.Messages("public", [post("public", 3), post("public", 4)]), T0)
    assert lines(out) == ["[public] bob: m3", "[public] bob: m4"]


def test_unanswered_fetch_is_sent_again() -> None:
    s = joined("public", 0)
    fetch = one_sent(s.on_room([post("public", 3)], T0), p.Fetch)
    assert p.Fetch not in map(type, sent(s.tick(T0 + 1)))
    assert fetch in sent(s.tick(T0 + 2.5))


# ---- sending ----------------------------------------------------------------------------------


def test_say_ack_and_resend_with_the_same_mid() -> None:
    s = joined()
    first = one_sent(s.on_input("hello\n", T0), p.Say)
    second = one_sent(s.on_input("again", T0 + 1), p.Say)
    assert first.text == "hello" and first.mid != second.mid
    s.on_server(p.Ack(second.mid, "public", 1), T0 + 1.1)
    assert not any(isinstance(m, p.Say) for m in sent(s.tick(T0 + RESEND_AFTER - 0.1)))
    resent = [m for m in sent(s.tick(T0 + RESEND_AFTER + 0.1)) if isinstance(m, p.Say)]
    assert resent == [first]
    s.on_server(p.Ack(first.mid, "public", 2), T0 + 4)
    assert not any(isinstance(m, p.Say) for m in sent(s.tick(T0 + 10)))


def test_refused_is_shown_and_each_blocked_line_shown_not_delivered() -> None:
    s = joined()
    for n in range(3):
        say = one_sent(s.on_input(f"spam {n}", T0), p.Say)
        out = s.on_server(p.Refused(say.mid, p.Code.BLOCKED, "you are blocked"), T0)
        said = [f"* not delivered (you are blocked): spam {n}"]
        assert lines(out) == ([f"* {BLOCKED_LINE}", *said] if n == 0 else said)
    assert lines(s.on_server(p.Refused(say.mid, p.Code.BLOCKED, "again"), T0)) == []
    say = one_sent(s.on_input("x" * 10, T0), p.Say)
    out = s.on_server(p.Refused(say.mid, p.Code.TOO_LONG, "message is too long"), T0)
    assert lines(out) == ["* not delivered: message is too long"]
    assert s.pending == {}


def test_a_message_the_broker_could_not_store_goes_again_under_its_mid_until_acked() -> None:
    from client.outbox import RETRY_NOT_STORED

    s = joined()
    say = one_sent(s.on_input("during the election", T0), p.Say)
    out = s.on_server(p.Refused(say.mid, p.Code.UNAVAILABLE, "no leader: try again"), T0)
    assert lines(out) == ["* not stored yet: no leader: try again; sending it again"]
    assert not [m for m in sent(s.tick(T0 + RETRY_NOT_STORED / 2)) if isinstance(m, p.Say)]
    again = [m for m in sent(s.tick(T0 + RETRY_NOT_STORED)) if isinstance(m, p.Say)]
    assert again == [p.Say("during the election", say.mid)]
    out = s.on_server(p.Refused(say.mid, p.Code.UNAVAILABLE, "no leader: try again"), T0 + 1)
    assert lines(out) == []  # said once
    s.on_server(p.Ack(say.mid, p.LOBBY, 7), T0 + 2)
    assert s.pending == {}


def test_double_slash_sends_the_text_literally_and_empty_lines_are_ignored() -> None:
    s = joined()
    assert one_sent(s.on_input("//join is a command", T0), p.Say).text == "/join is a command"
    assert s.on_input("", T0) == [] and s.on_input("   \n", T0) == []


# ---- commands ---------------------------------------------------------------------------------


def test_join_with_a_bad_name_is_refused_locally() -> None:
    s = joined()
    out = s.on_input("/join no/slashes!", T0)
    assert sent(out) == []
    assert len(lines(out)) == 1 and lines(out)[0].startswith("* not a room name")
    assert "letters, digits" in lines(out)[0]


@pytest.mark.parametrize(
    ("line", "msg"),
    [
        ("/leave", p.Leave()),
        ("/rooms", p.ListRooms()),
        ("/who", p.ListUsers("")),
        ("/who games", p.ListUsers("games")),
    ],
)
def test_commands_send_their_request(line: str, msg: p.ClientMsg) -> None:
    assert sent(joined().on_input(line, T0)) == [msg]


def test_unknown_command_and_help() -> None:
    s = joined()
    assert lines(s.on_input("/dance", T0)) == ["* unknown command /dance: try /help"]
    help_lines = lines(s.on_input("/help", T0))
    assert len(help_lines) >= 7 and all(line.startswith("* /") for line in help_lines)


def test_history_fetches_the_last_n_and_shows_them_as_history() -> None:
    s = joined("public", 10)
    assert sent(s.on_input("/history 3", T0)) == [p.Fetch("public", after=7, upto=10, limit=3)]
    out = s.on_server(p.Messages("public", [post("public", n) for n in (8, 9, 10)]), T0)
    assert lines(out) == ["* history public (3 messages)"] + [
        f"[public] bob: m{n}" for n in (8, 9, 10)
    ]
    assert {e.kind for e in out if isinstance(e, Line)} == {Kind.NOTICE, Kind.HISTORY}


def test_users_and_rooms_are_aligned_notices() -> None:
    s = joined()
    users = [p.UserInfo("alice", "public", False), p.UserInfo("bartholomew", "games", True)]
    users.append(p.UserInfo("carol", "public", True, account=True))
    assert lines(s.on_server(p.Users(users), T0)) == [
        "* alice        public",
        "* bartholomew  games  (blocked)",
        "* carol        public  (blocked, logged in)",
    ]
    rooms = [p.RoomInfo("games", 1, 0), p.RoomInfo("public", 3, 9)]
    assert lines(s.on_server(p.Rooms(rooms), T0)) == ["* games   1 member", "* public  3 members"]


def test_presence_and_notices_never_say_joined() -> None:
    s = joined()
    out = s.on_room(
        [p.Presence("public", "bob", what) for what in ("entered", "left", "blocked", "out")], T0
    )
    assert lines(out) == [
        "* bob entered public",
        "* bob left public",
        "* bob was blocked",
        "* bob was put out of public",
    ]
    assert lines(s.on_server(p.Notice("welcome"), T0)) == ["* welcome"]
    assert lines(s.on_server(p.Error(p.Code.BAD_ROOM, "bad room"), T0)) == ["* error: bad room"]


def test_control_characters_from_peers_are_neutralised() -> None:
    s = joined()
    out = s.on_room([post("public", 1, "red\x1b[31m\nline")], T0)
    assert lines(out) == ["[public] bob: red\ufffd[31m line"]


# ---- leaving ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "code", "word"),
    [
        (p.Bye.FIRED, Exit.FIRED, "fired"),
        (p.Bye.CLOSED, Exit.DISCONNECTED, "shut down"),
        (p.Bye.RESET, Exit.DISCONNECTED, "reset"),
    ],
)
def test_goodbye_stops_with_its_code(reason: p.Bye, code: Exit, word: str) -> None:
    s = joined()
    out = s.on_server(p.Goodbye(reason, "bye"), T0)
    stops = [e for e in out if isinstance(e, Stop)]
    assert len(stops) == 1 and stops[0].code == code
    assert stops[0].error.startswith("room-client: ") and word in stops[0].error
    assert s.on_room([post("public", 1)], T0) == []  # nothing after the end


def test_a_broker_that_restarts_is_a_loss_not_an_end() -> None:
    """Goodbye(restart) (the broker stopped by a signal): keep the session and say Hello again
    on a new DEALER, as after a crash."""
    s = joined()
    out = s.on_server(p.Goodbye(p.Bye.RESTART, "the broker is restarting"), T0)
    assert not [e for e in out if isinstance(e, Stop)]
    assert "* the broker is restarting; still trying" in lines(out)
    assert [e.hello for e in out if isinstance(e, Reconnect)] == [s.hello()]
    assert s.state == "reconnecting" and s.hello().session


def test_goodbye_fired_exits_with_code_4() -> None:
    out = joined().on_server(p.Goodbye(p.Bye.FIRED, "the admin fired you"), T0)
    assert out == [Stop(Exit.FIRED, "room-client: you were disconnected by the admin (fired)")]
    assert Exit.FIRED == 4


def test_exit_waits_for_pending_acks_then_quits() -> None:
    s = joined()
    say = one_sent(s.on_input("last words", T0), p.Say)
    assert s.end_of_input(T0) == []
    assert s.on_input("ignored", T0) == []
    out = s.on_server(p.Ack(say.mid, "public", 1), T0 + 0.1)
    assert out == [Send(p.Quit()), Stop(Exit.OK)]


def test_exit_gives_up_waiting_after_a_while() -> None:
    s = joined()
    s.on_input("never acked", T0)
    assert s.on_input("/exit", T0) == []
    assert not any(isinstance(e, Stop) for e in s.tick(T0 + 0.5))
    assert s.tick(T0 + 2.5) == [Send(p.Quit()), Stop(Exit.OK)]


def test_silence_from_the_broker_is_reported_and_a_new_hello_resumes() -> None:
    s = joined("public", 3)
    out = s.tick(T0 + HEARTBEAT + 0.1)
    assert sent(out) == [p.Ping()]  # our own heartbeat when we sent nothing else
    out = s.tick(T0 + 5.1)
    assert lines(out) == [f"* {LOST_LINE}"]
    reconnect = [e for e in out if isinstance(e, Reconnect)]
    assert reconnect == [Reconnect(p.Hello(p.VERSION, "alice", "secret"))]
    assert s.tick(T0 + 6) == []  # nothing but Hello while waiting for Welcome
    out = s.on_server(welcome(), T0 + 6)
    assert sent(out) == [p.Join("public", 0)]
    s.on_server(p.Joined("public", 5), T0 + 6)
    out = s.on_room([p.Synced("public", s.sync_nonce, 5)], T0 + 6)
    assert sent(out) == [p.Fetch("public", after=3, upto=5)]


def test_the_brokers_heartbeat_sets_the_ping_interval_and_the_lost_timeout() -> None:
    s = Session("alice", rng=random.Random(7))
    fast = p.Welcome(p.VERSION, "alice", p.LOBBY, "tcp://127.0.0.1:1", "secret", 0.2)
    s.on_server(fast, T0)
    s.on_server(p.Joined("public", 0), T0)
    s.on_room([p.Synced("public", s.sync_nonce, 0)], T0)
    assert sent(s.tick(T0 + 0.25)) == [p.Ping()]
    assert lines(s.tick(T0 + 0.95)) == []  # 0.95 s of silence: not yet 5 intervals
    out = s.tick(T0 + 1.05)
    assert lines(out) == [f"* {LOST_LINE}"]
    assert [e for e in out if isinstance(e, Reconnect)] == [Reconnect(s.hello())]
    assert s.tick(T0 + 1.5) == []
    assert s.tick(T0 + 2.1) == [Reconnect(s.hello())]  # Hello again every 5 intervals


def test_resume_keeps_messages_the_sub_delivered_before_joined() -> None:
    s = joined("public", 1)
    s.on_input("during", T0)
    s.tick(T0 + 5.1)  # lost: a new DEALER says Hello
    s.on_server(welcome(), T0 + 6)
    # The resent message comes back on the SUB before Joined answers the resumed Join.
    out = s.on_room([post("public", 2, "during", "alice")], T0 + 6)
    out += s.on_server(p.Joined("public", 1), T0 + 6)
    out += s.on_room([p.Synced("public", s.sync_nonce, 2)], T0 + 6)
    assert lines(out) == ["[public] alice: during", "* joined public"]
    assert p.Fetch not in map(type, sent(out))
    assert lines(s.on_room([post("public", 2, "during", "alice")], T0 + 6)) == []


def test_a_broker_that_started_over_is_followed_after_a_resume() -> None:
    s = joined("public", 50)
    s.tick(T0 + 5.1)
    s.on_server(welcome(), T0 + 6)
    out = s.on_room([post("public", 1, "resent")], T0 + 6)  # new numbering, before Joined
    out += s.on_server(p.Joined("public", 0), T0 + 6)
    out += s.on_room([p.Synced("public", s.sync_nonce, 1)], T0 + 6)
    assert lines(out) == [
        "* the broker lost the history of public",
        "[public] bob: resent",
        "* joined public",
    ]
    assert lines(s.on_room([post("public", 2)], T0 + 6)) == ["[public] bob: m2"]


TAKEN = p.Error(p.Code.NAME_TAKEN, "the name 'alice' is taken: choose another")


def lost(s: Session, at: float) -> None:
    """The broker falls silent: at ``at`` the session says Hello on a new connection."""
    out = s.tick(at)
    assert lines(out) == [f"* {LOST_LINE}"]
    assert [e for e in out if isinstance(e, Reconnect)] == [Reconnect(s.hello())]


def test_name_taken_while_resuming_is_retried_until_the_stale_session_is_gone() -> None:
    # A restarted broker welcomed our first Hello as a new session on a connection we replaced
    # since; our next Hello meets that session, whose secret we never got. It is ours: wait for
    # the broker to drop it (5 silent intervals), saying Hello again every interval.
    s = joined("public", 3)
    s.on_input("typed meanwhile", T0 + 1)
    t = T0 + 5.1
    lost(s, t)
    assert s.on_server(TAKEN, t + 0.1) == []  # no exit, no line
    assert s.tick(t + 0.1 + HEARTBEAT / 2) == []
    assert s.tick(t + 0.1 + HEARTBEAT) == [Reconnect(s.hello())]  # every interval, not every 5
    assert s.on_server(TAKEN, t + 1.2) == []
    assert s.tick(t + 2.2) == [Reconnect(s.hello())]
    out = s.on_server(welcome(), t + 5.5)  # the stale session is gone: a new one
    assert lines(out) == ["* reconnected to the broker"]
    assert p.Join("public", 0) in sent(out)
    assert [m.text for m in sent(out) if isinstance(m, p.Say)] == ["typed meanwhile"]
    assert not s.done
    # Losing the broker again later starts a fresh wait.
    s.on_server(p.Joined("public", 3), t + 5.5)
    s.on_room([p.Synced("public", s.sync_nonce, 3)], t + 5.5)
    lost(s, t + 11)
    assert s.on_server(TAKEN, t + 11.1) == []


def test_name_taken_while_resuming_gives_up_after_a_liveness_period() -> None:
    s = joined()
    t = T0 + 5.1
    lost(s, t)
    s.on_server(TAKEN, t)
    retried = 0
    now = t
    while now < t + 5 * HEARTBEAT:  # the broker's liveness: 5 intervals, plus its tick
        now += HEARTBEAT / 2
        if any(isinstance(e, Reconnect) for e in s.tick(now)):
            retried += 1
            assert s.on_server(TAKEN, now) == []  # the answer to that Hello
    assert retried >= 4
    out = s.on_server(TAKEN, t + 6 * HEARTBEAT)
    assert out == [Stop(Exit.DISCONNECTED, f"room-client: could not rejoin: {TAKEN.reason}")]
    assert s.done


@pytest.mark.parametrize(
    ("pub", "server", "expected"),
    [
        ("tcp://127.0.0.1:6556", "tcp://10.0.0.5:6555", "tcp://127.0.0.1:6556"),
        ("tcp://0.0.0.0:6556", "tcp://10.0.0.5:6555", "tcp://10.0.0.5:6556"),
        ("tcp://*:6556", "tcp://chat.example:6555", "tcp://chat.example:6556"),
        ("ipc:///tmp/room-pub", "tcp://10.0.0.5:6555", "ipc:///tmp/room-pub"),
    ],
)
def test_a_wildcard_pub_host_becomes_the_servers_host(pub: str, server: str, expected: str) -> None:
    from client.connection import pub_endpoint  # a pure helper of the I/O layer

    assert pub_endpoint(pub, server) == expected


# ---- direct messages --------------------------------------------------------------------------


def test_msg_sends_a_tell_and_waits_for_its_ack() -> None:
    s = joined()
    tell = one_sent(s.on_input("/msg bob  two  spaces kept", T0), p.Tell)
    assert (tell.to, tell.text) == ("bob", "two  spaces kept")
    assert not s.settled
    told = p.Told("alice", "bob", tell.text, T0)
    out = s.on_server(told, T0)
    assert lines(out) == ["[@bob] alice: two  spaces kept"]
    assert [e.own for e in out if isinstance(e, Line)] == [True]
    assert {e.kind for e in out if isinstance(e, Line)} == {Kind.DIRECT}
    s.on_server(p.Ack(tell.mid, "", 0), T0)
    assert s.settled
    assert sent(s.tick(T0 + RESEND_AFTER + 1)) in ([], [p.Ping()])  # never resent


def test_a_direct_message_received_names_both_sides() -> None:
    s = joined()
    out = s.on_server(p.Told("bob", "alice", "psst", T0), T0)
    assert lines(out) == ["[@alice] bob: psst"]
    assert "bob" in s.user_names()


def test_msg_refusals_and_usage() -> None:
    s = joined()
    tell = one_sent(s.on_input("/msg ghost hi", T0), p.Tell)
    out = s.on_server(p.Refused(tell.mid, p.Code.NO_SUCH_USER, "ghost is not connected"), T0)
    assert lines(out) == ["* not delivered: ghost is not connected"]
    assert s.settled
    for bad in ("/msg", "/msg bob", "/msg bob   "):
        assert lines(s.on_input(bad, T0)) == ["* usage: /msg USER TEXT"], bad
    assert lines(s.on_input("/msg no/such hi", T0))[0].startswith("* not a user name")
    tell = one_sent(s.on_input("/msg bob spam", T0), p.Tell)
    out = s.on_server(p.Refused(tell.mid, p.Code.BLOCKED, "blocked"), T0)
    assert s.is_blocked
    assert lines(out)[-1] == "* not delivered to bob (you are blocked): spam"


def test_a_tell_in_flight_when_the_broker_is_lost_is_reported_not_resent() -> None:
    s = joined()
    one_sent(s.on_input("/msg bob hi", T0), p.Tell)
    later = T0 + s.lost_after + 0.1
    assert any(isinstance(e, Reconnect) for e in s.tick(later))
    assert s.state == "reconnecting"
    assert lines(s.on_input("/msg bob again", later)) == [
        "* not delivered to bob: the broker is not reachable; try again"
    ]
    out = s.on_server(welcome(), later + 1)
    assert "* not delivered to bob: the broker was lost; send it again" in lines(out)
    assert not any(isinstance(m, p.Tell) for m in sent(out))
    assert s.state == "connected"


# ---- what the status bar and completion read --------------------------------------------------


def tracking() -> Session:
    s = Session("alice", rng=random.Random(7), track=True)
    s.on_server(welcome(), T0)
    s.on_server(p.Joined("public", 0), T0)
    return s


def test_a_tracking_session_lists_users_and_rooms_quietly_once_joined() -> None:
    s = tracking()
    out = s.on_room([p.Synced("public", s.sync_nonce, 0)], T0)
    assert lines(out) == ["* joined public"]
    assert sent(out)[-2:] == [p.ListUsers(""), p.ListRooms()]
    users = [
        p.UserInfo("alice", "public", False),
        p.UserInfo("bob", "public", True),
        p.UserInfo("carol", "games", False),
    ]
    assert lines(s.on_server(p.Users(users), T0)) == []
    assert lines(s.on_server(p.Rooms([p.RoomInfo("games", 1, 3)]), T0)) == []
    assert s.members() == ["alice", "bob"]
    assert s.user_names() == ["bob", "carol"]
    assert s.room_names() == ["games", "public"]
    assert s.blocked_users == {"bob"}
    # Asked by the user: shown, and learnt from too.
    one_sent(s.on_input("/who", T0), p.ListUsers)
    assert lines(s.on_server(p.Users(users[:1]), T0)) == ["* alice  public"]
    assert s.members() == ["alice"]
    # Refreshed now and then, quietly.
    s.on_server(p.Ping(), T0 + 30)  # the broker is alive
    assert p.ListRooms() in sent(s.tick(T0 + 31))


def test_presence_keeps_the_members_of_the_room() -> None:
    s = tracking()
    s.on_room([p.Synced("public", s.sync_nonce, 0)], T0)
    s.on_server(p.Users([p.UserInfo("alice", "public", False)]), T0)
    s.on_room([p.Presence("public", "bob", "entered")], T0)
    assert s.members() == ["alice", "bob"]
    s.on_room([p.Presence("public", "alice", "blocked")], T0)
    assert s.is_blocked
    s.on_room([p.Presence("public", "alice", "unblocked")], T0)
    assert not s.is_blocked
    s.on_room([p.Presence("public", "bob", "left")], T0)
    assert s.members() == ["alice"]
    assert s.user_names() == ["bob"]  # still a name to complete
    s.on_room([p.Presence("public", "bob", "fired")], T0)
    assert s.user_names() == []


def test_listings_say_who_is_logged_in_until_they_enter_again() -> None:
    """``roster.accounts``: room-web marks logged-in members from it, and lists the room again for
    a name it lacks (presence does not say whether one who entered is logged in)."""
    s = tracking()
    s.on_room([p.Synced("public", s.sync_nonce, 0)], T0)
    users = [p.UserInfo("alice", "public", False, True), p.UserInfo("bob", "public", False)]
    s.on_server(p.Users(users), T0)
    assert s.roster.accounts == {"alice": True, "bob": False}
    s.on_room([p.Presence("public", "bob", "left"), p.Presence("public", "carol", "entered")], T0)
    s.on_room([p.Presence("public", "bob", "entered")], T0)  # perhaps another session now
    assert s.roster.accounts == {"alice": True}
    one_sent(s.on_input("/who public", T0), p.ListUsers)
    s.on_server(p.Users([*users[:1], p.UserInfo("carol", "public", False, True)]), T0)
    assert s.roster.accounts == {"alice": True, "carol": True}


def test_an_untracked_session_sends_no_listings_of_its_own() -> None:
    s = started()
    s.on_server(p.Joined("public", 0), T0)
    out = s.on_room([p.Synced("public", s.sync_nonce, 0)], T0)
    assert not any(isinstance(m, p.ListUsers | p.ListRooms) for m in sent(out))
    assert s.state == "connected"


def test_a_session_the_broker_ended_is_started_anew_and_unacknowledged_messages_resent() -> None:
    s = joined("public", 3)
    s.on_input("still mine", T0)
    out = s.tick(T0 + 5.1)
    assert [e for e in out if isinstance(e, Reconnect)] == [
        Reconnect(p.Hello(p.VERSION, "alice", "secret"))
    ]
    out = s.on_server(p.Error(p.Code.BAD_SESSION, "ended", "hello"), T0 + 5.2)
    assert lines(out) == ["* the broker ended this session; starting a new one"]
    assert sent(out) == [p.Hello(p.VERSION, "alice", "")]
    out = s.on_server(welcome(), T0 + 5.3)
    assert [m.text for m in sent(out) if isinstance(m, p.Say)] == ["still mine"]


def test_a_refused_gap_fetch_is_forgotten_and_a_refused_history_fetch_is_shown() -> None:
    s = joined("public", 3)
    s.on_server(p.Ping("public", 5), T0)  # a tail gap: a Fetch goes out
    assert len(s.fetches) == 1
    out = s.on_server(p.Error(p.Code.NOT_MEMBER, "you are not in public", "fetch"), T0)
    assert out == [] and s.fetches == []
    s.on_input("/history 2", T0)
    out = s.on_server(p.Error(p.Code.NOT_MEMBER, "you are not in public", "fetch"), T0)
    assert lines(out) == ["* error: you are not in public"] and s.fetches == []
