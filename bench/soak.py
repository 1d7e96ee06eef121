#!/usr/bin/env python3
"""scripts/soak driver: the issue-10 scenarios 1-7 against one or two paude-proxy
binaries (a baseline and the new one), each scenario run on both before the next, and a
Markdown table of the figures side by side. Invoked by scripts/soak, which installs
nginx and hey and raises the descriptor limit; see that script for the options."""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import peers, procs, soakcli, soakup  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every process the soak starts has this in its command line or environment (the run
# directory's prefix), so a later run can recognise the leftovers of one that died hard.
MARKER = "paude-soak."
# One GET (tunnel, two TLS handshakes, request) may take this long before it counts as
# unanswered.
GET_TIMEOUT_SECONDS = 10.0
# Scenario 4 and 5 give up waiting for the proxy after this long (the "30 s").
NO_ANSWER_SECONDS = 30.0
# The proxy gets this long to exit after SIGTERM in scenario 7 before it is killed.
EXIT_WAIT_SECONDS = 20.0
# RSS sampling interval while a flood runs.
RSS_SAMPLE_SECONDS = 0.25
# The normal client's GETs while the stallers hold: each, and all of them together.
STALLED_GET_TIMEOUT_SECONDS = 5.0
STALLED_BUDGET_SECONDS = 60.0
# Each staller reads this much of its download, then stops reading.
STALLER_READS_BYTES = 256 << 10
# Scenario 6's flood may take at most this long; names left over are not sent.
FLOOD_BUDGET_SECONDS = 300.0
FLOOD_WORKERS = 32


class Profile:
    def __init__(self, **kw):
        self.__dict__.update(kw)


# Seconds after the floods when the pool has idled out: PAUDE_PROXY_UPSTREAM_IDLE_TIMEOUT's
# default (50 s) plus the 10 s reap interval and a margin.
POOL_DRAINED = 65

FULL = Profile(load_seconds=20, load_conns=64, spaced=10, spacing=1.1, stallers=8,
               small_gets=20, idle_conns=3000, fd_window=30, names=10000, slowloris=2000,
               slowloris_hold=5, settle=30)
QUICK = Profile(load_seconds=8, load_conns=64, spaced=5, spacing=1.1, stallers=8,
                small_gets=10, idle_conns=3000, fd_window=15, names=2000, slowloris=2000,
                slowloris_hold=3, settle=10)


class Interrupted(BaseException):
    """A signal: derives from BaseException so no per-step `except Exception` swallows it."""


def _on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def log(msg):
    print(f"soak: {msg}", file=sys.stderr, flush=True)


class Proxy:
    """One paude-proxy process of one binary for one scenario."""

    def __init__(self, run, label, binary, scenario, extra=None, prefix=()):
        work = run.ctx.path(f"{label}-{scenario}")
        os.makedirs(work, exist_ok=True)
        env = peers.paude_env(run.ctx, work, run.hosts_text, "127.0.0.0/8", {
            "PAUDE_PROXY_LISTEN": "127.0.0.1:0",
            "PAUDE_PROXY_ADMIN_LISTEN": "127.0.0.1:0",
            "ALLOWED_DOMAINS": f".{soakup.DOMAIN}",
            "ALLOWED_OTEL_PORTS": ",".join(str(p) for p in run.ports if p != 443),
            **(extra or {}),
        })
        self.log = os.path.join(work, "proxy.log")
        self.proc = run.ctx.procs.start(f"{label}-{scenario}", [*prefix, binary], self.log,
                                        env=env)
        line = procs.wait_log(self.log, "listening role=explicit addr=", self.proc, label)
        self.port = int(line.split("addr=")[1].split()[0].rsplit(":", 1)[1])
        line = procs.wait_log(self.log, "listening role=admin addr=", self.proc, label)
        self.admin = int(line.split("addr=")[1].split()[0].rsplit(":", 1)[1])
        self.run = run

    def rss_mib(self):
        return procs.rss_kib([self.proc.pid]) / 1024

    def metrics(self, prefix):
        """Sum of the /metrics samples whose name starts with `prefix`, with their lines."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics",
                                        timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None, []
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        if not lines:
            return None, []
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines), lines

    def log_count(self, needle):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return sum(needle in line for line in f)

    def log_lines(self, needle, limit):
        out = []
        with open(self.log, encoding="utf-8", errors="replace") as f:
            for line in f:
                if needle in line and len(out) < limit:
                    out.append(line.strip()[-240:])
        return out

    def sockets_to(self, port):
        """How many of the proxy's descriptors are TCP sockets to remote port `port`."""
        pid = self.proc.pid
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        n = 0
        for table in ("tcp", "tcp6"):
            with open(f"/proc/{pid}/net/{table}", encoding="utf-8") as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                        n += 1
        return n

    def stop(self):
        self.run.ctx.procs.stop(self.proc)


class Run:
    def __init__(self, args, ctx):
        self.args = args
        self.ctx = ctx
        self.p = QUICK if args.quick else FULL
        self.binaries = [("baseline", args.baseline)] if args.baseline else []
        self.binaries.append(("new", args.binary))
        self.rows = []  # (scenario, metric, {label: value}, target)
        self.notes = []
        rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        self.revs = {"new": f", worktree at {rev}" if rev else ""}
        if args.baseline_rev:
            self.revs["baseline"] = f", built from {args.baseline_rev}"

    def row(self, scenario, metric, values, target):
        self.rows.append((scenario, metric, values, target))

    def each(self, scenario, fn):
        """Runs `fn(label, binary)` -> {metric: value} for every binary, then records
        the rows; a failed binary gets its error in every cell."""
        results, order = {}, []
        for label, binary in self.binaries:
            log(f"{scenario}: {label}")
            try:
                res = fn(label, binary)
            except Exception as e:
                log(f"{scenario} {label} FAILED: {e}")
                self.notes.append(f"{scenario}, {label}: failed: {e}")
                res = {}
            results[label] = res
            order += [m for m in res if m not in order]
        for metric in order:
            target = next((r[metric][1] for r in results.values() if metric in r), "")
            self.row(scenario, metric,
                     {lb: results[lb][metric][0] if metric in results[lb] else "n/a"
                      for lb, _ in self.binaries}, target)


def pct(vals, q):
    vals = sorted(vals)
    return vals[min(len(vals) - 1, int(round(q * (len(vals) - 1))))]


def goaway_load(run, ng):
    p = run.p

    def fn(label, binary):
        px = Proxy(run, label, binary, "s1")
        try:
            hey_log = run.ctx.path(f"{label}-s1", "hey.out")
            hey = run.ctx.procs.start(
                f"hey-{label}",
                ["hey", "-z", f"{p.load_seconds}s", "-c", str(p.load_conns), "-t", "20",
                 "-x", f"http://127.0.0.1:{px.port}",
                 f"https://h0.{soakup.DOMAIN}/small"],
                hey_log)
            dog = procs.Watchdog(hey, p.load_seconds + 60)
            hey.wait()
            dog.cancel()
            with open(hey_log, encoding="utf-8", errors="replace") as f:
                out = f.read()
            codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
            errs = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+\S", out.split(
                "Error distribution:")[1], re.M)) if "Error distribution:" in out else 0
            total = sum(codes.values()) + errs
            bad = total - codes.get(200, 0)
            res = {
                f"non-200 or failed / total (hey -z {p.load_seconds}s -c {p.load_conns})":
                    (f"{bad:,} / {total:,} ({bad / max(total, 1):.2%})", "0"),
                "requests/s": (f"{total / p.load_seconds:,.0f}", ""),
            }
            retries, lines = px.metrics("paude_proxy_upstream_retries_total")
            if retries is not None and lines:
                res["upstream retries (/metrics)"] = (
                    ", ".join(ln.replace("paude_proxy_upstream_retries_total", "") for ln in lines),
                    "")
            for line in px.log_lines("status=502", 2):
                run.notes.append(f"scenario 1, {label}, proxy log: `{line}`")
            return res
        finally:
            px.stop()

    run.each(f"1. HTTP/2 GOAWAY every {soakup.KEEPALIVE_REQUESTS} streams", fn)


