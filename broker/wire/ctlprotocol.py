"""The control channel of the room protocol: room-ctl's requests and the broker's replies.

The base of every message (``_Msg``), the integer ranges, the codes, the shared listings
(``UserInfo``, ``RoomInfo``), the encoder and the decoders' error handling are
``broker.wire.protocol``'s, imported from there; this module adds only what the control channel
carries. Its specification is section 6 of ``docs/protocol.md``.

Sockets and frames::

    room-ctl REQ   -> broker ROUTER    [b"", body: CtlRequest]      (REQ adds the empty delimiter)
    broker ROUTER  -> room-ctl REQ     [b"", body: CtlReply]
"""

from __future__ import annotations

from typing import Any

import msgspec

from broker.wire.protocol import Id, RoomInfo, UserInfo, _decoder, _Msg

# ---- control (REQ -> ROUTER) -------------------------------------------------------------------


class CtlRequest(_Msg, tag="ctl"):
    """An admin command: ``command`` is a verb of the broker's table, ``args`` its arguments."""

    id: Id
    command: str
    # A msgspec default, copied per instance: ruff does not see _Msg's base from here.
    args: list[str] = []  # noqa: RUF012


class UserList(_Msg, tag="ctlusers"):
    """``who``: the connected users in name order, and every blocked name, connected or not."""

    users: list[UserInfo]
    blocked: list[str]


class RoomList(_Msg, tag="ctlrooms"):
    """``rooms``: every room in name order, with its members and its newest sequence number."""

    rooms: list[RoomInfo]


class Counters(_Msg, tag="counters"):
    """The broker's counters since it started; sizes in bytes, times in seconds."""

    clients: int
    connections: int
    unnamed_connections: int
    rooms: int
    blocked: int
    messages_in: int
    messages_out: int
    fetched: int
    direct: int
    refused: int
    messages_per_second: float
    drops: int
    bad_frames: int
    uptime_seconds: float
    database_bytes: int
    sealing_ms: float = 0.0


class Stats(_Msg, tag="ctlstats"):
    """``stats``: the counters."""

    stats: Counters


class AuditRow(_Msg, tag="auditrow"):
    """One admin request: when, by whom (``admin`` "": a refused key), what, and its result."""

    ts: float
    admin: str
    key: str
    command: str
    args: list[str]
    ok: bool
    message: str


class AuditLog(_Msg, tag="ctlaudit"):
    """``audit``: the newest entries of the audit log, oldest first."""

    audit: list[AuditRow]


class JoinRequest(_Msg, tag="joinrequest"):
    """A user who asked to join a private room, and when (seconds since the epoch, UTC)."""

    room: str
    user: str
    ts: float


class RequestList(_Msg, tag="ctlrequests"):
    """``requests``: the join requests waiting for the admin, oldest first."""

    requests: list[JoinRequest]


class AccountInfo(_Msg, tag="accountinfo"):
    """An account: when it was made and last logged in to (0: never), seconds since the epoch
    (UTC), and whether it is banned."""

    name: str
    created: float
    last_login: float
    banned: bool


class AccountList(_Msg, tag="ctlaccounts"):
    """``accounts``: every account, by name."""

    accounts: list[AccountInfo]


class Invite(_Msg, tag="ctlinvite"):
    """``invite``: a one-time code for ``room-client register --invite``, valid until
    ``expires`` (seconds since the epoch, UTC). Not in the audit log: only this reply holds it."""

    code: str
    expires: float


CtlData = UserList | RoomList | Stats | AuditLog | RequestList | AccountList | Invite
"""The listings a ``CtlReply`` carries, told apart by their tag."""


class CtlReply(_Msg, tag="ctlreply"):
    """``ok`` with a one-line ``message``, or an error ``code``; ``data`` for listings."""

    id: Id
    ok: bool
    message: str
    code: str = ""
    data: CtlData | None = None


def plain(value: Any) -> Any:
    """``CtlReply.data`` (or any part of it) as plain values, the way ``room-ctl --json`` prints
    it: a struct is a map of its fields, without its tag; a list stays a list."""
    if isinstance(value, msgspec.Struct):
        return {name: plain(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


# ---- encoding (``protocol.encode`` encodes these too) ------------------------------------------

_ctl_request_decoder = msgspec.msgpack.Decoder(CtlRequest)
_ctl_reply_decoder = msgspec.msgpack.Decoder(CtlReply)

decode_ctl_request = _decoder(_ctl_request_decoder.decode, "control request")
decode_ctl_reply = _decoder(_ctl_reply_decoder.decode, "control reply")
