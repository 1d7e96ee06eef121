"""The namespace lab for the transparent row (root only). Nothing in it routes
anywhere but inside it:

    agent (scripts/paude-netns) --veth--+
                                        gw: lab upstream on 198.18.0.1:443 (on lo),
    plain (direct-netns)  ------veth----+    paude-proxy, transparent listener :3129

198.18.0.0/15 is the range set aside for benchmarks (RFC 2544). gw has no default
route and no link to the host, so a packet can only go between these namespaces.
"""

import os
import subprocess
import sys

from . import procs
from .peers import HOST, REAL_AUTH, paude_env

TRANSPARENT_PORT = 3129
# paude-netns wants a DNS port for its redirect; nothing in the bench resolves names.
DNS_PORT = 3153
AGENT_SUBNET = "10.251.0.0/30"
PLAIN_GW, PLAIN_CLIENT = "10.252.0.1", "10.252.0.2"
# How long one `ip`/`nft`/paude-netns call may take.
CMD_TIMEOUT_SECONDS = 60
PREFIX = "pbench"


def _run(cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT_SECONDS)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def missing():
    """Why the lab cannot be built here, or None."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "nft", "nsenter", "unshare"):
        if _run(["sh", "-c", f"command -v {tool}"], check=False).returncode != 0:
            return f"{tool} not installed"
    return None


def reap_stale(root):
    """Removes namespaces left by a run that was SIGKILLed (their owner pid is gone)."""
    out = _run(["ip", "netns", "list"], check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.split()]
    # Agents first: paude-netns removes an agent from inside its gw namespace.
    for name in sorted(names, key=lambda n: not n.endswith("-ag")):
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            if name.endswith("-ag"):
                gw = name[: -len("-ag")] + "-gw"
                _run(["nsenter", f"--net=/run/netns/{gw}",
                      os.path.join(root, "scripts", "paude-netns"), "destroy", name],
                     check=False)
            _run(["ip", "netns", "del", name], check=False)


class Lab:
    UPSTREAM_IP = "198.18.0.1"

    def __init__(self, ctx):
        self.ctx = ctx
        tag = f"{PREFIX}{os.getpid()}"
        self.gw, self.agent, self.plain = f"{tag}-gw", f"{tag}-ag", f"{tag}-pl"
        self.proxy = None
        self.upstream = None
        self.nginx = None
        self.made = []

    def netns(self, ns):
        return ["ip", "netns", "exec", ns]

    def up(self):
        gw = self.gw
        _run(["ip", "netns", "add", gw])
        self.made.append(gw)
        for cmd in (
            ["ip", "-n", gw, "link", "set", "lo", "up"],
            # On lo: not every kernel here has the dummy link type.
            ["ip", "-n", gw, "addr", "add", f"{self.UPSTREAM_IP}/32", "dev", "lo"],
        ):
            _run(cmd)
        self._start_upstream()
        self._start_proxy()
        self._make_plain()
        self._make_agent()

    def _start_upstream(self):
        if self.ctx.harness == "nginx-hey":
            from .nginxhey import Nginx

            self.nginx = Nginx(self.ctx, "lab-nginx", f"{self.UPSTREAM_IP}:443",
                               wrap=self.netns(self.gw), bulk_bytes=self.ctx.bulk_bytes)
            self.nginx.start(REAL_AUTH)
            return
        pki = self.ctx.pki
        self.upstream = self.ctx.procs.start(
            "lab-upstream",
            self.netns(self.gw) + [
                os.path.join(self.ctx.bin, "bench-upstream"), "serve",
                "--listen", f"{self.UPSTREAM_IP}:443",
                "--cert", os.path.join(pki, "upstream.crt"),
                "--key", os.path.join(pki, "upstream.key"),
                "--auth", REAL_AUTH,
            ],
            self.ctx.path("lab-upstream.log"),
        )
        procs.wait_log(self.ctx.path("lab-upstream.log"), "listening", self.upstream,
                       "lab upstream")

    def _start_proxy(self):
        work = self.ctx.path("paude-transparent")
        os.makedirs(work, exist_ok=True)
        env = paude_env(
            self.ctx, work, f"{self.UPSTREAM_IP} {HOST}", "198.18.0.0/15",
            {
                "PAUDE_PROXY_LISTEN": "127.0.0.1:0",
                "PAUDE_PROXY_TRANSPARENT_LISTEN": f"0.0.0.0:{TRANSPARENT_PORT}",
            },
        )
        log = os.path.join(work, "proxy.log")
        self.proxy = self.ctx.procs.start(
            "paude-proxy-transparent",
            self.netns(self.gw) + [self.ctx.proxy_bin],
            log, env=env,
        )
        procs.wait_log(log, "listening role=transparent", self.proxy,
                       "paude-proxy (transparent)")

    def _make_plain(self):
        gw, plain = self.gw, self.plain
        _run(["ip", "netns", "add", plain])
        self.made.append(plain)
        for cmd in (
            ["ip", "-n", gw, "link", "add", "pbpl0", "type", "veth", "peer", "name", "eth0",
             "netns", plain],
            ["ip", "-n", gw, "addr", "add", f"{PLAIN_GW}/30", "dev", "pbpl0"],
            ["ip", "-n", gw, "link", "set", "pbpl0", "up"],
            ["ip", "-n", plain, "link", "set", "lo", "up"],
            ["ip", "-n", plain, "addr", "add", f"{PLAIN_CLIENT}/30", "dev", "eth0"],
            ["ip", "-n", plain, "link", "set", "eth0", "up"],
            ["ip", "-n", plain, "route", "add", f"{self.UPSTREAM_IP}/32", "via", PLAIN_GW],
        ):
            _run(cmd)

    def _paude_netns(self, *args):
        return _run(["nsenter", f"--net=/run/netns/{self.gw}",
                     os.path.join(self.ctx.root, "scripts", "paude-netns"), *args])

    def _make_agent(self):
        self.made.append(self.agent)
        self._paude_netns(
            "create", self.agent,
            "--subnet", AGENT_SUBNET,
            "--transparent-port", str(TRANSPARENT_PORT),
            "--dns-port", str(DNS_PORT),
            "--ca", os.path.join(self.ctx.pki, "proxy-ca.crt"),
        )

    def down(self):
        """Stops the lab's processes and removes every namespace made (idempotent)."""
        for proc in (self.proxy, self.upstream):
            if proc is not None:
                self.ctx.procs.stop(proc)
        if self.nginx is not None:
            self.nginx.stop()
        if self.agent in self.made:
            try:
                self._paude_netns("destroy", self.agent)
            except Exception as e:  # the namespaces below must still go
                print(f"bench: paude-netns destroy {self.agent}: {e}", file=sys.stderr)
        for ns in (self.plain, self.gw):
            if ns in self.made:
                _run(["ip", "netns", "del", ns], check=False)
        self.made.clear()