def stale_pool(run, ng):
    p = run.p
    drop = soakup.PyUpstream("drop-reuse", run.ctx.pki, run.addr)
    run.ports.append(drop.port)

    def fn(label, binary):
        px = Proxy(run, label, binary, "s2")
        try:
            bad = []
            for n in range(p.spaced):
                if n:
                    time.sleep(p.spacing)
                status, _ = soakcli.get(px.port, f"h0.{soakup.DOMAIN}", ng.h1_port, run.ca,
                                        "/small", GET_TIMEOUT_SECONDS)
                if status != 200:
                    bad.append(status)
            bad2 = []
            for _ in range(p.spaced):
                status, _ = soakcli.get(px.port, f"h0.{soakup.DOMAIN}", drop.port, run.ca,
                                        "/", GET_TIMEOUT_SECONDS)
                if status != 200:
                    bad2.append(status)
            for line in px.log_lines("status=502", 1):
                run.notes.append(f"scenario 2, {label}, proxy log: `{line}`")
            return {
                f"non-200 of {p.spaced} GETs {p.spacing} s apart (nginx keepalive_timeout 1s)":
                    (f"{len(bad)}" + (f" ({', '.join(map(str, sorted(set(bad), key=str)))})"
                                      if bad else ""), "0"),
                f"non-200 of {p.spaced} GETs, upstream resets each reused connection":
                    (f"{len(bad2)}" + (f" ({', '.join(map(str, sorted(set(bad2), key=str)))})"
                                       if bad2 else ""), "0"),
            }
        finally:
            px.stop()

    try:
        run.each("2. Stale pooled HTTP/1.1 connection", fn)
    finally:
        drop.close()


