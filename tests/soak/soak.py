#!/usr/bin/env python3
"""Soak: mailsnid under mixed traffic, constant reloads and backends that come and go.

    python3 tests/soak/soak.py --duration 600 [--workers 2] [--clients 6] [--seed N]

What runs (Python 3 standard library only, plus the repository's test harness):
  * real Dovecot + Postfix (tests/harness/backends.py, fixed ports so they can be restarted
    under the same configuration) and a small HTTP/1.1 backend (http.server in a thread);
  * mailsnid (`$MAILSNID`, default build/mailsnid) with an admin port, the default certificate
    and a certbot tree of several lineages under cert_dirs, and one listener per kind:
      imaps        IMAP, implicit TLS       -> Dovecot imap (haproxy port, PROXY v2)
      imap         IMAP, STARTTLS           -> Dovecot imap (plain port)
      pop3s        POP3, implicit TLS       -> Dovecot pop3 (plain port)
      pop3         POP3, STLS               -> Dovecot pop3 (haproxy port, PROXY v2)
      smtps        SMTP, implicit TLS       -> Postfix submission (haproxy port, PROXY v1)
      submission   SMTP, STARTTLS required  -> Postfix submission (plain port)
      mx           SMTP, STARTTLS optional  -> Postfix port-25 smtpd (haproxy port, PROXY v1)
      https        HTTP, implicit TLS       -> the HTTP backend
  * --clients threads, each looping over random sessions: a random listener, a random SNI name
    (every lineage's names and the default certificate's), TLS verified against the test CA
    with hostname checking, a real login, FETCH/RETR of a random message whose body hash is
    checked end to end, mail sent with AUTH (or as an MTA on `mx`, with or without STARTTLS),
    HTTP GETs and POSTs checked byte for byte, on a kept-alive connection;
  * a reload every second, in turn a SIGHUP, a certbot renewal of a random lineage
    (certs.renew_certbot, certbot's own non-atomic link swap) that the file watcher picks up,
    and a config edit + SIGHUP that changes routes and backends (a route for a lineage's names
    added or removed, a listener's backend list one address or that address twice, an idle
    timeout changed): a new configuration generation each time, while sessions of the old ones
    are still open;
  * a SIGUSR2 binary upgrade every --upgrade-every seconds (default 60): the new process takes
    the sockets over, the old one serves its sessions until they end and exits; the soak then
    follows the new process (pid_file) and checks every old one has gone;
  * every 10-20 s the backends stop (Dovecot, Postfix and the HTTP server, all at once) for
    1-3 s. While they are down a prober checks that every listener answers in its protocol's
    words -- `* BYE [UNAVAILABLE]`, `-ERR [SYS/TEMP]`, `421 4.3.0`, HTTP 502 -- then they are
    started again on the same ports.

Client failures are classified: the protocol's "unavailable" reply, or a session cut (EOF,
reset, the server's own shutdown line, a 4xx) that overlaps a backend outage (plus a grace
period for the restarted daemons to settle) is EXPECTED and counted per listener; anything
else -- a certificate that does not verify, a hang (socket timeout), wrong data, an
"unavailable" reply while the backends are up -- is UNEXPECTED. A cut before the server said
anything on the current layer (no greeting; after STARTTLS no reply over TLS; no HTTP status)
is counted apart as "silent": a backend being stopped still accepts connects from its listen
queue and resets them, and mailsnid then closes without the unavailable reply. It is expected
by default; --strict-unavailable makes it a failure (the README promises the reply).

Measurements. After a warm-up (--warmup, default half the duration, 8-120 s) and again at
the end, traffic, reloads and restarts pause; once mailsnid reports no open connection
(/metrics) and the file watcher's debounce has passed, the soak takes mailsnid's open file
descriptors (/proc/PID/fd) and its RSS, then traffic resumes. Why RSS is compared quiescent
rather than under load: under load RSS at one instant depends on how many sessions and
buffers happen to be in flight (buffers are per connection and released when idle), which
swings by a few percent between samples, the order of the 5 % limit; with no connection
open both samples describe the same state -- same listeners, same certificate snapshot size,
same threads (the libuv pool has already run reloads during warm-up) -- and both follow the
same kind of load, so what the allocator keeps cached is comparable too. The difference is
what the run retained: leaks, unbounded caches, snapshots never freed. Why the warm-up is
long: jemalloc's cached
(dirty/muzzy) pages keep growing for about two minutes of this load and then level off (with
MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0 the growth after warm-up is ~0.2 %), so the
baseline must be taken well into that curve. Under-load RSS is sampled as well and shown
for information. Under SANITIZE=1 the RSS criterion is skipped (ASan's quarantine and shadow
memory make RSS meaningless); fds, failures and the sanitizer's exit report still count.

Checks (exit 0 only if all pass): no unexpected client failure; every listener served sessions;
every outage probe got the protocol's unavailable reply; at least one backend restart; reloads
done and none failed (mailsnid_reloads_total); at the end every name is served its lineage's
latest renewal; fds back to the warm-up baseline; RSS growth < 5 % (not under SANITIZE);
mailsnid exits 0 on SIGTERM with no sanitizer report. A failed soak keeps its work directory
(mailsnid's log, Dovecot's and Postfix's) and prints where it is.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import http.client
import http.server
import imaplib
import os
import poplib
import random
import re
import shutil
import signal
import smtplib
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
import traceback
import types
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))

from mailsnid_runner import MAILSNID, SANITIZE, SLOW, MailsnidProcess, free_port  # noqa: E402
import certs  # noqa: E402
from backends import MailBackends, find_free_base  # noqa: E402

T = 30 * SLOW                       # client socket timeout: a hang is a failure, not a wait
GRACE = 2.0 * SLOW                  # after a restart, sessions may still meet its after-effects
RSS_LIMIT = 0.05

# Lineages in the certbot tree: (lineage, key type). Each covers mail.<d> and webmail.<d>.
LINEAGES = (("alpha.test", "ec"), ("beta.test", "ec"), ("gamma.test", "ec"),
            ("delta.test", "rsa"))
DEFAULT_NAME = "mail.hoster.test"   # the default certificate's only name

# name, protocol, tls, backend service (MailBackends port name, or "http"), proxy_protocol, extra
LISTENERS = (
    ("imaps", "imap", "implicit", "imap_haproxy", "v2", ""),
    ("imap", "imap", "starttls", "imap", "none", ""),
    ("pop3s", "pop3", "implicit", "pop3", "none", ""),
    ("pop3", "pop3", "starttls", "pop3_haproxy", "v2", ""),
    ("smtps", "smtp", "implicit", "submission_haproxy", "v1", ""),
    ("submission", "smtp", "starttls", "submission", "none", 'starttls = "required"; '),
    ("mx", "smtp", "starttls", "smtp_haproxy", "v1", 'starttls = "optional"; '),
    ("https", "http", "implicit", "http", "none", ""),
)
HTTP_PORT_OFFSET = 19               # a free slot of the MailBackends port block (offsets 0-13)

_real_getaddrinfo = socket.getaddrinfo


def _test_getaddrinfo(host, *args, **kwargs):
    # Clients connect by name (so that the name is both the SNI and what is verified);
    # every *.test name is this machine, as `curl --resolve` would have it.
    if isinstance(host, str) and host.endswith(".test"):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------
# Content that can be checked end to end
# ------------------------------------------------------------------------------------------

def _body_lines(rng: random.Random, nbytes: int) -> list[bytes]:
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    lines, left = [], max(nbytes, 1)
    while left > 0:
        n = min(76, left)
        lines.append(bytes(rng.choice(alphabet) for _ in range(n)))
        left -= n + 2
    return lines


def _digest(lines: list[bytes]) -> str:
    return hashlib.sha256(b"\n".join(lines)).hexdigest()


def make_message(rng: random.Random, frm: str, to: str) -> bytes:
    """A message whose X-Soak-Check header is the SHA-256 of its body lines, so whoever reads
    it back (IMAP FETCH, POP3 RETR) can tell it arrived intact."""
    r = rng.random()
    size = 300 if r < 0.90 else (64 * 1024 if r < 0.98 else 256 * 1024)
    if size > 1024:   # the big ones: repeat a random block, generating 256 KB char by char is slow
        block = _body_lines(rng, 4096)
        lines = (block * (size // 4096 + 1))[: size // 78]
    else:
        lines = _body_lines(rng, size)
    tok = "%016x" % rng.getrandbits(64)
    head = (f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: soak {tok}\r\n"
            f"Message-ID: <{tok}@soak.mailsnid.test>\r\nX-Soak-Check: {_digest(lines)}\r\n\r\n")
    return head.encode() + b"\r\n".join(lines) + b"\r\n"


def quietly(close) -> None:
    """Close a client whatever state it is in (logout may have closed it already); never let
    the close hide the failure being handled."""
    try:
        close()
    except OSError:
        pass


def ehlo(s: smtplib.SMTP) -> None:
    """EHLO that raises on a refusal: smtplib's ehlo() returns a 421 quietly, and the session
    would then fail later for a misleading reason (no AUTH)."""
    code, msg = s.ehlo()
    if code != 250:
        raise smtplib.SMTPResponseException(code, msg)


class Mismatch(Exception):
    """Data or a reply that is wrong: always an unexpected failure."""


class Unavailable(Exception):
    """A reply that means 'backend unavailable' (HTTP 502 here; the mail libraries raise their
    own exceptions carrying the reply text)."""


def check_message(raw: bytes) -> None:
    text = raw.replace(b"\r\n", b"\n")
    head, sep, body = text.partition(b"\n\n")
    if not sep:
        raise Mismatch(f"message without a body: {raw[:200]!r}")
    m = re.search(rb"^X-Soak-Check: ([0-9a-f]{64})$", head, re.M)
    if not m:
        raise Mismatch(f"message without X-Soak-Check: {head[:300]!r}")
    lines = body.rstrip(b"\n").split(b"\n")
    if _digest(lines).encode() != m.group(1):
        raise Mismatch(f"message body corrupted ({len(raw)} bytes, {head[:200]!r})")


def http_blob(seed: int, n: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 128     # 4 KB
    return (block * (n // len(block) + 1))[:n]


# ------------------------------------------------------------------------------------------
# HTTP backend
# ------------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Echo-Host", self.headers.get("Host", ""))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        m = re.fullmatch(r"/blob/(\d+)/(\d+)", self.path)
        if not m:
            self.send_error(404)
            return
        self._reply(http_blob(int(m.group(1)), int(m.group(2))))

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(n)
        self._reply(hashlib.sha256(data).hexdigest().encode())


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr):
        self.live: set[socket.socket] = set()
        self.live_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def process_request(self, request, client_address):
        with self.live_lock:
            self.live.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.live_lock:
            self.live.discard(request)
        super().shutdown_request(request)


class HttpBackend:
    """Webmail stand-in: GET /blob/SEED/N returns N known bytes, POST returns the body's SHA-256,
    every reply echoes the Host header. stop() closes the listener AND every open connection,
    as a killed server would."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.server: _Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                self.server = _Server((self.host, self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if not self.server:
            return
        self.server.shutdown()
        self.server.server_close()
        with self.server.live_lock:
            for s in list(self.server.live):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.thread.join(5)
        self.server = None


