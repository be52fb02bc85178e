"""Network namespaces joined by veth pairs: several "hosts" on one machine, for tests (root).

    topo = Topology()                                  # names mailsnid-ns-<pid>-<token>-<role>
    lb, a = topo.namespace("lb"), topo.namespace("a")
    topo.link(lb, "198.18.2.1/24", a, "198.18.2.2/24")
    with a.entered():                                  # this thread only
        proc = subprocess.Popen([...])                 # runs inside `a`
        sock = socket.socket()                         # belongs to `a` for its whole life
    topo.close()                                       # kills what runs inside, deletes all

How: `setns(2)` moves only the calling thread into a namespace, and what that thread creates
there stays there: a socket keeps the namespace it was made in (connect it later from anywhere),
and a child forked by that thread starts inside it. So the test process itself stays in the
host's namespace, and other threads are unaffected while one thread is "inside".

Addresses exist only inside the namespaces, so two suites on one host can use the same ones;
the namespace names carry the PID and a random token, so they never collide. Teardown kills
every process inside our namespaces (`ip netns pids`: only ours can be in them) and deletes
them. If the test process dies without tearing down, a watchdog (a shell that blocks on a pipe
only we hold) does it, and the next run sweeps namespaces whose creator PID is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import time

try:
    from .watchdog import Watchdog
except ImportError:
    from watchdog import Watchdog

CLONE_NEWNET = 0x40000000
PREFIX = "mailsnid-ns-"
_NAME_RX = re.compile(re.escape(PREFIX) + r"(\d+)-")
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsUnavailable(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> str:
    r = subprocess.run(["ip", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (None: they can): not root, no `ip`, or a kernel
    or container that refuses to make one."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth)"
    if not shutil.which("ip"):
        return "no `ip` command (iproute2)"
    name = f"{PREFIX}{os.getpid()}-probe{secrets.token_hex(2)}"
    r = subprocess.run(["ip", "netns", "add", name], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    try:
        # `ip -n` remounts /sys privately, which a chroot whose / is no mount point refuses.
        r = subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            return f"ip -n {name} link set lo up failed: {r.stderr.strip()}"
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(fd)
            _setns(back)
        except OSError as e:
            return f"setns refused: {e}"
        finally:
            os.close(fd)
            os.close(back)
    finally:
        _ip("netns", "del", name, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_inside(name: str) -> None:
    """SIGKILL every process inside namespace `name` and wait until they are gone."""
    deadline = time.monotonic() + 10
    while True:
        pids = [int(p) for p in _ip("netns", "pids", name, check=False).split()]
        pids = [p for p in pids if p != os.getpid()]
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def sweep_stale() -> list[str]:
    """Delete namespaces left by test processes that no longer exist; returns their names."""
    gone = []
    for line in _ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME_RX.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _kill_inside(name)
            _ip("netns", "del", name, check=False)
            gone.append(name)
    return gone


class Namespace:
    def __init__(self, name: str, role: str):
        self.name = name
        self.role = role
        self.path = f"/run/netns/{name}"

    @contextlib.contextmanager
    def entered(self):
        """Runs the block with this thread inside the namespace, then moves it back."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            _setns(fd)
            try:
                yield self
            finally:
                _setns(back)
        finally:
            os.close(fd)
            os.close(back)

    def ip(self, *args: str) -> str:
        return _ip("-n", self.name, *args)

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        with self.entered():
            return subprocess.run(argv, **kw)

    def __repr__(self) -> str:
        return f"<netns {self.role}: {self.name}>"


class Topology:
    def __init__(self):
        sweep_stale()
        self.token = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.spaces: list[Namespace] = []
        self._watchdog: Watchdog | None = None

    def namespace(self, role: str) -> Namespace:
        ns = Namespace(f"{PREFIX}{self.token}-{role}", role)
        _ip("netns", "add", ns.name)
        self.spaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        self._restart_watchdog()
        return ns

    def link(self, a: Namespace, a_addr: str, b: Namespace, b_addr: str) -> None:
        """A veth pair between A and B, named after the peer's role on each side, with the
        given addresses (CIDR) and up. The pair is made inside the namespaces directly, so
        the host's own interface names are never touched."""
        ia, ib = f"v-{b.role}"[:15], f"v-{a.role}"[:15]
        _ip("link", "add", ia, "netns", a.name, "type", "veth", "peer", "name", ib,
            "netns", b.name)
        for ns, dev, addr in ((a, ia, a_addr), (b, ib, b_addr)):
            ns.ip("addr", "add", addr, "dev", dev)
            ns.ip("link", "set", dev, "up")

    def _restart_watchdog(self) -> None:
        # A shell blocked reading a pipe whose write end only we hold: when this process dies
        # in any way the read returns and the shell tears the namespaces down.
        self._stop_watchdog()
        script = ('for ns; do for p in $(ip netns pids "$ns"); do kill -9 "$p"; done; '
                  'ip netns del "$ns"; done 2>/dev/null')
        self._watchdog = Watchdog(script, "netns-watchdog", [s.name for s in self.spaces])

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def close(self) -> None:
        """Kill what runs inside, delete every namespace (and with them the veths)."""
        self._stop_watchdog()
        for ns in reversed(self.spaces):
            _kill_inside(ns.name)
            _ip("netns", "del", ns.name, check=False)
        self.spaces = []

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
