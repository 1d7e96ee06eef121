#!/usr/bin/env python3
"""Idle memory per intercepted connection, on its own: a loopback TLS upstream, the proxy,
and N clients that CONNECT (or, with --transparent ADDR, reach a transparent listener),
finish TLS with the proxy's leaf, send one keep-alive GET, read the answer and stay open.
Prints the proxy's VmRSS before and with them open, per connection.

Quicker to iterate with than bench/run.py's idle row (no Rust harness to build); it measures
the same thing. Loopback only.

    bench/idle_mem.py --proxy-bin target/release/paude-proxy --conns 1000
    bench/idle_mem.py --proxy-bin target/release/paude-proxy --conns 10000 --heaptrack
    bench/idle_mem.py --proxy-bin target/release/paude-proxy --conns 1000 --transparent

--transparent (root only) measures the transparent listener instead: the upstream and the
proxy run in a namespace of their own (the upstream on 198.18.0.1, set aside for
benchmarks), the clients in a `scripts/paude-netns` agent namespace whose TCP nft redirects
to the proxy, as bench/benchlib/lab.py builds for scripts/bench. Nothing leaves them.
"""

import argparse
import asyncio
import ctypes
import os
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time

HOST = "bench.test"
# Connections being opened at once, as bench-load's idle mode.
OPEN_CONCURRENCY = 32
SETTLE_SECONDS = 1.0
BODY = b"x" * 1024
# --transparent's lab (see the docstring): namespaces are named after this process.
LAB_UPSTREAM_IP = "198.18.0.1"
LAB_SUBNET = "10.251.8.0/30"
TRANSPARENT_PORT = 3129
# paude-netns wants a DNS port for its redirect; nothing here resolves names.
LAB_DNS_PORT = 3153
CLONE_NEWNET = 0x40000000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_pki(d):
    """A throwaway upstream CA and a leaf for HOST."""
    ca_key, ca_crt = os.path.join(d, "up-ca.key"), os.path.join(d, "up-ca.crt")
    key, csr, crt = (os.path.join(d, n) for n in ("up.key", "up.csr", "up.crt"))
    ext = os.path.join(d, "ext.cnf")
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", ca_key, "-out", ca_crt, "-days", "2", "-subj", "/CN=idle-mem test CA")
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", key, "-out", csr, "-subj", f"/CN={HOST}")
    with open(ext, "w") as f:
        f.write(f"subjectAltName=DNS:{HOST}\n")
    sh("openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
       "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext)
    return ca_crt, crt, key


# ---------------------------------------------------------------- upstream (subprocess)

async def upstream_main(port_file, crt, key, host):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    ctx.set_alpn_protocols(["http/1.1"])

    async def handle(r, w):
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                if not head:
                    return
                w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(handle, host, 0, ssl=ctx, backlog=1024)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.sockets[0].getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    await srv.serve_forever()


# ---------------------------------------------------------------- client

async def open_one(args, ctx, up_port, gate, errors):
    async with gate:
        try:
            if args.transparent:
                # Addressed to the upstream; nft redirects it to the transparent listener.
                r, w = await asyncio.open_connection(LAB_UPSTREAM_IP, up_port)
            else:
                r, w = await asyncio.open_connection("127.0.0.1", args.proxy_port)
                w.write(f"CONNECT {HOST}:{up_port} HTTP/1.1\r\nHost: {HOST}:{up_port}\r\n\r\n"
                        .encode())
                head = await r.readuntil(b"\r\n\r\n")
                if b" 200 " not in head.split(b"\r\n", 1)[0]:
                    raise RuntimeError(head[:80])
            await w.start_tls(ctx, server_hostname=HOST)
            w.write(f"GET /1k HTTP/1.1\r\nHost: {HOST}:{up_port}\r\n\r\n".encode())
            head = await r.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise RuntimeError(head[:80])
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1])
            await r.readexactly(n)
            return w
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors.append(repr(e))
            return None


