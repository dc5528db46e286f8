"""The broker's log (broker.logfmt): text and JSON lines, quiet mode, a reader that goes away."""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from procs import WAIT, Raw, broker_argv, ctl

from broker.chat.outbox import LogEvent
from broker.logfmt import CHAT_KINDS, LogWriter, format_json, format_text, stamp

TS = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
WHEN = "2023-11-14T22:13:20.250Z"
LISTENING = r"listening: router (\S+) pub (\S+) control (\S+)"
"""The broker's first line, in text format."""
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

MSG = LogEvent(TS, "msg", "lobby2", "alice", "hello world")
BLOCKED = LogEvent(TS, "blocked", "x", "mallory", "spam spam")
ADMIN = LogEvent(TS, "admin", text="block mallory: blocked mallory")
CONNECT = LogEvent(TS, "connect", "public", "bob")
ALL = [
    MSG,
    BLOCKED,
    ADMIN,
    CONNECT,
    LogEvent(TS, "connect", "x", "bob", "resumed"),
    LogEvent(TS, "disconnect", "x", "bob", "timed out"),
    LogEvent(TS, "enter", "x", "bob", "from public"),
    LogEvent(TS, "error", text="bad frame from peer 00ff"),
]


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in a local time zone far from UTC, to catch local time leaking into the log."""
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_stamp_is_utc_iso_with_milliseconds_and_z() -> None:
    assert stamp(0) == "1970-01-01T00:00:00.000Z"
    assert stamp(TS) == WHEN


@pytest.mark.usefixtures("far_from_utc")
def test_a_message_line_has_time_room_sender_and_text() -> None:
    line = format_text(MSG)
    assert line.startswith(WHEN + " ")
    assert "[lobby2]" in line
    assert "alice" in line
    assert line.endswith("hello world")
    assert "blocked" not in line
    assert line.index("[lobby2]") < line.index("alice") < line.index("hello world")


def test_a_blocked_line_is_marked_and_still_has_the_text() -> None:
    line = format_text(BLOCKED)
    assert ISO_Z.match(line)
    assert "[x]" in line
    assert "mallory" in line
    assert "blocked" in line
    assert "spam spam" in line
    assert format_text(BLOCKED) != format_text(BLOCKED._replace(kind="msg"))


@pytest.mark.parametrize("event", ALL, ids=[e.kind for e in ALL])
def test_every_text_line_is_one_stamped_line_with_its_details(event: LogEvent) -> None:
    line = format_text(event)
    assert ISO_Z.match(line)
    assert "\n" not in line
    for part in (event.room, event.user, event.text):
        assert part in line


@pytest.mark.parametrize("event", ALL, ids=[e.kind for e in ALL])
def test_json_lines_parse(event: LogEvent) -> None:
    line = format_json(event)
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": stamp(event.ts),
        "kind": event.kind,
        "room": event.room,
        "user": event.user,
        "text": event.text,
    }


def test_json_escapes_awkward_text() -> None:
    event = LogEvent(TS, "msg", "x", "alice", 'quote " backslash \\ h\u00e9 \U0001f44b')
    assert json.loads(format_json(event))["text"] == event.text


def _written(events: list[LogEvent], **kw: object) -> list[str]:
    stream = io.StringIO()
    LogWriter(stream, **kw).events(events)  # type: ignore[arg-type]
    text = stream.getvalue()
    assert text == "" or text.endswith("\n")
    return text.splitlines()


def test_writer_writes_one_line_per_event_in_order() -> None:
    assert _written(ALL) == [format_text(e) for e in ALL]


def test_quiet_hides_chat_lines_but_keeps_admin_and_the_rest() -> None:
    assert {"msg", "blocked"} <= CHAT_KINDS
    lines = _written(ALL, quiet=True)
    assert lines == [format_text(e) for e in ALL if e.kind not in ("msg", "blocked")]
    assert format_text(ADMIN) in lines
    assert not any("hello world" in line or "spam spam" in line for line in lines)


def test_quiet_with_only_chat_lines_writes_nothing() -> None:
    assert _written([MSG, BLOCKED], quiet=True) == []


def test_json_writer_lines_parse() -> None:
    lines = _written(ALL, fmt="json")
    assert len(lines) == len(ALL)
    assert [json.loads(line)["kind"] for line in lines] == [e.kind for e in ALL]


def test_json_quiet_keeps_admin() -> None:
    lines = _written([MSG, ADMIN, BLOCKED], fmt="json", quiet=True)
    assert [json.loads(line)["kind"] for line in lines] == ["admin"]


def test_status_lines_show_even_when_quiet() -> None:
    stream = io.StringIO()
    LogWriter(stream, quiet=True).line("room-broker stopped")
    assert stream.getvalue() == "room-broker stopped\n"


class _Unwritable(io.StringIO):
    """A stream whose reader went away (BrokenPipeError) or that was closed (ValueError)."""

    def __init__(self, error: type[Exception]) -> None:
        super().__init__()
        self.error = error
        self.tries = 0

    def write(self, s: str) -> int:
        self.tries += 1
        raise self.error


@pytest.mark.parametrize("error", [BrokenPipeError, ValueError])
def test_a_log_nobody_can_read_is_given_up_quietly(error: type[Exception]) -> None:
    stream = _Unwritable(error)
    writer = LogWriter(stream)
    writer.events([MSG])
    writer.events([ADMIN])
    writer.line("still serving")
    assert stream.tries == 3  # every line was tried, and no error came out of the writer


def test_a_reader_that_went_away_does_not_stop_the_broker(tmp_path: Path, ctx: zmq.Context):
    """The real broker, its log on a pipe whose reader is closed at once: it still stores and
    acknowledges, answers room-ctl, and stops cleanly with nothing on stderr."""
    data = tmp_path / "data"
    with (tmp_path / "stderr").open("w+") as err:
        broker = subprocess.Popen(
            broker_argv(data),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert broker.stdout is not None
            ready, _, _ = select.select([broker.stdout], [], [], WAIT)
            assert ready, "the broker did not start"
            listening = re.search(LISTENING, broker.stdout.readline())
            assert listening, "the broker did not start"
            router, control = listening[1], listening[3]
            broker.stdout.close()  # the reader goes away
            alice = Raw(ctx, router, "alice")
            acks = [alice.say(f"hello {i}") for i in range(5)]
            assert [a.seq for a in acks] == [1, 2, 3, 4, 5]
            stats = ctl(control, "--json", "stats", data_dir=data)
            assert stats.returncode == 0, stats.stderr
            assert json.loads(stats.stdout)["data"]["stats"]["clients"] == 1
            broker.send_signal(signal.SIGTERM)
            assert broker.wait(WAIT) == 0
        finally:
            if broker.poll() is None:
                broker.kill()
                broker.wait(WAIT)
        err.seek(0)
        assert err.read() == ""
