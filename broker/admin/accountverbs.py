"""The admin's verbs on accounts: ``invite``, ``accounts``, ``ban``, ``unban``, ``register`` and
``passwd``; handlers as ``commands``' are, mapped in its table. ``register`` and ``passwd`` get
the SCRAM verifier room-ctl made from the password (which never reaches the broker); ``invite``
returns its code in the reply's data alone, so neither the log nor the audit holds it."""

from __future__ import annotations

import secrets
from dataclasses import replace

from broker.admin.results import AdminError, Result
from broker.admin.verbs import INVITE_HOURS, INVITE_HOURS_MAX, counted
from broker.chat.accounts import invite_digest
from broker.chat.chat import Chat
from broker.store.base import Account, AccountStore
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p
from broker.wire.scram import Verifier, parse_verifier


def _store(chat: Chat) -> AccountStore:
    return chat.store.account_store()


def _named(chat: Chat, args: list[str]) -> tuple[AccountStore, Account | None, str]:
    name = args[0]
    if not p.valid_name(name):
        raise AdminError(p.Code.BAD_ARGS, f"invalid user name {name!r}: use {p.NAME_RULE}")
    accounts = _store(chat)
    return accounts, accounts.account(name), name


def _account(chat: Chat, args: list[str]) -> tuple[AccountStore, Account]:
    accounts, account, name = _named(chat, args)
    if account is None:
        raise AdminError(p.Code.BAD_ARGS, f"{name} has no account: check `room-ctl accounts`")
    return accounts, account


def _verifier(args: list[str]) -> Verifier:
    v = parse_verifier(args[1])
    if v is None:
        raise AdminError(
            p.Code.BAD_ARGS, "the verifier is not SCRAM-SHA-256$ITER:SALT$STORED:SERVER"
        )
    return v


def invite(chat: Chat, args: list[str], now: float) -> Result:
    text = args[0] if args else str(INVITE_HOURS)
    if not text.isdigit() or not 1 <= int(text) <= INVITE_HOURS_MAX:
        raise AdminError(p.Code.BAD_ARGS, f"HOURS must be a number from 1 to {INVITE_HOURS_MAX}")
    hours = int(text)
    code = secrets.token_urlsafe(16)
    expires = now + hours * 3600
    _store(chat).add_invite(invite_digest(code), expires)
    return Result(f"invite made, valid once for {counted(hours, 'hour')}", cp.Invite(code, expires))


def accounts(chat: Chat, args: list[str], now: float) -> Result:
    rows = [
        cp.AccountInfo(a.name, a.created, a.last_login, a.banned) for a in _store(chat).accounts()
    ]
    return Result(counted(len(rows), "account"), cp.AccountList(rows))


def ban(chat: Chat, args: list[str], now: float) -> Result:
    store, account = _account(chat, args)
    name = account.name
    if account.banned:
        return Result(f"{name} was already banned")
    store.put_account(replace(account, banned=True))
    if chat.account_banned(name, now):
        return Result(f"banned {name}, and disconnected them")
    chat.store.release(name, end_session=True)  # a session kept for a resume ends too
    return Result(f"banned {name}")


def unban(chat: Chat, args: list[str], now: float) -> Result:
    store, account = _account(chat, args)
    if not account.banned:
        return Result(f"{account.name} was not banned")
    store.put_account(replace(account, banned=False))
    return Result(f"unbanned {account.name}")


def register(chat: Chat, args: list[str], now: float) -> Result:
    store, account, name = _named(chat, args)
    if account is not None:
        raise AdminError(
            p.Code.NAME_TAKEN, f"{name} is registered already: `room-ctl passwd {name}`"
        )
    store.put_account(Account(name, _verifier(args), now))
    user = chat.users.get(name)
    if user is not None:  # whoever holds the name now has no password: the owner comes next
        chat.goodbye(user.peer, p.Bye.FIRED, "the admin registered this name to an account")
        chat.remove(user, now, "name registered", what=p.PresenceKind.FIRED, end_session=True)
    else:
        chat.store.release(name, end_session=True)
    return Result(f"registered {name}")


def passwd(chat: Chat, args: list[str], now: float) -> Result:
    store, account = _account(chat, args)
    store.put_account(replace(account, verifier=_verifier(args)))
    return Result(f"set a new password for {account.name}")
