"""Throughput bars and latency distributions, broker beside relay (matplotlib is optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flows = [s for s in report["scenarios"] if "rate" in s["room"]]
    timed = [s for s in flows if "latencies_us" in s["room"]]
    fig, (bars, lat) = plt.subplots(1, 2, figsize=(13, 5))
    names = [s["name"] for s in flows]
    xs = range(len(names))
    bars.bar([x - 0.2 for x in xs], [s["room"]["rate"] for s in flows], 0.4, label="room broker")
    bars.bar([x + 0.2 for x in xs], [s["relay"]["rate"] for s in flows], 0.4, label="bare relay")
    bars.set_xticks(list(xs), names, rotation=20)
    bars.set_ylabel("delivered messages / s")
    bars.set_title("Throughput")
    bars.legend()
    for s in timed:
        for side, style in (("room", "-"), ("relay", "--")):
            samples = sorted(s[side].get("latencies_us", []))
            if samples:
                ys = [i / len(samples) for i in range(len(samples))]
                lat.plot([v / 1000 for v in samples], ys, style, label=f"{s['name']} {side}")
    lat.set_xscale("log")
    lat.set_xlabel("send to delivery, ms (log)")
    lat.set_ylabel("fraction of messages")
    lat.set_title("Latency (CDF)")
    lat.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(f"room-bench on {m['cpu']}, {m['cores']} cores, Python {m['python']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