def stall(run, ng):
    p = run.p
    host = f"h0.{soakup.DOMAIN}"

    def gets(px, count, timeout, budget):
        lat, failed = [], 0
        end = time.monotonic() + budget
        for _ in range(count):
            if time.monotonic() > end:
                failed += 1
                continue
            status, secs = soakcli.get(px.port, host, ng.h2_port, run.ca, "/small", timeout)
            if status == 200:
                lat.append(secs * 1000)
            else:
                failed += 1
        return lat, failed

    def fmt(lat):
        if not lat:
            return "no answer"
        return f"{statistics.median(lat):.1f} / {pct(lat, 0.95):.1f}"

    def fn(label, binary):
        px = Proxy(run, label, binary, "s3")
        stallers = []
        try:
            calm, _ = gets(px, p.small_gets, GET_TIMEOUT_SECONDS, NO_ANSWER_SECONDS * 2)
            started = 0
            for _ in range(p.stallers):
                t, got = soakcli.stall(px.port, host, ng.h2_port, run.ca, "/big",
                                       STALLER_READS_BYTES, STALLED_GET_TIMEOUT_SECONDS)
                stallers.append(t)
                started += got == STALLER_READS_BYTES
            time.sleep(2)  # let every staller's windows and buffers fill
            held, failed = gets(px, p.small_gets, STALLED_GET_TIMEOUT_SECONDS,
                                STALLED_BUDGET_SECONDS)
            ratio = (f"{statistics.median(held) / statistics.median(calm):.2f}x"
                     if held and calm else "n/a")
            return {
                f"median / p95 ms of {p.small_gets} GETs, no stallers": (fmt(calm), ""),
                f"median / p95 ms with {p.stallers} stalled downloads": (fmt(held), ""),
                f"stallers whose first {STALLER_READS_BYTES >> 10} KiB arrived":
                    (f"{started} / {p.stallers}", f"{p.stallers}"),
                "ratio of medians (with / without)": (ratio, "<= 2x"),
                f"GETs unanswered within {STALLED_GET_TIMEOUT_SECONDS:.0f} s while stalled":
                    (f"{failed} / {p.small_gets}", "0"),
            }
        finally:
            for t in stallers:
                t.close()
            px.stop()

    run.each("3. Stalled readers", fn)


