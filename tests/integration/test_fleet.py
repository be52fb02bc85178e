"""A fleet behind a load balancer (issue 12), proven with real parts in network namespaces.

The test builds its own network: six namespaces joined by veth pairs, addresses from the
benchmarking range 198.18.0.0/15 that exist only inside them.

    client 198.18.1.10-.41 ── 198.18.1.1 HAProxy (lb) ─┬─ 198.18.2.2 mailsnid A ─┐
    pebble (ca) 198.18.6.2 ── 198.18.6.1 ───┘          └─ 198.18.3.2 mailsnid B ─┴─ 198.18.9.1 Dovecot + Postfix (be)

    pebble's API listens on 198.18.10.1 (ca's lo); A reaches it over 198.18.7.0/24, B over
    198.18.8.0/24 (links of their own, not through the balancer).

HAProxy 2.6 (Debian's) balances TCP round-robin to A and B with `send-proxy-v2` and checks each
one's `/healthz` on its admin port (`option httpchk`, every 250 ms, two failures = DOWN); a second
backend checks IMAP itself on the mail port (a PROXY LOCAL header, then TLS and `* OK`). Each
mailsnid takes PROXY v2 only from the balancer (`trusted = [ "198.18.x.1/32" ]`), terminates
TLS, and speaks PROXY v2 to Dovecot's and Postfix's haproxy ports; Dovecot trusts only the two
instances' addresses (`haproxy_trusted_networks`). Nothing on the client side is a mock.

What it shows, one test each: the client's address reaches Dovecot (`rip=`) and Postfix
(`client=`) through both hops; a session ticket made by one instance resumes on the other, and
on both after a key rotation; the health checks (and any LOCAL connection of the balancer's)
never count against the per-client limit, which counts real clients; a SIGUSR2 upgrade and a SIGTERM drain of one instance under a client loop
through the balancer fail no connection. HAProxy runs with `retries 0` and no `redispatch`, so
it hides no failure of mailsnid's by trying another server.

ACME (issue 12 item 3): Debian's pebble, with pebble-challtestsrv as its DNS answering every
name with the balancer's address, validates through HAProxy, which forwards 443 (TLS-ALPN-01,
to mailsnid's https listener) and 80 (HTTP-01, to its plain HTTP listener) to both instances
with send-proxy-v2, like the mail ports. Both instances have one `acme.storage`. Shown: domains
that reach both at once are each ordered once (pebble's log and both /metrics) and both serve
each one's certificate (verified against pebble's root); the validator's connections, spread
round-robin, reach both instances and all are answered; and with the ordering instance's port
out of rotation, the other one (which has not even reloaded the new domain yet) answers every
validation, over TLS-ALPN-01 and over HTTP-01. A last one shows that an instance whose order
threads are all busy serves a certificate another instance stored meanwhile.

MAILSNID_FLEET_GRACE=0 runs the drain without a grace: the negative control, which fails
connections (TLS EOF in the handshake) as issue 12 measured before drain_grace existed.
MAILSNID_FLEET_ACME_SHARED=0 gives each instance its own ACME storage: the negative control of
the ACME tests, whose orders then fail (validations reach an instance that knows nothing of
them) and which time out (about 3 minutes).

MAILSNID_FLEET_KEEP=1 keeps the files (configs, every log) in /tmp/mailsnid-fleet-*.

Skipped with a visible line when network namespaces are unavailable (not root, a container
that forbids them, no HAProxy); `make fleet` sets MAILSNID_FLEET_REQUIRED=1 to fail instead.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

from mailsnid_runner import SLOW, MailsnidProcess
from backends import USERS, MailBackends, proxy_v2, shared_tempdir
import certs
import netns
from pebble import Pebble, acme_config

VIP = "198.18.1.1"                 # the balancer, as clients see it
BACKEND_HOST = "198.18.9.1"        # Dovecot + Postfix (on the backend namespace's lo)
BACKEND_BASE = 20000               # the namespace is ours: every port in it is free
IMAPS, SMTPS, ADMIN = 993, 465, 9180
HTTPS, HTTP = 443, 80              # where pebble validates TLS-ALPN-01 and HTTP-01
CA_HOST = "198.18.10.1"            # pebble's API (on the CA namespace's lo)
CA_SRC = "198.18.6.2"              # pebble's validator, as the balancer sees it
WEBMAIL = 8080                     # the https listener's backend (never reached here)
CHECK_INTER_MS = 250               # HAProxy: a check every 250 ms, DOWN after 2 failures
GRACE = 2.0 * SLOW                 # drain_grace: well above the 500 ms HAProxy needs
PER_CLIENT = 3                     # max_connections_per_client on each instance
ALICE = "alice@alpha.test"
SNI = "mail.alpha.test"

# Client source addresses, one job each, so that the per-client limit meets only the test
# that is about it.
SRC_PROXY = "198.18.1.10"
SRC_LIMIT, SRC_OTHER = "198.18.1.11", "198.18.1.12"
SRC_LOOP = ("198.18.1.20", "198.18.1.21", "198.18.1.22")
SRC_HELD = ("198.18.1.30", "198.18.1.31", "198.18.1.32", "198.18.1.33")
SRC_UPGRADE = ("198.18.1.40", "198.18.1.41")
SRC_CERT_CHECK = "198.18.1.50"     # only named in PROXY headers: looking at a served certificate

# Customer domains that ACME orders certificates for (names mail.D and webmail.D), in the order
# the tests add them.
ACME_DOMAINS = ("d1.test", "d2.test", "d3.test", "d4.test", "d5.test", "d6.test")

ACME_SHARED = os.environ.get("MAILSNID_FLEET_ACME_SHARED", "1") != "0"

SKIP_REASON: str | None = None
REQUIRED = os.environ.get("MAILSNID_FLEET_REQUIRED") == "1"


def setUpModule():
    global SKIP_REASON
    SKIP_REASON = netns.unavailable_reason()
    if not SKIP_REASON and not shutil.which("haproxy"):
        SKIP_REASON = "HAProxy is not installed (scripts/deps.sh test installs it)"
    if not SKIP_REASON and not (shutil.which("pebble") and shutil.which("pebble-challtestsrv")):
        SKIP_REASON = "pebble is not installed (scripts/deps.sh test installs it)"
    if SKIP_REASON:
        if REQUIRED:
            raise RuntimeError(f"fleet test cannot run: {SKIP_REASON}")
        # Visible in any output, and unittest counts it as skipped, never as passed.
        print(f"\nSKIP test_fleet: network namespaces unavailable: {SKIP_REASON}",
              file=sys.stderr, flush=True)
        raise unittest.SkipTest(f"network namespaces unavailable: {SKIP_REASON}")


def wait_until(what: str, cond, timeout: float, step: float = 0.02):
    deadline = time.monotonic() + timeout * SLOW
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def ticket_line(key: bytes) -> str:
    return base64.b64encode(key).decode() + "\n"


def write_atomically(path: str, text: str) -> None:
    with open(path + ".new", "w") as f:
        f.write(text)
    os.replace(path + ".new", path)


class FleetBackends(MailBackends):
    """The harness's Dovecot + Postfix, trusting PROXY headers from the mailsnid instances
    only (the harness default is 127.0.0.0/8)."""

    trusted = "198.18.4.2/32 198.18.5.2/32"      # A and B, as Dovecot sees them

    def _write_dovecot_config(self) -> None:
        super()._write_dovecot_config()
        with open(self.dovecot_conf) as f:
            text = f.read()
        text, n = re.subn(r"^haproxy_trusted_networks = .*$",
                          f"haproxy_trusted_networks = {self.trusted}", text, flags=re.M)
        assert n == 1, "the harness's Dovecot config changed: no haproxy_trusted_networks line"
        with open(self.dovecot_conf, "w") as f:
            f.write(text)


class Instance:
    """One mailsnid in its own namespace, facing the balancer on `addr`."""

    def __init__(self, name: str, ns: netns.Namespace, addr: str, lb_addr: str, workdir: str,
                 mb: MailBackends, tickets: str, acme_directory: str, acme_storage: str):
        self.name, self.ns, self.addr = name, ns, addr
        self.pid_file = os.path.join(workdir, f"{name}.pid")
        from_lb = f'proxy_protocol_in = true; trusted = [ "{lb_addr}/32" ];'
        trusted = f'{from_lb} proxy_protocol = "v2";'
        text = f"""workers = 2;