# ------------------------------------------------------------------------------------------
# Failure classification
# ------------------------------------------------------------------------------------------

UNAVAILABLE_RX = re.compile(r"\[UNAVAILABLE\]|\[SYS/TEMP\]|\b421\b|HTTP 502")
CUT_TYPES = (ConnectionError, EOFError, ssl.SSLEOFError, ssl.SSLZeroReturnError,
             smtplib.SMTPServerDisconnected, imaplib.IMAP4.abort, http.client.RemoteDisconnected,
             http.client.IncompleteRead, http.client.BadStatusLine)


def classify(exc: BaseException) -> str:
    """'unavailable', 'cut' (plausible when a backend goes away) or 'other'."""
    if isinstance(exc, (Mismatch, TimeoutError, socket.timeout, ssl.SSLCertVerificationError)):
        return "other"
    text = f"{exc!s} {exc!r}"
    if isinstance(exc, Unavailable):
        return "unavailable"
    if isinstance(exc, smtplib.SMTPResponseException):
        if exc.smtp_code == 421:
            return "unavailable"
        # 535: Postfix's answer when Dovecot's auth service dies under a pending AUTH.
        return "cut" if 400 <= exc.smtp_code < 500 or exc.smtp_code == 535 else "other"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [c for c, _ in exc.recipients.values()]
        return "cut" if codes and all(400 <= c < 500 for c in codes) else "other"
    if isinstance(exc, (imaplib.IMAP4.error, poplib.error_proto)) and UNAVAILABLE_RX.search(text):
        return "unavailable"
    if isinstance(exc, CUT_TYPES):
        return "cut"
    if isinstance(exc, poplib.error_proto) and ("EOF" in text or "-ERR" in text):
        return "cut"          # -ERR EOF (poplib's own), or Dovecot's shutdown -ERR
    # Dovecot's imap-login answers a LOGIN pending while its auth process is killed with
    # "NO [AUTHENTICATIONFAILED]" ("auth process communication failure" in its log).
    if isinstance(exc, imaplib.IMAP4.error) and re.search(
            r"UNAVAILABLE|BYE|shutting down|AUTHENTICATIONFAILED", text, re.I):
        return "cut"
    return "other"