def never_answers(run):
    hole = soakup.PyUpstream("blackhole", run.ctx.pki, run.addr)
    run.ports.append(hole.port)

    def fn(label, binary):
        px = Proxy(run, label, binary, "s4", {"PAUDE_PROXY_RESPONSE_HEADER_TIMEOUT": "5"})
        try:
            status, secs = soakcli.get(px.port, f"h0.{soakup.DOMAIN}", hole.port, run.ca, "/",
                                       NO_ANSWER_SECONDS)
            got = (f"{status} after {secs:.1f} s" if isinstance(status, int)
                   else f"no answer within {NO_ANSWER_SECONDS:.0f} s" if secs >=
                   NO_ANSWER_SECONDS - 1 else f"{status} after {secs:.1f} s")
            return {"status seen by the client (RESPONSE_HEADER_TIMEOUT=5)": (got, "504 after ~5 s")}
        finally:
            px.stop()

    try:
        run.each("4. Upstream never answers", fn)
    finally:
        hole.close()


def fd_exhaustion(run, ng):
    p = run.p

    def fn(label, binary):
        px = Proxy(run, label, binary, "s5", prefix=("prlimit", "--nofile=1024:1024", "--"))
        idle = []
        try:
            before = px.log_count("accept failed")
            t_start = time.monotonic()
            idle = soakcli.open_idle(px.port, p.idle_conns)
            t_flood = time.monotonic()
            served = None
            while time.monotonic() - t_flood < NO_ANSWER_SECONDS:
                status, _ = soakcli.get(px.port, f"h0.{soakup.DOMAIN}", ng.h2_port, run.ca,
                                        "/small", 5)
                if status == 200:
                    served = time.monotonic() - t_flood
                    break
                time.sleep(0.2)
            # Count the log over a fixed window, so both binaries are compared alike.
            rest = p.fd_window - (time.monotonic() - t_start)
            if rest > 0:
                time.sleep(rest)
            window = time.monotonic() - t_start
            opened = soakcli.established(idle, wait=0)
            lines = px.log_count("accept failed") - before
            alive = px.proc.poll() is None
            return {
                "idle connections established / attempted": (f"{opened:,} / {len(idle):,}", ""),
                "time until a new client is served": (
                    f"{served:.1f} s" if served is not None
                    else f"not served within {NO_ANSWER_SECONDS:.0f} s", "a few s"),
                f"'accept failed' log lines per second (first {p.fd_window} s)":
                    (f"{lines / window:.1f} ({lines} lines in {window:.0f} s)", "bounded"),
                "proxy still running": ("yes" if alive else f"no (exit {px.proc.returncode})",
                                        "yes"),
            }
        finally:
            for s in idle:
                s.close()
            px.stop()

    run.each("5. ulimit -n 1024, idle connections", fn)