log = {{ level = "info"; }};
admin = "{addr}:{ADMIN}";
pid_file = "{self.pid_file}";
drain_timeout = 30;
drain_grace = {os.environ.get("MAILSNID_FLEET_GRACE", f"{GRACE:.1f}")};
max_connections_per_client = {PER_CLIENT};
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}";
        ticket_keys = "{tickets}"; }};
certificates = ( {{ cert = "{PKI['alpha_ec_cert']}"; key = "{PKI['alpha_ec_key']}"; }} );
listeners = (
  {{ name = "imaps"; listen = "{addr}:{IMAPS}"; protocol = "imap"; tls = "implicit";
    backend = "{mb.addr('imap_haproxy')}"; {trusted} }},
  {{ name = "smtps"; listen = "{addr}:{SMTPS}"; protocol = "smtp"; tls = "implicit";
    backend = "{mb.addr('submission_haproxy')}"; {trusted} }},
  {{ name = "https"; listen = "{addr}:{HTTPS}"; protocol = "http"; tls = "implicit";
    backend = "{BACKEND_HOST}:{WEBMAIL}"; {trusted} }},
  {{ name = "http"; listen = "{addr}:{HTTP}"; protocol = "http"; tls = "none"; {from_lb} }}
);
# The tests add domains by reload (set_acme).
domains = [ ];
""" + acme_config(acme_directory, acme_storage, PKI["ca"])
        self.proc = MailsnidProcess(text, workdir, name=name)

    def start(self) -> "Instance":
        with self.ns.entered():            # mailsnid (and the process it upgrades to) live in ns
            self.proc.start([])
        self.proc.wait_log(r"mailsnid running")
        wait_until(f"{self.name}'s /healthz", lambda: self.health() == 200, 10)
        return self

    def http(self, path: str) -> tuple[int, str]:
        """GET on the admin port, from inside the instance's namespace."""
        with self.ns.entered():
            s = socket.create_connection((self.addr, ADMIN), timeout=5 * SLOW)
        with s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {self.addr}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
        return int(head.split()[1]), body

    def health(self) -> int:
        try:
            return self.http("/healthz")[0]
        except OSError:
            return 0

    def metric(self, name: str, labels: str = "") -> float:
        body = self.http("/metrics")[1]
        m = re.search(rf"^{re.escape(name + labels)} (\S+)$", body, re.M)
        return float(m.group(1)) if m else 0.0

    def served(self, client: str) -> bool:
        """Whether this instance logged a connection from `client` ("ADDR:PORT")."""
        return f" client={client} " in self.proc.log()

    def current_pid(self) -> int:
        with open(self.pid_file) as f:
            return int(f.read())

    def reload(self) -> None:
        """SIGHUP, and wait for it to be done. A SIGHUP that meets a reload already running
        (the file watcher's, after a config or key file was rewritten; ACME's, after a new
        certificate) is queued, and then logs as the queued request."""
        mark = len(self.proc.log())
        os.kill(self.current_pid(), signal.SIGHUP)
        wait_until(f"{self.name} to reload",
                   lambda: re.search(r"reload \((SIGHUP|queued request)\): generation",
                                     self.proc.log()[mark:]), 10)

    def set_acme(self, domains, challenge: str = "tls-alpn-01") -> None:
        """Rewrites the config's domains and ACME challenge (a reload takes them)."""
        with open(self.proc.config) as f:
            text = f.read()
        listed = ", ".join(f'"{d}"' for d in domains)
        text, n = re.subn(r"^domains = \[.*\];$", f"domains = [ {listed} ];", text, flags=re.M)
        text, m = re.subn(r"^  challenges = \[.*\];$", f'  challenges = [ "{challenge}" ];', text,
                          flags=re.M)
        assert n == m == 1
        write_atomically(self.proc.config, text)