class Stats:
    def __init__(self, strict: bool):
        self.strict = strict                            # a silent close is a failure too
        self.lock = threading.Lock()
        self.ok = collections.Counter()                 # listener -> sessions
        self.expected = collections.Counter()           # (listener, kind) -> count
        self.unexpected: list[str] = []
        self.unexpected_n = collections.Counter()
        self.probes = collections.Counter()             # listener -> unavailable replies seen
        self.probe_failures: list[str] = []
        self.sighups = 0
        self.renewals = 0
        self.config_edits = 0
        self.edits_since_upgrade = 0                    # a new process counts generations anew
        self.upgrades = 0
        self.restarts = 0
        self.outages: list[list[float]] = []            # [start, end] (end=inf while down)
        self.sent = 0
        self.late_unavailable = 0                       # in the grace after a restart

    def in_outage(self, t0: float, t1: float) -> bool:
        with self.lock:
            return any(t0 <= end + GRACE and t1 >= start for start, end in self.outages)

    def failure(self, listener: str, sni: str, t0: float, exc: BaseException,
                answered: bool) -> str:
        t1 = time.monotonic()
        kind = classify(exc)
        # The backend's own goodbye (Dovecot's "* BYE Shutting down" read inside imaplib's
        # constructor, before the session counts as answered) is the server speaking.
        spoke = re.search(r"\bBYE\b|shutting down|-ERR", f"{exc!s}", re.I)
        if kind == "cut" and not answered and not spoke:
            kind = "silent"
        expected = (kind in ("unavailable", "cut") or (kind == "silent" and not self.strict)) \
            and self.in_outage(t0, t1)
        with self.lock:
            if expected:
                self.expected[(listener, kind)] += 1
                if kind == "unavailable" and not any(start <= t1 <= end
                                                     for start, end in self.outages):
                    self.late_unavailable += 1
                return kind
            self.unexpected_n[listener] += 1
            if len(self.unexpected) < 30:
                tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:])
                ends = [end for _, end in self.outages if end <= t1]
                if any(start <= t1 <= end for start, end in self.outages):
                    since = "during an outage"
                else:
                    since = f"{t1 - ends[-1]:.1f} s after an outage" if ends else "no outage yet"
                wall = time.strftime("%H:%M:%S", time.gmtime(time.time() - (time.monotonic() - t1)))
                self.unexpected.append(f"{listener} sni={sni} at {wall} UTC ({since}), "
                                       f"session {t1 - t0:.2f} s [{kind}] {exc!r}\n{tb}")
        return kind


# ------------------------------------------------------------------------------------------
# The soak
# ------------------------------------------------------------------------------------------

