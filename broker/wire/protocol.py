"""The room wire protocol, defined once and shared by the broker, the client and room-ctl.

Each message is a msgspec struct, encoded in MessagePack as an array whose first item is its tag,
so decoding checks shape and types in one pass. The full specification (frames, encoding, every
message and code, the rules of the conversation, annotated bytes) is ``docs/protocol.md``; the
control channel's messages (room-ctl's) are in ``broker.wire.ctlprotocol``, on the same base.

Sockets and frames::

    client DEALER  -> broker ROUTER    [body: ClientMsg]            (ROUTER adds the peer id)
    broker ROUTER  -> client DEALER    [body: list[ServerMsg]]
    broker PUB     -> client SUB       [topic: room + b"\\0", body: list[RoomEvent]]
    room-ctl REQ   -> broker ROUTER    [b"", body: CtlRequest]      (broker.wire.ctlprotocol)
    broker ROUTER  -> room-ctl REQ     [b"", body: CtlReply]
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta

VERSION: Final = 1
"""Bumped on any incompatible change; checked at ``Hello``."""

NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$"
"""Users and rooms: 1-32 letters, digits, '_' or '-', not starting with '_' or '-'. These are also
valid NATS subject tokens and never contain the topic delimiter."""
NAME_RULE: Final = "1-32 letters, digits, '_' or '-', starting with a letter or digit"
_NAME_RE: Final = re.compile(NAME_PATTERN)

CONTROL_CHARS: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""What the text of a ``Say`` or ``Tell`` may not contain (the text rule): characters that would
break the one-line-per-message log and client output."""

LOBBY: Final = "public"
"""Every user starts here and returns here on leave or out; it is never removed."""

TOPIC_END: Final = b"\0"

MAX_ID: Final = 2**53 - 1
"""The largest integer on the wire (ids, sequence numbers, nonces): exact in a JavaScript number,
and far below SQLite's and MessagePack's limits. A larger or negative one is ``bad_frame``."""
HISTORY_MAX: Final = 1000
"""The most messages one ``Join`` history or one ``Fetch`` returns."""
SESSION_MAX: Final = 64
"""The longest session secret a ``Hello`` may carry (the broker issues 32 hex digits)."""

Id = Annotated[int, Meta(ge=0, le=MAX_ID)]
"""A message id, sequence number, nonce or request id: 0 to ``MAX_ID``."""
Count = Annotated[int, Meta(ge=0, le=HISTORY_MAX)]
Limit = Annotated[int, Meta(ge=1, le=HISTORY_MAX)]
Version = Annotated[int, Meta(ge=0, le=0xFFFF)]
Secret = Annotated[str, Meta(max_length=SESSION_MAX)]
Scram = Annotated[str, Meta(max_length=1024)]
"""A SCRAM message (RFC 5802's text, e.g. ``n,,n=alice,r=NONCE``)."""


def valid_name(name: str) -> bool:
    """True when ``name`` is an acceptable user or room name."""
    return _NAME_RE.fullmatch(name) is not None


def topic(room: str) -> bytes:
    """The PUB topic of a room: its name and a delimiter a name cannot contain."""
    return room.encode() + TOPIC_END


