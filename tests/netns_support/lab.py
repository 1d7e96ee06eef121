#!/usr/bin/env python3
"""Listeners and probes for the paude-netns lab (tests/netns_script.rs).

listen: binds the given TCP/UDP ports (and optionally raw ICMP / raw IP
protocol sockets) and appends one JSON line per thing received to --log, then
answers with --banner so that a probe can tell who answered. With --orig-dst the
TCP line carries SO_ORIGINAL_DST, which proves an nft redirect happened. With
--tls CERT KEY the TCP ports speak TLS and answer a minimal HTTP response.

probes: runs a JSON list of probes and prints a JSON list of results. Every
probe is bounded by PROBE_TIMEOUT_SECONDS so a silent drop shows as "timeout"
instead of hanging the test.

Only std-lib; no traffic leaves the namespaces the test created.
"""

import argparse
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time

PROBE_TIMEOUT_SECONDS = 2.0
# A connection to a listener gets this long to send its request line.
LISTEN_READ_TIMEOUT_SECONDS = 1.0
SO_ORIGINAL_DST = 80
# Linux values; Python's socket module does not export all of them.
IP_PKTINFO = 8
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
RAW_PAYLOAD = b"paude-lab-raw"

_log_lock = threading.Lock()


def record(log_path, **event):
    """Appends one event; flushed before any answer is sent, so a probe that
    got an answer can rely on the log line being there."""
    with _log_lock:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())


def original_dst(conn):
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port = struct.unpack("!H", raw[2:4])[0]
    addr = socket.inet_ntoa(raw[4:8])
    return f"{addr}:{port}"


def bind_all(kind, port):
    """Binds IPv4 and (when the namespace has it) IPv6 wildcard sockets."""
    socks = []
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family, kind)
        except OSError:
            continue
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((addr, port))
        except OSError:
            s.close()
            if family == socket.AF_INET:
                raise
            continue
        if kind == socket.SOCK_STREAM:
            s.listen(64)
        socks.append(s)
    return socks


def serve_tcp_conn(conn, peer, port, args, tls_ctx):
    local = conn.getsockname()[0]
    orig = original_dst(conn) if args.orig_dst else None
    if tls_ctx is not None:
        try:
            conn = tls_ctx.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError) as e:
            record(args.log, proto="tcp", port=port, local=local, peer=peer[0], orig=orig, tls_error=str(e))
            conn.close()
            return
    data = b""
    conn.settimeout(LISTEN_READ_TIMEOUT_SECONDS)
    try:
        data = conn.recv(512)
    except (OSError, socket.timeout):
        pass
    record(args.log, proto="tcp", port=port, local=local, peer=peer[0], orig=orig,
           data=data.decode("latin-1"))
    try:
        if tls_ctx is not None:
            body = f"{args.banner} {orig}".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        else:
            conn.sendall(f"{args.banner} {orig}\n".encode())
    except OSError:
        pass
    conn.close()


def tcp_loop(sock, port, args, tls_ctx):
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn, peer, port, args, tls_ctx), daemon=True).start()


def udp_loop(sock, port, args):
    """Answers from the address the datagram was sent to (IP_PKTINFO), not
    from whatever source routing would pick: a connected UDP client ignores
    replies from any other address."""
    v6 = sock.family == socket.AF_INET6
    if v6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
    while True:
        data, ancdata, _flags, peer = sock.recvmsg(4096, socket.CMSG_SPACE(64))
        reply_cmsg = []
        for level, kind, cdata in ancdata:
            if not v6 and level == socket.SOL_IP and kind == IP_PKTINFO:
                local = cdata[8:12]  # in_pktinfo.ipi_addr: the destination
                reply_cmsg = [(socket.SOL_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, local, bytes(4)))]
            elif v6 and level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
                reply_cmsg = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, cdata[:16] + struct.pack("=i", 0))]
        record(args.log, proto="udp", port=port, peer=peer[0], data=data.decode("latin-1"))
        sock.sendmsg([f"{args.banner}\n".encode()], reply_cmsg, 0, peer)


def raw_loop(sock, label, args, want_types):
    while True:
        data, peer = sock.recvfrom(65535)
        if label == "icmp":
            ihl = (data[0] & 0x0F) * 4
            icmp_type = data[ihl]
        elif label == "icmp6":
            icmp_type = data[0]
        else:
            icmp_type = None
        if want_types is not None and icmp_type not in want_types:
            continue
        record(args.log, proto=label, peer=peer[0], type=icmp_type)


