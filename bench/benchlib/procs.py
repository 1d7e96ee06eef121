"""Starting, watching and always stopping the processes a benchmark run needs.

Every child is registered here, gets PR_SET_PDEATHSIG (so it dies with us even if we
are SIGKILLed) and a session of its own (so a Ctrl-C reaches only us and we stop
children in order). Their pids are written to a file, so a later run can stop the
leftovers of one that died hard, after checking each pid still runs one of ours.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
# A child gets this long to exit after SIGTERM before it is SIGKILLed.
STOP_GRACE_SECONDS = 5.0
# How long a server may take to start listening.
READY_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Procs:
    def __init__(self, pid_file, marker):
        """marker: a string that the command line or environment of every process we
        start contains (the run directory), used to recognise leftovers safely."""
        self.pid_file = pid_file
        self.marker = marker
        self.children = []

    def start(self, name, cmd, log_path, env=None, stdin=subprocess.DEVNULL):
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
        log.close()
        self.children.append((name, proc))
        with open(self.pid_file, "a", encoding="utf-8") as f:
            f.write(f"{proc.pid}\n")
        return proc

    def stop(self, proc):
        if proc.poll() is not None:
            return
        try:
            proc.terminate()
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except ProcessLookupError:
            pass

    def stop_all(self):
        # Reverse order: proxies before the upstream they talk to.
        for _name, proc in reversed(self.children):
            try:
                self.stop(proc)
            except Exception as e:  # cleanup must go on for the others
                print(f"bench: could not stop pid {proc.pid}: {e}", file=sys.stderr)
        self.children.clear()

    def reap_leftovers(self):
        """Stops processes recorded by an earlier run that died without cleaning up."""
        try:
            with open(self.pid_file, encoding="utf-8") as f:
                pids = [int(line) for line in f if line.strip().isdigit()]
        except FileNotFoundError:
            return
        for pid in pids:
            if _is_ours(pid, self.marker):
                for tree_pid in reversed(tree(pid)):
                    try:
                        os.kill(tree_pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        os.unlink(self.pid_file)


def _is_ours(pid, marker):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return False
    return marker.encode() in cmdline or marker.encode() in environ


def _ppids():
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        out[int(entry)] = int(fields[1])
    return out


def tree(root):
    """root and all its live descendants (Squid's certificate helpers, for example)."""
    parents = _ppids()
    found, frontier = [root], [root]
    while frontier:
        nxt = [pid for pid, ppid in parents.items() if ppid in frontier]
        found.extend(nxt)
        frontier = nxt
    return found


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host, port, proc, what, timeout=READY_TIMEOUT_SECONDS, wrap=None):
    """Waits until something accepts on host:port (connecting from the namespace that
    `wrap` enters, if any), failing early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        if wrap is None:
            try:
                with socket.create_connection((host, port), timeout=1):
                    return
            except OSError:
                pass
        else:
            probe = wrap + ["bash", "-c", f"exec 3<>/dev/tcp/{host}/{port}"]
            if subprocess.run(probe, capture_output=True, timeout=10).returncode == 0:
                return
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout}s")


def wait_log(path, needle, proc, what, timeout=READY_TIMEOUT_SECONDS):
    """Waits for a line containing `needle` in a log file and returns it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if needle in line:
                        return line
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {path}")
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{what} did not log '{needle}' within {timeout}s; see {path}")


class Watchdog:
    """Kills a process that outlives its budget, so no step can hang the run."""

    def __init__(self, proc, seconds):
        self.timer = threading.Timer(seconds, self._fire, args=(proc,))
        self.fired = False
        self.timer.daemon = True
        self.timer.start()

    def _fire(self, proc):
        self.fired = True
        try:
            proc.kill()
        except ProcessLookupError:
            pass

    def cancel(self):
        self.timer.cancel()