class Code(StrEnum):
    """Error and refusal codes, sent in ``Error``, ``Refused`` and ``CtlReply``."""

    BAD_FRAME = "bad_frame"  # wrong frame count or undecodable body
    BAD_VERSION = "bad_version"  # Hello with another protocol version
    HELLO_FIRST = "hello_first"  # a command before Hello
    ALREADY = "already"  # a second Hello on the same connection
    BAD_NAME = "bad_name"  # user name breaks NAME_RULE
    NAME_TAKEN = "name_taken"  # another connected user has the name
    BAD_ROOM = "bad_room"  # room name breaks NAME_RULE
    TOO_LONG = "too_long"  # message text over the limit
    BAD_TEXT = "bad_text"  # message text empty, or with a control character or line break
    BLOCKED = "blocked"  # sender is blocked: logged by the broker, never published
    RATE_LIMITED = "rate_limited"  # sender exceeded its rate limit
    FULL = "full"  # broker at its client or room cap
    BUSY = "busy"  # history asked faster than it is read, or beyond the asker's rate budget
    UNKNOWN_COMMAND = "unknown_command"  # control command not in the table
    BAD_ARGS = "bad_args"  # control command with wrong arguments
    NO_SUCH_USER = "no_such_user"  # control command about a user who is not connected
    NOT_CONNECTED = "not_connected"  # Tell to a user who is not connected (on any broker)
    NOT_MEMBER = "not_member"  # Fetch of a room the user is not in
    BAD_SESSION = "bad_session"  # Hello resuming a session the broker does not have (ended)
    REFUSED = "refused"  # control request from a key that is not (or no longer) an admin's
    UNAVAILABLE = "unavailable"  # storage refused the message; it was not accepted
    INTERNAL = "internal"  # a bug in the broker: the request may have had part of its effect
    LOGIN_FIRST = "login_first"  # Hello for a registered name: log in with its password
    UNKNOWN_ACCOUNT = "unknown_account"  # Login of a name that has no account
    BAD_PASSWORD = "bad_password"  # the SCRAM proof does not match the account's
    BANNED = "banned"  # the account is banned by the admin
    RETRY_LATER = "retry_later"  # too many wrong passwords for this name or address: wait
    REGISTRATION_CLOSED = "registration_closed"  # the broker takes no new accounts (or no invite)
    BAD_INVITE = "bad_invite"  # the invite code is unknown, used or expired


class PresenceKind(StrEnum):
    """What happened to a user in a room (``Presence.what``)."""

    ENTERED = "entered"
    LEFT = "left"  # left the room, or the chat (also: dropped, or the broker closed)
    BLOCKED = "blocked"
    UNBLOCKED = "unblocked"
    OUT = "out"  # the admin put the user out of the room
    FIRED = "fired"  # the admin disconnected the user


class Bye(StrEnum):
    """Why the broker ended a session (``Goodbye.reason``)."""

    FIRED = "fired"
    RESET = "reset"
    CLOSED = "closed"
    TIMEOUT = "timeout"
    REPLACED = "replaced"
    RESTART = "restart"


class _Msg(msgspec.Struct, array_like=True, frozen=True, tag_field="t", forbid_unknown_fields=True):
    """Base of every wire message: an array tagged with the class's short tag."""


# ---- client -> broker (DEALER -> ROUTER) -------------------------------------------------------


class Hello(_Msg, tag="hello"):
    """Claim a name. ``session`` is the secret from an earlier ``Welcome``, to resume it."""

    version: Version
    name: str
    session: Secret = ""


class Join(_Msg, tag="join"):
    """Move to ``room`` (created on first join). ``history``: how many recent messages to return."""

    room: str
    history: Count = 0


class Leave(_Msg, tag="leave"):
    """Return to the lobby."""


class Say(_Msg, tag="say"):
    """A message to the current room. ``mid`` is the sender's own id, echoed in Ack/Refused and
    used to drop a retried duplicate."""

    text: str
    mid: Id = 0


class Sync(_Msg, tag="sync"):
    """Ask the broker to publish ``Synced(nonce)`` on the current room's topic: receiving it proves
    the client's subscription is live, and its ``seq`` says what it may have missed before."""

    nonce: Id


class Fetch(_Msg, tag="fetch"):
    """Messages of ``room`` with ``after < seq <= upto`` (``upto`` 0: up to the newest), at most
    ``limit`` of them. Answered by ``Messages``."""

    room: str
    after: Id
    upto: Id = 0
    limit: Limit = HISTORY_MAX


class ListUsers(_Msg, tag="who"):
    """Who is connected; ``room`` empty means every room."""

    room: str = ""


class ListRooms(_Msg, tag="rooms"):
    """Rooms and their member counts."""


class Ping(_Msg, tag="ping"):
    """Heartbeat; either side sends it when it has sent nothing else for an interval. From the
    broker, ``seq`` is the newest sequence number of the client's room (tail gap detection)."""

    room: str = ""
    seq: Id = 0