def memory(run, ng):
    p = run.p
    names = [f"h{n}.{soakup.DOMAIN}" for n in range(p.names)]

    def fn(label, binary):
        px = Proxy(run, label, binary, "s6")
        peak = [0.0]
        done = threading.Event()

        def sample():
            while not done.wait(RSS_SAMPLE_SECONDS):
                peak[0] = max(peak[0], px.rss_mib())

        sampler = threading.Thread(target=sample, daemon=True)
        held = []
        try:
            soakcli.get(px.port, names[0], ng.h2_port, run.ca, "/small", GET_TIMEOUT_SECONDS)
            time.sleep(1)
            rss0 = px.rss_mib()
            sampler.start()
            ok, failed, secs = soakcli.flood_names(
                px.port, names, ng.h2_port, run.ca, FLOOD_WORKERS, GET_TIMEOUT_SECONDS,
                time.monotonic() + FLOOD_BUDGET_SECONDS)
            time.sleep(2)
            rss_flood = px.rss_mib()
            fds_flood = px.sockets_to(ng.h2_port)
            pooled, _ = px.metrics("paude_proxy_upstream_pooled_connections")
            held = soakcli.slowloris(px.port, p.slowloris, 2)
            n_slow = len(held)
            time.sleep(p.slowloris_hold)
            rss_slow = px.rss_mib()
            open_slow, _ = px.metrics("paude_proxy_open_connections")
            for s in held:
                s.close()
            held = []
            time.sleep(p.settle)
            rss_after = px.rss_mib()
            fds_after = px.sockets_to(ng.h2_port)
            open_after, _ = px.metrics("paude_proxy_open_connections")
            # Pooled upstream connections legitimately live until their idle timeout (50 s)
            # plus a reap tick (10 s): measure again once the pool has emptied itself.
            time.sleep(max(0, POOL_DRAINED - p.settle))
            rss_drained = px.rss_mib()
            pooled_drained, _ = px.metrics("paude_proxy_upstream_pooled_connections")
            done.set()
            res = {
                f"CONNECT+TLS+GET to distinct names: ok / sent (s)":
                    (f"{ok:,} / {ok + failed:,} ({secs:.0f} s)", f"{p.names:,}"),
                "RSS before (MiB)": (f"{rss0:.1f}", ""),
                "RSS 2 s after the name flood (MiB)": (f"{rss_flood:.1f}", ""),
                f"RSS with {n_slow:,} slowloris connections held (MiB)": (f"{rss_slow:.1f}", ""),
                "RSS peak (MiB)": (f"{max(peak[0], rss_flood, rss_slow):.1f}", ""),
                f"RSS {p.settle} s after both floods (MiB)":
                    (f"{rss_after:.1f} ({rss_after / rss0:.1f}x before)", "<= 2x before"),
                f"RSS {POOL_DRAINED} s after both floods, pool idled out (MiB)":
                    (f"{rss_drained:.1f} ({rss_drained / rss0:.1f}x before; pooled: "
                     f"{pooled_drained if pooled_drained is None else f'{pooled_drained:.0f}'})",
                     "<= 2x before"),
                "upstream sockets held 2 s after the name flood": (f"{fds_flood:,}", "capped"),
                f"upstream sockets held {p.settle} s after both floods": (f"{fds_after:,}", ""),
            }
            if open_slow is not None:
                res[f"open client connections (/metrics): slowloris held / {p.settle} s after"] = (
                    f"{open_slow:,.0f} / {open_after:,.0f}", "")
            if pooled is not None:
                res["pooled upstream connections (/metrics) after the name flood"] = (
                    f"{pooled:,.0f}", "")
            return res
        finally:
            done.set()
            for s in held:
                s.close()
            px.stop()

    run.each("6. Memory after floods", fn)


