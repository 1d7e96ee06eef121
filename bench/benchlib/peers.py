"""The peers: how each is started, how the client reaches the upstream through it, and
which processes are charged for CPU and memory.

Every proxy peer signs with the same interception CA, trusts the same upstream CA,
resolves the bench host from a private hosts file (never DNS) and overwrites the
client's dummy Authorization with the same real value, which the upstream checks on
every request."""

import os
import shutil
import subprocess

from . import procs

HOST = "bench.test"
REAL_AUTH = "Bearer sk-bench-real-credential-5a7c"
DUMMY_AUTH = "Bearer paude-proxy-managed"
# PAUDE_PROXY_MAX_CONNECTIONS for the paude peers: above the 10,000 idle connections of
# the idle row (the default, 10,000, would refuse the last few).
MAX_CONNECTIONS = 20_000


class Ctx:
    """Paths and ports shared by every peer of one run."""

    def __init__(self, root, bin_dir, proxy_bin, run_dir, venv, procs_):
        self.root = root
        self.bin = bin_dir
        self.proxy_bin = proxy_bin
        self.run = run_dir
        self.pki = os.path.join(run_dir, "pki")
        self.venv = venv
        self.procs = procs_
        self.upstream_port = None
        self.lab = None
        # "native" (bench-load + bench-upstream) or "nginx-hey".
        self.harness = "native"
        self.nginx = None  # the loopback nginx origin (nginx-hey)
        self.upload_src = None  # the file curl uploads (nginx-hey)
        self.bulk_bytes = None

    def origin_for(self, peer):
        return self.lab.nginx if peer.netns else self.nginx

    def path(self, *parts):
        return os.path.join(self.run, *parts)


def write(path, text, mode=None):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)


class Peer:
    name = "?"
    proxy = True  # False for the direct ceilings: no proxy process to charge
    netns = False  # measured through the lab; compared with direct-netns
    h2 = True  # speaks h2 to the client

    def __init__(self, ctx):
        self.ctx = ctx
        self.proc = None

    def start(self):
        pass

    def wrap(self):
        """Command prefix that runs the client where this peer is reached from."""
        return []

    def client_args(self):
        raise NotImplementedError

    def pids(self):
        return procs.tree(self.proc.pid) if self.proc else []

    def endpoint(self):
        """Where hey and curl go (the nginx-hey harness): the URL authority, the address
        it is reached at without a proxy, the explicit proxy (or None), the CA the client
        trusts and the Authorization value it sends."""
        raise NotImplementedError

    def version(self):
        return ""


class Direct(Peer):
    name = "direct"
    proxy = False

    def client_args(self):
        port = self.ctx.upstream_port
        return [
            "--connect", f"127.0.0.1:{port}",
            "--authority", f"{HOST}:{port}",
            "--ca", os.path.join(self.ctx.pki, "upstream-ca.crt"),
            "--auth", REAL_AUTH,
        ]

    def endpoint(self):
        return _endpoint(f"{HOST}:{self.ctx.upstream_port}", "127.0.0.1", None,
                         os.path.join(self.ctx.pki, "upstream-ca.crt"), REAL_AUTH)


def _endpoint(authority, connect_ip, proxy, ca, auth):
    return {"url_authority": authority, "host": HOST, "connect_ip": connect_ip,
            "proxy": proxy, "ca": ca, "auth": auth}


def _explicit_endpoint(ctx, proxy_port):
    return _endpoint(f"{HOST}:{ctx.upstream_port}", None, f"127.0.0.1:{proxy_port}",
                     os.path.join(ctx.pki, "proxy-ca.crt"), DUMMY_AUTH)


def _explicit_args(ctx, proxy_port):
    return [
        "--proxy", f"127.0.0.1:{proxy_port}",
        "--authority", f"{HOST}:{ctx.upstream_port}",
        "--ca", os.path.join(ctx.pki, "proxy-ca.crt"),
        "--auth", DUMMY_AUTH,
    ]