class Quit(_Msg, tag="quit"):
    """The user leaves the chat (``/exit``); the broker frees the name at once."""


class Tell(_Msg, tag="tell"):
    """A direct message to one connected user (``/msg``), under the same block and rate rules as
    room messages. Not stored: it reaches ``to`` now or not at all. Answered by Ack (room "",
    seq 0) or Refused, and a ``Told`` copy to both sides."""

    to: str
    text: str
    mid: Id = 0


class Login(_Msg, tag="login"):
    """Log in to the account ``name``: ``first`` is SCRAM-SHA-256's client-first-message
    (RFC 5802, 7677). Answered by ``Challenge``; then ``Prove``."""

    version: Version
    name: str
    first: Scram


class Prove(_Msg, tag="prove"):
    """The SCRAM client-final-message (with the proof) that answers ``Challenge``. Answered by
    ``Verified`` and ``Welcome`` in one batch, or ``Error``."""

    final: Scram


class Register(_Msg, tag="register"):
    """Make the account ``name`` (or, from a logged-in session for its own name, change its
    password): the SCRAM verifier, computed by the client, so the password never leaves it.
    ``invite``: a code from the admin, when registration is by invite."""

    version: Version
    name: str
    invite: Secret
    salt: Annotated[bytes, Meta(min_length=12, max_length=64)]
    iterations: Annotated[int, Meta(ge=4096, le=10_000_000)]
    stored_key: Annotated[bytes, Meta(min_length=32, max_length=32)]
    server_key: Annotated[bytes, Meta(min_length=32, max_length=32)]


ClientMsg = (
    Hello | Join | Leave | Say | Sync | Fetch | ListUsers | ListRooms | Ping | Quit | Tell
    | Login | Prove | Register
)  # fmt: skip


# ---- broker -> client (ROUTER -> DEALER) -------------------------------------------------------


class Posted(_Msg, tag="msg"):
    """A stored room message. ``ts`` is seconds since the epoch (UTC)."""

    room: str
    seq: Id
    ts: float
    sender: str
    text: str


class Welcome(_Msg, tag="welcome"):
    """Hello accepted. ``pub`` is the PUB endpoint to subscribe to; ``session`` the resume secret;
    ``heartbeat`` the interval in seconds; ``blocked`` whether the user is on the blocklist."""

    version: Version
    name: str
    room: str
    pub: str
    session: str
    heartbeat: float
    blocked: bool = False
    sealed: bool = False
    """The broker seals room events on the PUB (unless ``--no-room-keys``): open them with
    ``RoomKey``s."""


class Joined(_Msg, tag="joined"):
    """The user is now in ``room``; ``seq`` is its newest sequence number; ``history`` the recent
    messages asked for. Sent for Join, Leave and when the admin puts the user out (``forced``)."""

    room: str
    seq: Id
    history: list[Posted] = []
    forced: bool = False


class Ack(_Msg, tag="ack"):
    """The message with the sender's ``mid`` was stored as ``seq`` of ``room``."""

    mid: Id
    room: str
    seq: Id


class Refused(_Msg, tag="refused"):
    """The message with ``mid`` was not published: blocked, rate limited, too long..."""

    mid: Id
    code: Code
    reason: str


class Error(_Msg, tag="error"):
    """A request failed; ``reason`` is one line a person can act on. ``request`` is the tag of the
    client message it answers (``"join"``, ``"fetch"``...; ``""`` for a frame that could not be
    decoded): the broker answers a connection's requests in order, so a client that pipelines
    several matches an Error to its oldest unanswered request with that tag."""

    code: Code
    reason: str
    request: str = ""


class Notice(_Msg, tag="notice"):
    """Something the broker tells this user alone, shown as a ``* `` line."""

    text: str


class Messages(_Msg, tag="messages"):
    """Answer to ``Fetch``: stored messages of ``room`` in order. ``first``: the oldest sequence
    number still stored (anything older is gone for good)."""

    room: str
    messages: list[Posted]
    first: Id = 1