def signals(run):
    sse = soakup.PyUpstream("sse", run.ctx.pki, run.addr)
    run.ports.append(sse.port)

    def fn(label, binary):
        px = Proxy(run, label, binary, "s7")
        result = {}

        def client():
            try:
                t = soakcli.Tunnel(px.port, f"h0.{soakup.DOMAIN}", sse.port, run.ca,
                                   GET_TIMEOUT_SECONDS)
                try:
                    t.send_get("/sse")
                    status, body = t.response()
                    result["events"] = body.count(b"data:")
                    result["status"] = status
                finally:
                    t.close()
            except (OSError, ValueError) as e:
                result["error"] = str(e)
                result["events"] = getattr(e, "body", b"").count(b"data:")

        try:
            before = sse.accepted
            reader = threading.Thread(target=client, daemon=True)
            reader.start()
            deadline = time.monotonic() + GET_TIMEOUT_SECONDS
            while sse.accepted == before and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # a few events in flight
            t0 = time.monotonic()
            px.proc.send_signal(signal.SIGTERM)
            try:
                code = px.proc.wait(timeout=EXIT_WAIT_SECONDS)
                exit_s = f"{time.monotonic() - t0:.1f} s"
            except subprocess.TimeoutExpired:
                code, exit_s = None, f"not within {EXIT_WAIT_SECONDS:.0f} s"
            reader.join(timeout=GET_TIMEOUT_SECONDS)
            events = result.get("events", 0)
            complete = ("yes" if events == soakup.SSE_EVENTS and "error" not in result
                        else f"no ({events}/{soakup.SSE_EVENTS} events"
                        + (f", {result['error']}" if "error" in result else "") + ")")
        finally:
            px.stop()
        hup = Proxy(run, label, binary, "s7-hup")
        try:
            hup.proc.send_signal(signal.SIGHUP)
            time.sleep(1)
            alive = hup.proc.poll() is None
            status = (soakcli.get(hup.port, f"h0.{soakup.DOMAIN}", sse.port, run.ca, "/sse",
                                  GET_TIMEOUT_SECONDS)[0] if alive else None)
            hup_s = "yes, serving" if status == 200 else (
                f"yes, but GET gave {status}" if alive else f"no ({exit_text(hup.proc.returncode)})")
        finally:
            hup.stop()
        return {
            "SIGTERM during the stream: stream completed": (complete, "yes"),
            "SIGTERM: exit status": (exit_text(code), "exit 0"),
            "SIGTERM: time to exit": (exit_s, "about the stream's rest (< 3 s)"),
            "SIGHUP: process still alive": (hup_s, "yes"),
        }

    try:
        run.each("7. Signals", fn)
    finally:
        sse.close()


def exit_text(code):
    if code is None:
        return "still running"
    return f"killed by signal {-code}" if code < 0 else f"exit {code}"


def version(binary):
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or "?"
    except OSError as e:
        return f"? ({e})"


def report(run, started):
    labels = [lb for lb, _ in run.binaries]
    with open("/proc/loadavg", encoding="utf-8") as f:
        load = " ".join(f.read().split()[:3])
    lines = [
        "# paude-proxy soak (issue 10, points 1-7)",
        "",
        f"`scripts/soak{' --quick' if run.args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{time.time() - started:.0f} s in all; {os.cpu_count()} cores shared with other "
        f"work, load average {load} at the end. All traffic on loopback (127.0.0.0/8).",
        "",
        "Binaries: " + "; ".join(f"{lb}: `{b}` ({version(b)}{run.revs.get(lb, '')})"
                                 for lb, b in run.binaries),
        "",
        "| Scenario | Metric | " + " | ".join(labels) + " | Target |",
        "|---|---|" + "---|" * len(labels) + "---|",
    ]
    last = None
    for scenario, metric, values, target in run.rows:
        shown = scenario if scenario != last else ""
        last = scenario
        lines.append(f"| {shown} | {metric} | " + " | ".join(values[lb] for lb in labels)
                     + f" | {target} |")
    lines += [
        "",
        "## Setup",
        "",
        f"- Upstreams: nginx {nginx_version()} on {run.addr} (a loopback address picked per run; port 443 for h2, since hey 0.1.4 puts a port into its SNI), TLS with a test CA made by the "
        "run; one `http2` port (`keepalive_requests "
        f"{soakup.KEEPALIVE_REQUESTS}`, so a GOAWAY every {soakup.KEEPALIVE_REQUESTS} "
        "streams; `keepalive_timeout 300s`), one HTTP/1.1-only port with "
        "`keepalive_timeout 1s`; files `/small` (1 KiB) and `/big` (1 GiB). Small Python "
        "TLS servers for the upstream that never answers, the one that resets every "
        "reused connection, and the SSE-like stream (an event every "
        f"{soakup.SSE_INTERVAL_SECONDS * 1000:.0f} ms, {soakup.SSE_EVENTS} events).",
        "- Names `h0.soak.test` ... are mapped to that address with `PAUDE_PROXY_HOSTS_FILE`; "
        "`PAUDE_PROXY_ALLOWED_UPSTREAM_NETS=127.0.0.0/8`, `PAUDE_PROXY_UPSTREAM_CA` = the "
        "test CA, `ALLOWED_DOMAINS=.soak.test`. A fresh proxy process per scenario and "
        "binary, all other settings at their defaults (scenario 4 sets "
        "`PAUDE_PROXY_RESPONSE_HEADER_TIMEOUT=5`, which the baseline ignores).",
        "- Clients: `hey` through the proxy (`-x`, CONNECT, HTTP/1.1 to the proxy, which "
        "speaks h2 to nginx) for scenario 1; Python (ssl) for the rest, one CONNECT tunnel, "
        "TLS handshake with the interception CA and request per GET, so latencies include "
        "both handshakes. Stallers read 256 KiB of `/big` and then stop reading. Slowloris "
        "connections send `CONNECT hN.soak.test:443 HTTP/1.1\\r\\nHost: hN` and hold. "
        "Scenario 5 starts the proxy under `prlimit --nofile=1024:1024` and opens plain "
        "TCP connections that send nothing.",
        "- RSS is VmRSS of the proxy process; upstream sockets are the proxy's descriptors "
        "that are TCP connections to nginx's h2 port (from /proc).",
    ]
    if run.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in run.notes]
    text = "\n".join(lines) + "\n"
    print(text)
    if run.args.output != "-":
        with open(run.args.output, "w", encoding="utf-8") as f:
            f.write(text)
        log(f"report written to {run.args.output}")