async def client_main(args, proxy_ca, up_port, proxy_pid):
    ctx = ssl.create_default_context(cafile=proxy_ca)
    if not args.no_alpn:
        ctx.set_alpn_protocols(["http/1.1"])
    gate = asyncio.Semaphore(args.concurrency)
    errors = []
    before = rss_kib(proxy_pid)
    t0 = time.monotonic()
    conns = await asyncio.gather(*(open_one(args, ctx, up_port, gate, errors)
                                   for _ in range(args.conns)))
    conns = [c for c in conns if c is not None]
    opened = time.monotonic() - t0
    await asyncio.sleep(args.settle)
    after = rss_kib(proxy_pid)
    per = (after - before) / max(len(conns), 1)
    print(f"open={len(conns)} errors={len(errors)} open_secs={opened:.1f} "
          f"rss_before_kib={before} rss_after_kib={after} per_conn_kib={per:.2f}", flush=True)
    if errors:
        print("first errors:", errors[:3], file=sys.stderr)
    if args.hold:
        print(f"holding {args.hold}s", flush=True)
        await asyncio.sleep(args.hold)
    if args.heaptrack:
        # Killed with every connection still open, so heaptrack reports what they hold as
        # "leaked": a snapshot of the idle state.
        os.kill(proxy_pid, signal.SIGKILL)
    for w in conns:
        w.transport.abort()
    return per


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def find_exe(path):
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and os.path.realpath(f"/proc/{p}/exe") == path:
                return int(p)
        except OSError:
            pass
    raise RuntimeError(f"no process runs {path}")


def wait_for(path, proc, secs=20):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{path} never appeared")


def raise_nofile():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")