class UserInfo(_Msg, tag="user"):
    """A connected user; ``account``: logged in to a registered account (with its password)."""

    name: str
    room: str
    blocked: bool
    account: bool = False


class RoomInfo(_Msg, tag="room"):
    """A room: ``private`` rooms let in only the users the admin allowed (``allowed``, shown to
    room-ctl only; empty in a user's listing)."""

    name: str
    members: Id
    seq: Id
    private: bool = False
    allowed: list[str] = []


class Users(_Msg, tag="users"):
    users: list[UserInfo]


class Rooms(_Msg, tag="roomlist"):
    rooms: list[RoomInfo]


class RoomKey(_Msg, tag="roomkey"):
    """The key of ``room`` from ``epoch`` on (on a sealing broker): PUB sends of the room whose
    first 8 bytes are ``epoch`` open with it (AES-256-GCM, see docs/protocol.md). Sent to
    every member whenever the members change, before the room's next send."""

    room: str
    epoch: Id
    key: bytes


class JoinRequested(_Msg, tag="requested"):
    """Answer to ``Join`` of a private room the user is not allowed in: the user stays where it
    is, and the admin sees the request (``room-ctl requests``). If the admin allows the user
    while it is connected, a ``Joined`` follows unasked, with the history the Join asked for."""

    room: str


class Told(_Msg, tag="told"):
    """A direct message, delivered to its recipient and echoed to its sender."""

    sender: str
    to: str
    text: str
    ts: float


class Challenge(_Msg, tag="challenge"):
    """The answer to ``Login``: SCRAM's server-first-message (the nonces, salt and iteration
    count of the account)."""

    first: Scram


class Verified(_Msg, tag="verified"):
    """SCRAM's server-final-message (``v=...``): the broker knows the account's verifier. Comes
    just before the ``Welcome`` that answers ``Prove``."""

    final: Scram


class Registered(_Msg, tag="registered"):
    """The account ``name`` is stored (``Register`` answered)."""

    name: str


class Goodbye(_Msg, tag="bye"):
    """The broker ended the session; the client must exit (``fired``) or may reconnect."""

    reason: Bye
    text: str


ServerMsg = (
    Welcome
    | Joined
    | Ack
    | Refused
    | Error
    | Notice
    | Messages
    | Users
    | Rooms
    | Goodbye
    | Ping
    | Posted
    | Told
    | JoinRequested
    | RoomKey
    | Challenge
    | Verified
    | Registered
)


# ---- broker -> room (PUB -> SUB) ---------------------------------------------------------------


class Presence(_Msg, tag="presence"):
    """Someone entered or left the room, or the admin acted on them; not sequenced, not stored."""

    room: str
    user: str
    what: PresenceKind


class Synced(_Msg, tag="synced"):
    """Answer to ``Sync`` on the room topic; ``seq`` is the room's newest at publish time."""

    room: str
    nonce: Id
    seq: Id


RoomEvent = Posted | Presence | Synced


# ---- encoding ----------------------------------------------------------------------------------


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow; ``code`` goes back in the reply."""

    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode

_client_decoder = msgspec.msgpack.Decoder(ClientMsg)
_server_decoder = msgspec.msgpack.Decoder(list[ServerMsg])
_room_decoder = msgspec.msgpack.Decoder(list[RoomEvent])


def _decoder(decode: Any, what: str) -> Any:
    def run(body: bytes) -> Any:
        try:
            return decode(body)
        # msgspec raises UnicodeDecodeError for invalid UTF-8 in a string (msgspec issue #714).
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            raise ProtocolError(Code.BAD_FRAME, f"undecodable {what}: {exc}") from None

    run.__doc__ = f"Decode a {what} body, or raise ProtocolError(BAD_FRAME)."
    return run


decode_client = _decoder(_client_decoder.decode, "client message")
decode_server = _decoder(_server_decoder.decode, "server message batch")
decode_room = _decoder(_room_decoder.decode, "room event batch")


def room_of_topic(frame: bytes) -> str:
    """The room named by a PUB topic frame."""
    return frame[: -len(TOPIC_END)].decode()
