"""Issue 25, a name belongs to someone: accounts, logins, the policy and the admin's verbs.

Pure tests of the chat's part (``broker.chat.accounts``) and the stores' accounts first, then the
real programs on loopback: ``room-client register`` and ``join``, ``room-ctl``'s verbs, a broker
restarted, and a guesser beside a canary. No fixed sleeps; every process is stopped."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from conftest import client_factory, running_broker
from procs import ClientProc, Proc, _cmd, ctl

from broker.chat.accounts import FREE_GUESSES, Guesses, invite_digest
from broker.chat.chat import Chat, Settings
from broker.config import Exit
from broker.store.base import Account
from broker.store.memory import MemoryStore
from broker.store.sqlstore import SQLiteStore
from broker.wire import protocol as p
from broker.wire import scram

PASSWORD = "correct horse battery staple"
VERIFIER = scram.verifier(PASSWORD, 4096)  # the floor: fast pure tests


def _register(name: str, invite: str = "", v: scram.Verifier = VERIFIER) -> p.Register:
    return p.Register(p.VERSION, name, invite, v.salt, v.iterations, v.stored_key, v.server_key)


def _chat(**policy: str) -> Chat:
    return Chat(MemoryStore(), Settings("tcp://127.0.0.1:1", **policy))  # type: ignore[arg-type]


def _answer(chat: Chat) -> p.ServerMsg:
    return chat.out.replies[-1][1]


def _login(chat: Chat, peer: bytes, name: str, password: str, now: float, address: str = "a"):
    """Login and Prove as a client does; every reply of both."""
    start = len(chat.out.replies)
    prover = scram.Prover(name, password)
    chat.handle(peer, p.Login(p.VERSION, name, prover.first()), now, address)
    challenge = _answer(chat)
    if isinstance(challenge, p.Challenge):
        chat.handle(peer, p.Prove(prover.final(challenge.first)), now, address)
        verified = chat.out.replies[-2][1] if len(chat.out.replies) >= 2 else None
        if isinstance(verified, p.Verified):
            prover.check(verified.final)  # the broker proves it knows the verifier
    return [msg for _, msg in chat.out.replies[start:]]


# ---- pure: the chat's rules ---------------------------------------------------------------------


def test_guesses_wait_doubles_after_the_free_ones_and_is_capped() -> None:
    g = Guesses(longest=8.0)
    for _ in range(FREE_GUESSES):
        g.failed("alice", 100.0)
        assert g.wait("alice", 100.0) == 0.0
    waits = []
    for _ in range(6):
        g.failed("alice", 100.0)
        waits.append(g.wait("alice", 100.0))
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert g.wait("bob", 100.0) == 0.0  # another name waits for nothing
    assert g.wait("alice", 107.5) == 0.5
    g.forget("alice")
    assert g.wait("alice", 100.0) == 0.0


def test_a_registered_name_needs_its_password_and_a_free_one_does_not() -> None:
    chat = _chat()
    chat.handle(b"r", _register("alice"), 1.0)
    assert _answer(chat) == p.Registered("alice")
    chat.handle(b"s", p.Hello(p.VERSION, "alice"), 2.0)  # the squatter
    assert isinstance(err := _answer(chat), p.Error) and err.code is p.Code.LOGIN_FIRST
    assert "alice" not in chat.users
    wrong = _login(chat, b"s", "alice", "guess", 3.0)
    assert [type(m) for m in wrong] == [p.Challenge, p.Error]
    assert wrong[-1].code is p.Code.BAD_PASSWORD
    right = _login(chat, b"a", "alice", PASSWORD, 4.0)
    assert [type(m) for m in right] == [p.Challenge, p.Verified, p.Welcome]
    assert chat.user_list() == [p.UserInfo("alice", p.LOBBY, False, True)]
    chat.handle(b"b", p.Hello(p.VERSION, "bob"), 5.0)  # unregistered: free as before
    assert isinstance(_answer(chat), p.Welcome)
    assert chat.user_list()[1] == p.UserInfo("bob", p.LOBBY, False, False)
    account = chat.store.account_store().account("alice")
    assert account is not None and account.last_login == 4.0


def test_a_resume_needs_the_session_of_a_login_and_a_password_outranks_a_session() -> None:
    chat = _chat()
    chat.handle(b"r", _register("alice"), 1.0)
    welcome = _login(chat, b"a", "alice", PASSWORD, 2.0)[-1]
    assert isinstance(welcome, p.Welcome)
    chat.handle(b"a2", p.Hello(p.VERSION, "alice", welcome.session), 3.0)  # a resume
    assert isinstance(_answer(chat), p.Welcome) and chat.users["alice"].account
    again = _login(chat, b"a3", "alice", PASSWORD, 4.0)  # the owner on a new device
    assert isinstance(again[-1], p.Welcome) and chat.users["alice"].peer == b"a3"
    assert (b"a2", p.Goodbye(p.Bye.REPLACED, "you logged in on another connection")) in (
        chat.out.replies
    )


def test_registration_policies_and_invites() -> None:
    closed = _chat(registration="closed")
    closed.handle(b"r", _register("alice"), 1.0)
    assert _answer(closed).code is p.Code.REGISTRATION_CLOSED
    chat = _chat(registration="invite")
    chat.handle(b"r", _register("alice"), 1.0)
    assert _answer(chat).code is p.Code.REGISTRATION_CLOSED
    chat.store.account_store().add_invite(invite_digest("c0de"), 100.0)
    chat.handle(b"r", _register("alice", "c0de"), 2.0)
    assert _answer(chat) == p.Registered("alice")
    chat.handle(b"r2", _register("bob", "c0de"), 3.0)  # once only
    assert _answer(chat).code is p.Code.BAD_INVITE
    chat.store.account_store().add_invite(invite_digest("late"), 10.0)
    chat.handle(b"r3", _register("carol", "late"), 11.0)  # expired
    assert _answer(chat).code is p.Code.BAD_INVITE
    chat.handle(b"r4", _register("alice", "late"), 4.0)
    assert _answer(chat).code is p.Code.NAME_TAKEN


def test_required_lets_in_registered_names_only() -> None:
    chat = _chat(accounts="required")
    chat.handle(b"b", p.Hello(p.VERSION, "bob"), 1.0)
    assert _answer(chat).code is p.Code.UNKNOWN_ACCOUNT
    chat.handle(b"r", _register("bob"), 2.0)
    assert isinstance(_login(chat, b"b", "bob", PASSWORD, 3.0)[-1], p.Welcome)


def test_a_dozen_wrong_guesses_are_refused_without_anyone_waiting() -> None:
    chat = _chat()
    chat.handle(b"r", _register("alice"), 1.0)
    chat.handle(b"r", _register("bob"), 1.0)
    codes = [
        _login(chat, b"g", "alice", f"guess{i}", 10.0 + i, "6.6.6.6")[-1].code for i in range(12)
    ]
    assert codes[:FREE_GUESSES] == [p.Code.BAD_PASSWORD] * FREE_GUESSES
    assert p.Code.RETRY_LATER in codes
    retry = next(m for _, m in chat.out.replies if getattr(m, "code", None) is p.Code.RETRY_LATER)
    assert re.search(r"try again in \d+ s", retry.reason)
    # Others log in at once: another name from another address.
    assert isinstance(_login(chat, b"b", "bob", PASSWORD, 22.0, "1.1.1.1")[-1], p.Welcome)
    # The guesser's address waits for bob too; alice herself waits at most a minute.
    assert _login(chat, b"g2", "bob", "x", 22.0, "6.6.6.6")[-1].code is p.Code.RETRY_LATER
    assert isinstance(_login(chat, b"a", "alice", PASSWORD, 22.0 + 61, "2.2.2.2")[-1], p.Welcome)


def test_a_logged_in_user_changes_its_password() -> None:
    chat = _chat()
    chat.handle(b"r", _register("alice"), 1.0)
    _login(chat, b"a", "alice", PASSWORD, 2.0)
    chat.handle(b"a", _register("alice", v=scram.verifier("new one", 4096)), 3.0)
    assert _answer(chat) == p.Registered("alice")
    assert _login(chat, b"x", "alice", PASSWORD, 4.0)[-1].code is p.Code.BAD_PASSWORD
    assert isinstance(_login(chat, b"y", "alice", "new one", 5.0)[-1], p.Welcome)


def test_sqlite_keeps_accounts_and_invites_across_a_restart_and_no_password(tmp_path: Path):
    path = tmp_path / "room.db"
    store = SQLiteStore(path)
    accounts = store.account_store()
    accounts.put_account(Account("alice", VERIFIER, 1.5))
    accounts.add_invite(invite_digest("c0de"), 100.0)
    store.commit()
    store.close()
    store = SQLiteStore(path)
    accounts = store.account_store()
    assert accounts.account("alice") == Account("alice", VERIFIER, 1.5)
    assert accounts.use_invite(invite_digest("c0de"), 2.0)
    assert not accounts.use_invite(invite_digest("c0de"), 3.0)
    store.commit()
    store.close()
    for f in tmp_path.iterdir():
        assert PASSWORD.encode() not in f.read_bytes() and b"c0de" not in f.read_bytes()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM invites WHERE used = 1").fetchone() == (1,)


# ---- the real programs ---------------------------------------------------------------------------


def _client(broker, name: str, password: str | None, *extra: str) -> ClientProc:
    env = {"ROOM_DATA_DIR": str(broker.data_dir), "ROOM_PASSWORD": password or ""}
    return ClientProc(broker.router, name, *extra, env=env)


def _register_cli(broker, name: str, password: str, *extra: str) -> tuple[int, list[str]]:
    env = {"ROOM_DATA_DIR": str(broker.data_dir), "ROOM_PASSWORD": password}
    proc = Proc(_cmd("client.cli", "register", "--server", broker.router, "--name", name, *extra),
                env=env)  # fmt: skip
    code = proc.wait()
    return code, proc.drain() + proc.err


def _refused(broker, name: str, password: str | None) -> str:
    """``room-client join`` that must fail: its one line."""
    client = _client(broker, name, password)
    assert client.wait() == Exit.ERROR
    assert len(client.err) == 1, client.err
    return client.err[0]


def test_register_then_login_and_no_squatting_through_the_clis(tmp_path: Path) -> None:
    with running_broker(tmp_path / "data") as broker, client_factory(broker) as clients:
        assert _register_cli(broker, "alice", PASSWORD) == (
            0, ["registered alice: room-client join --name alice logs in with its password"]
        )  # fmt: skip
        code, out = _register_cli(broker, "alice", "other")
        assert code == Exit.ERROR and out == [
            "room-client: not registered: alice is registered already: choose another"
        ]
        alice = _client(broker, "alice", PASSWORD)
        alice.expect(r"^\* joined public$")
        bob = clients.join("bob")  # the README's way: no account, no password
        bob.send("hi alice")
        alice.expect(r"^\[public\] bob: hi alice$")
        listing = ctl(broker, "who").stdout
        assert re.search(r"^alice\s+public\s+logged in$", listing, re.M), listing
        assert re.search(r"^bob\s+public$", listing, re.M), listing
        assert "login refused: wrong password for alice" in _refused(broker, "alice", "guess")
        line = _refused(broker, "alice", None)  # the squatter has no password
        assert "alice is a registered name: log in with its password" in line
        assert "ROOM_PASSWORD" in line
        alice.close_input()
        assert alice.wait() == 0
        output = "\n".join(broker.drain() + broker.seen + broker.err)
        assert "wrong password for alice from 127.0.0.1" in output
    for f in (tmp_path / "data").rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes(), f
    assert PASSWORD not in output


def test_registration_closed_and_by_invite(tmp_path: Path) -> None:
    with running_broker(tmp_path / "closed", "--registration", "closed") as broker:
        code, out = _register_cli(broker, "carol", PASSWORD)
        assert code == Exit.ERROR and "registration is closed" in out[0]
        made = ctl(broker, "register", "carol")  # no ROOM_PASSWORD: one is made, shown once
        assert made.returncode == 0, made.stderr
        given = re.search(r"^password of carol: (\S+) \(shown once", made.stdout, re.M)
        assert given is not None
        carol = _client(broker, "carol", given[1])
        carol.expect(r"^\* joined public$")
        audit = ctl(broker, "audit").stdout
        assert "register carol (verifier)" in audit and given[1] not in audit
        carol.close_input()
        assert carol.wait() == 0
        assert given[1] not in "\n".join(broker.drain() + broker.seen)
    with running_broker(tmp_path / "invite", "--registration", "invite") as broker:
        code, out = _register_cli(broker, "dave", PASSWORD)
        assert code == Exit.ERROR and "by invite" in out[0]
        made = ctl(broker, "invite", "--hours", "1")
        assert made.returncode == 0, made.stderr
        code_word = made.stdout.split()[-1]
        assert _register_cli(broker, "dave", PASSWORD, "--invite", code_word)[0] == 0
        code, out = _register_cli(broker, "erin", PASSWORD, "--invite", code_word)
        assert code == Exit.ERROR and "unknown, used or expired" in out[0]
        assert code_word not in ctl(broker, "audit").stdout
        listing = ctl(broker, "accounts").stdout
        assert re.search(r"^dave\s+\S+Z\s+never$", listing, re.M), listing


def test_required_refuses_an_unregistered_name(tmp_path: Path) -> None:
    with running_broker(tmp_path / "data", "--accounts", "required") as broker:
        line = _refused(broker, "bob", None)
        assert "only registered names may chat" in line
        assert "room-client register --name bob" in line
        assert _register_cli(broker, "bob", PASSWORD)[0] == 0
        bob = _client(broker, "bob", PASSWORD)
        bob.expect(r"^\* joined public$")
        bob.close_input()
        assert bob.wait() == 0


def test_a_ban_fires_at_once_and_holds_across_a_restart_until_unban(tmp_path: Path) -> None:
    with running_broker(tmp_path / "data") as broker:
        assert _register_cli(broker, "mallory", PASSWORD)[0] == 0
        mallory = _client(broker, "mallory", PASSWORD)
        mallory.expect(r"^\* joined public$")
        banned = ctl(broker, "ban", "mallory")
        assert banned.stdout.strip() == "banned mallory, and disconnected them"
        assert mallory.wait() == Exit.FIRED
        assert "banned" in _refused(broker, "mallory", PASSWORD)
        broker.stop()
        broker = broker.restart()
        try:
            assert "the admin banned the account mallory" in _refused(broker, "mallory", PASSWORD)
            assert re.search(r"^mallory\s.*banned$", ctl(broker, "accounts").stdout, re.M)
            assert ctl(broker, "unban", "mallory").stdout.strip() == "unbanned mallory"
            back = _client(broker, "mallory", PASSWORD)
            back.expect(r"^\* joined public$")
            back.close_input()
            assert back.wait() == 0
        finally:
            broker.stop()


def test_a_dozen_wrong_guesses_leave_the_broker_answering_everyone_else(tmp_path: Path) -> None:
    with running_broker(tmp_path / "data") as broker, client_factory(broker) as clients:
        assert _register_cli(broker, "alice", PASSWORD)[0] == 0
        canary = clients.join("canary")
        slowest, lines = 0.0, []
        for i in range(12):
            lines.append(_refused(broker, "alice", f"guess {i}"))
            start = time.monotonic()
            canary.send(f"still here {i}")
            canary.expect(rf"^\[public\] canary: still here {i}$")
            slowest = max(slowest, time.monotonic() - start)
        assert sum("wrong password" in line for line in lines) >= 3
        assert any(re.search(r"login refused: too many .* try again in \d+ s", x) for x in lines)
        assert slowest < 1.0, f"the canary waited {slowest:.3f} s"
        print(f"canary's slowest answer during 12 wrong guesses: {slowest * 1000:.0f} ms")