class HAProxy:
    def __init__(self, ns: netns.Namespace, workdir: str, servers: list[tuple[str, str]]):
        self.ns = ns
        self.dir = workdir
        self.sock = os.path.join(workdir, "haproxy.sock")
        self.log_path = os.path.join(workdir, "haproxy.log")
        self.cfg = os.path.join(workdir, "haproxy.cfg")
        backends = ""
        for name, port in (("imaps", IMAPS), ("smtps", SMTPS), ("https", HTTPS), ("http", HTTP)):
            lines = "".join(f"  server {s} {addr}:{port}\n" for s, addr in servers)
            backends += f"""
frontend {name}
  bind {VIP}:{port}
  default_backend {name}

backend {name}
  balance roundrobin
  option httpchk GET /healthz
  default-server send-proxy-v2 check port {ADMIN} inter {CHECK_INTER_MS}ms fall 2 rise 2
{lines}"""
        # Another way to check: IMAP itself, end to end, on the mail port. HAProxy then sends
        # a PROXY header that names no client (LOCAL: the balancer speaking for itself) before
        # its TLS handshake.
        lines = "".join(f"  server {s} {addr}:{IMAPS}\n" for s, addr in servers)
        backends += f"""
backend imaps_l7
  option tcp-check
  tcp-check connect send-proxy ssl sni {SNI}
  tcp-check expect string "* OK"
  default-server send-proxy-v2 check inter 1s verify none
{lines}"""
        with open(self.cfg, "w") as f:
            f.write(f"""global
  nbthread 1
  maxconn 2000
  stats socket {self.sock} mode 600 level admin
  log stdout format raw local0 info

defaults
  mode tcp
  log global
  option tcplog
  # No retry, no redispatch: a connection mailsnid drops must show as a client failure.
  retries 0
  timeout connect 3s
  timeout client 60s
  timeout server 60s
{backends}""")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "HAProxy":
        self._out = open(self.log_path, "ab")
        with self.ns.entered():
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", self.cfg], stdout=self._out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.log()}")
            return os.path.exists(self.sock)
        wait_until("HAProxy's stats socket", ready, 10)
        wait_until("HAProxy to see every server UP",
                   lambda: all(r["status"] == "UP" for r in self.servers()), 10)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._out.close()
        self.proc = None

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.sock)
            s.sendall(cmd.encode() + b"\n")
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        return out.decode()

    def servers(self) -> list[dict[str, str]]:
        """`show stat` rows of the servers: pxname, svname, status, stot (sessions sent), ..."""
        lines = self.command("show stat").splitlines()
        head = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(head, line.split(","))) for line in lines[1:] if line]
        return [r for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")]

    def server(self, backend: str, name: str) -> dict[str, str]:
        return next(r for r in self.servers() if (r["pxname"], r["svname"]) == (backend, name))

    def server_of(self, src: str) -> str | None:
        """The server that HAProxy sent the client connection from `src` ("ADDR:PORT") to."""
        for line in self.command("show sess").splitlines():
            if f"src={src} " in line:
                m = re.search(r" srv=(\S+)", line)
                return m.group(1) if m else None
        return None

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


class HeldConnections(threading.Thread):
    """A listener inside a namespace that accepts and answers nothing until release(): the CA's
    validator waits on it, so the order it validates stays pending exactly that long."""

    def __init__(self, ns: netns.Namespace, addr: str, port: int):
        super().__init__(daemon=True)
        with ns.entered():
            self.sock = socket.create_server((addr, port))
        self.held: list[socket.socket] = []

    def run(self):
        try:
            while True:
                self.held.append(self.sock.accept()[0])
        except OSError:                 # release() closed the listener
            pass

    def release(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)      # wakes accept(); close() alone would not
        self.join(5)
        self.sock.close()
        for c in self.held:
            c.close()


class ImapClient:
    """An IMAPS session from the client namespace through the balancer."""

    def __init__(self, src: str, session: ssl.SSLSession | None = None):
        with FLEET.cl.entered():
            raw = socket.socket()
        raw.settimeout(15 * SLOW)
        raw.bind((src, 0))
        raw.connect((VIP, IMAPS))
        self.src = f"{src}:{raw.getsockname()[1]}"
        self.s = CTX.wrap_socket(raw, server_hostname=SNI, session=session)
        self.f = self.s.makefile("rb")
        self.greeting = self.f.readline()
        self.n = 0

    def command(self, line: str) -> list[bytes]:
        self.n += 1
        tag = f"t{self.n}".encode()
        self.s.sendall(tag + b" " + line.encode() + b"\r\n")
        got = []
        while not got or not got[-1].startswith(tag + b" "):
            got.append(self.f.readline())
            if not got[-1]:
                raise ConnectionError(f"connection closed after {got[:-1]!r}")
        if not got[-1].startswith(tag + b" OK"):
            raise AssertionError(f"{line.split()[0]}: {got!r}")
        return got

    def login(self) -> "ImapClient":
        self.command(f'LOGIN {ALICE} "{USERS[ALICE]}"')
        self.command("SELECT INBOX")
        return self

    def close(self) -> None:
        try:
            self.f.close()
            self.s.close()
        except OSError:
            pass


class ClientLoop(threading.Thread):
    """IMAPS sessions one after another through the balancer, as clients keep arriving: each
    reads Dovecot's greeting, sends LOGOUT and waits for its OK. Every exception counts."""

    def __init__(self, src: str):
        super().__init__(daemon=True)
        self.src = src
        self.halt = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self):
        while not self.halt.is_set():
            c = None
            try:
                c = ImapClient(self.src)
                if not c.greeting.startswith(b"* OK"):
                    raise AssertionError(f"greeting {c.greeting!r}")
                c.command("LOGOUT")
                self.ok += 1
            except Exception as e:  # a refused connect, a reset, a bad answer: all count
                self.failures.append(f"{time.strftime('%H:%M:%S')} {type(e).__name__}: {e}")
            finally:
                if c:
                    c.close()


class Loops:
    def __init__(self):
        self.threads = [ClientLoop(src) for src in SRC_LOOP]

    def __enter__(self) -> "Loops":
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        for t in self.threads:
            t.halt.set()
        for t in self.threads:
            t.join(30 * SLOW)

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def ok(self) -> int:
        return sum(t.ok for t in self.threads)

    @property
    def failures(self) -> list[str]:
        return [f for t in self.threads for f in t.failures]


PKI: dict[str, str] = {}
CTX: ssl.SSLContext
FLEET: "Fleet"


