"""``room-web --metrics HOST:PORT``: Prometheus text at ``/metrics``, through
``prometheus_client``, served by aiohttp on the gateway's own event loop (no thread) from what
the gateway counts anyway (``gateway.Counts``) and the tabs and sockets it holds. Loaded only
with ``--metrics``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Set
from typing import Protocol

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric


class _Counts(Protocol):
    sessions: int
    frames_in: int
    frames_out: int
    closes: dict[int, int]


class Served(Protocol):
    """What the metrics read of the gateway."""

    tabs: Mapping[str, object]
    sockets: Set[object]
    counts: _Counts


class WebMetrics:
    """The gateway's figures, as a ``prometheus_client`` collector."""

    def __init__(self, gateway: Served) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        c = gateway.counts
        yield GaugeMetricFamily(
            "room_web_sessions", "Browser tabs chatting through the gateway.", len(gateway.tabs)
        )
        yield GaugeMetricFamily("room_web_sockets", "WebSockets open.", len(gateway.sockets))
        yield CounterMetricFamily("room_web_sessions_opened", "Tabs opened.", c.sessions)
        frames = CounterMetricFamily(
            "room_web_frames", "WebSocket messages, from (in) and to (out) browsers.",
            labels=["direction"],
        )  # fmt: skip
        frames.add_metric(["in"], c.frames_in)
        frames.add_metric(["out"], c.frames_out)
        yield frames
        closes = CounterMetricFamily(
            "room_web_closes", "WebSockets ended, by close code.", labels=["code"]
        )
        for code, n in sorted(c.closes.items()):
            closes.add_metric([str(code)], n)
        yield closes


def registry(gateway: Served) -> CollectorRegistry:
    """The gateway's figures, and the process's (``process_*``, ``python_info``)."""
    found = CollectorRegistry()
    found.register(WebMetrics(gateway))
    ProcessCollector(registry=found)
    PlatformCollector(registry=found)
    return found


async def serve(gateway: Served, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Serve ``/metrics`` on ``host:port`` (port 0: any free one): the runner to clean up at the
    end, and the address. Raises ``OSError`` when it cannot listen."""
    figures = registry(gateway)

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(figures))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound}/metrics"
