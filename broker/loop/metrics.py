"""``room-broker start --metrics HOST:PORT``: Prometheus text at ``/metrics``, served by
``prometheus_client`` from a thread of its own, from what the loop counts anyway.

The loop never calls prometheus_client. The chat and the loop count in the chat's ``Counters``
(plain numbers, and dicts whose keys are all there from the start); the flush hands
``BrokerMetrics.committed`` each turn's commit time (a bisect and a few additions); a scrape
reads them on the exporter's thread (``collect``). Reading numbers another thread writes is safe
in Python, and the dicts are copied whole. ``room_messages_total`` is the count as of the last
commit: a failed commit takes its batch's messages back, and a counter must never go down.

Also here: the process's own figures (``process_*``: CPU, memory, open files, start time) and
``python_info``, from the library's collectors.
"""

from __future__ import annotations

import contextlib
import threading
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from broker.chat.chat import Chat
from broker.loop.flush import BatchFlush
from broker.loop.plugin import Plugin
from broker.loop.publisher import Publisher
from broker.loop.watch import Watch
from broker.security.roomkeys import RoomKeys
from broker.store.datadir import StartError
from broker.wire import protocol as p

COMMIT_SECONDS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                         0.25, 0.5, 1.0, 2.5)  # fmt: skip
"""Bucket bounds of a commit's time, from a WAL commit that syncs nothing (``--sync normal``) to a
disk in trouble."""
BATCH_MESSAGES: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
"""Bucket bounds of a batch's size, in room messages (a turn drains at most 512 of the ROUTER's)."""
REFUSALS: Final = (
    p.Code.BLOCKED,
    p.Code.TOO_LONG,
    p.Code.BAD_TEXT,
    p.Code.RATE_LIMITED,
    p.Code.NOT_CONNECTED,
    p.Code.UNAVAILABLE,
)
"""The reasons a message can be refused for, shown from the start (at 0)."""


