#!/usr/bin/env python3
"""Listeners and probes for the paude-netns lab (tests/netns_script.rs).

listen: binds the given TCP/UDP ports (and optionally raw ICMP / raw IP
protocol sockets) and appends one JSON line per thing received to --log, then
answers with --banner so that a probe can tell who answered. With --orig-dst the
TCP line carries SO_ORIGINAL_DST, which proves an nft redirect happened. With
--tls CERT KEY the TCP ports speak TLS and answer a minimal HTTP response. With
--http a TCP connection is read as one HTTP/1.1 request (whole head plus a
Content-Length body) and recorded with its head and, under TLS, the SNI it was
addressed to: a recording upstream for tests/netns_transparent.rs.

resolver: a tiny authoritative DNS server (UDP and TCP) that answers A queries
from --zone NAME=IP, NXDOMAIN for anything else, and records every question:
the fake upstream resolver behind the proxy's sandbox DNS.

probes: runs a JSON list of probes (tcp, udp, icmp, raw, dns) and prints a JSON list of results. Every
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
# --http: bounds on one recorded request, so a misbehaving peer cannot stall it.
HTTP_HEAD_LIMIT = 64 * 1024
HTTP_BODY_LIMIT = 64 * 1024
HTTP_READ_TIMEOUT_SECONDS = 5.0
DNS_TYPE_A = 1
DNS_TYPE_AAAA = 28
DNS_CLASS_IN = 1
DNS_RCODE_NXDOMAIN = 3
DNS_RCODE_NOTIMP = 4
# TTL the fake resolver puts on its answers.
RESOLVER_TTL = 60

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
    if args.http:
        serve_http_request(conn, peer, port, local, args)
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


def read_http_request(conn):
    """Returns (head, body) of one request, each bounded; whatever arrived if the
    peer stops early."""
    conn.settimeout(HTTP_READ_TIMEOUT_SECONDS)
    data = b""
    try:
        while b"\r\n\r\n" not in data and len(data) < HTTP_HEAD_LIMIT:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    except (OSError, socket.timeout):
        return data, b""
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                length = min(int(value.strip()), HTTP_BODY_LIMIT)
            except ValueError:
                length = 0
    try:
        while len(body) < length:
            chunk = conn.recv(4096)
            if not chunk:
                break
            body += chunk
    except (OSError, socket.timeout):
        pass
    return head, body


def serve_http_request(conn, peer, port, local, args):
    head, body = read_http_request(conn)
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    path = parts[1] if len(parts) > 1 else ""
    sni = getattr(conn, "paude_sni", None)
    record(args.log, proto="tcp", port=port, local=local, peer=peer[0], sni=sni,
           head=head.decode("latin-1"), body=body.decode("latin-1"))
    reply = f"{args.banner} local={local} path={path}\n".encode()
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (len(reply), reply))
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
        if args.http:
            # One request per connection, HTTP/1.1 only: say so in ALPN.
            tls_ctx.set_alpn_protocols(["http/1.1"])

            def remember_sni(sslsock, name, _ctx):
                sslsock.paude_sni = name

            tls_ctx.sni_callback = remember_sni
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


def dns_encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def dns_read_name(msg, off):
    """Returns (name, offset after the name), following compression pointers."""
    labels = []
    end = None
    for _ in range(128):  # bounded: a pointer loop must not hang the test
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            continue
        off += 1
        if n == 0:
            break
        labels.append(msg[off:off + n].decode("latin-1"))
        off += n
    return ".".join(labels), (end if end is not None else off)


def dns_query(ident, name, qtype):
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # RD set
    return header + dns_encode_name(name) + struct.pack("!HH", qtype, DNS_CLASS_IN)


def dns_parse_reply(msg):
    ident, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", msg[:12])
    off = 12
    for _ in range(qd):
        _name, off = dns_read_name(msg, off)
        off += 4
    answers = []
    for _ in range(an):
        name, off = dns_read_name(msg, off)
        rtype, _rclass, ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        off += 10
        rdata = msg[off:off + rdlen]
        off += rdlen
        if rtype == DNS_TYPE_A and rdlen == 4:
            answers.append({"name": name, "type": "A", "ttl": ttl, "addr": socket.inet_ntoa(rdata)})
        elif rtype == DNS_TYPE_AAAA and rdlen == 16:
            answers.append({"name": name, "type": "AAAA", "ttl": ttl,
                            "addr": socket.inet_ntop(socket.AF_INET6, rdata)})
        else:
            answers.append({"name": name, "type": rtype, "ttl": ttl})
    return {"id": ident, "rcode": flags & 0xF, "answers": answers}


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("short DNS/TCP read")
        data += chunk
    return data


def probe_dns(host, port, name, qtype, tcp):
    ident = os.getpid() & 0xFFFF
    query = dns_query(ident, name, qtype)
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    s = socket.socket(family_of(host), kind)
    s.settimeout(PROBE_TIMEOUT_SECONDS)
    try:
        s.connect((host, port))
        if tcp:
            s.sendall(struct.pack("!H", len(query)) + query)
            length = struct.unpack("!H", recv_exact(s, 2))[0]
            reply = recv_exact(s, length)
        else:
            s.send(query)
            reply = s.recv(65535)
    except ConnectionRefusedError:
        return {"result": "refused"}
    except socket.timeout:
        return {"result": "timeout"}
    except OSError as e:
        return {"result": "error", "errno": e.errno, "error": str(e)}
    finally:
        s.close()
    try:
        parsed = dns_parse_reply(reply)
    except (IndexError, struct.error) as e:
        return {"result": "malformed", "error": str(e), "reply": reply.decode("latin-1")}
    parsed["result"] = "reply" if parsed["id"] == ident else "wrong-id"
    return parsed


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
    if kind == "dns":
        qtype = DNS_TYPE_AAAA if p.get("qtype") == "AAAA" else DNS_TYPE_A
        return probe_dns(p["host"], p.get("port", 53), p["name"], qtype, p.get("tcp", False))
    raise ValueError(f"unknown probe kind {kind}")


def resolver_answer(query, zone, log, proto, peer):
    """The reply to one query; records the question first."""
    ident, _flags, qd, _an, _ns, _ar = struct.unpack("!HHHHHH", query[:12])
    name, off = dns_read_name(query, 12)
    qtype, _qclass = struct.unpack("!HH", query[off:off + 4])
    question = query[12:off + 4]
    record(log, proto=proto, peer=peer, name=name.lower(), qtype=qtype)
    addr = zone.get(name.lower().rstrip("."))
    flags = 0x8400 | 0x0100  # QR, AA, RD echoed
    answers = b""
    count = 0
    if addr is None:
        flags |= DNS_RCODE_NXDOMAIN
    elif qd != 1:
        flags |= DNS_RCODE_NOTIMP
    elif qtype == DNS_TYPE_A:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", DNS_TYPE_A, DNS_CLASS_IN, RESOLVER_TTL, 4) + socket.inet_aton(addr)
        count = 1
    return struct.pack("!HHHHHH", ident, flags, 1, count, 0, 0) + question + answers


def resolver_udp(sock, zone, log):
    while True:
        query, peer = sock.recvfrom(4096)
        try:
            sock.sendto(resolver_answer(query, zone, log, "udp", peer[0]), peer)
        except (IndexError, struct.error, UnicodeDecodeError):
            record(log, proto="udp", peer=peer[0], malformed=query.decode("latin-1"))


def resolver_tcp_conn(conn, peer, zone, log):
    conn.settimeout(LISTEN_READ_TIMEOUT_SECONDS)
    try:
        while True:
            length = struct.unpack("!H", recv_exact(conn, 2))[0]
            reply = resolver_answer(recv_exact(conn, length), zone, log, "tcp", peer[0])
            conn.sendall(struct.pack("!H", len(reply)) + reply)
    except (OSError, IndexError, struct.error, UnicodeDecodeError):
        pass
    conn.close()


def resolver_tcp(sock, zone, log):
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=resolver_tcp_conn, args=(conn, peer, zone, log), daemon=True).start()


def cmd_resolver(args):
    zone = {}
    for entry in args.zone:
        name, _, addr = entry.partition("=")
        zone[name.lower().rstrip(".")] = addr
    threads = []
    for s in bind_all(socket.SOCK_DGRAM, args.port):
        threads.append(threading.Thread(target=resolver_udp, args=(s, zone, args.log), daemon=True))
    for s in bind_all(socket.SOCK_STREAM, args.port):
        threads.append(threading.Thread(target=resolver_tcp, args=(s, zone, args.log), daemon=True))
    for t in threads:
        t.start()
    with open(args.ready, "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(3600)


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
    listen.add_argument("--http", action="store_true")
    resolver = sub.add_parser("resolver")
    resolver.add_argument("--log", required=True)
    resolver.add_argument("--ready", required=True)
    resolver.add_argument("--port", type=int, required=True)
    resolver.add_argument("--zone", action="append", default=[], metavar="NAME=IP")
    probes = sub.add_parser("probes")
    probes.add_argument("spec")
    args = parser.parse_args()
    if args.cmd == "listen":
        cmd_listen(args)
    elif args.cmd == "resolver":
        cmd_resolver(args)
    else:
        cmd_probes(args)


if __name__ == "__main__":
    main()
