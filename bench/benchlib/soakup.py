"""The soak's upstreams: a test PKI made with openssl, an nginx (HTTP/2 with GOAWAY every
1,000 streams, HTTP/1.1 with a 1 s keep-alive, a 1 KiB and a large file) and small
threaded Python TLS servers for the misbehaviours nginx cannot show (never answering,
dropping a reused connection, an SSE-like stream). Everything listens on one loopback
address picked per run (127.x.y.z), whose port 443 is free: hey 0.1.4 puts the port into
its SNI, so the HTTP/2 upstream must be reached without one."""

import os
import random
import socket
import ssl
import struct
import subprocess
import threading
import time

from . import procs

DOMAIN = "soak.test"
# How long one openssl call may take.
CMD_TIMEOUT_SECONDS = 60
SMALL_BYTES = 1024
# Far above the 1 MiB stream / 4 MiB connection windows plus socket buffers, so a reader
# that stops holds its stream full for the whole test.
BIG_BYTES = 1 << 30
# nginx's 1.22 default; it sends GOAWAY (NO_ERROR) after this many streams.
KEEPALIVE_REQUESTS = 1000
# The SSE-like stream of scenario 7: one event per interval for the duration.
SSE_INTERVAL_SECONDS = 0.2
SSE_EVENTS = 15
# A Python upstream connection thread gives up on a silent peer after this long.
PEER_TIMEOUT_SECONDS = 60.0


# How many random loopback addresses to try for a free port 443.
ADDR_TRIES = 50


def pick_addr():
    """A 127.0.0.0/8 address other than 127.0.0.1 whose port 443 is free right now."""
    rng = random.Random(os.getpid())
    for _ in range(ADDR_TRIES):
        addr = f"127.{rng.randrange(64, 250)}.{rng.randrange(1, 250)}.{rng.randrange(1, 250)}"
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, 443))
                return addr
            except OSError:
                continue
    raise RuntimeError("no loopback address with a free port 443")


def free_port(addr):
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True,
                   timeout=CMD_TIMEOUT_SECONDS)


def _ca(pki, stem, cn):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{stem}.key", "-out", f"{stem}.crt", "-days", "2", "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=pki)


def make_pki(pki):
    """Writes the file names benchlib.peers.paude_env expects: upstream-ca.crt, the
    upstream leaf upstream.crt/.key (soak.test, *.soak.test, 127.0.0.1) and the
    interception CA proxy-ca.crt/.key (PKCS#8)."""
    os.makedirs(pki, exist_ok=True)
    _ca(pki, "upstream-ca", "paude soak upstream CA")
    _ca(pki, "proxy-ca", "paude soak interception CA")
    with open(os.path.join(pki, "leaf.ext"), "w", encoding="utf-8") as f:
        f.write(f"subjectAltName=DNS:{DOMAIN},DNS:*.{DOMAIN},IP:127.0.0.1\n"
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "upstream.key", "-out", "upstream.csr", "-subj", f"/CN={DOMAIN}", cwd=pki)
    _openssl("x509", "-req", "-in", "upstream.csr", "-CA", "upstream-ca.crt",
             "-CAkey", "upstream-ca.key", "-CAcreateserial", "-days", "2",
             "-extfile", "leaf.ext", "-out", "upstream.crt", cwd=pki)
    os.chmod(os.path.join(pki, "proxy-ca.key"), 0o600)


NGINX_CONF = """
daemon off;
master_process on;
user root;
worker_processes 1;
worker_rlimit_nofile 65536;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 32768; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    ssl_certificate {pki}/upstream.crt;
    ssl_certificate_key {pki}/upstream.key;
    root {dir}/www;
    # GOAWAY after {keepalive_requests} streams; idle connections are kept long, so the
    # proxy's own pool limits are what the floods measure.
    server {{
        listen {addr}:{h2_port} ssl http2;
        keepalive_requests {keepalive_requests};
        keepalive_timeout 300s;
    }}
    # HTTP/1.1 only; closes a keep-alive connection idle for 1 s.
    server {{
        listen {addr}:{h1_port} ssl;
        keepalive_timeout 1s;
    }}
}}
"""


class Nginx:
    def __init__(self, work, pki, procs_, addr):
        self.dir = os.path.join(work, "nginx")
        self.pki = pki
        self.procs = procs_
        self.addr = addr
        self.h2_port = 443
        self.h1_port = free_port(addr)
        self.proc = None

    def start(self):
        www = os.path.join(self.dir, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "small"), "wb") as f:
            f.write(b"s" * SMALL_BYTES)
        with open(os.path.join(www, "big"), "wb") as f:
            f.truncate(BIG_BYTES)  # sparse: costs no disk
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(NGINX_CONF.format(dir=self.dir, pki=self.pki, addr=self.addr,
                                      h2_port=self.h2_port,
                                      h1_port=self.h1_port,
                                      keepalive_requests=KEEPALIVE_REQUESTS))
        self.proc = self.procs.start("nginx", ["nginx", "-e", os.path.join(self.dir, "nginx-error.log"),
                                               "-c", conf, "-p", self.dir],
                                     os.path.join(self.dir, "stdout.log"))
        procs.wait_port(self.addr, self.h2_port, self.proc, "nginx")
        procs.wait_port(self.addr, self.h1_port, self.proc, "nginx")


def read_head(rfile):
    """Reads an HTTP head; returns (first line, {lower-case name: value}) or None at EOF."""
    first = rfile.readline(65536)
    if not first:
        return None
    headers = {}
    while True:
        line = rfile.readline(65536)
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return first.decode("latin-1").strip(), headers


class PyUpstream:
    """A threaded TLS server on `addr` with one behaviour per instance:
    `blackhole` reads the request and never answers; `drop-reuse` answers the first
    request of a connection and resets the connection when a second one arrives;
    `sse` streams SSE_EVENTS events, SSE_INTERVAL_SECONDS apart, then ends the body."""

    def __init__(self, mode, pki, addr):
        self.mode = mode
        self.stop = threading.Event()
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(os.path.join(pki, "upstream.crt"),
                                 os.path.join(pki, "upstream.key"))
        self.tls.set_alpn_protocols(["http/1.1"])
        self.sock = socket.create_server((addr, 0), backlog=1024)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(PEER_TIMEOUT_SECONDS)
            with self.tls.wrap_socket(conn, server_side=True) as tls:
                rfile = tls.makefile("rb")
                getattr(self, "_" + self.mode.replace("-", "_"))(tls, rfile)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def _blackhole(self, _tls, rfile):
        read_head(rfile)
        self.stop.wait(PEER_TIMEOUT_SECONDS)

    def _drop_reuse(self, tls, rfile):
        if read_head(rfile) is None:
            return
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        if read_head(rfile) is not None:
            # RST instead of FIN, as a front end that drops an idle connection does.
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _sse(self, tls, rfile):
        if read_head(rfile) is None:
            return
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
                    b"Connection: close\r\n\r\n")
        for n in range(SSE_EVENTS):
            data = f"data: {n}\n\n".encode()
            tls.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            if self.stop.wait(SSE_INTERVAL_SECONDS):
                return
        tls.sendall(b"0\r\n\r\n")
        time.sleep(0.1)
