"""room-bench's quick run as a smoke test: it completes and the broker loses nothing.

It never asserts a speed: these machines are shared and noisy; the ratios are for people to read.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.timeout(300)
def test_quick_bench_completes_and_loses_nothing(tmp_path):
    out = tmp_path / "bench.json"
    argv = [
        sys.executable,
        "-c",
        "from bench.cli import main; main()",
        "--quick",
        "--json",
        str(out),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    names = [s["name"] for s in report["scenarios"]]
    assert names == ["1->1", "1->10", "1->100", "10 rooms", "latency 1k/s", "latency 10k/s",
                     "1000 idle"]  # fmt: skip
    for s in report["scenarios"]:
        room = s["room"]
        if "connected" in room:
            assert room["connected"] > 0 and room["peak_mb"] > 0
            continue
        assert room["lost"] == 0, s
        assert room["duplicates"] == 0, s
        assert room["delivered"] == room["expected"], s
        assert s["ratio"] is not None and s["ratio"] > 0, s
    assert "ratio" in done.stdout.splitlines()[0]