def nginx_version():
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=30)
    return out.stderr.strip().split("/")[-1] or "?"


SCENARIOS = {
    "1": lambda run, ng: goaway_load(run, ng),
    "2": lambda run, ng: stale_pool(run, ng),
    "3": lambda run, ng: stall(run, ng),
    "4": lambda run, ng: never_answers(run),
    "5": lambda run, ng: fd_exhaustion(run, ng),
    "6": lambda run, ng: memory(run, ng),
    "7": lambda run, ng: signals(run),
}


def parse_args():
    ap = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="shorter floods and loads")
    ap.add_argument("--binary", required=True, help="the paude-proxy binary under test")
    ap.add_argument("--baseline", help="a paude-proxy binary to compare with")
    ap.add_argument("--baseline-rev", default="",
                    help="what the baseline was built from, for the report")
    ap.add_argument("--keep", action="store_true",
                    help="keep the run directory (logs) for inspection")
    ap.add_argument("--scenarios", default="1,2,3,4,5,6,7", help="comma-separated subset")
    ap.add_argument("--output", default=os.path.join(ROOT, "bench", "soak-results.md"),
                    help="where the Markdown report goes ('-' for stdout only)")
    return ap.parse_args()


def main():
    args = parse_args()
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"scripts/soak: unknown scenario(s) {', '.join(unknown)}")
    for b in [args.binary] + ([args.baseline] if args.baseline else []):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"scripts/soak: {b} is not an executable")
    args.binary = os.path.abspath(args.binary)
    args.baseline = os.path.abspath(args.baseline) if args.baseline else None
    started = time.time()
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix=MARKER)
    ctx = peers.Ctx(ROOT, None, args.binary, run_dir, None,
                    procs.Procs(os.path.join(ROOT, "bench", "out", "soak-pids"), MARKER))
    ctx.procs.reap_leftovers()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    run = Run(args, ctx)
    try:
        soakup.make_pki(ctx.pki)
        run.ca = os.path.join(ctx.pki, "proxy-ca.crt")
        run.addr = soakup.pick_addr()
        names = "\n".join(f"{run.addr} h{n}.{soakup.DOMAIN}" for n in range(run.p.names))
        run.hosts_text = f"{run.addr} {soakup.DOMAIN}\n{names}"
        ng = soakup.Nginx(run_dir, ctx.pki, ctx.procs, run.addr)
        ng.start()
        run.ports = [ng.h2_port, ng.h1_port]
        for s in wanted:
            SCENARIOS[s](run, ng)
    except Interrupted as e:
        log(f"interrupted ({e}); cleaning up")
        return 130
    finally:
        # Ignore further signals while tearing down, so cleanup always completes.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        ctx.procs.stop_all()
        if args.keep:
            log(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    report(run, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