class Soak:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="mailsnid-soak-")
        self.stats = Stats(args.strict_unavailable)
        self.stop_clients = threading.Event()
        self.stop_control = threading.Event()
        self.go = threading.Event()                     # cleared while measuring
        self.go.set()
        self.active = 0
        self.active_cv = threading.Condition()
        self.control = threading.Lock()                 # restarts vs. measurements
        self.upgrade_lock = threading.Lock()            # upgrades vs. reloads and measurements
        self.upgrade_failures: list[str] = []
        self.rss_samples: list[tuple[float, int]] = []
        self.mb: MailBackends | None = None
        self.http: HttpBackend | None = None
        self.proc: MailsnidProcess | None = None
        self.ports: dict[str, int] = {}
        self.users: dict[str, str] = {}
        self.results: list[tuple[str, bool, str]] = []
        self.failed = True                              # until the checks say otherwise

    # -- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        a = self.args
        pki = certs.standard_pki(os.path.join(self.tmp, "pki"))
        self.pki = pki
        ca = certs.CA.load(pki["ca_dir"])
        self.le = os.path.join(self.tmp, "letsencrypt")
        for name, kt in LINEAGES:
            certs.make_certbot_tree(self.le, name, ca, [f"mail.{name}", f"webmail.{name}"],
                                    key_type=kt)
        self.mail_names = [f"mail.{n}" for n, _ in LINEAGES] + [DEFAULT_NAME]
        self.web_names = [f"webmail.{n}" for n, _ in LINEAGES] + [DEFAULT_NAME]

        # One mailbox per client (Dovecot allows 10 sessions per user and address), spread
        # over the harness's domains.
        domains = ("alpha.test", "beta.test", "hoster.test")
        n_users = max(6, a.clients)
        self.users = {f"soak{i}@{domains[i % 3]}": f"soak-pass-{i}" for i in range(n_users)}
        mbdir = os.path.join(self.tmp, "backends")
        # fast_auth_failures=False: the harness would otherwise unlink Dovecot's auth-penalty
        # socket right after each start, and refuses to when an auth process already runs --
        # which it always does here, as clients log in the moment the ports listen. The
        # penalty only follows failed logins, and the soak's logins never fail.
        self.mb = MailBackends(mbdir, base_port=find_free_base(seed=mbdir), users=self.users,
                               fast_auth_failures=False)
        self.mb.start()
        self.http = HttpBackend(self.mb.host, self.mb.base_port + HTTP_PORT_OFFSET)
        self.http.start()
        rng = random.Random(a.seed)
        for user in self.users:
            for _ in range(3):
                self.mb.put_message(user, make_message(rng, "seed@hoster.test", user))

        listeners = []
        for name, proto, tls, svc, pp, extra in LISTENERS:
            port = free_port()
            while port in self.ports.values():
                port = free_port()
            self.ports[name] = port
            backend = (f"{self.http.host}:{self.http.port}" if svc == "http"
                       else self.mb.addr(svc))
            listeners.append(
                f'{{ name = "{name}"; listen = "127.0.0.1:{port}"; protocol = "{proto}"; '
                f'tls = "{tls}"; {extra}backend = "{backend}"; proxy_protocol = "{pp}"; '
                f'connect_timeout = 3; }}')
        self.admin_port = free_port()
        self.listener_texts = listeners
        config = self.config_text(0)
        socket.getaddrinfo = _test_getaddrinfo
        self.ctx = ssl.create_default_context(cafile=pki["ca"])
        self.proc = MailsnidProcess(config, os.path.join(self.tmp, "mailsnid"))
        self.proc.start(list(self.ports.values()) + [self.admin_port])
        self.pid = self.proc.proc.pid
        self.retired: list[int] = []                    # processes an upgrade replaced
        log(f"mailsnid {MAILSNID} pid {self.pid}, workers {a.workers}, {a.clients} clients, "
            f"backends on {self.mb.host}:{self.mb.base_port}+, work dir {self.tmp}")

    def config_text(self, variant: int) -> str:
        """The config; VARIANT > 0 changes routes and backends (every backend stays a working
        one, so no client may notice anything)."""
        a, pki = self.args, self.pki
        listeners = list(self.listener_texts)
        routes = ""
        if variant % 2:
            name = LINEAGES[variant % len(LINEAGES)][0]
            # Both IMAP and both POP3 listeners send this name to Dovecot's PROXY ports: the
            # STARTTLS listeners' sessions move from the plain port to the PROXY one.
            routes = (f'routes = ( {{ names = [ "mail.{name}", "webmail.{name}" ]; '
                      f'imap = "{self.mb.addr("imap_haproxy")}"; '
                      f'pop3 = "{self.mb.addr("pop3_haproxy")}"; proxy_protocol = "v2"; }} );')
        if variant % 3 == 1:
            # The first listener gets its backend twice (failover to the same server).
            listeners[0] = re.sub(r'backend = "([^"]+)"', r'backend = [ "\1", "\1" ]', listeners[0])
        if variant % 4 == 2:
            listeners[-1] = listeners[-1].replace("connect_timeout = 3;", "connect_timeout = 4;")
        return f"""# written by tests/soak/soak.py
workers = {a.workers};
pid_file = "{os.path.join(self.tmp, 'mailsnid', 'mailsnid.pid')}";
log = {{ level = "info"; target = "stderr"; }};
admin = "127.0.0.1:{self.admin_port}";
drain_timeout = 5;
tls = {{ default_cert = "{pki['default_cert']}"; default_key = "{pki['default_key']}"; }};
cert_dirs = ( "{self.le}/live" );
listeners = (
  {(',' + chr(10) + '  ').join(listeners)}
);
{routes}
"""

    def edit_config(self, variant: int) -> None:
        tmp = self.proc.config + ".new"
        with open(tmp, "w") as f:
            f.write(self.config_text(variant))
        os.replace(tmp, self.proc.config)

    # -- client sessions -----------------------------------------------------------------

    # Each session function sets sess.answered once the server has said something on the
    # current layer (the greeting; after STARTTLS, the first reply over TLS; for HTTP, a
    # status line), so that a session the backend ends before any word can be told apart.

    def s_imap(self, sess, rng, port, sni, implicit, user, pw):
        if implicit:
            m = imaplib.IMAP4_SSL(sni, port, ssl_context=self.ctx, timeout=T)
        else:
            m = imaplib.IMAP4(sni, port, timeout=T)
        sess.answered = True
        try:
            if not implicit:
                sess.answered = False
                m.starttls(ssl_context=self.ctx)        # ends with CAPABILITY over TLS
                sess.answered = True
            m.login(user, pw)
            typ, data = m.select("INBOX", readonly=rng.random() < 0.5)
            if typ != "OK":
                raise Mismatch(f"SELECT: {typ} {data}")
            n = int(data[0])
            for _ in range(rng.randint(1, 2)):
                if n:
                    typ, d = m.fetch(str(rng.randint(1, n)), "(BODY.PEEK[])")
                    if typ != "OK" or not d or not isinstance(d[0], tuple):
                        raise Mismatch(f"FETCH: {typ} {str(d)[:200]}")
                    check_message(d[0][1])
            m.noop()
            m.logout()
        finally:
            quietly(m.shutdown)

    def s_pop3(self, sess, rng, port, sni, implicit, user, pw):
        if implicit:
            p = poplib.POP3_SSL(sni, port, context=self.ctx, timeout=T)
        else:
            p = poplib.POP3(sni, port, timeout=T)
        sess.answered = True
        try:
            if not implicit:
                sess.answered = False
                p.stls(context=self.ctx)
            p.user(user)
            sess.answered = True
            p.pass_(pw)
            count, _ = p.stat()
            if count:
                _, lines, _ = p.retr(rng.randint(1, count))
                check_message(b"\r\n".join(lines) + b"\r\n")
            p.quit()
        finally:
            quietly(p.close)

    def s_smtp(self, sess, rng, listener, port, sni, user, pw):
        to = rng.choice(list(self.users))
        if listener == "smtps":
            s = smtplib.SMTP_SSL(sni, port, context=self.ctx, local_hostname="client.test",
                                 timeout=T)
        else:
            s = smtplib.SMTP(sni, port, local_hostname="client.test", timeout=T)
        sess.answered = True
        try:
            upgrade = listener == "submission" or (listener == "mx" and rng.random() < 0.5)
            if listener != "smtps":
                ehlo(s)
            if listener == "submission" and rng.random() < 0.25:   # required: no mail before TLS
                code, msg = s.docmd("MAIL FROM:<%s>" % user)
                if code != 530:
                    raise Mismatch(f"MAIL before STARTTLS on a required listener: {code} {msg}")
            if upgrade:                       # on mx: an MTA that upgrades, and one that never does
                sess.answered = False
                s.starttls(context=self.ctx)
                ehlo(s)
                sess.answered = True
            if listener == "mx":
                frm = "relay@remote.example"
            else:
                s.login(user, pw)
                frm = user
            refused = s.sendmail(frm, [to], make_message(rng, frm, to))
            if refused:
                raise Mismatch(f"recipient refused: {refused}")
            with self.stats.lock:
                self.stats.sent += 1
            s.quit()
        finally:
            quietly(s.close)

    def s_https(self, sess, rng, port, sni):
        c = http.client.HTTPSConnection(sni, port, context=self.ctx, timeout=T)
        try:
            for _ in range(rng.randint(1, 3)):             # keep-alive: several per connection
                if rng.random() < 0.7:
                    seed, n = rng.getrandbits(32), rng.choice((100, 5000, 70000, 300000))
                    c.request("GET", f"/blob/{seed}/{n}")
                    want = http_blob(seed, n)
                else:
                    body = os.urandom(rng.choice((10, 20000, 200000)))
                    # A proxy that answers 502 while the body is still going up closes the
                    # connection, and http.client fails on its write without reading the
                    # answer: not a silent close.
                    sess.writing = True
                    c.request("POST", "/echo", body=body)
                    sess.writing = False
                    want = hashlib.sha256(body).hexdigest().encode()
                r = c.getresponse()
                sess.answered = True
                data = r.read()
                if r.status == 502:
                    raise Unavailable(f"HTTP 502 {data[:100]!r}")
                if r.status != 200:
                    raise Mismatch(f"HTTP {r.status} {data[:200]!r}")
                if r.getheader("X-Echo-Host") != f"{sni}:{port}":
                    raise Mismatch(f"Host header arrived as {r.getheader('X-Echo-Host')!r}")
                if data != want:
                    raise Mismatch(f"HTTP body differs ({len(data)} vs {len(want)} bytes)")
        finally:
            quietly(c.close)

    def session(self, rng: random.Random, user: str) -> None:
        name, proto, tls, *_ = rng.choice(LISTENERS)
        port = self.ports[name]
        sni = rng.choice(self.web_names if proto == "http" else self.mail_names)
        t0 = time.monotonic()
        sess = types.SimpleNamespace(answered=False, writing=False)
        try:
            pw = self.users[user]
            if proto == "imap":
                self.s_imap(sess, rng, port, sni, tls == "implicit", user, pw)
            elif proto == "pop3":
                self.s_pop3(sess, rng, port, sni, tls == "implicit", user, pw)
            elif proto == "smtp":
                self.s_smtp(sess, rng, name, port, sni, user, pw)
            else:
                self.s_https(sess, rng, port, sni)
        except Exception as e:                          # noqa: BLE001 -- classified below
            answered = sess.answered or sess.writing
            if self.stats.failure(name, sni, t0, e, answered) == "unavailable":
                time.sleep(0.1)     # as a real client would, rather than spin on the refusal
        else:
            with self.stats.lock:
                self.stats.ok[name] += 1

    def client(self, i: int) -> None:
        rng = random.Random(f"{self.args.seed}-client-{i}")
        user = list(self.users)[i % len(self.users)]
        while not self.stop_clients.is_set():
            self.go.wait()
            with self.active_cv:
                if not self.go.is_set():
                    continue
                self.active += 1
            try:
                self.session(rng, user)
            finally:
                with self.active_cv:
                    self.active -= 1
                    self.active_cv.notify_all()

    # -- reloads and restarts ------------------------------------------------------------

    def reloader(self) -> None:
        rng = random.Random(f"{self.args.seed}-reload")
        n = 0
        while not self.stop_control.wait(1.0):
            if not self.go.is_set():
                continue
            n += 1
            with self.upgrade_lock:
                if not self.reload_once(n, rng):
                    return

    def reload_once(self, n: int, rng: random.Random) -> bool:
        if True:
            try:
                if n % 3 == 1:
                    os.kill(self.pid, signal.SIGHUP)
                    with self.stats.lock:
                        self.stats.sighups += 1
                elif n % 3 == 2:
                    certs.renew_certbot(self.le, rng.choice(LINEAGES)[0])
                    with self.stats.lock:
                        self.stats.renewals += 1
                else:
                    self.edit_config(n // 3)
                    os.kill(self.pid, signal.SIGHUP)
                    with self.stats.lock:
                        self.stats.config_edits += 1
                        self.stats.edits_since_upgrade += 1
            except Exception as e:                      # noqa: BLE001
                self.results.append(("reloader", False, repr(e)))
                return False
        return True

    def upgrader(self) -> None:
        """SIGUSR2 every --upgrade-every seconds, reloads paused meanwhile (a reload racing the
        new binary's start is refused by design); then follow the new process."""
        every = self.args.upgrade_every
        if not every:
            return
        while not self.stop_control.wait(every):
            if not self.go.is_set():
                continue
            with self.upgrade_lock:
                old = self.pid
                mark = len(self.proc.log())
                os.kill(old, signal.SIGUSR2)
                deadline = time.monotonic() + 60 * SLOW
                new = None
                while time.monotonic() < deadline and new is None:
                    text = self.proc.log()[mark:]
                    m = re.search(r"upgrade: the new process \(pid (\d+)\) accepts", text)
                    if m:
                        new = int(m.group(1))
                    elif re.search(r"upgrade failed|SIGUSR2 .*ignored", text):
                        break
                    else:
                        time.sleep(0.05)
                if new is None:
                    self.upgrade_failures.append(self.proc.log()[mark:][-1500:])
                    continue
                self.retired.append(old)
                self.pid = new
                with self.stats.lock:
                    self.stats.upgrades += 1
                    self.stats.edits_since_upgrade = 0
                log(f"upgraded: pid {old} -> {new}")

    def probe(self, name: str, proto: str, tls: str) -> None:
        """While the backends are down: the listener must answer in its protocol's words."""
        want = {"imap": b"* BYE [UNAVAILABLE] ", "pop3": b"-ERR [SYS/TEMP] ",
                "smtp": b"421 4.3.0 ", "http": b"HTTP/1.1 502 "}[proto]
        sni = self.web_names[0] if proto == "http" else self.mail_names[0]
        try:
            raw = socket.create_connection(("127.0.0.1", self.ports[name]), timeout=T)
            s = self.ctx.wrap_socket(raw, server_hostname=sni) if tls == "implicit" else raw
            with s:
                if proto == "http":
                    s.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
                buf = b""
                while b"\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
            if buf.startswith(want):
                with self.stats.lock:
                    self.stats.probes[name] += 1
            else:
                raise Mismatch(f"got {buf[:120]!r}, want {want!r}")
        except Exception as e:                          # noqa: BLE001
            with self.stats.lock:
                self.stats.probe_failures.append(f"{name}: {e!r}")

    def restarter(self) -> None:
        rng = random.Random(f"{self.args.seed}-restart")
        lo, hi = self.args.restart_interval
        wait = rng.uniform(lo / 2.5, lo / 1.25)         # the first one early, inside warm-up
        while not self.stop_control.wait(wait):
            wait = rng.uniform(lo, hi)
            with self.control:
                if self.stop_control.is_set():
                    return
                down = rng.uniform(1.0, 3.0)
                with self.stats.lock:
                    self.stats.outages.append([time.monotonic(), float("inf")])
                t = time.monotonic()
                try:
                    self.mb.stop()
                    self.http.stop()
                    for name, proto, tls, *_ in LISTENERS:
                        self.probe(name, proto, tls)
                    time.sleep(max(0.0, down - (time.monotonic() - t)))
                    self.mb.start()
                    self.http.start()
                except Exception as e:                  # noqa: BLE001 -- harness trouble
                    self.results.append(("backend restart", False, repr(e)))
                    self.stop_control.set()
                    return
                finally:
                    with self.stats.lock:
                        self.stats.outages[-1][1] = time.monotonic()
                with self.stats.lock:
                    self.stats.restarts += 1
                log(f"backends restarted ({time.monotonic() - t:.1f} s down)")

    # -- measurements --------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics",
                                    timeout=10 * SLOW) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
        return out

    def open_connections(self) -> int:
        return int(sum(v for k, v in self.metrics().items()
                       if k.startswith("mailsnid_connections_open")))

    def fd_targets(self) -> collections.Counter:
        c = collections.Counter()
        d = f"/proc/{self.pid}/fd"
        for fd in os.listdir(d):
            try:
                t = os.readlink(os.path.join(d, fd))
            except OSError:
                continue
            c[re.sub(r"\[\d+\]$", "", t)] += 1
        return c

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def rss_sampler(self) -> None:
        while not self.stop_control.wait(0.5):
            if self.go.is_set():
                try:
                    self.rss_samples.append((time.monotonic(), self.rss_kb()))
                except OSError:
                    return

    def quiesce(self) -> None:
        """Pause clients and reloads, wait until mailsnid has no connection open and the
        file watcher's debounced reload (1 s) has run."""
        self.go.clear()
        with self.active_cv:
            self.active_cv.wait_for(lambda: self.active == 0, timeout=3 * T)
        time.sleep(2.5 * SLOW)
        deadline = time.monotonic() + 20 * SLOW
        while self.open_connections() and time.monotonic() < deadline:
            time.sleep(0.2)

    def stable_fds(self, timeout: float, want: int | None = None) -> int:
        """fd count once it holds still for 1 s (or equals `want`), within `timeout`."""
        deadline = time.monotonic() + timeout
        last, since = self.fd_count(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            n = self.fd_count()
            if want is not None and n == want:
                return n
            if n != last:
                last, since = n, time.monotonic()
            elif want is None and time.monotonic() - since >= 1.0:
                return n
        return last

    def measure(self, label: str, want_fds: int | None = None):
        with self.control, self.upgrade_lock:           # not during an outage or an upgrade
            self.quiesce()
            fds = self.stable_fds(10 * SLOW, want_fds)
            time.sleep(0.5)
            rss = self.rss_kb()
            targets = self.fd_targets()
            log(f"{label}: {fds} fds, RSS {rss} kB, open connections "
                f"{self.open_connections()}")
            return fds, rss, targets

    def stale_certificates(self) -> list[str]:
        """Names not served their lineage's current certificate once reloads have settled."""
        stale = []
        for name, _ in LINEAGES:
            want = certs.cert_fingerprint(os.path.join(self.le, "live", name, "fullchain.pem"))
            for sni in (f"mail.{name}", f"webmail.{name}"):
                try:
                    with socket.create_connection(("127.0.0.1", self.ports["imaps"]),
                                                  timeout=T) as raw:
                        with self.ctx.wrap_socket(raw, server_hostname=sni) as tls:
                            der = tls.getpeercert(binary_form=True)
                    got = hashlib.sha256(der).hexdigest().upper()
                    if got != want:
                        stale.append(f"{sni}: served {got[:16]}, live is {want[:16]}")
                except (OSError, ssl.SSLError) as e:
                    stale.append(f"{sni}: {e!r}")
        return stale

    # -- the run -------------------------------------------------------------------------

    def run(self) -> int:
        a = self.args
        warmup = a.warmup if a.warmup is not None else min(max(0.5 * a.duration, 8.0), 120.0)
        t_start = time.monotonic()
        self.setup()
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True)
                   for i in range(a.clients)]
        controls = [threading.Thread(target=f, daemon=True)
                    for f in (self.reloader, self.restarter, self.rss_sampler, self.upgrader)]
        begin = time.monotonic()
        for t in threads + controls:
            t.start()
        time.sleep(warmup)
        m0 = self.metrics()
        warm_load = [r for ts, r in self.rss_samples if ts >= begin + warmup / 2]
        base_fds, base_rss, base_targets = self.measure("after warm-up")
        self.go.set()
        log(f"warm-up done ({warmup:.0f} s); soaking until {a.duration:.0f} s")
        t_mid = time.monotonic()
        while time.monotonic() < begin + a.duration and not self.stop_control.is_set():
            time.sleep(0.5)
        end_load = [r for ts, r in self.rss_samples if ts >= t_mid]
        # Stop everything that makes traffic; the backends end up running.
        self.stop_control.set()
        for t in controls:
            t.join(60 * SLOW)
        self.stop_clients.set()
        self.go.set()
        for t in threads:
            t.join(3 * T)
        end_fds, end_rss, end_targets = self.measure("at the end", want_fds=base_fds)
        stale = self.stale_certificates()
        m1 = self.metrics()
        full_log = self.proc.log()
        outcomes = collections.Counter(re.findall(r" outcome=(\w+)", full_log))
        exit_ok, exit_msg = True, "exit 0, no sanitizer report"
        retired_gone = self.stop_upgraded()
        try:
            self.proc.stop()
        except AssertionError as e:
            exit_ok, exit_msg = False, str(e)[:3000]
        self.proc = None
        elapsed = time.monotonic() - t_start

        # -- report -----------------------------------------------------------------------
        st = self.stats
        print("\n==================== mailsnid soak summary ====================")
        print(f"binary {MAILSNID}{' (SANITIZE)' if SANITIZE else ''}; workers {a.workers}, "
              f"clients {a.clients}, seed {a.seed}; traffic {a.duration:.0f} s "
              f"(warm-up {warmup:.0f} s), wall {elapsed:.0f} s")
        kinds = ("unavailable", "cut", "silent")
        print(f"{'listener':12} {'ok':>7} {'unavail':>8} {'cut':>5} {'silent':>6} "
              f"{'unexpected':>10} {'probes':>7}")
        for name, *_ in LISTENERS:
            print(f"{name:12} {st.ok[name]:7} " + " ".join(
                  f"{st.expected[(name, k)]:{w}}" for k, w in zip(kinds, (8, 5, 6)))
                  + f" {st.unexpected_n[name]:10} {st.probes[name]:7}")
        tot_unexp = sum(st.unexpected_n.values())
        tot = {k: sum(v for (_, kk), v in st.expected.items() if kk == k) for k in kinds}
        print(f"{'total':12} {sum(st.ok.values()):7} {tot['unavailable']:8} {tot['cut']:5} "
              f"{tot['silent']:6} {tot_unexp:10} {sum(st.probes.values()):7}")
        print("  (expected, during a backend outage: unavail = the protocol's unavailable reply; "
              "cut = session ended mid-way;\n   silent = closed before the server said a word "
              "on the current layer" + (", a failure with --strict-unavailable)"
                                        if not self.args.strict_unavailable else ")"))
        print(f"mail sent: {st.sent}; unavailable replies in the grace period after a restart: "
              f"{st.late_unavailable}")
        # From the log, not /metrics: after an upgrade the process serving has counted only its
        # own reloads, and every process logs to the same file.
        r_ok = len(re.findall(r"reload \([^)]*\): generation \d+", full_log))
        r_failed = len(re.findall(r"reload \([^)]*\) failed", full_log))
        print(f"reloads: {st.sighups} SIGHUP + {st.renewals} certbot renewals + "
              f"{st.config_edits} config edits (routes/backends); mailsnid "
              f"reloads ok {r_ok:.0f}, failed {r_failed:.0f}")
        print(f"upgrades (SIGUSR2): {st.upgrades}; failed {len(self.upgrade_failures)}; "
              f"processes replaced and gone: {retired_gone}")
        print(f"backend restarts: {st.restarts} "
              f"(outage probes answered {sum(st.probes.values())}, "
              f"wrong {len(st.probe_failures)})")
        print(f"connections logged by outcome: {dict(sorted(outcomes.items()))}")
        print(f"handshakes: " + ", ".join(f"{k.split('=')[1][1:-2]} {v:.0f}"
                                          for k, v in m1.items()
                                          if k.startswith("mailsnid_handshakes_total")))
        print(f"fds (quiescent): after warm-up {base_fds}, at the end {end_fds}")
        growth = (end_rss - base_rss) / base_rss if base_rss else 0.0
        print(f"RSS (quiescent): after warm-up {base_rss} kB, at the end {end_rss} kB, "
              f"growth {growth * 100:+.2f} %{' (not checked under SANITIZE)' if SANITIZE else ''}")

        def span(xs):
            return (f"min {min(xs)} / median {int(statistics.median(xs))} / max {max(xs)} kB"
                    if xs else "no samples")
        print(f"RSS under load (info): 2nd half of warm-up {span(warm_load)}; "
              f"after warm-up {span(end_load)}")
        if self.rss_samples:
            xs = self.rss_samples
            picks = [xs[min(len(xs) - 1, i * len(xs) // 10)] for i in range(10)] + [xs[-1]]
            print("RSS trend under load (info): " + " ".join(
                f"{ts - begin:.0f}s:{r}" for ts, r in picks))
        if st.probe_failures:
            print("outage probes that got a wrong answer:")
            for p in st.probe_failures[:20]:
                print("  " + p)
        if st.unexpected:
            print(f"unexpected failures (first {len(st.unexpected)} of {tot_unexp}):")
            for u in st.unexpected:
                print("  " + u.rstrip().replace("\n", "\n    "))

        checks = list(self.results)
        checks.append(("no unexpected client failure", tot_unexp == 0, f"{tot_unexp}"))
        missing = [n for n, *_ in LISTENERS if not st.ok[n]]
        checks.append(("every listener served sessions", not missing, f"none on {missing}"))
        checks.append(("at least one backend restart", st.restarts >= 1, f"{st.restarts}"))
        checks.append(("outage probes got the unavailable reply", not st.probe_failures,
                       f"{len(st.probe_failures)} wrong"))
        checks.append(("reloads ran, none failed", r_ok >= 1 and r_failed == 0,
                       f"ok {r_ok:.0f}, failed {r_failed:.0f}"))
        if a.upgrade_every and a.duration >= a.upgrade_every + warmup:
            checks.append(("upgrades ran, none failed, every replaced process gone",
                           st.upgrades >= 1 and not self.upgrade_failures and retired_gone,
                           f"{st.upgrades} upgrades; failures: {self.upgrade_failures[:1]}; "
                           f"replaced processes gone: {retired_gone}"))
        # Each config edit is a new generation; only the current one may be left at the end
        # (every session of the old ones ended, so they were freed).
        gen = m1.get("mailsnid_config_generation", 0)
        live = [k for k in m1 if k.startswith("mailsnid_generation_connections")]
        checks.append(("config edits became generations, old ones freed",
                       st.config_edits >= 1 and gen >= 1 + st.edits_since_upgrade and len(live) == 1,
                       f"{st.config_edits} edits ({st.edits_since_upgrade} since the last upgrade), "
                       f"generation {gen:.0f}, live {live}"))
        checks.append(("every name served its lineage's latest renewal", not stale,
                       "; ".join(stale)))
        fd_diff = (end_targets - base_targets) + (base_targets - end_targets)
        checks.append(("fds back to the warm-up baseline", end_fds == base_fds,
                       f"{base_fds} -> {end_fds}; differing: "
                       f"+{dict(end_targets - base_targets)} -{dict(base_targets - end_targets)}"
                       if fd_diff else f"{base_fds} -> {end_fds}"))
        if SANITIZE:
            checks.append(("RSS growth < 5 % (skipped under SANITIZE)", True, "skipped"))
        else:
            checks.append((f"RSS growth < {RSS_LIMIT * 100:.0f} %", growth < RSS_LIMIT,
                           f"{growth * 100:+.2f} %"))
        checks.append(("mailsnid exits 0 on SIGTERM, no sanitizer report", exit_ok, exit_msg))
        print("checks:")
        for what, ok, detail in checks:
            print(f"  [{'PASS' if ok else 'FAIL'}] {what}" + ("" if ok else f": {detail}"))
        passed = all(ok for _, ok, _ in checks)
        print(f"SOAK {'PASSED' if passed else 'FAILED'}")
        self.failed = not passed
        return 0 if passed else 1

    def stop_upgraded(self) -> bool:
        """After upgrades the process serving is not our child: SIGTERM it and wait for it (its
        log lines, sanitizer reports included, land in the same log, which proc.stop() reads).
        Returns whether every process an upgrade replaced has gone too."""
        def alive(pid: int) -> bool:
            try:
                with open(f"/proc/{pid}/status") as f:
                    return not any(l.startswith("State:") and "Z" in l.split()[1] for l in f)
            except OSError:
                return False
        if self.pid != self.proc.proc.pid and alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30 * SLOW
        others = [p for p in self.retired + [self.pid] if p != self.proc.proc.pid]
        while any(alive(p) for p in others) and time.monotonic() < deadline:
            time.sleep(0.1)
        return not any(alive(p) for p in others)

    def cleanup(self) -> None:
        self.stop_control.set()
        self.stop_clients.set()
        self.go.set()
        socket.getaddrinfo = _real_getaddrinfo
        if self.proc is not None:
            try:
                self.proc.stop()
            except Exception:                           # noqa: BLE001
                pass
        if self.http is not None:
            self.http.stop()
        if self.mb is not None:
            self.mb.stop()
        if self.args.keep or self.failed:
            log(f"work directory kept: {self.tmp} (mailsnid/mailsnid.log, backends/dovecot/"
                "dovecot.log, backends/postfix/maillog)")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=120.0,
                    help="seconds of traffic, warm-up included (default 120)")
    ap.add_argument("--workers", type=int, default=2, help="mailsnid event-loop threads")
    ap.add_argument("--clients", type=int, default=3 if SANITIZE else 6,
                    help="client threads (default 6, 3 under SANITIZE)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before the baseline (default half the duration, 8-120)")
    ap.add_argument("--restart-interval", type=lambda s: tuple(float(x) for x in s.split(",")),
                    default=(10.0, 20.0), metavar="MIN,MAX",
                    help="seconds between backend restarts (default 10,20)")
    ap.add_argument("--strict-unavailable", action="store_true",
                    help="count a session that the backend's outage closes before any reply "
                         "(no greeting, no HTTP status) as unexpected: the README promises "
                         "the protocol's unavailable reply when no backend answers")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--upgrade-every", type=float, default=60.0,
                    help="seconds between SIGUSR2 binary upgrades (0: none)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (it is always kept when the soak fails)")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if args.warmup is not None and args.warmup >= args.duration:
        ap.error("--warmup must be shorter than --duration")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    soak = Soak(args)
    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)      # a CI timeout cleans up as Ctrl-C does
    try:
        return soak.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