def paude_env(ctx, workdir, hosts_line, allowed_nets, extra):
    """The environment of a paude-proxy peer: its own CA dir holding the shared CA, a
    credential route for the bench host only, and nothing from our environment."""
    os.makedirs(os.path.join(workdir, "ca"), exist_ok=True)
    shutil.copy(os.path.join(ctx.pki, "proxy-ca.crt"), os.path.join(workdir, "ca", "ca.crt"))
    shutil.copy(os.path.join(ctx.pki, "proxy-ca.key"), os.path.join(workdir, "ca", "ca.key"))
    os.chmod(os.path.join(workdir, "ca", "ca.key"), 0o600)
    write(os.path.join(workdir, "hosts"), hosts_line + "\n")
    write(
        os.path.join(workdir, "credentials.json"),
        '{"credentials": [{"env_var": "BENCH_API_KEY", "injector": "bearer", '
        f'"domains": ["{HOST}"]}}]}}\n',
    )
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": workdir,
        "NO_COLOR": "1",
        "BENCH_API_KEY": REAL_AUTH.removeprefix("Bearer "),
        "PAUDE_PROXY_CA_DIR": os.path.join(workdir, "ca"),
        "PAUDE_PROXY_HOSTS_FILE": os.path.join(workdir, "hosts"),
        "PAUDE_PROXY_ALLOWED_UPSTREAM_NETS": allowed_nets,
        "PAUDE_PROXY_UPSTREAM_CA": os.path.join(ctx.pki, "upstream-ca.crt"),
        "PAUDE_PROXY_CREDENTIALS_CONFIG": os.path.join(workdir, "credentials.json"),
        "ALLOWED_DOMAINS": HOST,
        "BLOCKED_LOG_PATH": os.path.join(workdir, "blocked.log"),
        # The idle row holds 10,000 intercepted connections (plus the bench's own).
        "PAUDE_PROXY_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    env.update(extra)
    return env


class Paude(Peer):
    """paude-proxy in explicit mode, with its default logging (a production setup)."""

    name = "paude-proxy"

    def start(self):
        work = self.ctx.path("paude")
        os.makedirs(work, exist_ok=True)
        env = paude_env(
            self.ctx,
            work,
            f"127.0.0.1 {HOST}",
            "127.0.0.1/32",
            {
                "PAUDE_PROXY_LISTEN": "127.0.0.1:0",
                "ALLOWED_OTEL_PORTS": str(self.ctx.upstream_port),
            },
        )
        log = os.path.join(work, "proxy.log")
        self.proc = self.ctx.procs.start(
            self.name, [self.ctx.proxy_bin], log, env=env
        )
        line = procs.wait_log(log, "listening role=explicit addr=", self.proc, self.name)
        addr = line.split("listening role=explicit addr=")[1].split()[0]
        self.port = int(addr.rsplit(":", 1)[1])

    def client_args(self):
        return _explicit_args(self.ctx, self.port)

    def endpoint(self):
        return _explicit_endpoint(self.ctx, self.port)

    def version(self):
        out = subprocess.run(
            [self.ctx.proxy_bin, "--version"],
            capture_output=True, text=True, timeout=30,
        )
        rev = subprocess.run(
            ["git", "-C", self.ctx.root, "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=30,
        )
        return f"{out.stdout.strip()} ({rev.stdout.strip() or 'no git'}, {self.ctx.proxy_bin})"


class Squid(Peer):
    name = "squid"
    h2 = False  # Squid 5 speaks HTTP/1.1 only to clients

    def start(self):
        work = self.ctx.path("squid")
        os.makedirs(work, exist_ok=True)
        for f in ("proxy-ca.crt", "proxy-ca.key", "upstream-ca.crt"):
            shutil.copy(os.path.join(self.ctx.pki, f), os.path.join(work, f))
        write(os.path.join(work, "hosts"), f"127.0.0.1 {HOST}\n")
        self.port = procs.free_port()
        with open(os.path.join(self.ctx.root, "bench", "squid.conf.in"), encoding="utf-8") as f:
            conf = f.read()
        for key, value in {
            "@DIR@": work,
            "@PORT@": str(self.port),
            "@HOST@": HOST,
            "@AUTH@": REAL_AUTH,
        }.items():
            conf = conf.replace(key, value)
        write(os.path.join(work, "squid.conf"), conf)
        # Squid drops to its own user; its files and certificate db must be its own.
        subprocess.run(["chown", "-R", "proxy:proxy", work], check=True, timeout=30)
        subprocess.run(
            ["runuser", "-u", "proxy", "--", "/usr/lib/squid/security_file_certgen",
             "-c", "-s", os.path.join(work, "ssl_db"), "-M", "16MB"],
            check=True, capture_output=True, timeout=60,
        )
        self.proc = self.ctx.procs.start(
            self.name,
            ["squid", "-N", "-f", os.path.join(work, "squid.conf")],
            os.path.join(work, "stdout.log"),
        )
        procs.wait_port("127.0.0.1", self.port, self.proc, self.name)

    def client_args(self):
        return _explicit_args(self.ctx, self.port)

    def endpoint(self):
        return _explicit_endpoint(self.ctx, self.port)

    def version(self):
        out = subprocess.run(["squid", "-v"], capture_output=True, text=True, timeout=30)
        first = out.stdout.splitlines()[0] if out.stdout else "squid ?"
        pkg = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "squid-openssl"],
            capture_output=True, text=True, timeout=30,
        )
        return f"{first} (squid-openssl {pkg.stdout.strip()})"


