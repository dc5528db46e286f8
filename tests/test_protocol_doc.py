"""docs/protocol.md against the code: every code, goodbye reason, message tag, field and admin verb
is in it, its numbers are the code's, and its byte examples decode to the values they state. Pure:
reads a file, opens no socket."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import pytest

from broker.admin.commands import COMMANDS
from broker.config import DEFAULT_LIMITS, FRAME_OVERHEAD, HEARTBEAT, LIVENESS
from broker.loop.server import BATCH
from broker.store.memory import MEMORY_ACKS_KEPT
from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p
from client.core import RESEND_AFTER, SYNC_RETRY
from client.delivery import SYNC_RETRY_MAX

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
DOC = DOC_PATH.read_text(encoding="utf-8")
CODE_SPANS = set(re.findall(r"`([^`\n]+)`", DOC))


def _structs(base: type = p._Msg) -> list[type[Any]]:
    found = []
    for sub in base.__subclasses__():
        found.append(sub)
        found += _structs(sub)
    return found


STRUCTS = _structs()


def _tag(cls: type[Any]) -> str:
    return cls.__struct_config__.tag


def test_every_wire_struct_is_found():
    """The walk from ``_Msg`` finds every struct the decoders can produce, nested ones included."""
    unions = (p.ClientMsg, p.ServerMsg, p.RoomEvent)
    wire = {t for u in unions for t in u.__args__} | {cp.CtlRequest, cp.CtlReply}
    wire |= {p.UserInfo, p.RoomInfo}
    assert wire <= set(STRUCTS)
    assert len({_tag(c) for c in STRUCTS}) == len(STRUCTS), "two structs share a tag"


@pytest.mark.parametrize(
    "names",
    [
        pytest.param([c.value for c in p.Code], id="codes"),
        pytest.param([b.value for b in p.Bye], id="goodbye-reasons"),
        pytest.param([_tag(c) for c in STRUCTS], id="message-tags"),
        pytest.param(list(COMMANDS), id="admin-verbs"),
    ],
)
def test_every_name_is_documented_as_code(names: list[str]):
    missing = [name for name in names if name not in CODE_SPANS]
    assert not missing, f"not in docs/protocol.md as `code`: {missing}"


# ---- the field tables --------------------------------------------------------------------------

_HEADER = re.compile(r"^\*\*`(?P<tag>[a-z]+)`\*\* \((?P<cls>\w+)\)")
_ROW = re.compile(r"^\| (?P<pos>\d+) \| (?P<field>\w+) \|[^|]*\|(?P<default>[^|]*)\|")


class _Section(NamedTuple):
    header: str
    rows: list[tuple[int, str, str]]
    """Position, field name and default cell of each table row."""


def _sections() -> dict[tuple[str, str], list[_Section]]:
    """Per ``(tag, class)``: each part of the doc headed ``**`tag`** (Class)``, with its table
    (``ping`` has two: one for each direction)."""
    found: dict[tuple[str, str], list[_Section]] = {}
    current: _Section | None = None
    for line in DOC.splitlines():
        if (m := _HEADER.match(line)) is not None:
            current = _Section(line, [])
            found.setdefault((m["tag"], m["cls"]), []).append(current)
        elif line.startswith("#"):
            current = None
        elif current is not None and (row := _ROW.match(line)) is not None:
            current.rows.append((int(row["pos"]), row["field"], row["default"].strip()))
    return found


SECTIONS = _sections()


def _default(cell: str) -> Any:
    """A default cell (a MessagePack-ish literal in backticks) as a Python value."""
    return json.loads(cell.strip("`").replace("nil", "null"))


@pytest.mark.parametrize("cls", STRUCTS, ids=_tag)
def test_each_message_has_its_fields_in_order_with_their_defaults(cls: type[Any]):
    sections = SECTIONS.get((_tag(cls), cls.__name__))
    assert sections, f"no **`{_tag(cls)}`** ({cls.__name__}) header in docs/protocol.md"
    tables = [section.rows for section in sections if section.rows]
    fields = msgspec.structs.fields(cls)
    if not fields:
        assert not tables
        assert any("no fields" in section.header for section in sections)
        return
    assert tables, f"no field table for {cls.__name__}"
    expected = [(i, f.name) for i, f in enumerate(fields, start=1)]
    for rows in tables:
        assert [(pos, name) for pos, name, _ in rows] == expected, "other fields, or twice"
        for (_, name, cell), f in zip(rows, fields, strict=True):
            if f.required:
                assert cell == "", f"{cls.__name__}.{name} is required"
            else:
                default = f.default_factory() if f.default is msgspec.NODEFAULT else f.default
                assert cell, f"{cls.__name__}.{name} has a default"
                assert _default(cell) == default, f"{cls.__name__}.{name}"


# ---- numbers the doc states --------------------------------------------------------------------


def test_the_numbers_are_the_codes():
    phrases = [
        f"`{p.NAME_PATTERN}`",
        f"`MAX_ID` = {p.MAX_ID}",
        f"(`VERSION` = {p.VERSION})",
        f"0..{p.HISTORY_MAX} (`HISTORY_MAX`)",
        f"at most {p.SESSION_MAX} characters",
        f"keeps the last {MEMORY_ACKS_KEPT:,} ids per sender",
        f"after {SYNC_RETRY:g} s (`SYNC_RETRY`)",
        f"at most {SYNC_RETRY_MAX:g} s (`SYNC_RETRY_MAX`)",
        f"every {RESEND_AFTER:g} s (`RESEND_AFTER`)",
        f"The liveness factor is {LIVENESS} (`LIVENESS`",
        f"({HEARTBEAT:g} s by default)",
        f"({DEFAULT_LIMITS.max_message} by default, `--max-message`)",
        f"`max({DEFAULT_LIMITS.max_frame}, max_message + {FRAME_OVERHEAD})`",
        f"up to {BATCH} waiting messages",
    ]
    missing = [phrase for phrase in phrases if phrase not in DOC]
    assert not missing, f"not in docs/protocol.md: {missing}"


# ---- the byte examples -------------------------------------------------------------------------

_BLOCK = re.compile(r"^```hex (?P<kind>\w+)(?P<short> short)?\n(?P<body>.*?)^```$", re.M | re.S)
_DECODERS = {
    "client": p.decode_client,
    "server": p.decode_server,
    "room": p.decode_room,
    "ctl_request": cp.decode_ctl_request,
    "ctl_reply": cp.decode_ctl_reply,
    "topic": lambda data: data,
}
_NAMES = {name: getattr(m, name) for m in (p, cp) for name in dir(m) if not name.startswith("_")}


def _examples() -> list[tuple[str, bool, str, bytes]]:
    """Each ``hex`` block: its kind, whether it is a short form, its stated value and its bytes.
    The first line is ``# value: EXPR``; on the others the hex comes before ``#``."""
    examples = []
    for m in _BLOCK.finditer(DOC):
        first, *lines = m["body"].splitlines()
        assert first.startswith("# value: "), first
        data = bytes.fromhex(" ".join(line.split("#", 1)[0] for line in lines))
        examples.append((m["kind"], m["short"] is not None, first.removeprefix("# value: "), data))
    return examples


EXAMPLES = _examples()


def test_the_example_session_shows_the_promised_messages():
    kinds = {kind for kind, *_ in EXAMPLES}
    assert {"client", "server", "room", "topic"} <= kinds
    shown: set[type] = set()
    for _, _, expr, _ in EXAMPLES:
        value = eval(expr, {"__builtins__": {}}, _NAMES)
        for item in value if isinstance(value, list) else [value]:
            shown.add(type(item))
    assert {p.Hello, p.Welcome, p.Join, p.Joined, p.Say, p.Ack, p.Posted} <= shown


@pytest.mark.parametrize(("kind", "short", "expr", "data"), EXAMPLES, ids=[e[2] for e in EXAMPLES])
def test_each_byte_example_decodes_to_its_value(kind: str, short: bool, expr: str, data: bytes):
    value = eval(expr, {"__builtins__": {}}, _NAMES)
    assert _DECODERS[kind](data) == value
    if kind == "topic":
        assert p.room_of_topic(data) == p.room_of_topic(value)
    elif not short:  # exactly what the broker's encoder sends
        assert p.encode(value) == data
    else:  # a shorter form a sender may use: the encoder sends more
        assert len(p.encode(value)) > len(data)
