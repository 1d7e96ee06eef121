"""The nginx + hey configuration (issue 14): nginx 1.22 (`ssl http2`) as the origin, `hey`
for the request rows, `curl` for the bulk rows, bench-load only for the idle connections
(hey cannot hold connections open). Common tools rather than our own, so that the
figures compare with what anyone can reproduce, and so that a proxy is measured on the
traffic shape real clients and servers produce.

Each peer says where the client goes through `Peer.endpoint()`; the steps here turn that
into hey and curl command lines and parse their output. A run with any non-2xx answer or
any client error is discarded."""

import os
import re
import shutil
import subprocess
import time

from . import procs
from .measure import STEP_SLACK_SECONDS, StepFailed

ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
# The small body of the request rows.
SMALL_BODY = 1024
# Slowest bulk rate still waited for before a transfer counts as stuck.
BULK_MIN_BYTES_PER_SECOND = 2 * 1024 * 1024
# hey gives up on one request after this long (its -t); a stuck peer then shows as errors.
HEY_REQUEST_TIMEOUT_SECONDS = 20
GIB = 1 << 30
# How long nginx may take to write an upload's access line after curl has its answer.
UPLOAD_LOG_WAIT_SECONDS = 5.0


def _fill(template, values):
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    left = re.search(r"@[A-Z_]+@", template)
    if left:
        raise RuntimeError(f"nginx.conf.in: unfilled key {left[0]}")
    return template


class Nginx:
    """One nginx origin: its directory under the run dir, its config, its process."""

    def __init__(self, ctx, name, listen, wrap=(), bulk_bytes=GIB):
        self.ctx = ctx
        self.name = name
        self.listen = listen
        self.wrap = list(wrap)
        self.dir = ctx.path(name)
        self.bulk_bytes = bulk_bytes
        self.proc = None
        # Upload bodies are spooled here by nginx and unlinked at once; tmpfs keeps the
        # disk out of the upload row.
        shm = "/dev/shm"
        base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else self.dir
        self.body_tmp = os.path.join(base, f"paude-bench-{os.getpid()}-{name}")

    def start(self, real_auth):
        from .peers import write  # late: peers imports nothing from here

        www = os.path.join(self.dir, "www")
        os.makedirs(www, exist_ok=True)
        os.makedirs(self.body_tmp, exist_ok=True)
        write(os.path.join(www, "1k"), "x" * SMALL_BODY)
        # Sparse: 1 GiB that costs no disk and reads as zeros from the page cache.
        with open(os.path.join(www, "bulk"), "wb") as f:
            f.truncate(self.bulk_bytes)
        with open(os.path.join(self.ctx.root, "bench", "nginx.conf.in"), encoding="utf-8") as f:
            conf = _fill(f.read(), {
                "ECHO_MODULE": ECHO_MODULE,
                "DIR": self.dir,
                "BODY_TMP": self.body_tmp,
                "LISTEN": self.listen,
                "CERT": os.path.join(self.ctx.pki, "upstream.crt"),
                "KEY": os.path.join(self.ctx.pki, "upstream.key"),
                "AUTH": real_auth,
            })
        path = os.path.join(self.dir, "nginx.conf")
        write(path, conf)
        cmd = self.wrap + ["nginx", "-c", path, "-p", self.dir, "-e", os.path.join(self.dir, "error.log")]
        self.proc = self.ctx.procs.start(self.name, cmd, os.path.join(self.dir, "stdout.log"))
        host, port = self.listen.rsplit(":", 1)
        procs.wait_port(host, int(port), self.proc, self.name,
                        wrap=self.wrap if self.wrap else None)
        return int(port)

    def pids(self):
        """The master and its workers, for the origin's CPU (the floor the proxy is
        compared with: one TLS leg and one HTTP codec, where the proxy runs two)."""
        return procs.tree(self.proc.pid) if self.proc is not None else []

    def uploads(self):
        """(status, request_length) of every upload nginx finished so far."""
        try:
            with open(os.path.join(self.dir, "upload.log"), encoding="utf-8") as f:
                return [tuple(int(x) for x in line.split()[:2]) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def stop(self):
        if self.proc is not None:
            self.ctx.procs.stop(self.proc)
        shutil.rmtree(self.body_tmp, ignore_errors=True)


def version():
    r = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=30)
    hey = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "hey"],
                         capture_output=True, text=True, timeout=30)
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, timeout=30)
    return {
        "nginx": r.stderr.strip().removeprefix("nginx version: "),
        "hey": f"hey {hey.stdout.strip() or '?'} (Debian)",
        "curl": curl.stdout.split("\n")[0].split(" (")[0],
    }