class Lab:
    """gw (upstream + proxy) and an agent namespace redirected to it; see the docstring."""

    def __init__(self):
        tag = f"idlemem{os.getpid()}"
        self.gw, self.agent = f"{tag}-gw", f"{tag}-ag"
        self.made = []

    def wrap(self):
        return ["ip", "netns", "exec", self.gw]

    def up(self):
        run("ip", "netns", "add", self.gw)
        self.made.append(self.gw)
        run("ip", "-n", self.gw, "link", "set", "lo", "up")
        run("ip", "-n", self.gw, "addr", "add", f"{LAB_UPSTREAM_IP}/32", "dev", "lo")

    def add_agent(self, proxy_ca):
        self.made.append(self.agent)
        self._paude_netns("create", self.agent, "--subnet", LAB_SUBNET,
                          "--transparent-port", str(TRANSPARENT_PORT),
                          "--dns-port", str(LAB_DNS_PORT), "--ca", proxy_ca)

    def enter_agent(self):
        """This thread's sockets from now on are the agent's (the clients')."""
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        fd = os.open(f"/run/netns/{self.agent}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the agent namespace")
        finally:
            os.close(fd)

    def _paude_netns(self, *args):
        run("nsenter", f"--net=/run/netns/{self.gw}",
            os.path.join(ROOT, "scripts", "paude-netns"), *args)

    def down(self):
        if self.agent in self.made:
            try:
                self._paude_netns("destroy", self.agent)
            except (RuntimeError, subprocess.SubprocessError) as e:
                print(f"idle_mem: paude-netns destroy {self.agent}: {e}", file=sys.stderr)
        if self.gw in self.made:
            subprocess.run(["ip", "netns", "del", self.gw], check=False)
        self.made.clear()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy-bin", required=True)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=OPEN_CONCURRENCY)
    ap.add_argument("--settle", type=float, default=SETTLE_SECONDS,
                    help="seconds between the last connection opening and reading RSS")
    ap.add_argument("--hold", type=float, default=0, help="seconds to stay open after measuring")
    ap.add_argument("--heaptrack", action="store_true",
                    help="run the proxy under heaptrack (idle-mem.heaptrack.zst here; what the "
                    "idle connections hold is reported as leaked)")
    ap.add_argument("--no-alpn", action="store_true",
                    help="clients offer no ALPN (as python's http.client), not http/1.1")
    ap.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the proxy")
    ap.add_argument("--log", help="copy the proxy's log here at the end")
    ap.add_argument("--transparent", action="store_true",
                    help="measure the transparent listener, clients in a redirected "
                    "namespace (root only; see the docstring)")
    args = ap.parse_args()
    raise_nofile()
    d = tempfile.mkdtemp(prefix="idle-mem-")
    procs = []
    lab = Lab() if args.transparent else None
    wrap = []
    up_host = "127.0.0.1"
    try:
        if lab is not None:
            lab.up()
            wrap, up_host = lab.wrap(), LAB_UPSTREAM_IP
        up_ca, crt, key = make_pki(d)
        port_file = os.path.join(d, "up.port")
        up = subprocess.Popen(wrap + [sys.executable, __file__, "--upstream", port_file, crt,
                                      key, up_host],
                              preexec_fn=raise_nofile, stderr=subprocess.DEVNULL)
        procs.append(up)
        wait_for(port_file, up)
        up_port = int(open(port_file).read())
        with open(os.path.join(d, "hosts"), "w") as f:
            f.write(f"{up_host} {HOST}\n")
        log = open(os.path.join(d, "proxy.log"), "w")
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": d,
            "NO_COLOR": "1",
            "PAUDE_PROXY_LISTEN": "127.0.0.1:0",
            "PAUDE_PROXY_CA_DIR": os.path.join(d, "ca"),
            "PAUDE_PROXY_HOSTS_FILE": os.path.join(d, "hosts"),
            "PAUDE_PROXY_ALLOWED_UPSTREAM_NETS": f"{up_host}/32",
            "PAUDE_PROXY_UPSTREAM_CA": up_ca,
            "PAUDE_PROXY_MAX_CONNECTIONS": str(max(args.conns * 2, 20_000)),
            "ALLOWED_DOMAINS": HOST,
            "ALLOWED_OTEL_PORTS": str(up_port),
            "BLOCKED_LOG_PATH": os.path.join(d, "blocked.log"),
        }
        if lab is not None:
            env["PAUDE_PROXY_TRANSPARENT_LISTEN"] = f"0.0.0.0:{TRANSPARENT_PORT}"
        env.update(kv.split("=", 1) for kv in args.env)
        cmd = [os.path.abspath(args.proxy_bin)]
        if args.heaptrack:
            cmd = ["heaptrack", "-o", os.path.join(os.getcwd(), "idle-mem.heaptrack")] + cmd
        cmd = wrap + cmd
        proxy = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 preexec_fn=raise_nofile)
        procs.append(proxy)
        end = time.monotonic() + 20
        port = None
        while port is None and time.monotonic() < end:
            for line in open(os.path.join(d, "proxy.log")):
                if "listening role=explicit addr=" in line:
                    port = int(line.split("addr=")[1].split()[0].rsplit(":", 1)[1])
            time.sleep(0.05)
        if port is None:
            raise RuntimeError("proxy did not start: " + open(os.path.join(d, "proxy.log")).read())
        args.proxy_port = port
        pid = proxy.pid
        if args.heaptrack:
            # heaptrack's script runs the proxy as a child; measure and stop that one.
            pid = find_exe(os.path.realpath(args.proxy_bin))
        time.sleep(0.5)
        if lab is not None:
            lab.add_agent(os.path.join(d, "ca", "ca.crt"))
            lab.enter_agent()
        asyncio.run(client_main(args, os.path.join(d, "ca", "ca.crt"), up_port, pid))
        if args.heaptrack:
            proxy.wait(timeout=120)
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if lab is not None:
            lab.down()
        if args.log and os.path.exists(os.path.join(d, "proxy.log")):
            shutil.copy(os.path.join(d, "proxy.log"), args.log)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--upstream":
        try:
            asyncio.run(upstream_main(*sys.argv[2:]))
        except KeyboardInterrupt:
            pass
    else:
        main()
