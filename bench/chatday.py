"""``room-bench --chat-day``: a day of chat, per number of users, on the broker and on Redis pub/sub
(issue 27).

N users, each a DEALER and a SUB as the reference client holds them (hello, join its room,
subscribe, ``Sync`` until ``Synced``, ping as the heartbeat rules ask, ``Say`` with a ``mid``);
rooms long-tailed: one of 5% of N, three of 1%, the rest 3 to 20 members. After everyone is in (and
``SETTLE`` seconds, so that the guard's early looks at new connections are not counted), a steady
phase of ``--seconds``: one 60-byte line per user every 30 s on average (Poisson; the text starts
with its send time), while 1% of the users a minute (``--churn``) leave (``Quit``) and come back
a few seconds later as a new session. The generators (``bench.daygen``) are spread over
processes, one per ``USERS_PER_PROCESS`` users but no more than the cores.

Per step: deliveries a second; latency from the send to each delivery at every member's SUB; the
broker's CPU (all threads, a share of one core) and RSS; admission (the first hello to the last
member in its room); lost and duplicated deliveries (each member, for each stay in its room, must
get every sequence number from the ``Synced`` that let it in to the one that closed the stay; one
the SUB missed is fetched as the reference client repairs a gap, and counted apart); sessions the
broker dropped; refused hellos. Then the same users and lines on Redis pub/sub, when
redis-server is on the machine. The capacity is the largest N with everyone in, none dropped and
p99 under 100 ms.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
import re
import resource
import tempfile
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Final

from bench import daygen
from bench.canary import ctl_stats
from bench.run import Target, machine, peak_mb, redis_binary, rss_mb

USERS_PER_PROCESS: Final = 500
FDS_PER_USER: Final = 4
FDS_SPARE: Final = 256
"""Descriptors a generator process keeps for itself (its context, epoll, pipes)."""
MIN_USERS: Final = 20
LINE_EVERY: Final = 30.0
"""Seconds between one user's lines, on average."""
CHURN: Final = 0.01
"""Share of the users that leave and come back in a minute (at least one in a run)."""
AWAY: Final = (2.0, 10.0)
SETTLE: Final = 10.0
"""Seconds between admission and the steady phase: the broker's ``--hello-timeout``, during which
its guard looks at every new connection often."""
CAPACITY_P99_MS: Final = 100.0
QUICK: Final = {"users": [60], "seconds": 8.0, "line_every": 4.0, "settle": 0.0}
"""A smoke run: the same shape, small, and chattier so that it has something to count."""
SEED: Final = 27


def plan(
    n: int, seconds: float, line_every: float, churn: float = CHURN, seed: int = SEED
) -> dict[str, Any]:
    """Rooms, who is in which, the lines and the churn: the same for the broker and Redis."""
    rng = random.Random(seed + n)
    sizes = [max(3, round(0.05 * n))] + [max(3, round(0.01 * n))] * 3
    rest = n - sum(sizes)
    if rest < 0:
        raise ValueError(f"{n} users are too few for the rooms (at least 12)")
    while rest > 0:
        size = min(rng.randint(3, 20), rest)
        if rest - size < 3:
            size = rest if rest <= 20 else rest - 3
        sizes.append(size)
        rest -= size
    names = ["big", "mid1", "mid2", "mid3"] + [f"r{k:04d}" for k in range(len(sizes) - 4)]
    order = list(range(n))
    rng.shuffle(order)
    room_of = [""] * n
    at = 0
    for name, size in zip(names, sizes, strict=True):
        for i in order[at : at + size]:
            room_of[i] = name
        at += size
    lines, t = [], 0.0
    while True:
        t += rng.expovariate(n / line_every)
        if t >= seconds:
            break
        lines.append((t, rng.randrange(n)))
    leaving = max(1, round(churn * n * seconds / 60))
    churn = sorted(
        (rng.uniform(0.05, 0.6) * seconds, rng.randrange(n), rng.uniform(*AWAY))
        for _ in range(leaving)
    )
    return {"users": n, "rooms": dict(zip(names, sizes, strict=True)), "room_of": room_of,
            "lines": lines, "churn": churn, "seconds": seconds}  # fmt: skip


def processes(n: int) -> int:
    """One per ``USERS_PER_PROCESS`` users, no more than the cores, unless the users of one
    would not fit its file-descriptor limit (four a user: each socket's connection and its
    mailbox)."""
    fit = (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FDS_SPARE) // FDS_PER_USER
    by_cores = min(math.ceil(n / USERS_PER_PROCESS), os.cpu_count() or 1)
    return max(1, by_cores, math.ceil(n / fit))