def _client_env(ep):
    env = dict(os.environ)
    # hey has no CA flag; Go reads SSL_CERT_FILE. (hey 0.1.4 also sets
    # InsecureSkipVerify, so for hey this is belt and braces; curl verifies for real.)
    env["SSL_CERT_FILE"] = ep["ca"]
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = ""
    return env


def _run_client(ctx, peer, cmd, budget, env):
    """Runs one client command where the peer is reached from, charging the proxy's CPU
    from just before it starts to just after it exits. Returns (stdout, cpu_s or None,
    the origin's cpu_s)."""
    cmd = peer.wrap() + cmd
    origin = ctx.origin_for(peer).pids()
    origin_before = procs.cpu_seconds(origin)
    before = procs.cpu_seconds(peer.pids()) if peer.proxy else None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, env=env,
                           preexec_fn=procs._die_with_parent)
    except subprocess.TimeoutExpired as e:
        raise StepFailed(f"{cmd[len(peer.wrap())]} exceeded its {budget:.0f}s budget") from e
    after = procs.cpu_seconds(peer.pids()) if peer.proxy else None
    origin_cpu = procs.cpu_seconds(origin) - origin_before
    if r.returncode != 0:
        raise StepFailed(f"{' '.join(cmd[len(peer.wrap()):][:3])}... exited {r.returncode}: "
                         f"{(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout, (after - before if peer.proxy else None), origin_cpu


def _url(ep, path):
    return f"https://{ep['url_authority']}{path}"


def parse_hey(text):
    """hey's summary -> {rps, ok, bad, errors, p50_ms, p99_ms}."""
    out = {"ok": 0, "bad": 0, "errors": 0}
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if not m:
        raise StepFailed(f"hey printed no Requests/sec: {text.strip()[-300:]}")
    out["rps"] = float(m[1])
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s*{pct}% in ([0-9.]+) secs", text, re.M)
        if m:
            out[key] = float(m[1]) * 1000
    status = text.split("Status code distribution:", 1)
    if len(status) == 2:
        block = status[1].split("Error distribution:", 1)[0]
        for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", block):
            out["ok" if code.startswith("2") else "bad"] += int(n)
    errors = text.split("Error distribution:", 1)
    if len(errors) == 2:
        out["errors"] = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", errors[1], re.M))
        out["error_text"] = errors[1].strip()[:300]
    return out


def hey(ctx, peer, profile, path, flags):
    ep = peer.endpoint()
    cmd = ["hey", "-z", f"{profile.secs:g}s", "-c", str(profile.hey_conns),
           "-t", str(HEY_REQUEST_TIMEOUT_SECONDS), "-disable-compression",
           "-H", f"Authorization: {ep['auth']}"] + flags
    # -host always: hey puts the Host value in the SNI too, and without it that would be
    # the URL's `host:port`, which no TLS server accepts as a name.
    cmd += ["-host", ep["host"]]
    if ep["proxy"]:
        # CONNECT names the bench host; the proxy resolves it from its hosts file.
        cmd += ["-x", f"http://{ep['proxy']}", _url(ep, path)]
    else:
        # hey resolves through the system, which does not know the bench host: dial the
        # address directly.
        port = ep["url_authority"].rsplit(":", 1)[1]
        cmd.append(f"https://{ep['connect_ip']}:{port}{path}")
    text, cpu, origin_cpu = _run_client(ctx, peer, cmd, profile.secs + STEP_SLACK_SECONDS,
                                        _client_env(ep))
    r = parse_hey(text)
    if r["bad"] or r["errors"] or not r["ok"]:
        raise StepFailed(f"hey: {r['ok']} 2xx, {r['bad']} non-2xx, {r['errors']} errors "
                         f"{r.get('error_text', '')}")
    if cpu is not None:
        r["cpu_per_10k"] = cpu / r["ok"] * 10_000
    r["origin_cpu_per_10k"] = origin_cpu / r["ok"] * 10_000
    return r


def curl(ctx, peer, path, extra, budget):
    ep = peer.endpoint()
    cmd = ["curl", "-sS", "--fail", "-o", "/dev/null", "--cacert", ep["ca"],
           "-H", f"Authorization: {ep['auth']}",
           "-w", "%{http_code} %{size_download} %{size_upload} %{time_total} %{http_version}"]
    if ep["proxy"]:
        cmd += ["-x", f"http://{ep['proxy']}"]
    else:
        cmd += ["--resolve", f"{ep['url_authority']}:{ep['connect_ip']}"]
    cmd += extra + [_url(ep, path)]
    text, cpu, origin_cpu = _run_client(ctx, peer, cmd, budget, _client_env(ep))
    code, down, up, secs, ver = text.split()
    return {"status": int(code), "down": int(down), "up": int(up), "secs": float(secs),
            "http_version": ver, "cpu_s": cpu, "origin_cpu_s": origin_cpu}


def injection_check(ctx, peer):
    r = curl(ctx, peer, "/1k", [], STEP_SLACK_SECONDS)
    if r["status"] != 200 or r["down"] != SMALL_BODY:
        raise StepFailed(f"injection check: {r!r}")


def _bulk_budget(p):
    return p.bulk / BULK_MIN_BYTES_PER_SECOND + STEP_SLACK_SECONDS


def _per_gib(r, nbytes):
    return None if r["cpu_s"] is None else r["cpu_s"] / nbytes * GIB


class Step:
    def __init__(self, key, applies, run):
        self.key = key
        self.applies = applies
        self.run = run  # (ctx, peer, profile) -> {value_key: number}


def _ka_h1(ctx, peer, p):
    r = hey(ctx, peer, p, "/1k", [])
    return {"ka_h1_rps": r["rps"], "cpu_ka_h1": r.get("cpu_per_10k"),
            "origin_cpu_ka_h1": r["origin_cpu_per_10k"],
            "ka_h1_p50_ms": r.get("p50_ms"), "ka_h1_p99_ms": r.get("p99_ms")}


def _ka_h2(ctx, peer, p):
    r = hey(ctx, peer, p, "/1k", ["-h2"])
    return {"ka_h2_rps": r["rps"], "cpu_ka_h2": r.get("cpu_per_10k"),
            "origin_cpu_ka_h2": r["origin_cpu_per_10k"]}


def _nc(ctx, peer, p):
    r = hey(ctx, peer, p, "/1k", ["-disable-keepalive"])
    return {"nc_rps": r["rps"], "cpu_nc": r.get("cpu_per_10k")}


def _down(ctx, peer, p):
    r = curl(ctx, peer, "/bulk", [], _bulk_budget(p))
    if r["status"] != 200 or r["down"] != p.bulk:
        raise StepFailed(f"download: {r!r}")
    return {"down_mib_s": p.bulk / r["secs"] / (1 << 20), "cpu_down": _per_gib(r, p.bulk),
            "origin_cpu_down": r["origin_cpu_s"] / p.bulk * GIB}


def _up(ctx, peer, p):
    origin = ctx.origin_for(peer)
    seen = len(origin.uploads())
    r = curl(ctx, peer, "/upload", ["-T", ctx.upload_src], _bulk_budget(p))
    # nginx writes the access line after the answer has gone out: wait for it.
    deadline = time.monotonic() + UPLOAD_LOG_WAIT_SECONDS
    got = origin.uploads()[seen:]
    while not got and time.monotonic() < deadline:
        time.sleep(procs.POLL_SECONDS)
        got = origin.uploads()[seen:]
    # The byte counter: nginx's own $request_length (head + body) for this upload.
    if r["status"] != 200 or r["up"] != p.bulk or len(got) != 1 or got[0][0] != 200 \
            or got[0][1] < p.bulk:
        raise StepFailed(f"upload: curl {r!r}, nginx saw {got!r}")
    return {"up_mib_s": p.bulk / r["secs"] / (1 << 20), "cpu_up": _per_gib(r, p.bulk),
            "origin_cpu_up": r["origin_cpu_s"] / p.bulk * GIB}


STEPS = [
    Step("ka_h1", lambda peer: True, _ka_h1),
    Step("ka_h2", lambda peer: peer.h2, _ka_h2),
    Step("nc", lambda peer: True, _nc),
    Step("down", lambda peer: True, _down),
    Step("up", lambda peer: True, _up),
]


def make_upload_source(path, nbytes):
    with open(path, "wb") as f:
        f.truncate(nbytes)