def cmd_listen(args):
    tls_ctx = None
    if args.tls:
        tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls_ctx.load_cert_chain(args.tls[0], args.tls[1])
    threads = []
    for port in args.tcp:
        for s in bind_all(socket.SOCK_STREAM, port):
            threads.append(threading.Thread(target=tcp_loop, args=(s, port, args, tls_ctx), daemon=True))
    for port in args.udp:
        for s in bind_all(socket.SOCK_DGRAM, port):
            threads.append(threading.Thread(target=udp_loop, args=(s, port, args), daemon=True))
    if args.icmp:
        # Only echo requests count: the kernel's own neighbour discovery and
        # router chatter are not traffic from the agent.
        threads.append(threading.Thread(
            target=raw_loop,
            args=(socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), "icmp", args, {ICMP_ECHO_REQUEST}),
            daemon=True))
        try:
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            threads.append(threading.Thread(target=raw_loop, args=(s6, "icmp6", args, {ICMP6_ECHO_REQUEST}), daemon=True))
        except OSError:
            pass
    for proto in args.raw_proto:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
        threads.append(threading.Thread(target=raw_loop, args=(s, f"raw{proto}", args, None), daemon=True))
    for t in threads:
        t.start()
    with open(args.ready, "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(3600)


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def probe_tcp(host, port, send):
    s = socket.socket(family_of(host), socket.SOCK_STREAM)
    s.settimeout(PROBE_TIMEOUT_SECONDS)
    try:
        s.connect((host, port))
    except ConnectionRefusedError:
        return {"result": "refused"}
    except socket.timeout:
        return {"result": "timeout"}
    except OSError as e:
        return {"result": "error", "errno": e.errno, "error": str(e)}
    try:
        s.sendall(send.encode())
        reply = b""
        while True:
            chunk = s.recv(512)
            if not chunk:
                break
            reply += chunk
    except ConnectionResetError:
        return {"result": "reset-after-connect", "reply": reply.decode("latin-1")}
    except socket.timeout:
        pass
    except OSError as e:
        return {"result": "error-after-connect", "error": str(e)}
    finally:
        s.close()
    return {"result": "connected", "reply": reply.decode("latin-1")}


def probe_udp(host, port, send):
    s = socket.socket(family_of(host), socket.SOCK_DGRAM)
    s.settimeout(PROBE_TIMEOUT_SECONDS)
    try:
        # connect() makes ICMP errors show up as ECONNREFUSED/... on recv.
        s.connect((host, port))
        s.send(send.encode())
        data = s.recv(4096)
        return {"result": "reply", "reply": data.decode("latin-1")}
    except ConnectionRefusedError:
        return {"result": "refused"}
    except socket.timeout:
        return {"result": "timeout"}
    except OSError as e:
        return {"result": "error", "errno": e.errno, "error": str(e)}
    finally:
        s.close()


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def probe_icmp(host):
    v6 = ":" in host
    try:
        if v6:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    except OSError as e:
        return {"result": "error", "error": str(e)}
    s.settimeout(PROBE_TIMEOUT_SECONDS)
    ident = os.getpid() & 0xFFFF
    if v6:
        # The kernel fills in the ICMPv6 checksum for raw ICMPv6 sockets.
        packet = struct.pack("!BBHHH", ICMP6_ECHO_REQUEST, 0, 0, ident, 1) + RAW_PAYLOAD
    else:
        header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, 1)
        packet = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum(header + RAW_PAYLOAD), ident, 1) + RAW_PAYLOAD
    try:
        s.sendto(packet, (host, 0))
    except OSError as e:
        return {"result": "send-error", "errno": e.errno, "error": str(e)}
    deadline = time.monotonic() + PROBE_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            data, peer = s.recvfrom(65535)
        except socket.timeout:
            break
        icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
        kind = icmp[0]
        if kind in (ICMP_ECHO_REPLY, ICMP6_ECHO_REPLY) and peer[0] == host:
            return {"result": "echo-reply"}
        if kind in (ICMP_ECHO_REQUEST, ICMP6_ECHO_REQUEST):
            continue  # our own request looped back on a raw socket
        if v6 and kind >= 128:
            continue  # informational ICMPv6 (neighbour discovery etc.)
        return {"result": "icmp-error", "type": kind, "code": icmp[1], "from": peer[0]}
    return {"result": "timeout"}


def probe_raw(host, proto):
    try:
        s = socket.socket(family_of(host), socket.SOCK_RAW, proto)
        s.sendto(RAW_PAYLOAD, (host, 0))
        return {"result": "sent"}
    except OSError as e:
        return {"result": "send-error", "errno": e.errno, "error": str(e)}


def run_probe(p):
    kind = p["kind"]
    if kind == "tcp":
        return probe_tcp(p["host"], p["port"], p.get("send", "PING\n"))
    if kind == "udp":
        return probe_udp(p["host"], p["port"], p.get("send", "PING"))
    if kind == "icmp":
        return probe_icmp(p["host"])
    if kind == "raw":
        return probe_raw(p["host"], p["proto"])
    raise ValueError(f"unknown probe kind {kind}")


def cmd_probes(args):
    probes = json.loads(args.spec)
    results = []
    for p in probes:
        r = run_probe(p)
        r["probe"] = p
        results.append(r)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    listen = sub.add_parser("listen")
    listen.add_argument("--log", required=True)
    listen.add_argument("--ready", required=True)
    listen.add_argument("--banner", required=True)
    listen.add_argument("--tcp", type=int, action="append", default=[])
    listen.add_argument("--udp", type=int, action="append", default=[])
    listen.add_argument("--icmp", action="store_true")
    listen.add_argument("--raw-proto", type=int, action="append", default=[])
    listen.add_argument("--orig-dst", action="store_true")
    listen.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    probes = sub.add_parser("probes")
    probes.add_argument("spec")
    args = parser.parse_args()
    if args.cmd == "listen":
        cmd_listen(args)
    else:
        cmd_probes(args)


if __name__ == "__main__":
    main()