def parts(day: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """User i goes to process i % count; each part's lines and churn name its own users."""
    n = day["users"]
    out = []
    for w in range(count):
        mine = range(w, n, count)
        out.append({
            "users": [(f"u{i:05d}", day["room_of"][i]) for i in mine],
            "lines": [(t, i // count) for t, i in day["lines"] if i % count == w],
            "churn": [(t, i // count, a) for t, i, a in day["churn"] if i % count == w],
            "seconds": day["seconds"],
        })  # fmt: skip
    return out


class Stopped(RuntimeError):
    pass


def _collect(out: Any, what: str, count: int, deadline: float, procs: list[Any]) -> dict[int, Any]:
    """``count`` messages ``what`` from the generators, until ``deadline`` (fewer if it passes);
    a generator that died fails the run."""
    got: dict[int, Any] = {}
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            kind, wid, data = out.get(timeout=min(left, 1.0))
        except Exception:  # queue.Empty
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise Stopped(f"a generator process exited with {dead[0]}") from None
            continue
        if kind == what:
            got[wid] = data
    return got


def _until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))


def run_pass(kind: str, day: dict[str, Any], workdir: Path, settle: float) -> dict[str, Any]:
    """One target with the day's users: admission, settle, the steady phase, the bounds."""
    n = day["users"]
    extra: tuple[str, ...] = ()
    if kind == "room":
        extra = ("--max-clients", str(max(10_000, n + 100)),
                 "--max-connections", str(max(25_000, 2 * n + 500)),
                 "--max-per-address", str(max(4096, 2 * n + 500)),
                 "--max-rooms", str(max(1000, len(day["rooms"]) + 10)))  # fmt: skip
    else:  # Redis's default is 10,000 clients (a subscriber a user, a publisher a process)
        extra = ("--maxclients", str(max(10_000, n + 100)))
    target = Target(kind, workdir, extra=extra)
    pid = target.proc.pid
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    signals = (ctx.Event(), ctx.Value("d", 0.0), ctx.Event(), ctx.Event())
    go, steady, final, stop = signals
    count = processes(n)
    address = target.router
    procs = [
        ctx.Process(target=daygen.main, args=(kind, w, address, part, signals, out), daemon=True)
        for w, part in enumerate(parts(day, count))
    ]
    try:
        for proc in procs:
            proc.start()
        if len(_collect(out, "ready", count, time.monotonic() + 60, procs)) < count:
            raise Stopped("the generator processes did not start within 60 s")
        cpu_go, t_go = target.cpu(), time.monotonic()
        go.set()
        limit = max(30.0, n / 20)
        admitted = _collect(out, "admitted", count, t_go + limit, procs)
        cpu_admit, t_admit = target.cpu() - cpu_go, time.monotonic() - t_go
        t0 = time.monotonic() + settle + 0.3
        steady.value = t0
        _until(t0)
        cpu0 = target.cpu()
        admin: dict[str, Any] = {}
        if kind == "room":  # the admin is served too, mid-day
            _until(t0 + day["seconds"] / 2)
            asked = time.monotonic()
            stats = ctl_stats(target.control, str(target.data))
            admin = {"admin_answered_s": None if stats is None else round(
                time.monotonic() - asked, 2), "admin_stats": stats}  # fmt: skip
        _until(t0 + day["seconds"])
        cpu = target.cpu() - cpu0
        rss = rss_mb(pid)
        _collect(out, "quiet", count, time.monotonic() + daygen.QUIET_WAIT + 10, procs)
        final.set()
        reports = _collect(out, "done", count, time.monotonic() + daygen.FINAL_WAIT + 30, procs)
        if len(reports) < count:
            raise Stopped(f"{count - len(reports)} generator process(es) did not report")
        peak = peak_mb(pid)
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        log = target.output() if kind == "room" else ""
        target.stop()
    result = _merge(kind, list(reports.values()), day["seconds"])
    result.update({
        "processes": count,
        "admitted_all": len(admitted) == count,
        "admission_s": round(result.pop("last_in") - result.pop("first_hello"), 2)
        if len(admitted) == count else None,
        "admission_wait_s": round(t_admit, 2),
        "admission_cpu_percent": round(100 * cpu_admit / max(t_admit, 1e-9), 1),
        "cpu_percent": round(100 * cpu / day["seconds"], 1),
        "rss_mb": round(rss, 1),
        "peak_mb": round(peak, 1),
        **admin,
    })  # fmt: skip
    g = result["generators"]
    g["admission_share_of_cores"] = round(
        g["admission_cpu_s"] / (max(t_admit, 1e-9) * (os.cpu_count() or 1)), 3
    )
    if kind == "room":  # what the broker says it dropped, beside what the users were told
        result["broker_timeouts"] = len(re.findall(r"disconnected from \S+: timed out", log))
        result["dropped"] = max(result["dropped"], result["broker_timeouts"])
    return result


def _merge(kind: str, reports: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    c: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    lat = array("q")
    cpu_steady = cpu_admit = 0.0
    for r in reports:
        c.update(r["counts"])
        codes.update(r["codes"])
        lat.frombytes(r["latency_us"])
        cpu_steady += r["cpu"].get("steady", 0.0)
        cpu_admit += r["cpu"].get("admission", 0.0)
    ordered = sorted(lat)

    def at(q: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000, 2)

    cores = os.cpu_count() or 1
    users = sum(r["users"] for r in reports)
    spans = {}
    for what in reports[0]["spans"]:
        taken = sorted(x for r in reports for x in r["spans"][what])
        if taken:
            spans[what] = {q: round(1000 * taken[min(len(taken) - 1, int(f * len(taken)))], 1)
                           for q, f in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))}  # fmt: skip
    return {
        "users": users,
        "in_at_start": sum(r["in_at_t0"] for r in reports),
        "ever_in": sum(r["ever_in"] for r in reports),
        "turned_away": sum(r["turned_away"] for r in reports),
        "first_hello": min(r["first_hello"] for r in reports),
        "last_in": max(r["last_in"] for r in reports),
        "lines": c["lines"],
        "acked": c["acked"],
        "deliveries": c["delivered"],
        "deliveries_per_s": round(c["delivered"] / seconds, 1),
        "expected": c["expected"],
        # Redis: what its PUBLISH replies counted, less what came
        "lost": c["lost"] if kind == "room" else c["expected"] - c["delivered"],
        "duplicates": c["duplicates"],
        "repaired": c["repaired"],
        "dropped": c["dropped"],
        "refused_hellos": c["refused_hellos"],
        "latency_ms": {"p50": at(0.5), "p99": at(0.99), "p99.9": at(0.999), "max": at(1.0)},
        "admission_ms": spans,
        "counts": dict(c),
        "codes": dict(codes),
        "lost_examples": [e for r in reports for e in r["examples"]][:10],
        "missed_examples": [e for r in reports for e in r["missed"]][:10],
        "generators": {
            "processes": len(reports),
            "cpu_s": round(cpu_steady, 2),
            "share_of_cores": round(cpu_steady / (seconds * cores), 3),
            "admission_cpu_s": round(cpu_admit, 2),
        },
    }


def run(
    sizes: list[int], seconds: float, quick: bool, churn: float = CHURN, echo: Any = print
) -> dict[str, Any]:
    """Every size, the broker then Redis; returns the whole report."""
    line_every, settle = LINE_EVERY, SETTLE
    if quick:
        sizes, seconds = QUICK["users"], QUICK["seconds"]
        line_every, settle = QUICK["line_every"], QUICK["settle"]
    redis = redis_binary() is not None and _have_hiredis()
    report: dict[str, Any] = {
        "machine": machine(), "quick": quick, "seconds": seconds, "line_every_s": line_every,
        "churn_per_minute": churn, "settle_s": settle, "redis": redis, "steps": [],
        "redis_note": None if redis else ("not installed" if redis_binary() is None
                                          else "hiredis not installed (pip install '.[bench]')"),
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="room-bench-day-") as tmp:
        for n in sizes:
            day = plan(n, seconds, line_every, churn)
            step: dict[str, Any] = {"users": n, "rooms": len(day["rooms"]),
                                    "largest_rooms": sorted(day["rooms"].values())[-4:][::-1],
                                    "lines_planned": len(day["lines"]),
                                    "churn_planned": len(day["churn"])}  # fmt: skip
            base = Path(tmp) / f"n{n}"
            (base / "room").mkdir(parents=True)
            step["room"] = run_pass("room", day, base / "room", settle)
            if redis:
                (base / "redis").mkdir()
                step["redis"] = run_pass("redis", day, base / "redis", settle)
            else:
                step["redis_note"] = report["redis_note"]
            report["steps"].append(step)
            echo(step)
    fit = [s["users"] for s in report["steps"] if fits(s["room"])]
    report["capacity"] = max(fit, default=None)
    return report


def fits(r: dict[str, Any]) -> bool:
    p99 = r["latency_ms"]["p99"]
    return (r["in_at_start"] == r["users"] and r["dropped"] == 0 and p99 is not None
            and p99 < CAPACITY_P99_MS)  # fmt: skip


def _have_hiredis() -> bool:
    import importlib.util

    return importlib.util.find_spec("hiredis") is not None


# ---- the table -----------------------------------------------------------------------------------

HEADER: Final = (
    "| users | deliv/s | room p50 / p99 / p99.9 ms | room CPU | room RSS | admitted in | lost/dup "
    "| dropped/refused | Redis p50 / p99 ms | Redis CPU | Redis RSS |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def _percent(value: float) -> str:
    return f"{value:.1f}%" if value < 10 else f"{value:.0f}%"


def _ms(lat: dict[str, Any], keys: tuple[str, ...]) -> str:
    return " / ".join("-" if lat[k] is None else f"{lat[k]:.1f}" for k in keys)


def row(step: dict[str, Any]) -> str:
    r = step["room"]
    admitted = (f"{r['admission_s']:.1f} s" if r["admission_s"] is not None
                else f"{r['in_at_start']} of {r['users']} in")  # fmt: skip
    if r["turned_away"]:
        admitted = f"{r['ever_in']:,} in {admitted}, {r['turned_away']:,} told `full`"
    cells = [
        f"{step['users']:,}",
        f"{r['deliveries_per_s']:,.0f}",
        _ms(r["latency_ms"], ("p50", "p99", "p99.9")),
        _percent(r["cpu_percent"]),
        f"{r['rss_mb']:.0f} MB",
        admitted,
        f"{r['lost']}/{r['duplicates']}" + (f" ({r['repaired']} fetched)" if r["repaired"] else ""),
        f"{r['dropped']}/{r['refused_hellos']}",
    ]
    x = step.get("redis")
    if x is None:
        cells += [step.get("redis_note") or "not installed", "-", "-"]
    else:
        cells += [_ms(x["latency_ms"], ("p50", "p99")), _percent(x["cpu_percent"]),
                  f"{x['rss_mb']:.0f} MB"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def _spans(span: dict[str, float]) -> str:
    return "/".join(f"{v:,.0f}" for v in span.values())


def _processes(count: int) -> str:
    return f"{count} process" + ("es" if count > 1 else "")


def notes(step: dict[str, Any]) -> list[str]:
    """What the row leaves out, one line each."""
    r = step["room"]
    g = r["generators"]
    lines = [
        f"{step['users']:,} users: {step['rooms']} rooms (largest {step['largest_rooms']}), "
        f"{r['lines']:,} lines said, {r['acked']:,} acknowledged, {r['deliveries']:,} deliveries "
        f"on the SUBs ({r['expected']:,} due within the members' stays); broker CPU while "
        f"admitting {r['admission_cpu_percent']:.0f}% (the generators "
        f"{g['admission_share_of_cores']:.0%} of the cores), "
        f"peak RSS {r['peak_mb']:.0f} MB; generators: {_processes(g['processes'])} took "
        f"{g['share_of_cores']:.0%} of the {os.cpu_count()} cores in the steady phase",
    ]
    if "admin_answered_s" in r:
        stats = r["admin_stats"] or {}
        answer = (
            f"answered in {r['admin_answered_s']} s ({stats.get('clients')} users in, "
            f"{stats.get('drops')} replies dropped)"
            if stats
            else "no answer within 10 s"
        )
        lines.append(f"room-ctl stats mid-day: {answer}")
    x = step.get("redis")
    if x is not None:
        lines.append(
            f"{step['users']:,} users on Redis: admitted in {x['admission_s']} s, "
            f"{x['deliveries_per_s']:,.0f} deliveries/s, lost {x['lost']}, dup {x['duplicates']}"
            f", dropped {x['dropped']}, p99.9 {x['latency_ms']['p99.9']} ms; generators took "
            f"{x['generators']['share_of_cores']:.0%} of the cores"
        )
    a = r["admission_ms"]
    if a:
        lines.append(
            f"{step['users']:,} users' admission, ms p50/p99/max: hello to Welcome "
            f"{_spans(a['welcome'])}, then to Joined {_spans(a['joined'])}, then to Synced "
            f"{_spans(a['synced'])} ({r['counts'].get('sync_retries', 0):,} Syncs sent again)"
        )
    if r["repaired"]:
        lines.append(
            f"{step['users']:,} users: missed on the SUB and fetched over the DEALER (gap repair, "
            f"as the reference client does; their latency not counted): {r['repaired']}, e.g. "
            + ", ".join(r["missed_examples"][:3])
        )
    if r["codes"]:
        lines.append("broker answers and goodbyes: " + ", ".join(
            f"{k} {v}" for k, v in sorted(r["codes"].items())))  # fmt: skip
    if r["lost_examples"]:
        lines.append("lost, for example: " + ", ".join(r["lost_examples"]))
    return lines
