"""The soak's clients: HTTPS through the proxy's CONNECT tunnel, with the interception
CA trusted, one request per tunnel; plus the misbehaving ones (a reader that stops, a
slowloris head, a flood of distinct names). Every socket has a timeout."""

import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .soakup import read_head


class Truncated(OSError):
    """A body that ended without its final chunk; `body` holds what did arrive."""

    def __init__(self, msg, body):
        super().__init__(msg)
        self.body = body


class Tunnel:
    """One TLS connection to `host:port` through the proxy at 127.0.0.1:`proxy_port`."""

    def __init__(self, proxy_port, host, port, ca, timeout):
        self.raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
        self.tls = None
        try:
            self.raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n"
                             .encode())
            head = read_head(self.raw.makefile("rb", buffering=0))
            if head is None or head[0].split()[1] != "200":
                raise OSError(f"CONNECT {host}: {head[0] if head else 'connection closed'}")
            ctx = ssl.create_default_context(cafile=ca)
            ctx.set_alpn_protocols(["http/1.1"])
            self.tls = ctx.wrap_socket(self.raw, server_hostname=host)
            self.rfile = self.tls.makefile("rb")
            self.host = host
        except BaseException:
            self.raw.close()
            raise

    def send_get(self, path):
        self.tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())

    def response(self):
        """(status, body) of one response; the body read by Content-Length or chunks."""
        head = read_head(self.rfile)
        if head is None:
            raise OSError("connection closed before the response head")
        status, headers = int(head[0].split()[1]), head[1]
        if "content-length" in headers:
            return status, self.rfile.read(int(headers["content-length"]))
        body = b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise Truncated(f"body cut after {len(body)} bytes, no final chunk", body)
                size = int(line.split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)
                if size == 0:
                    return status, body
                if len(chunk) < size + 2:
                    raise Truncated("body cut inside a chunk", body + chunk)
                body += chunk[:size]
        return status, body

    def close(self):
        for s in (self.tls, self.raw):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


def get(proxy_port, host, port, ca, path, timeout):
    """(status or an error string, seconds) of one GET in a new tunnel."""
    t0 = time.monotonic()
    try:
        t = Tunnel(proxy_port, host, port, ca, timeout)
    except (OSError, ssl.SSLError) as e:
        return f"error: {e}", time.monotonic() - t0
    try:
        t.send_get(path)
        status, _ = t.response()
        return status, time.monotonic() - t0
    except (OSError, ssl.SSLError, ValueError) as e:
        return f"error: {e}", time.monotonic() - t0
    finally:
        t.close()


def stall(proxy_port, host, port, ca, path, first_bytes, timeout):
    """Starts a download and reads at most `first_bytes` of it; returns the open tunnel
    and how much arrived (less when the proxy stalls it, which still holds the request)."""
    t = Tunnel(proxy_port, host, port, ca, timeout)
    t.send_get(path)
    got = 0
    try:
        while got < first_bytes:
            chunk = t.tls.recv(first_bytes - got)
            if not chunk:
                break
            got += len(chunk)
    except (socket.timeout, ssl.SSLError, OSError):
        pass
    return t, got


def slowloris(proxy_port, count, timeout):
    """Opens `count` connections that each send part of a request head and hold."""
    socks = []
    for n in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
            s.sendall(f"CONNECT h{n}.soak.test:443 HTTP/1.1\r\nHost: h{n}".encode())
            socks.append(s)
        except OSError:
            break
    return socks


def open_idle(proxy_port, count):
    """Starts `count` non-blocking connects that will send nothing; returns the sockets
    (a connect the proxy's full backlog drops keeps retrying its SYN in the kernel)."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", proxy_port))
        socks.append(s)
    return socks


def established(socks, wait):
    """How many of `socks` have connected after `wait` seconds."""
    time.sleep(wait)
    n = 0
    for s in socks:
        try:
            s.getpeername()
            n += 1
        except OSError:
            pass
    return n


def flood_names(proxy_port, names, port, ca, workers, timeout, deadline):
    """One tunnel, TLS handshake and GET /small per name, `workers` at once, until the
    names or the deadline run out. Returns (ok, failed, seconds)."""
    ok = failed = 0
    lock = threading.Lock()
    t0 = time.monotonic()

    def one(name):
        nonlocal ok, failed
        if time.monotonic() > deadline:
            return
        status, _ = get(proxy_port, name, port, ca, "/small", timeout)
        with lock:
            if status == 200:
                ok += 1
            else:
                failed += 1

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, names))
    return ok, failed, time.monotonic() - t0