class Mitmproxy(Peer):
    name = "mitmproxy"

    def start(self):
        work = self.ctx.path("mitmproxy")
        os.makedirs(os.path.join(work, "conf"), exist_ok=True)
        shutil.copy(
            os.path.join(self.ctx.pki, "mitmproxy-ca.pem"),
            os.path.join(work, "conf", "mitmproxy-ca.pem"),
        )
        hosts = os.path.join(work, "hosts")
        write(hosts, f"127.0.0.1 localhost\n127.0.0.1 {HOST}\n")
        self.port = procs.free_port()
        mitmdump = os.path.join(self.ctx.venv, "bin", "mitmdump")
        env = dict(os.environ)
        env.update({
            "PAUDE_BENCH_REAL_AUTH": REAL_AUTH,
            "PAUDE_BENCH_HOST": HOST,
            "PAUDE_BENCH_RUN": self.ctx.run,
        })
        # mitmproxy resolves names with the system resolver: give it a private mount
        # namespace whose /etc/hosts knows the bench host (the machine's stays untouched).
        inner = " ".join([
            "mount --bind", hosts, "/etc/hosts", "&& exec", mitmdump,
            "--listen-host 127.0.0.1", f"--listen-port {self.port}",
            "--set", f"confdir={os.path.join(work, 'conf')}",
            "--set", f"ssl_verify_upstream_trusted_ca={os.path.join(self.ctx.pki, 'upstream-ca.crt')}",
            "--set termlog_verbosity=warn --set flow_detail=0",
            "-s", os.path.join(self.ctx.root, "bench", "mitm_addon.py"),
        ])
        self.proc = self.ctx.procs.start(
            self.name, ["unshare", "-m", "sh", "-c", inner],
            os.path.join(work, "mitmdump.log"), env=env,
        )
        procs.wait_port("127.0.0.1", self.port, self.proc, self.name)

    def client_args(self):
        return _explicit_args(self.ctx, self.port)

    def endpoint(self):
        return _explicit_endpoint(self.ctx, self.port)

    def version(self):
        out = subprocess.run(
            [os.path.join(self.ctx.venv, "bin", "mitmdump"), "--version"],
            capture_output=True, text=True, timeout=60,
        )
        return " ".join(out.stdout.split("\n")[0].split())


class DirectNetns(Peer):
    """The ceiling for the transparent row: a plain namespace routed to the lab upstream
    through a veth, no proxy and no redirect."""

    name = "direct-netns"
    proxy = False
    netns = True

    def wrap(self):
        return ["ip", "netns", "exec", self.ctx.lab.plain]

    def client_args(self):
        lab = self.ctx.lab
        return [
            "--connect", f"{lab.UPSTREAM_IP}:443",
            "--authority", f"{HOST}:443",
            "--ca", os.path.join(self.ctx.pki, "upstream-ca.crt"),
            "--auth", REAL_AUTH,
        ]

    def endpoint(self):
        return _endpoint(f"{HOST}:443", self.ctx.lab.UPSTREAM_IP, None,
                         os.path.join(self.ctx.pki, "upstream-ca.crt"), REAL_AUTH)


class PaudeTransparent(Peer):
    """paude-proxy's transparent listener, reached from an agent namespace made by
    scripts/paude-netns, whose every TCP connection nft redirects to the proxy."""

    name = "paude-proxy-transparent"
    netns = True

    def start(self):
        self.proc = self.ctx.lab.proxy

    def wrap(self):
        return ["ip", "netns", "exec", self.ctx.lab.agent]

    def client_args(self):
        lab = self.ctx.lab
        return [
            "--connect", f"{lab.UPSTREAM_IP}:443",
            "--authority", f"{HOST}:443",
            "--ca", os.path.join(self.ctx.pki, "proxy-ca.crt"),
            "--auth", DUMMY_AUTH,
        ]

    def endpoint(self):
        return _endpoint(f"{HOST}:443", self.ctx.lab.UPSTREAM_IP, None,
                         os.path.join(self.ctx.pki, "proxy-ca.crt"), DUMMY_AUTH)


ALL = {
    cls.name: cls
    for cls in (Direct, Paude, PaudeTransparent, DirectNetns, Squid, Mitmproxy)
}