class Fleet(unittest.TestCase):
    """One topology for all the tests (they run in name order; the drain comes last, because
    it leaves one instance)."""

    @classmethod
    def setUpClass(cls):
        global CTX, FLEET
        FLEET = cls
        t0 = time.monotonic()
        cls.tmp = shared_tempdir("mailsnid-fleet-")
        if not os.environ.get("MAILSNID_FLEET_KEEP"):
            cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        PKI.update(certs.standard_pki(os.path.join(cls.tmp, "pki")))
        CTX = ssl.create_default_context(cafile=PKI["ca"])

        cls.topo = netns.Topology()
        cls.addClassCleanup(cls.topo.close)
        cls.cl, cls.lb, cls.a_ns, cls.b_ns, cls.be, cls.ca_ns = (
            cls.topo.namespace(r) for r in ("cl", "lb", "a", "b", "be", "ca"))
        cls.topo.link(cls.cl, f"{SRC_PROXY}/24", cls.lb, f"{VIP}/24")
        for src in (SRC_LIMIT, SRC_OTHER, *SRC_LOOP, *SRC_HELD, *SRC_UPGRADE):
            cls.cl.ip("addr", "add", f"{src}/24", "dev", "v-lb")
        cls.topo.link(cls.lb, "198.18.2.1/24", cls.a_ns, "198.18.2.2/24")
        cls.topo.link(cls.lb, "198.18.3.1/24", cls.b_ns, "198.18.3.2/24")
        cls.topo.link(cls.a_ns, "198.18.4.2/24", cls.be, "198.18.4.1/24")
        cls.topo.link(cls.b_ns, "198.18.5.2/24", cls.be, "198.18.5.1/24")
        cls.be.ip("addr", "add", f"{BACKEND_HOST}/32", "dev", "lo")
        cls.a_ns.ip("route", "add", f"{BACKEND_HOST}/32", "via", "198.18.4.1")
        cls.b_ns.ip("route", "add", f"{BACKEND_HOST}/32", "via", "198.18.5.1")
        # The CA, on "the Internet": its validator reaches the balancer's public address, and
        # each instance reaches its API on a link of its own (not through the balancer).
        cls.topo.link(cls.lb, "198.18.6.1/24", cls.ca_ns, f"{CA_SRC}/24")
        cls.topo.link(cls.a_ns, "198.18.7.2/24", cls.ca_ns, "198.18.7.1/24")
        cls.topo.link(cls.b_ns, "198.18.8.2/24", cls.ca_ns, "198.18.8.1/24")
        cls.ca_ns.ip("addr", "add", f"{CA_HOST}/32", "dev", "lo")
        cls.ca_ns.ip("route", "add", f"{VIP}/32", "via", "198.18.6.1")
        cls.a_ns.ip("route", "add", f"{CA_HOST}/32", "via", "198.18.7.1")
        cls.b_ns.ip("route", "add", f"{CA_HOST}/32", "via", "198.18.8.1")
        ca_leaf = certs.CA.load(PKI["ca_dir"]).issue([CA_HOST])
        cls.pebble = Pebble(os.path.join(cls.tmp, "pebble"), cls.ca_ns, host=CA_HOST,
                            cert=ca_leaf.fullchain, key=ca_leaf.key, trust=PKI["ca"], answer=VIP,
                            tls_port=HTTPS, http_port=HTTP)
        cls.addClassCleanup(cls.pebble.stop)
        cls.pebble.start()

        cls.mb = FleetBackends(os.path.join(cls.tmp, "backends"), BACKEND_BASE,
                               host=BACKEND_HOST, strict=True)
        with cls.be.entered():                  # Dovecot and Postfix start inside `be`
            cls.mb.start()
        cls.addClassCleanup(cls.mb.stop)

        cls.k1, cls.k2 = os.urandom(80), os.urandom(80)
        cls.tickets = os.path.join(cls.tmp, "tickets.key")
        write_atomically(cls.tickets, ticket_line(cls.k1))
        # One ACME storage for both (the negative control gives each its own).
        storage = {n: os.path.join(cls.tmp, "acme" if ACME_SHARED else f"acme-{n}") for n in "ab"}
        cls.a = Instance("a", cls.a_ns, "198.18.2.2", "198.18.2.1", cls.tmp, cls.mb, cls.tickets,
                         cls.pebble.directory, storage["a"])
        cls.b = Instance("b", cls.b_ns, "198.18.3.2", "198.18.3.1", cls.tmp, cls.mb, cls.tickets,
                         cls.pebble.directory, storage["b"])
        for inst in (cls.a, cls.b):
            cls.addClassCleanup(cls.stop_instance, inst)
            inst.start()
        cls.instances = {"a": cls.a, "b": cls.b}

        cls.haproxy = HAProxy(cls.lb, cls.tmp, [("a", "198.18.2.2"), ("b", "198.18.3.2")])
        cls.addClassCleanup(cls.haproxy.stop)
        cls.haproxy.start()
        print(f"\nfleet: topology up in {time.monotonic() - t0:.1f} s "
              f"({', '.join(ns.name for ns in cls.topo.spaces)})", file=sys.stderr, flush=True)

    @classmethod
    def stop_instance(cls, inst: Instance) -> None:
        # After an upgrade the serving process is the one the pid file names, not our child.
        try:
            pid = inst.current_pid()
        except (OSError, ValueError):
            pid = 0
        if inst.proc.proc and pid and pid != inst.proc.proc.pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if inst.proc.proc:
            inst.proc.stop()
        if pid:
            wait_until("the upgraded mailsnid to exit", lambda: not _alive(pid), 20)

    # -- helpers ---------------------------------------------------------------------------

    def instance_of(self, src: str) -> str:
        """Which instance served the (closed) connection from `src`, by its log line."""
        found = wait_until(f"a log line for client {src}",
                           lambda: [n for n, i in self.instances.items() if i.served(src)], 5)
        self.assertEqual(len(found), 1, found)
        return found[0]

    def tls_session(self, session=None) -> tuple[ssl.SSLSession, bool, str]:
        """One IMAPS session from SRC_PROXY: (its TLS session, resumed?, instance)."""
        c = ImapClient(SRC_PROXY, session)
        self.assertTrue(c.greeting.startswith(b"* OK"), c.greeting)
        c.command("NOOP")            # TLS 1.3 tickets come after the handshake: read past them
        sess, reused, src = c.s.session, c.s.session_reused, c.src
        c.close()
        return sess, reused, self.instance_of(src)

    def on_each_instance(self, session=None) -> dict[str, tuple[ssl.SSLSession, bool]]:
        """Sessions (resuming `session` if given) until both instances have served one."""
        seen: dict[str, tuple[ssl.SSLSession, bool]] = {}
        for _ in range(6):
            sess, reused, inst = self.tls_session(session)
            seen.setdefault(inst, (sess, reused))
            if len(seen) == 2:
                return seen
        self.fail(f"round-robin never reached both instances: {sorted(seen)}")

    def reload_both(self) -> None:
        for inst in self.instances.values():
            inst.reload()

    def served_cert(self, inst: Instance, name: str) -> bytes | None:
        """The certificate INST serves for NAME, when it verifies against pebble's root for that
        name (else None). Asked on the HTTPS listener as the balancer would: from its namespace,
        a PROXY v2 header first."""
        with self.lb.entered():
            raw = socket.create_connection((inst.addr, HTTPS), timeout=5 * SLOW)
        with raw:
            raw.sendall(proxy_v2(SRC_CERT_CHECK, VIP, 40000, HTTPS))
            ctx = ssl.create_default_context(cafile=self.pebble.root)
            try:
                with ctx.wrap_socket(raw, server_hostname=name) as s:
                    return s.getpeercert(True)
            except ssl.SSLCertVerificationError:
                return None

    def wait_served_by_both(self, domains) -> dict[str, bytes]:
        """Waits until both instances serve every name of every domain a certificate from
        pebble, the same one (one per domain, on both instances, for both names); returns it
        by domain."""
        found = {}
        for d in domains:
            def same_everywhere():
                ders = {self.served_cert(i, n) for i in self.instances.values()
                        for n in acme_names(d)}
                return ders.pop() if len(ders) == 1 and None not in ders else None
            found[d] = wait_until(f"both instances to serve {d}'s certificate from pebble",
                                  same_everywhere, 60, step=0.2)
        return found

    @contextlib.contextmanager
    def out_of_rotation(self, backend: str, server: str):
        """HAProxy sends BACKEND nothing more for SERVER (maintenance) inside the block."""
        self.assertEqual(self.haproxy.command(f"disable server {backend}/{server}").strip(), "")
        try:
            yield
        finally:
            self.haproxy.command(f"enable server {backend}/{server}")
            wait_until(f"{backend}/{server} back UP",
                       lambda: self.haproxy.server(backend, server)["status"] == "UP", 10)

    def acme_orders(self) -> float:
        """Orders that ended in a certificate, summed over both instances' /metrics."""
        return sum(i.metric("mailsnid_acme_orders_total", '{result="ok"}')
                   for i in self.instances.values())

    # -- the tests -------------------------------------------------------------------------

    def test_1_client_address_reaches_dovecot_and_postfix_through_two_proxy_hops(self):
        pos = self.mb.log_positions()
        # IMAP: logins until both instances have carried one.
        via = set()
        for _ in range(4):
            c = ImapClient(SRC_PROXY)
            c.login()
            c.command("LOGOUT")
            c.close()
            via.add(self.instance_of(c.src))
            if len(via) == 2:
                break
        self.assertEqual(via, {"a", "b"})
        logins = re.findall(r"imap-login: Info: Login: user=<alice@alpha\.test>.*",
                            self.mb.dovecot_log(pos["dovecot"]))
        self.assertGreaterEqual(len(logins), 2, self.mb.dovecot_log(pos["dovecot"])[-2000:])
        for line in logins:
            # The client's own address, the session secured by the TLS that A or B ended, and
            # the SNI name: all from mailsnid's PROXY header, built from HAProxy's.
            self.assertIn(f"rip={SRC_PROXY},", line)
            self.assertIn("secured", line)
            self.assertIn(f"local_name={SNI}", line)

        # SMTP submission over implicit TLS, through both hops, with AUTH.
        with self.cl.entered():
            smtp = _smtp_ssl(SNI)
        with smtp:
            smtp.login(ALICE, USERS[ALICE])
            smtp.sendmail(ALICE, ["bob@beta.test"], b"Subject: fleet\r\n\r\nthrough two hops\r\n")
        m = self.mb.wait_for_log(
            "postfix", r"postfix/submission-haproxy/smtpd\[\d+\]: \w+: client=(\S+), "
                       r"sasl_method=PLAIN, sasl_username=alice@alpha\.test",
            timeout=10, since=pos["postfix"])
        self.assertEqual(m.group(1), f"unknown[{SRC_PROXY}]")
        self.mb.wait_for_log("postfix", rf"connect from unknown\[{re.escape(SRC_PROXY)}\]",
                             since=pos["postfix"])
        self.mb.wait_for_mail("bob@beta.test", contains=b"through two hops")
        # No hop let anyone else's header in.
        for inst in self.instances.values():
            self.assertEqual(inst.metric("mailsnid_proxy_headers_refused_total"), 0)

    def test_1b_a_header_from_anyone_but_the_balancer_is_refused(self):
        # From the instance's own host, not the balancer: a forged client address is refused
        # before a byte reaches Dovecot.
        pos = self.mb.log_positions()
        with self.a_ns.entered():
            raw = socket.create_connection((self.a.addr, IMAPS), timeout=10 * SLOW)
        with raw:
            raw.sendall(proxy_v2("203.0.113.9", self.a.addr, 4242, IMAPS))
            try:
                got = raw.recv(100)
            except ConnectionResetError:    # closed with our header unread: a reset
                got = b""
            self.assertEqual(got, b"")
        self.a.proc.wait_log(r"outcome=proxy_header_refused .*source not in trusted")
        self.assertEqual(self.a.metric("mailsnid_proxy_headers_refused_total"), 1)
        self.assertNotIn("203.0.113.9", self.mb.dovecot_log(pos["dovecot"]))

    def test_2_tickets_resume_across_instances_and_across_a_key_rotation(self):
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            with self.subTest(version=version.name):
                global CTX
                saved = CTX
                CTX = ssl.create_default_context(cafile=PKI["ca"])
                CTX.maximum_version = CTX.minimum_version = version
                try:
                    self.check_tickets()
                finally:
                    CTX = saved
                    write_atomically(self.tickets, ticket_line(self.k1))
                    self.reload_both()

    def check_tickets(self):
        # A ticket made by one instance resumes on the other (and on itself).
        s1, reused, first = self.tls_session()
        self.assertFalse(reused)
        for inst, (_, reused) in self.on_each_instance(s1).items():
            self.assertTrue(reused, f"ticket from {first} not resumed on {inst}")

        # Rotation, step 1: the new key appended everywhere (it only decrypts so far).
        write_atomically(self.tickets, ticket_line(self.k1) + ticket_line(self.k2))
        self.reload_both()
        for inst, (_, reused) in self.on_each_instance(s1).items():
            self.assertTrue(reused, f"ticket not resumed on {inst} once a key was added")
        s_mid, _, _ = self.tls_session()     # made now: under the old key, still the first

        # Step 2: the new key first (it encrypts), the old one kept (it decrypts).
        write_atomically(self.tickets, ticket_line(self.k2) + ticket_line(self.k1))
        self.reload_both()
        for inst, (_, reused) in self.on_each_instance(s1).items():
            self.assertTrue(reused, f"old-key ticket not resumed on {inst} after the rotation")
        s2, reused, _ = self.tls_session()
        self.assertFalse(reused)
        for inst, (_, reused) in self.on_each_instance(s2).items():
            self.assertTrue(reused, f"new-key ticket not resumed on {inst}")

        # Step 3: the old key retired on both. Its tickets get a full handshake (so the
        # reloads really changed the keys); the new key's still resume everywhere.
        write_atomically(self.tickets, ticket_line(self.k2))
        self.reload_both()
        logged, counted = self.resumed_sessions(), self.resumed_handshakes()
        for old in (s1, s_mid):
            for inst, (_, reused) in self.on_each_instance(old).items():
                self.assertFalse(reused, f"retired key still accepted on {inst}")
        # What an operator sees of it: the client's sessions logged resumed=yes stop growing...
        self.assertEqual(self.resumed_sessions(), logged)
        for inst, (_, reused) in self.on_each_instance(s2).items():
            self.assertTrue(reused, f"new-key ticket not resumed on {inst} after retiring")
        # ... and grow again on both instances for tickets of the key they share, and so does
        # mailsnid_handshakes_resumed_total (by at least as much: the balancer's TLS checks on
        # the IMAPS port resume their own sessions too).
        logged_now, counted_now = self.resumed_sessions(), self.resumed_handshakes()
        for inst in self.instances:
            self.assertGreater(logged_now[inst], logged[inst], inst)
            self.assertGreaterEqual(counted_now[inst] - counted[inst],
                                    logged_now[inst] - logged[inst], inst)

    def resumed_handshakes(self) -> dict[str, float]:
        return {n: i.metric("mailsnid_handshakes_resumed_total") for n, i in self.instances.items()}

    def resumed_sessions(self) -> dict[str, int]:
        """The test client's sessions each instance logged as resumed."""
        return {n: len(re.findall(rf" client={re.escape(SRC_PROXY)}:\d+ .* resumed=yes ",
                                  i.proc.log()))
                for n, i in self.instances.items()}

    def test_3_health_checks_never_count_against_the_per_client_limit(self):
        # The balancer's checks hit /healthz four times a second on each instance throughout.
        checks_before = {s: self.haproxy.server("imaps", s)["chkfail"] for s in ("a", "b")}
        held, refused = [], []
        for _ in range(2 * PER_CLIENT + 2):
            c = ImapClient(SRC_LIMIT)
            if c.greeting.startswith(b"* OK"):
                held.append(c)
            else:
                refused.append((c.greeting, c.src))
                c.close()
            time.sleep(0.1)
        try:
            # Round-robin: PER_CLIENT on each instance, then one refusal from each, said in
            # IMAP's words.
            self.assertEqual(len(held), 2 * PER_CLIENT, refused)
            self.assertEqual(len(refused), 2)
            for greeting, src in refused:
                self.assertTrue(greeting.startswith(b"* BYE [UNAVAILABLE]"), greeting)
            self.assertEqual(sorted(self.instance_of(src) for _, src in refused), ["a", "b"])
            on = [self.haproxy.server_of(c.src) for c in held]
            self.assertEqual(sorted(on), ["a"] * PER_CLIENT + ["b"] * PER_CLIENT)
            # Another client is not affected: the limit is per client, not per balancer.
            for _ in range(2):
                other = ImapClient(SRC_OTHER)
                self.assertTrue(other.greeting.startswith(b"* OK"), other.greeting)
                other.command("LOGOUT")
                other.close()
            # Both servers stayed UP with every check passing while the client sat at its cap.
            time.sleep(3 * CHECK_INTER_MS / 1000)
            for s in ("a", "b"):
                row = self.haproxy.server("imaps", s)
                self.assertEqual(row["status"], "UP")
                self.assertEqual(row["chkfail"], checks_before[s])
                self.assertEqual(self.instances[s].health(), 200)
            # HAProxy's IMAP checks of the mail port (backend imaps_l7) arrive from the
            # balancer's own address with a PROXY LOCAL header, and pass; however many such
            # connections are open at once, none counts as a client (hold one more than the
            # limit).
            wait_until("a mail-port check in a's log",
                       lambda: re.search(r"conn listener=imaps client=198\.18\.2\.1:\d+ "
                                         r"sni=mail\.alpha\.test .* down=[1-9]",
                                         self.a.proc.log()), 5)
            self.assertEqual(self.haproxy.server("imaps_l7", "a")["status"], "UP")
            local = []
            for _ in range(PER_CLIENT + 1):
                with self.lb.entered():
                    raw = socket.create_connection((self.a.addr, IMAPS), timeout=15 * SLOW)
                raw.sendall(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")  # v2 LOCAL
                local.append(CTX.wrap_socket(raw, server_hostname=SNI))
            for s in local:
                self.assertTrue(s.recv(100).startswith(b"* OK"))
                s.close()
            # The refusals name the client, never the balancer.
            for inst in self.instances.values():
                self.assertNotRegex(inst.proc.log(), r"client=198\.18\.[23]\.1:\d+ .*"
                                                     r"max_connections_per_client")
        finally:
            for c in held:
                c.close()

    def test_3b_acme_one_storage_orders_each_domain_once_and_both_serve_it(self):
        doms = ACME_DOMAINS[:4]
        marks = {n: len(i.proc.log()) for n, i in self.instances.items()}
        ca_mark = len(self.pebble.log())
        # The same domains reach both instances at once (a reload of each): both go for every
        # domain, and the lock in the shared storage lets one of them order it.
        for inst in self.instances.values():
            inst.set_acme(doms)
        self.reload_both()
        served = self.wait_served_by_both(doms)
        self.assertEqual(len(set(served.values())), len(doms))
        self.assertEqual(self.pebble.new_orders(), len(doms), "a domain was ordered twice")
        self.assertEqual(self.acme_orders(), len(doms))
        logs = {n: i.proc.log()[marks[n]:] for n, i in self.instances.items()}
        issued = {n: re.findall(r"acme: (\S+): certificate issued", log) for n, log in logs.items()}
        self.assertEqual(sorted(issued["a"] + issued["b"]), sorted(doms))
        # HAProxy spreads the validator's connections round-robin: they reached both
        # instances, and every one was answered (pebble's count of them is theirs).
        answered = {n: validations_answered(log) for n, log in logs.items()}
        self.assertTrue(answered["a"] and answered["b"], answered)
        self.assertEqual(len(answered["a"]) + len(answered["b"]),
                         self.pebble.validations(ca_mark))
        self.assertEqual(set(answered["a"] + answered["b"]),
                         {n for d in doms for n in acme_names(d)})
        crossed = [n for o, other in (("a", "b"), ("b", "a")) for n in answered[other]
                   if n.split(".", 1)[1] in issued[o]]
        print(f"\nfleet: acme: a ordered {issued['a']}, b ordered {issued['b']}; "
              f"{len(crossed)} of {self.pebble.validations(ca_mark)} validation connections "
              f"answered by the instance that did not order", file=sys.stderr, flush=True)

    def test_3c_acme_tls_alpn_01_is_answered_by_the_instance_that_did_not_order(self):
        a, b = self.a, self.b
        doms, new = ACME_DOMAINS[:5], ACME_DOMAINS[4]
        orders = self.pebble.new_orders()
        # A domain added by a rolling reload, a first. a's port 443 is out of the balancer's
        # rotation, so every validation of a's order reaches b, which has not reloaded yet:
        # b knows the challenge only from the shared storage.
        with self.out_of_rotation("https", "a"):
            mark_a, mark_b, ca_mark = len(a.proc.log()), len(b.proc.log()), len(self.pebble.log())
            a.set_acme(doms)
            a.reload()
            a.proc.wait_log(rf"acme: {re.escape(new)}: certificate issued", timeout=60)
            log_a, log_b = a.proc.log()[mark_a:], b.proc.log()[mark_b:]
        answered = validations_answered(log_b)
        self.assertEqual(set(answered), set(acme_names(new)))
        self.assertEqual(len(answered), self.pebble.validations(ca_mark))
        self.assertEqual(validations_answered(log_a), [])
        self.assertNotIn("ordering", log_b)
        # They came from pebble through the balancer: b logs the validator's own address (from
        # HAProxy's PROXY header) on each of those connections -- in the line a connection logs
        # when it closes, which may come after the certificate was issued.
        conn_lines = lambda: re.findall(rf"conn listener=https client={re.escape(CA_SRC)}:\d+ .*"
                                        rf'detail="acme tls-alpn-01 validation"',
                                        b.proc.log()[mark_b:])
        wait_until("b's log line of each validation connection",
                   lambda: len(conn_lines()) >= len(answered), 10)
        self.assertEqual(len(conn_lines()), len(answered))
        # b's turn in the rolling reload: it serves what a stored, and orders nothing.
        b.set_acme(doms)
        b.reload()
        self.wait_served_by_both([new])
        self.assertEqual(self.pebble.new_orders(), orders + 1)
        self.assertNotIn("ordering", b.proc.log()[mark_b:])

    def test_3d_acme_http_01_is_answered_by_the_instance_that_did_not_order(self):
        a, b = self.a, self.b
        doms, new = ACME_DOMAINS, ACME_DOMAINS[5]
        orders = self.pebble.new_orders()
        # The same over HTTP-01 on port 80, the other way round: b reloads first and orders,
        # out of the rotation of port 80, so a's plain HTTP listener answers the validator.
        with self.out_of_rotation("http", "b"):
            mark_a, mark_b, ca_mark = len(a.proc.log()), len(b.proc.log()), len(self.pebble.log())
            b.set_acme(doms, "http-01")
            b.reload()
            b.proc.wait_log(rf"acme: {re.escape(new)}: certificate issued", timeout=60)
            log_a, log_b = a.proc.log()[mark_a:], b.proc.log()[mark_b:]
        # Each connection's line comes when it closes, which may be after the issue.
        answers = lambda: re.findall(rf"conn listener=http client={re.escape(CA_SRC)}:\d+ .*"
                                     rf'detail="http acme-challenge (\d+)"', a.proc.log()[mark_a:])
        wait_until("a's log line of each validation connection",
                   lambda: len(answers()) >= self.pebble.validations(ca_mark), 10)
        self.assertEqual(answers(), ["200"] * self.pebble.validations(ca_mark))
        self.assertNotIn("acme-challenge", log_b)
        self.assertNotIn("ordering", log_a)
        a.set_acme(doms, "http-01")
        a.reload()
        # In all: every domain has one certificate, that both instances serve, ordered once.
        served = self.wait_served_by_both(doms)
        self.assertEqual(len(set(served.values())), len(doms))
        self.assertEqual(self.pebble.new_orders(), orders + 1)
        self.assertEqual(self.pebble.new_orders(), len(doms))
        self.assertEqual(self.acme_orders(), len(doms))

    def test_3e_acme_a_certificate_stored_while_an_instance_was_busy_is_served_by_it(self):
        """An instance serves a certificate that another instance stored for a domain it lists,
        although its own order threads were all busy when the pair was stored. Two paths put it
        in service, and this shows that one does: the configuration watcher (the pair's files
        appear under acme.storage: a reload) and the first look of an order thread at the domain
        (acme/sched.c asks whether the running certificates already serve the stored pair).
        Every order thread of b is kept busy by an order whose validation the CA cannot finish,
        while a orders a domain that b's last reload added."""
        a, b = self.a, self.b
        # As many held orders as b has order threads (acme/sched.c ORDER_THREADS), listed first.
        busy, new = ("a0.test", "a1.test", "a2.test", "a3.test"), "d7.test"
        held = HeldConnections(self.lb, "198.18.6.1", HTTP)
        held.start()
        for dom in busy:
            for n in acme_names(dom):
                self.pebble.add_a(n, "198.18.6.1")
        self.addCleanup(self.set_acme_on_both, ACME_DOMAINS + (new,), "http-01")   # no busy
        try:
            b.set_acme(busy + ACME_DOMAINS + (new,), "http-01")
            b.reload()
            for dom in busy:
                b.proc.wait_log(rf"acme: {re.escape(dom)}: ordering")
            wait_until("the CA to be held validating", lambda: held.held, 10)
            a.set_acme(ACME_DOMAINS + (new,), "http-01")
            a.reload()
            a.proc.wait_log(rf"acme: {re.escape(new)}: certificate issued", timeout=60)
            self.assertNotRegex(b.proc.log(), rf"acme: {re.escape(new)}: ordering")
        finally:
            held.release()
        for dom in busy:
            b.proc.wait_log(rf"acme: {re.escape(dom)}: order failed", timeout=30)
        # a puts its own pair in service through a snapshot update, spaced after the last one.
        wait_until(f"a to serve {new}'s certificate",
                   lambda: self.served_cert(a, f"mail.{new}"), 10)
        # b has now looked at d7.test for the first time and found a's certificate in storage.
        wait_until(f"b to serve {new}'s certificate",
                   lambda: self.served_cert(b, f"mail.{new}"), 10)

    def set_acme_on_both(self, domains, challenge: str) -> None:
        for inst in self.instances.values():
            inst.set_acme(domains, challenge)
            inst.reload()

    def test_4_sigusr2_upgrade_behind_the_balancer_fails_no_connection(self):
        b = self.b
        old_pid = b.current_pid()
        # A logged-in session on the old process, that must outlive the upgrade.
        held = [ImapClient(src).login() for src in SRC_UPGRADE]
        self.addCleanup(lambda: [c.close() for c in held])
        on_b = [c for c in held if self.haproxy.server_of(c.src) == "b"]
        self.assertTrue(on_b, "round-robin put no held session on b")
        log_mark = len(self.haproxy.log())
        stot_before = int(self.haproxy.server("imaps", "b")["stot"])
        with Loops() as loops:
            time.sleep(1.0)
            ok_before = loops.ok
            b.proc.signal(signal.SIGUSR2)
            line = b.proc.wait_log(r"upgrade: the new process \(pid \d+\) accepts", timeout=30)[0]
            new_pid = int(re.search(r"pid (\d+)", line).group(1))
            time.sleep(1.5)
            loops.stop()
            self.assertEqual(loops.failures, [])
            self.assertGreater(loops.ok, ok_before + 10)
        print(f"\nfleet: upgrade of b: {loops.ok} client sessions through the balancer, "
              f"{len(loops.failures)} failed", file=sys.stderr, flush=True)
        self.assertEqual(b.current_pid(), new_pid)
        self.assertNotEqual(new_pid, old_pid)
        # The balancer never saw b fail a check, and kept sending it sessions: the new process
        # answers /healthz and /metrics on the inherited admin socket and has accepted some.
        self.assertNotRegex(self.haproxy.log()[log_mark:], r"Server \w+/b is DOWN")
        self.assertEqual(self.haproxy.server("imaps", "b")["status"], "UP")
        self.assertGreater(int(self.haproxy.server("imaps", "b")["stot"]), stot_before)
        self.assertEqual(b.health(), 200)
        self.assertGreater(b.metric("mailsnid_connections_total", '{listener="imaps"}'), 0)
        # The old process still carries its session, both ways, with Dovecot behind it.
        for c in held:
            c.command("NOOP")
        for c in held:
            c.command("LOGOUT")
            c.close()
        b.proc.proc.wait(timeout=15 * SLOW)
        self.assertEqual(b.proc.proc.returncode, 0)

    def test_5_sigterm_drain_behind_the_balancer_fails_no_connection(self):
        a = self.a
        held = [ImapClient(src).login() for src in SRC_HELD]
        self.addCleanup(lambda: [c.close() for c in held])
        on_a = [c for c in held if self.haproxy.server_of(c.src) == "a"]
        on_b = [c for c in held if c not in on_a]
        self.assertTrue(on_a, "round-robin put no held session on a")
        # The IMAP checks of the mail port would be open connections too when accepting stops.
        self.assertEqual(self.haproxy.command("disable health imaps_l7/a").strip(), "")
        log_mark = len(self.haproxy.log())
        with Loops() as loops:
            time.sleep(1.0)
            t0 = time.monotonic()
            a.proc.signal(signal.SIGTERM)
            a.proc.wait_log(r"draining: ")
            self.assertEqual(a.health(), 503)
            # The balancer notices within two checks, well inside the grace, and stops sending.
            wait_until("HAProxy to mark a DOWN",
                       lambda: re.search(r"Server imaps/a is DOWN", self.haproxy.log()[log_mark:]),
                       GRACE, step=0.01)
            t_down = time.monotonic() - t0
            self.assertFalse("draining: no new connections" in a.proc.log(),
                             "a stopped accepting before the balancer noticed")
            stot_down = self.haproxy.server("imaps", "a")["stot"]
            ok_down = loops.ok
            # Accepting ends after the grace; by then only the held sessions are open.
            line = a.proc.wait_log(r"draining: no new connections; \d+ open", timeout=GRACE + 5)[0]
            open_at_stop = int(re.search(r"; (\d+) open", line).group(1))
            time.sleep(1.0)
            loops.stop()
            self.assertEqual(loops.failures, [], f"DOWN after {t_down:.2f} s")
            self.assertGreater(loops.ok, ok_down + 10)
        print(f"\nfleet: drain of a: HAProxy marked it DOWN {t_down:.2f} s after SIGTERM "
              f"(drain_grace {GRACE:.1f} s); {loops.ok} client sessions through the balancer, "
              f"{len(loops.failures)} failed", file=sys.stderr, flush=True)
        self.assertEqual(self.haproxy.server("imaps", "a")["stot"], stot_down,
                         "HAProxy sent sessions to a after marking it DOWN")
        self.assertEqual(open_at_stop, len(on_a))
        # Its open sessions finish: they still work both ways, and hold the process up...
        for c in held:
            c.command("NOOP")
        self.assertIsNone(a.proc.proc.poll())
        for c in on_b:
            c.command("LOGOUT")
            c.close()
        for c in on_a:
            c.command("LOGOUT")
            c.close()
        # ...and when the last one ends, the instance exits 0 without its drain_timeout.
        a.proc.proc.wait(timeout=10 * SLOW)
        self.assertEqual(a.proc.proc.returncode, 0)
        self.assertNotIn("drain timeout", a.proc.log())


def acme_names(domain: str) -> tuple[str, ...]:
    return (f"mail.{domain}", f"webmail.{domain}")     # acme.names of pebble.acme_config


def validations_answered(log: str) -> list[str]:
    """The names of the TLS-ALPN-01 validations a mailsnid log shows answered, one a connection."""
    return re.findall(r"answering a tls-alpn-01 validation for (\S+)", log)


def _smtp_ssl(sni: str):
    """smtplib.SMTP_SSL with a source address and an SNI name that differs from the host
    (SMTP_SSL sends the host as SNI). Call it inside the client namespace."""
    import smtplib

    class SNISMTP(smtplib.SMTP_SSL):
        def _get_socket(self, host, port, timeout):
            raw = socket.create_connection((host, port), timeout, self.source_address)
            return self.context.wrap_socket(raw, server_hostname=sni)

    return SNISMTP(VIP, SMTPS, source_address=(SRC_PROXY, 0), context=CTX,
                   timeout=15 * SLOW)


if __name__ == "__main__":
    unittest.main()
