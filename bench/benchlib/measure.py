"""The measurements: each step is one bench-load invocation per peer, yielding one or
more named values. CPU is charged between the client's MEASURE_START and MEASURE_END
markers, RSS when the idle step says READY."""

import json
import os
import subprocess
import sys
import threading
import time

from . import procs

# Budget added to a step's nominal length before its watchdog kills it.
STEP_SLACK_SECONDS = 60
# Idle connections settle (allocator, timers) this long before RSS is read.
IDLE_SETTLE_SECONDS = 1.0
IDLE_BUDGET_SECONDS = 300
# Slowest rate of opening idle connections (each a full TLS handshake through the proxy)
# still waited for.
IDLE_MIN_OPEN_PER_SECOND = 50
# Slowest bulk rate still waited for; the client enforces the same floor.
BULK_MIN_BYTES_PER_SECOND = 2 * 1024 * 1024


class Profile:
    def __init__(self, name, **kw):
        self.name = name
        self.__dict__.update(kw)


QUICK = Profile(
    "quick", runs=1, warmup=0.5, secs=2.0, ka_conns=64, ka_target_conns=32, h2_conns=8,
    h2_streams=8, nc_conns=32, lat_rate=100, lat_conns=16, lat_secs=3.0, sse_streams=4,
    sse_events=20, sse_ms=25, bulk=64 << 20, idle=200,
)
FULL = Profile(
    "full", runs=3, warmup=1.0, secs=4.0, ka_conns=64, ka_target_conns=32, h2_conns=8,
    h2_streams=8, nc_conns=32, lat_rate=100, lat_conns=16, lat_secs=6.0, sse_streams=4,
    sse_events=40, sse_ms=25, bulk=1 << 30, idle=1000,
)


# The nginx + hey configuration (issue 14): hey_conns is hey's -c for every request row
# (h2: one connection carrying that many streams, how Go's transport multiplexes); the
# idle connections open in two stages on one proxy.
QUICK_NH = Profile(
    "quick", runs=1, secs=2.0, hey_conns=32, bulk=256 << 20, idle_stages=[100, 1000],
)
FULL_NH = Profile(
    "full", runs=3, secs=5.0, hey_conns=32, bulk=1 << 30, idle_stages=[1000, 10000],
)


class StepFailed(Exception):
    pass


def run_load(ctx, peer, mode, extra, budget, on_ready=None):
    """Runs bench-load for `peer`; returns its RESULT json plus `cpu_s` (the proxy's CPU
    seconds inside the measured window) when the peer has a proxy process."""
    cmd = peer.wrap() + [os.path.join(ctx.bin, "bench-load"), mode] + peer.client_args() + extra
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=procs._die_with_parent, start_new_session=True,
    )
    ctx.procs.children.append((f"bench-load {mode}", proc))
    watchdog = procs.Watchdog(proc, budget)
    errors = []
    reader = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)
    reader.start()
    cpu = {}
    result = None
    try:
        for line in proc.stdout:
            line = line.strip()
            if line in ("MEASURE_START", "MEASURE_END") and peer.proxy:
                cpu[line] = procs.cpu_seconds(peer.pids())
            elif line.startswith("READY"):
                if on_ready is not None:
                    on_ready(int(line.split()[1]), proc)
                else:
                    proc.stdin.close()
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        proc.wait()
    finally:
        watchdog.cancel()
        ctx.procs.children.remove((f"bench-load {mode}", proc))
    reader.join(timeout=5)
    if watchdog.fired:
        raise StepFailed(f"{mode} exceeded its {budget:.0f}s budget")
    if proc.returncode != 0 or result is None:
        tail = "".join(errors[-5:]).strip()
        raise StepFailed(f"{mode} exited {proc.returncode}: {tail}")
    if errors:
        sys.stderr.write("".join(errors[:5]))
    if "MEASURE_START" in cpu and "MEASURE_END" in cpu:
        result["cpu_s"] = cpu["MEASURE_END"] - cpu["MEASURE_START"]
    return result


def _cpu_per_10k(r):
    if "cpu_s" not in r or not r.get("ok"):
        return None
    return r["cpu_s"] / r["ok"] * 10_000


def _ms(us):
    return us / 1000.0


class Step:
    def __init__(self, key, applies, make_args, budget, values):
        self.key = key
        self.applies = applies
        self.make_args = make_args  # profile -> (mode, [flags])
        self.budget = budget  # profile -> seconds
        self.values = values  # result -> {value_key: number}


def _window(p):
    return ["--warmup", str(p.warmup), "--secs", str(p.secs)]


def _window_budget(p):
    return p.warmup + p.secs + STEP_SLACK_SECONDS


def _errors_ok(r):
    return r.get("errors", 0) == 0