class Buckets:
    """A histogram in plain numbers, observed by the loop and read by a scrape."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: the first bound >= value
        self.total += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        counts, total = self.counts.copy(), self.total
        buckets, seen = [], 0
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            seen += count
            buckets.append((floatToGoString(bound), seen))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=total)


class BrokerMetrics:
    """The broker's figures, as a ``prometheus_client`` collector (``collect``), and what the
    loop tells it once per turn (``committed``)."""

    def __init__(
        self,
        chat: Chat,
        keys: RoomKeys | None,
        plugin: Plugin | None,
        watch: Watch,
        publisher: Publisher,
    ) -> None:
        self.chat = chat
        self.keys = keys
        self.plugin = plugin
        self.watch = watch
        """The guard: connections accepted, open and evicted, read as they are now."""
        self.publisher = publisher
        self.commit_seconds = Buckets(COMMIT_SECONDS)
        self.batch_messages = Buckets(BATCH_MESSAGES)
        self.accepted = chat.counters.accepted
        """Room messages accepted, as of the last commit."""
        self._failed = chat.counters.failed_commits

    def committed(self, seconds: float) -> None:
        """The turn's commit took ``seconds`` (on the loop's thread, once per turn). A turn
        that stored no message is not counted: an empty commit costs nothing."""
        c = self.chat.counters
        accepted, failed = c.accepted, c.failed_commits
        stored = accepted - self.accepted
        if stored > 0 or failed != self._failed:
            self.commit_seconds.observe(seconds)
        if stored > 0:
            self.batch_messages.observe(stored)
            self.accepted = accepted
        self._failed = failed

    def collect(self) -> Iterator[Metric]:
        """Every figure, read now (on the exporter's thread)."""
        chat = self.chat
        c = chat.counters
        counters = (
            ("room_messages", "Room messages accepted: stored, then acknowledged.", self.accepted),
            ("room_direct_messages", "Direct messages (/msg) delivered.", c.direct),
            ("room_bad_frames", "Frames that were no protocol message.", c.bad_frames),
            ("room_connections_accepted", "Connections the ROUTER accepted.",
             self.watch.accepted["router"]),
            ("room_guard_evictions", "Connections the guard closed (no hello, over budget, "
             "subscriptions beyond the rooms' needs, session ended).", self.watch.evicted),
            ("room_publisher_drops", "PUB sends dropped: the publisher thread was behind.",
             self.publisher.dropped),
            ("room_pub_sends", "PUB sends, each a batch of one room's events.", c.published),
            ("room_fetched_messages", "Stored messages sent in answer to Fetch.", c.fetched),
            ("room_dropped_replies", "Replies lost to a full or gone queue.", c.dropped_replies),
            ("room_key_changes", "Room keys made: a room's members changed.",
             0 if self.keys is None else self.keys.changes),
            ("room_sealing_seconds", "CPU seconds spent sealing PUB sends.", c.sealing),
            ("room_store_commit_failures", "Commits that failed: their messages were refused.",
             c.failed_commits),
        )  # fmt: skip
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)
        gauges = [
            ("room_users", "Users connected (said hello).", len(chat.users)),
            ("room_rooms", "Rooms the broker knows, with or without members.", len(chat.members)),
            (
                "room_connections",
                "Connections open to the ROUTER, users or not.",
                self.watch.open["router"],
            ),
        ]
        if self.plugin is not None:
            pending, lag = self.plugin.lag()
            gauges += [
                ("room_backbone_pending_messages",
                 "Stream messages still to read, as of the last one read.", pending),
                ("room_backbone_lag_seconds",
                 "From stored in JetStream to read by this broker, for the last one read.", lag),
            ]  # fmt: skip
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)
        refusals = c.refusals.copy()
        shown = {code: n for code, n in refusals.items() if n or code in REFUSALS}
        yield _by("room_refusals", "Messages refused, by reason.", "reason", shown)
        yield _by("room_errors", "Error replies to clients, by code.", "code", c.errors.copy())
        yield _by("room_evictions", "Connections sent away (Goodbye), by reason.", "reason",
                  c.goodbyes.copy())  # fmt: skip
        yield self.commit_seconds.family(
            "room_store_commit_seconds", "Time of each store commit that stored room messages."
        )
        yield self.batch_messages.family(
            "room_store_batch_messages", "Room messages stored by one commit."
        )


def _by(
    name: str, documentation: str, label: str, counts: Mapping[p.Code, int] | Mapping[p.Bye, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, n in counts.items():
        family.add_metric([str(key)], n)
    return family


class Exporter:
    """``/metrics`` on ``where`` (host, port; port 0: any free one), served from a thread of
    ``prometheus_client``'s until ``close``; the flush tells it each commit. Raises
    ``StartError`` when it cannot bind."""

    def __init__(
        self,
        where: tuple[str, int],
        chat: Chat,
        flush: BatchFlush,
        plugin: Plugin | None,
        watch: Watch,
    ) -> None:
        self.metrics = BrokerMetrics(chat, flush.keys, plugin, watch, flush.publisher)
        self.registry = CollectorRegistry()
        self.registry.register(self.metrics)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        host, port = where
        try:
            self.server, self.thread = _start_http_server(port, host, self.registry)
        except OSError as exc:
            shown = f"[{host}]" if ":" in host else host
            why = exc.strerror or exc
            raise StartError(f"cannot serve metrics on {shown}:{port}: {why}") from None
        bound_host, bound_port = self.server.server_address[:2]
        shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
        self.url = f"http://{shown}:{bound_port}/metrics"
        flush.committed = self.metrics.committed

    def close(self) -> None:
        """Stop serving, and free the port within half a second (the server's poll), on a
        thread: the broker's stop does not wait for it."""

        def stop() -> None:
            self.server.shutdown()
            with contextlib.suppress(OSError):
                self.server.server_close()

        threading.Thread(target=stop, name="metrics-stop", daemon=True).start()
