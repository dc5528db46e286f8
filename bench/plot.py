"""Throughput bars and latency distributions, every target side by side (matplotlib is optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LABELS = {"room": "room broker", "keys": "room broker, room keys", "relay": "bare relay",
          "batch": "batching relay", "redis": "Redis pub/sub"}  # fmt: skip


def draw(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flows = [s for s in report["scenarios"] if "rate" in s["room"]]
    timed = [s for s in flows if "latencies_us" in s["room"]]
    kinds = [k for k in LABELS if any(k in s for s in flows)]
    fig, (bars, lat) = plt.subplots(1, 2, figsize=(14, 5))
    names = [s["name"] for s in flows]
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        xs = [x + (j - (len(kinds) - 1) / 2) * width for x in range(len(names))]
        rates = [s[kind]["rate"] if kind in s else 0 for s in flows]
        bars.bar(xs, rates, width, label=LABELS[kind])
    bars.set_xticks(list(range(len(names))), names, rotation=20)
    bars.set_yscale("log")
    bars.set_ylabel("delivered messages / s (log)")
    bars.set_title("Throughput")
    bars.legend(fontsize=8)
    styles = {"room": "-", "relay": "--", "batch": ":", "redis": "-."}
    for s in timed:
        for kind in kinds:
            samples = sorted(s.get(kind, {}).get("latencies_us", []))
            if samples:
                ys = [i / len(samples) for i in range(len(samples))]
                lat.plot([v / 1000 for v in samples], ys, styles[kind],
                         label=f"{s['name']} {LABELS[kind]}")  # fmt: skip
    lat.set_xscale("log")
    lat.set_xlabel("send to delivery, ms (log)")
    lat.set_ylabel("fraction of messages")
    lat.set_title("Latency (CDF)")
    lat.legend(fontsize=7)
    m = report["machine"]
    fig.suptitle(f"room-bench on {m['cpu']}, {m['cores']} cores, Python {m['python']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