STEPS = [
    Step(
        "ka_h1", lambda peer: True,
        lambda p: ("rate", ["--proto", "h1", "--conns", str(p.ka_conns)] + _window(p)),
        _window_budget,
        lambda r: {
            "ka_h1_rps": r["rps"], "ka_h1_p50_ms": _ms(r["p50_us"]),
            "ka_h1_p99_ms": _ms(r["p99_us"]), "cpu_ka": _cpu_per_10k(r),
        },
    ),
    # Issue 7 states its targets at 32 connections; measurement 1 asks for 64.
    Step(
        "ka_h1_32", lambda peer: True,
        lambda p: ("rate", ["--proto", "h1", "--conns", str(p.ka_target_conns)] + _window(p)),
        _window_budget,
        lambda r: {
            "ka32_rps": r["rps"], "ka32_p50_ms": _ms(r["p50_us"]),
            "ka32_p99_ms": _ms(r["p99_us"]), "cpu_ka32": _cpu_per_10k(r),
        },
    ),
    Step(
        "ka_h2", lambda peer: peer.h2,
        lambda p: ("rate", ["--proto", "h2", "--conns", str(p.h2_conns),
                            "--streams", str(p.h2_streams)] + _window(p)),
        _window_budget,
        lambda r: {"ka_h2_rps": r["rps"]},
    ),
    Step(
        "nc_pool", lambda peer: True,
        lambda p: ("newconn", ["--conns", str(p.nc_conns), "--path", "/1k"] + _window(p)),
        _window_budget,
        lambda r: {"nc_pool_rps": r["rps"], "cpu_nc": _cpu_per_10k(r)},
    ),
    Step(
        "nc_fresh", lambda peer: True,
        lambda p: ("newconn", ["--conns", str(p.nc_conns), "--path", "/close"] + _window(p)),
        _window_budget,
        lambda r: {"nc_fresh_rps": r["rps"]},
    ),
    Step(
        "lat", lambda peer: True,
        lambda p: ("latency", ["--rate", str(p.lat_rate), "--conns", str(p.lat_conns),
                               "--warmup", str(p.warmup), "--secs", str(p.lat_secs)]),
        lambda p: p.warmup + p.lat_secs + STEP_SLACK_SECONDS,
        lambda r: {"lat_p50_ms": _ms(r["p50_us"]), "lat_p99_ms": _ms(r["p99_us"])},
    ),
    Step(
        "sse", lambda peer: True,
        lambda p: ("sse", ["--streams", str(p.sse_streams), "--events", str(p.sse_events),
                           "--interval-ms", str(p.sse_ms)]),
        lambda p: p.sse_events * p.sse_ms / 1000 + STEP_SLACK_SECONDS,
        lambda r: {"sse_p50_ms": _ms(r["p50_us"]), "sse_p99_ms": _ms(r["p99_us"])},
    ),
    Step(
        "down", lambda peer: True,
        lambda p: ("bulk", ["--download", str(p.bulk)]),
        lambda p: p.bulk / BULK_MIN_BYTES_PER_SECOND + STEP_SLACK_SECONDS,
        lambda r: {"down_mib_s": r["mib_s"]},
    ),
    Step(
        "up", lambda peer: True,
        lambda p: ("bulk", ["--upload", str(p.bulk)]),
        lambda p: p.bulk / BULK_MIN_BYTES_PER_SECOND + STEP_SLACK_SECONDS,
        lambda r: {"up_mib_s": r["mib_s"]},
    ),
]


def run_step(ctx, step, peer, profile):
    mode, flags = step.make_args(profile)
    r = run_load(ctx, peer, mode, flags, step.budget(profile))
    if not _errors_ok(r):
        raise StepFailed(f"{mode}: {r.get('errors')} failed requests")
    return {k: v for k, v in step.values(r).items() if v is not None}


def idle_memory(ctx, peer, profile):
    """RSS growth of the proxy's process tree per idle intercepted connection. With
    `profile.idle_stages` (cumulative counts, e.g. 1000 and 10000) the connections open in
    stages on one proxy, the earlier ones held open, and each stage is reported."""
    stages = getattr(profile, "idle_stages", None) or [profile.idle]
    before = procs.rss_kib(peer.pids())
    seen = []

    def on_ready(n, proc):
        time.sleep(IDLE_SETTLE_SECONDS)
        seen.append((n, procs.rss_kib(peer.pids())))
        if len(seen) < len(stages):
            proc.stdin.write("next\n")
            proc.stdin.flush()
        else:
            proc.stdin.close()

    budget = IDLE_BUDGET_SECONDS * len(stages) + stages[-1] / IDLE_MIN_OPEN_PER_SECOND
    r = run_load(ctx, peer, "idle",
                 ["--conns", ",".join(str(n) for n in stages), "--hold-secs", "300"],
                 budget, on_ready=on_ready)
    if len(seen) != len(stages):
        raise StepFailed(f"idle: {len(seen)} of {len(stages)} stages reported")
    out = {"rss_base_mib": before / 1024, "idle_errors": r.get("errors", 0)}
    for stage, (n, after) in zip(stages, seen):
        if n < stage:
            raise StepFailed(f"idle: only {n} of {stage} connections opened")
        suffix = "" if len(stages) == 1 else f"_{stage}"
        out["rss_per_conn_kib" + suffix] = (after - before) / n
        out["rss_idle_mib" + suffix] = after / 1024
    return out
