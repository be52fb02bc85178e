"""TLS 1.3 sessions carried by mailsnid's own record layer (tls13/, issue 14), against real
clients and the real binary.

With `tls.offload` on (the default, so the main instance's config does not set it), a TLS 1.3
session leaves OpenSSL when the relay begins: its SSL object is freed and tls13/record.c
decrypts, encrypts, answers KeyUpdate and closes. Every test here that expects that asserts it
from the outside, so that a session silently left on OpenSSL fails: the connection's log line
says `record=own` (`record=openssl` when OpenSSL kept it), and /metrics'
`mailsnid_tls_sessions_total{record=...}` moved by exactly the sessions the test made.

Clients: OpenSSL's s_client (with its `k`/`K` KeyUpdate commands mid-session, every TLS 1.3
suite), GnuTLS's gnutls-cli (`^rekey1^`/`^rekey^`, every suite), Python's ssl (bulk both ways
checked by hash, many small records, close_notify both ways, resumption, raw records), curl
over HTTPS, swaks over SMTPS and STARTTLS with AUTH against real Postfix, and a real Dovecot
IMAP IDLE session that is told of new mail delivered through Postfix and into the Maildir.
TLS 1.2, and `tls.offload = false`, stay on OpenSSL and still work.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # run as a file or by discover
from mailsnid_runner import SLOW, MailsnidProcess, config_text, free_port, listener_entry
from fakebackend import EchoBackend, SourceBackend
import certs
from backends import USERS, MailBackends

T = 20 * SLOW                          # generous client timeout
SNI = "mail.alpha.test"                # an exact certificate; clients verify the name
SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
# GnuTLS names the same three suites by their AEAD.
GNUTLS_AEAD = {"TLS_AES_128_GCM_SHA256": "AES-128-GCM", "TLS_AES_256_GCM_SHA384": "AES-256-GCM",
               "TLS_CHACHA20_POLY1305_SHA256": "CHACHA20-POLY1305"}
# What the tail backend sends after the client's side has ended: more than one record's worth,
# so that the close_notify test sees several records written after the client's close_notify.
TAIL = b"".join(b"tail %06d\n" % i for i in range(20000))
BIG = os.urandom(3 * 1024 * 1024)      # what the HTTP backend serves at /big
# Dovecot's keepalive during IDLE ("* OK Still here"), shortened from its default 2 minutes:
# see Idle.
IDLE_NOTIFY_SECS = 1

PKI: dict[str, str] = {}
TMP = ""
ECHO: EchoBackend | None = None
TAILER: EchoBackend | None = None
SOURCE: SourceBackend | None = None
HTTPD: http.server.ThreadingHTTPServer | None = None
MAIL: MailBackends | None = None
PROXY: MailsnidProcess | None = None
PORTS: dict[str, int] = {}


class HttpBackend(http.server.BaseHTTPRequestHandler):
    """The webmail stand-in: GET /big is BIG, POST /sha256 answers the body's SHA-256 (so an
    upload is checked end to end), anything else a short page. Keep-alive (HTTP/1.1), so one
    client connection can carry several requests."""

    protocol_version = "HTTP/1.1"

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._answer(BIG if self.path == "/big" else b"hello from the webmail backend\n")

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(hashlib.sha256(body).hexdigest().encode())

    def log_message(self, *args):
        pass


def config(listeners: list[str], extra: str = "", tls_extra: str = "") -> str:
    return config_text(PKI, ("alpha_ec", "beta_wild"), listeners, extra, tls_extra)


def listener(name: str, proto: str, tls: str, backend: str, extra: str = "") -> str:
    """A listener of the main instance; its port goes to PORTS[name]."""
    PORTS[name] = free_port(avoid=PORTS.values())
    return listener_entry(name, PORTS[name], proto, tls, backend, extra)


def start_proxy(cfg: str, workdir: str, ports: list[int], n_listeners: int) -> MailsnidProcess:
    """Starts mailsnid and waits for the log lines of the start's readiness probes (one
    connection to each listener), so that they are never counted as a test's sessions."""
    proc = MailsnidProcess(cfg, workdir).start(ports)
    proc.wait_log(r"conn listener=", count=n_listeners)
    return proc


def setUpModule():
    global TMP, ECHO, TAILER, SOURCE, HTTPD, MAIL, PROXY
    TMP = tempfile.mkdtemp(prefix="mailsnid-offload-")
    try:
        PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))
        ECHO = EchoBackend()
        TAILER = EchoBackend(reply_after_eof=TAIL)
        SOURCE = SourceBackend()
        HTTPD = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HttpBackend)
        threading.Thread(target=HTTPD.serve_forever, daemon=True).start()
        MAIL = MailBackends(os.path.join(TMP, "mail"), dovecot_extra=(
            f"imap_idle_notify_interval = {IDLE_NOTIFY_SECS} secs\n"
            # Inotify tells IDLE of new mail at once; this is only the fallback's interval.
            "mailbox_idle_check_interval = 1 secs\n")).start()
        PORTS["admin"] = free_port()
        listeners = [
            # protocol "http" (no client setup configured): no mail engine reads these bytes,
            # so arbitrary data -- no lines, no greeting -- is relayed as it is. The mail
            # listeners below have the engine, in front of real Dovecot and Postfix.
            listener("echo", "http", "implicit", ECHO.addr),
            listener("tail", "http", "implicit", TAILER.addr),
            listener("source", "http", "implicit", f"127.0.0.1:{SOURCE.port}"),
            listener("https", "http", "implicit", f"127.0.0.1:{HTTPD.server_address[1]}"),
            listener("imaps", "imap", "implicit", MAIL.addr("imap")),
            listener("smtps", "smtp", "implicit", MAIL.addr("submission")),
            listener("submission", "smtp", "starttls", MAIL.addr("submission"),
                     'starttls = "required";'),
        ]
        PROXY = start_proxy(config(listeners, f'admin = "127.0.0.1:{PORTS["admin"]}";'),
                            os.path.join(TMP, "proxy"), list(PORTS.values()), len(listeners))
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    try:
        if PROXY is not None:
            PROXY.stop()     # its complaint (exit status, sanitizer report) after the cleanup
    finally:
        for backend in (ECHO, TAILER, SOURCE):
            if backend is not None:
                backend.stop()
        if HTTPD is not None:
            HTTPD.shutdown()
            HTTPD.server_close()
        if MAIL is not None:
            MAIL.stop()
        shutil.rmtree(TMP, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# What the proxy says about its sessions
# ------------------------------------------------------------------------------------------

def sessions_carried(admin_port: int) -> dict[str, int]:
    """mailsnid_tls_sessions_total by record layer: {"own": N, "openssl": M}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=T) as r:
        body = r.read().decode()
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r'^mailsnid_tls_sessions_total\{record="(\w+)"\} (\d+)$', body, re.M)}


def log_since(proc: MailsnidProcess, pos: int) -> str:
    with open(proc.log_path, "rb") as f:
        f.seek(pos)
        return f.read().decode(errors="replace")


def conn_lines(proc: MailsnidProcess, pos: int, listener: str, n: int) -> list[str]:
    """The N connection log lines (written when each connection ends) of LISTENER since POS;
    fails when more than N are there."""
    rx = re.compile(rf"conn listener={listener} ")
    deadline = time.monotonic() + 10 * SLOW
    while True:
        lines = [l for l in log_since(proc, pos).splitlines() if rx.search(l)]
        if len(lines) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if len(lines) != n:
        raise AssertionError(f"want {n} connection lines of listener {listener}, got "
                             f"{len(lines)}:\n" + log_since(proc, pos)[-4000:])
    return lines


def field(line: str, name: str) -> str:
    m = re.search(rf"\b{name}=(\S+)", line)
    return m.group(1) if m else ""


def client_ctx(**kw) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=PKI["ca"])
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def tls13_only() -> ssl.SSLContext:
    return client_ctx(minimum_version=ssl.TLSVersion.TLSv1_3)


def recv_exact(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(min(65536, n - len(data)))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def kernel_buffer_max() -> int:
    """The most two TCP connections in a row can hold in flight on this machine when their
    buffers autotune: two send buffers and one receive buffer at their maxima (the client
    fixes its own receive buffer at 4 KB)."""
    def max_of(name: str) -> int:
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            return int(f.read().split()[2])
    return 2 * max_of("tcp_wmem") + max_of("tcp_rmem") + 2 * 4096


def token() -> str:
    return uuid.uuid4().hex[:12]


class Base(unittest.TestCase):
    """Remembers where the log and the counters stood, so that a test can ask what became of
    exactly the sessions it made."""

    proc: MailsnidProcess
    admin: int

    def setUp(self):
        self.proc, self.admin = PROXY, PORTS["admin"]
        self.mark()

    def mark(self) -> None:
        self.pos = os.path.getsize(self.proc.log_path)
        self.counts = sessions_carried(self.admin)

    def one_echo(self, port: int, ctx: ssl.SSLContext, data: bytes) -> str:
        """One session: DATA up and back through an echo backend, then close_notify both
        ways. Returns the TLS version."""
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=T),
                            server_hostname=SNI)
        try:
            s.sendall(data)
            self.assertEqual(recv_exact(s, len(data)), data)
            version = s.version()
            s.unwrap().close()
            return version
        finally:
            s.close()

    def carried(self, listener: str, n: int = 1, record: str = "own",
                outcome: str | None = "ok") -> list[str]:
        """Asserts that the N sessions this test made on LISTENER were carried by RECORD
        ("own": tls13/; "openssl") and ended with OUTCOME; returns their log lines."""
        lines = conn_lines(self.proc, self.pos, listener, n)
        for line in lines:
            self.assertEqual(field(line, "record"), record, line)
            if outcome is not None:
                self.assertEqual(field(line, "outcome"), outcome, line)
        now = sessions_carried(self.admin)
        other = "openssl" if record == "own" else "own"
        self.assertEqual(now[record] - self.counts[record], n, now)
        self.assertEqual(now[other] - self.counts[other], 0, now)
        return lines


# ------------------------------------------------------------------------------------------
# Command-line clients driven a line at a time
# ------------------------------------------------------------------------------------------

class Interactive:
    """A command-line TLS client whose stdin the test writes line by line, reading what it
    prints (stdout and stderr together) as it comes, so that each step can wait for the
    previous one's effect."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.out = b""
        self.seen = 0                  # expect() looks after this offset
        self.cond = threading.Condition()
        self.ended = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            chunk = self.proc.stdout.read1(65536)
            with self.cond:
                if not chunk:
                    self.proc.stdout.close()
                    self.ended = True
                    self.cond.notify_all()
                    return
                self.out += chunk
                self.cond.notify_all()

    def send(self, line: bytes) -> None:
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def expect(self, pattern: bytes, timeout: float = T) -> re.Match:
        """Waits for PATTERN in what was printed after the last match."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(self.out, self.seen)
                if m:
                    self.seen = m.end()
                    return m
                left = deadline - time.monotonic()
                if self.ended or left <= 0:
                    raise AssertionError(f"{self.argv[0]} never printed {pattern!r}; it "
                                         f"printed:\n{self.out[-6000:].decode(errors='replace')}")
                self.cond.wait(left)

    def finish(self, timeout: float = T) -> tuple[int, bytes]:
        """Ends its input (EOF) and waits for it to exit: (status, everything it printed)."""
        self.proc.stdin.close()
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.argv[0]} did not exit:\n"
                                 f"{self.out[-6000:].decode(errors='replace')}")
        with self.cond:
            while not self.ended:
                self.cond.wait(1)
            return status, self.out

    def ping(self, times: int = 2) -> None:
        """Sends TIMES lines, each its own record, and waits for each to come back (echo)."""
        for _ in range(times):
            tok = f"ping-{token()}".encode()
            self.send(tok)
            self.expect(rb"^" + tok + rb"\r?$")

    def __enter__(self) -> "Interactive":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.proc.stdin.closed:
            self.proc.stdin.close()


def s_client(port: int, *args: str) -> Interactive:
    # Neither -quiet nor -ign_eof: s_client acts on its connected commands (k, K) only then.
    return Interactive(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                        "-servername", SNI, "-verify_hostname", SNI, "-verify_return_error",
                        "-CAfile", PKI["ca"], *args])


def gnutls_cli(port: int, priority: str, *args: str, sni: str = SNI) -> list[str]:
    return ["gnutls-cli", "--port", str(port), "--x509cafile", PKI["ca"],
            "--sni-hostname", sni, "--verify-hostname", sni, "--priority", priority,
            *args, "127.0.0.1"]


def gnutls_tls13(suite: str | None = None) -> str:
    prio = "NORMAL:-VERS-ALL:+VERS-TLS1.3"
    return prio + (f":-CIPHER-ALL:+{GNUTLS_AEAD[suite]}" if suite else "")


# s_client -msg lines for a KeyUpdate we sent (>>>) and one the server sent (<<<).
SENT_KEY_UPDATE = rb"^>>> TLS 1\.3, Handshake \[length 0005\], KeyUpdate"
GOT_KEY_UPDATE = rb"^<<< TLS 1\.3, Handshake \[length 0005\], KeyUpdate"


# ------------------------------------------------------------------------------------------
# OpenSSL s_client and GnuTLS gnutls-cli: every suite, KeyUpdate both ways mid-session
# ------------------------------------------------------------------------------------------

class OpensslSClient(Base):
    def test_key_update_k_and_K_mid_session_every_suite(self):
        """k: the client updates its key (update_not_requested); K: it also asks for ours
        (update_requested), which must be answered with exactly one KeyUpdate. Data flows
        both ways (echo) before, between and after."""
        for suite in SUITES:
            with self.subTest(suite=suite):
                self.mark()
                with s_client(PORTS["echo"], "-tls1_3", "-ciphersuites", suite, "-msg") as c:
                    c.expect(rb"Verify return code: 0 \(ok\)")
                    c.ping()
                    for step in (b"k", b"K"):
                        c.send(step)
                        c.expect(rb"^KEYUPDATE")
                        c.expect(SENT_KEY_UPDATE)
                        if step == b"K":
                            c.expect(GOT_KEY_UPDATE)
                        c.ping()                    # two records under each new key
                    status, out = c.finish()
                self.assertEqual(status, 0, out[-3000:])
                # The server answered K once and did not answer k (no update_requested there).
                self.assertEqual(len(re.findall(GOT_KEY_UPDATE, out, re.M)), 1,
                                 out.decode(errors="replace")[-3000:])
                self.assertEqual(len(re.findall(SENT_KEY_UPDATE, out, re.M)), 2)
                self.assertIn(f"Cipher is {suite}".encode(), out)
                (line,) = self.carried("echo")
                self.assertEqual(field(line, "tls"), "TLSv1.3")
                self.assertEqual(field(line, "cipher"), suite)
                # The echo went through: 6 lines of "ping-<12 hex>\n" each way.
                self.assertEqual(field(line, "up"), str(6 * 18))
                self.assertEqual(field(line, "down"), str(6 * 18))


class GnutlsCli(Base):
    def test_every_suite_with_rekey_both_kinds(self):
        """GnuTLS as the client: ^rekey1^ updates its own key only, ^rekey^ asks for ours
        too; -d 4 shows the KeyUpdate the server sent back (once, for ^rekey^)."""
        for suite in SUITES:
            with self.subTest(suite=suite):
                self.mark()
                with Interactive(gnutls_cli(PORTS["echo"], gnutls_tls13(suite),
                                            "--inline-commands", "-d", "4")) as c:
                    c.expect(rb"- Handshake was completed")
                    c.ping()
                    for step in (b"^rekey1^", b"^rekey^"):
                        c.send(step)
                        c.expect(rb"- Rekey was completed")
                        c.ping()
                    status, out = c.finish()
                self.assertEqual(status, 0, out[-3000:])
                text = out.decode(errors="replace")
                self.assertIn(f"({GNUTLS_AEAD[suite]})", text)
                self.assertEqual(len(re.findall(r"KEY_UPDATE \(24\) was received", text)), 1,
                                 text[-3000:])
                # The server's close_notify ended it: not a TCP close.
                self.assertIn("- Peer has closed the GnuTLS connection", text)
                (line,) = self.carried("echo")
                self.assertEqual(field(line, "cipher"), suite)


# ------------------------------------------------------------------------------------------
# Python's ssl: bulk, small records, close_notify both ways, TLS 1.2, resumption
# ------------------------------------------------------------------------------------------

class PythonSsl(Base):
    def connect(self, port: int | None = None, ctx: ssl.SSLContext | None = None,
                session=None) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", port or PORTS["echo"]), timeout=T)
        return (ctx or tls13_only()).wrap_socket(raw, server_hostname=SNI, session=session)

    def test_bulk_both_ways_checked_by_hash(self):
        """4 MB of random bytes up and back down through the echo backend, at most 256 KB in
        flight (so neither side waits on the other forever), compared by SHA-256."""
        data = os.urandom(4 * 1024 * 1024)
        window, chunk = 256 * 1024, 64 * 1024
        s = self.connect()
        got = hashlib.sha256()
        received = 0
        try:
            for off in range(0, len(data), chunk):
                s.sendall(data[off:off + chunk])
                sent = off + chunk
                while received < sent - window:
                    part = s.recv(65536)
                    self.assertTrue(part, "closed early")
                    got.update(part)
                    received += len(part)
            while received < len(data):
                part = s.recv(65536)
                self.assertTrue(part, "closed early")
                got.update(part)
                received += len(part)
            self.assertEqual(received, len(data))
            self.assertEqual(got.hexdigest(), hashlib.sha256(data).hexdigest())
            s.unwrap().close()        # close_notify both ways, see below
        finally:
            s.close()
        (line,) = self.carried("echo")
        self.assertEqual(field(line, "up"), str(len(data)))
        self.assertEqual(field(line, "down"), str(len(data)))

    def test_many_small_records(self):
        """3000 writes of 1 to 97 bytes, each its own record, with Nagle off: records arrive
        many to a read and cut across reads."""
        s = self.connect()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = b""
        try:
            for i in range(3000):
                piece = bytes([65 + i % 26]) * (1 + i % 97)
                s.sendall(piece)
                sent += piece
            self.assertEqual(recv_exact(s, len(sent)), sent)
            s.unwrap().close()
        finally:
            s.close()
        (line,) = self.carried("echo")
        self.assertEqual(field(line, "down"), str(len(sent)))

    def test_slow_reader_holds_the_backend_back(self):
        """The backend writes without end and the client reads nothing: the records sealed
        for it must not pile up in the proxy, which stops reading the backend until the
        client reads again (flow.c), on the record layer's write path as on OpenSSL's."""
        raw = socket.create_connection(("127.0.0.1", PORTS["source"]), timeout=T)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s = tls13_only().wrap_socket(raw, server_hostname=SNI)
        try:
            s.sendall(b"go")
            before = SOURCE.sent
            deadline = time.monotonic() + 20 * SLOW
            while True:                                  # until the backend stalls
                sent = SOURCE.sent
                time.sleep(0.3 * SLOW)
                if SOURCE.sent == sent:
                    break
                self.assertLess(time.monotonic(), deadline,
                                f"the backend never stalled: {SOURCE.sent - before} bytes")
            # What the kernel may hold (the backend's send buffer and the proxy's receive
            # buffer on one side, the proxy's send buffer and the client's 4 KB on the other)
            # and the proxy's bounded queues (about 1 MB, flow.c): not more.
            self.assertLess(sent - before, kernel_buffer_max() + 2 * 1024 * 1024)
            # Reading again lets the stream go on, intact.
            self.assertEqual(recv_exact(s, 256 * 1024), b"x" * (256 * 1024))
        finally:
            s.close()
        self.carried("source", outcome=None)

    def test_close_notify_both_ways(self):
        """The client's close_notify ends the upload; the backend then closes, and the proxy
        ends the session with its own close_notify: unwrap() returns only when that came."""
        s = self.connect()
        try:
            s.sendall(b"bye\n")
            self.assertEqual(recv_exact(s, 4), b"bye\n")
            plain = s.unwrap()
            self.assertEqual(plain.recv(100), b"")      # and then the TCP connection ends
            plain.close()
        finally:
            s.close()
        self.carried("echo")

    def test_tls12_stays_on_openssl(self):
        ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(self.one_echo(PORTS["echo"], ctx, b"twelve\n"), "TLSv1.2")
        (line,) = self.carried("echo", record="openssl")
        self.assertEqual(field(line, "tls"), "TLSv1.2")

    def test_resumed_session_is_carried_too(self):
        """The ticket must have left before the SSL object was freed: a second connection
        resumes with it, and is carried by the record layer as well."""
        ctx = tls13_only()
        sessions = []
        for attempt in range(2):
            s = self.connect(ctx=ctx, session=sessions[-1] if sessions else None)
            try:
                s.sendall(b"resume\n")
                # TLS 1.3 tickets come after the handshake: reading the echo reads it too.
                self.assertEqual(recv_exact(s, 7), b"resume\n")
                self.assertEqual(s.session_reused, attempt == 1)
                sessions.append(s.session)
                s.unwrap().close()
            finally:
                s.close()
        self.assertTrue(sessions[0].has_ticket)
        self.carried("echo", n=2)


class SClientResumption(Base):
    def test_sess_out_then_sess_in(self):
        sess = os.path.join(TMP, f"sess-{token()}.pem")
        for flag, want in (("-sess_out", b"New, TLSv1.3"), ("-sess_in", b"Reused, TLSv1.3")):
            with s_client(PORTS["echo"], "-tls1_3", flag, sess) as c:
                c.expect(want)
                c.ping(1)
                status, out = c.finish()
            self.assertEqual(status, 0, out[-3000:])
            if flag == "-sess_out":
                self.assertIn(b"Post-Handshake New Session Ticket arrived", out)
        self.carried("echo", n=2)


# ------------------------------------------------------------------------------------------
# curl over HTTPS, swaks over SMTPS and STARTTLS with AUTH (real Postfix)
# ------------------------------------------------------------------------------------------

class Curl(Base):
    def curl(self, *args: str) -> subprocess.CompletedProcess:
        name = "webmail.alpha.test"
        port = PORTS["https"]
        argv = ["curl", "-sS", "--fail", "--tlsv1.3", "--cacert", PKI["ca"],
                "--resolve", f"{name}:{port}:127.0.0.1", *args]
        argv = [a.replace("URL", f"https://{name}:{port}") for a in argv]
        r = subprocess.run(argv, capture_output=True, timeout=60 * SLOW)
        self.assertEqual(r.returncode, 0, f"{' '.join(argv)}\n{r.stderr.decode()}")
        return r

    def test_downloads_on_one_connection_and_an_upload_every_suite(self):
        for suite in SUITES:
            with self.subTest(suite=suite):
                self.mark()
                a, b = (os.path.join(TMP, f"{n}-{token()}") for n in "ab")
                # Two requests, one connection (curl reuses it): one log line.
                self.curl("--tls13-ciphers", suite, "URL/big", "-o", a, "URL/big", "-o", b)
                for path in (a, b):
                    with open(path, "rb") as f:
                        self.assertEqual(hashlib.sha256(f.read()).digest(),
                                         hashlib.sha256(BIG).digest())
                (line,) = self.carried("https")
                self.assertEqual(field(line, "cipher"), suite)
                self.mark()
                upload = os.path.join(TMP, f"up-{token()}")
                body = os.urandom(1024 * 1024)
                with open(upload, "wb") as f:
                    f.write(body)
                r = self.curl("--tls13-ciphers", suite, "--data-binary", f"@{upload}",
                              "URL/sha256")
                self.assertEqual(r.stdout.decode(), hashlib.sha256(body).hexdigest())
                self.carried("https")


class Swaks(Base):
    def swaks(self, listener: str, mode: str) -> None:
        """MODE: "tlsc" (TLS on connect, SMTPS) or "tls" (STARTTLS). AUTH PLAIN against
        Postfix (SASL by Dovecot), a message to bob, checked in his Maildir."""
        tok = token()
        frm, to = "alice@alpha.test", "bob@beta.test"
        args = ["swaks", "--server", f"127.0.0.1:{PORTS[listener]}", f"-{mode}",
                "--tls-protocol", "tlsv1_3", "--tls-sni", SNI, "--tls-verify",
                "--tls-ca-path", PKI["ca"], "--ehlo", "client.test", "--auth", "PLAIN",
                "--auth-user", frm, "--auth-password", USERS[frm], "--from", frm, "--to", to,
                "--header", f"Subject: {tok}", "--body", f"body of {tok}",
                "--timeout", str(int(20 * SLOW))]
        r = subprocess.run(args, capture_output=True, text=True, timeout=60 * SLOW)
        self.assertEqual(r.returncode, 0, f"{' '.join(args)}\n{r.stdout}\n{r.stderr}")
        self.assertRegex(r.stdout, r"TLS started with cipher TLSv1\.3:")
        self.assertRegex(r.stdout, r"235 2\.7\.0 Authentication successful")
        MAIL.wait_for_mail(to, timeout=15 * SLOW, contains=f"body of {tok}".encode())
        (line,) = self.carried(listener)
        self.assertEqual(field(line, "tls"), "TLSv1.3")

    def test_smtps_with_auth(self):
        self.swaks("smtps", "tlsc")

    def test_starttls_with_auth(self):
        self.swaks("submission", "tls")


# ------------------------------------------------------------------------------------------
# A real Dovecot IMAP IDLE session, told of new mail
# ------------------------------------------------------------------------------------------

class Idle(Base):
    ROUNDS = 30          # keepalives: an hour at Dovecot's default 2-minute interval
    DELIVER_EVERY = 5    # keepalives between two new messages: 6 deliveries

    def test_idle_session_hears_of_each_new_message(self):
        """An honest shorter variant of an hour of IMAP IDLE. Dovecot sends "* OK Still here"
        every imap_idle_notify_interval (2 minutes by default, 1 second here), so the 30
        keepalive rounds this session lives through are the ones an hour would have, and every
        fifth round a message arrives — through Postfix (SMTP, then LMTP into Dovecot) and,
        alternately, written straight into the Maildir — each of which must reach the client
        as `* N EXISTS`. What is shortened is only the wall time between records: the record
        layer has no timers, so the records and their sequence numbers are those of the hour.
        The session is on the record layer from its start: every keepalive and notification
        is sealed by tls13/, and the client's commands opened by it."""
        user = "alice@alpha.test"
        raw = socket.create_connection(("127.0.0.1", PORTS["imaps"]), timeout=T)
        s = tls13_only().wrap_socket(raw, server_hostname=SNI)
        buf = b""

        def line() -> bytes:
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = s.recv(65536)
                self.assertTrue(chunk, f"closed; unread {buf!r}")
                buf += chunk
            out, _, buf = buf.partition(b"\r\n")
            return out

        def until(tag: bytes) -> list[bytes]:
            lines = []
            while True:
                lines.append(line())
                if lines[-1].startswith(tag + b" "):
                    return lines

        try:
            self.assertTrue(line().startswith(b"* OK"))
            s.sendall(f"a LOGIN {user} {USERS[user]}\r\n".encode())
            self.assertTrue(until(b"a")[-1].startswith(b"a OK"))
            s.sendall(b"b SELECT INBOX\r\n")
            lines = until(b"b")
            self.assertTrue(lines[-1].startswith(b"b OK"), lines)
            exists = next(int(l.split()[1]) for l in lines if l.endswith(b" EXISTS"))
            s.sendall(b"c IDLE\r\n")
            self.assertTrue(line().startswith(b"+ "))
            keepalives = 0

            def next_line() -> bytes:
                """The next line but the RECENT count Dovecot sends after EXISTS; keepalives
                are counted."""
                nonlocal keepalives
                while True:
                    got = line()
                    if got == b"* OK Still here":
                        keepalives += 1
                    if not got.endswith(b" RECENT"):
                        return got

            for n in range(1, self.ROUNDS // self.DELIVER_EVERY + 1):
                for _ in range(self.DELIVER_EVERY):      # a quiet stretch: keepalives only
                    self.assertEqual(next_line(), b"* OK Still here")
                tok = token()
                msg = (f"From: <carol@hoster.test>\r\nTo: <{user}>\r\nSubject: idle {tok}\r\n"
                       f"Message-ID: <{tok}@offload.test>\r\n\r\nnew mail {n}\r\n").encode()
                if n % 2:
                    with smtplib.SMTP(MAIL.host, MAIL.smtp_port, local_hostname="mta.test",
                                      timeout=T) as smtp:
                        smtp.sendmail("carol@hoster.test", [user], msg)
                else:
                    MAIL.put_message(user, msg)
                got = next_line()
                while got == b"* OK Still here":      # one may come before the news
                    got = next_line()
                self.assertEqual(got, b"* %d EXISTS" % (exists + n))
            s.sendall(b"DONE\r\n")
            lines = until(b"c")
            self.assertTrue(lines[-1].startswith(b"c OK"), lines)
            self.assertTrue(all(l in (b"* OK Still here",) or l.endswith(b" RECENT")
                                or l.startswith(b"c OK") for l in lines), lines)
            s.sendall(b"d LOGOUT\r\n")
            until(b"d")
            self.assertEqual(s.recv(100), b"")   # Dovecot closed, and so did the proxy
        finally:
            s.close()
        self.assertGreaterEqual(keepalives, self.ROUNDS)
        MAIL.wait_for_log("dovecot", rf"imap-login: Info: Login: user=<{re.escape(user)}>")
        self.carried("imaps")


# ------------------------------------------------------------------------------------------
# Hostile and edge inputs over a real connection
# ------------------------------------------------------------------------------------------

class RawTls:
    """A TLS 1.3 client (OpenSSL through Python's SSLObject) whose wire bytes the test sees
    and can add to: records go out through memory BIOs and a plain socket."""

    def __init__(self, port: int, sni: str | None = SNI, ctx: ssl.SSLContext | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=T)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = (ctx or tls13_only()).wrap_bio(self.incoming, self.outgoing,
                                                  server_hostname=sni)
        self._run(self.obj.do_handshake)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _run(self, op):
        while True:
            try:
                result = op()
                self._flush()
                return result
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if data:
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()

    def record(self, data: bytes) -> bytes:
        """DATA sealed as the client's next record(s), not sent: the caller sends them."""
        self.obj.write(data)
        return self.outgoing.read()

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            data += self._run(lambda: self.obj.read(n - len(data)))
        return data

    def read(self) -> bytes:
        return self._run(lambda: self.obj.read(65536))

    def close(self) -> None:
        self.sock.close()


class Hostile(Base):
    def test_bad_records_get_a_fatal_alert_and_reach_no_one(self):
        cases = [
            # A well-formed header, a body that is no ciphertext of ours: its tag fails.
            ("garbage", b"\x17\x03\x03\x00\x40" + os.urandom(64), "BAD_RECORD_MAC",
             20),
            # Longer than TLSCiphertext may be (2^14 + 256), told by the header alone.
            ("oversized", b"\x17\x03\x03\x41\x01" + os.urandom(64), "RECORD_OVERFLOW", 22),
            # A plaintext record (an alert) after the handshake: everything is protected now.
            ("plaintext", b"\x15\x03\x03\x00\x02\x02\x28", "UNEXPECTED_MESSAGE", 10),
        ]
        for name, junk, reason, alert in cases:
            with self.subTest(name):
                self.mark()
                before = len(ECHO.received)
                t = RawTls(PORTS["echo"])
                try:
                    t.send(b"valid\n")
                    self.assertEqual(t.recv_exact(6), b"valid\n")
                    t.sock.sendall(junk + t.record(b"after the junk\n"))
                    with self.assertRaises(ssl.SSLError) as cm:
                        while True:
                            if not t.read():
                                break
                    # The server's alert decrypted with the server's keys (its description
                    # in OpenSSL's words), not a record the client could not read.
                    self.assertIn(reason, cm.exception.reason or "", repr(cm.exception))
                    self.assertIn("ALERT", cm.exception.reason or "", repr(cm.exception))
                finally:
                    t.close()
                (line,) = self.carried("echo", outcome="client_error")
                self.assertIn(f'detail="client TLS: record layer sent alert {alert}"', line)
                # Nothing after the bad record reached the backend.
                self.assertEqual(ECHO.received[before], b"valid\n")

    def test_client_close_notify_gets_the_rest_and_a_close_notify(self):
        """gnutls-cli sends close_notify when its input ends, and keeps reading (OpenSSL
        clients drop what comes after their own close_notify). The backend answers the end
        of the upload with TAIL, many records' worth, then closes; all of it must arrive,
        followed by the proxy's close_notify, not a bare TCP close."""
        r = subprocess.run(gnutls_cli(PORTS["tail"], gnutls_tls13(), "-d", "5"),
                           input=b"last words\n", capture_output=True, timeout=60 * SLOW)
        err = r.stderr.decode(errors="replace")
        self.assertEqual(r.returncode, 0, err[-3000:])
        self.assertIn("REC: Sending Alert[1|0] - Close notify", err)
        self.assertIn("Alert[1|0] - Close notify - was received", err)
        self.assertIn(b"last words\n" + TAIL + b"- Peer has closed the GnuTLS connection",
                      r.stdout)
        (line,) = self.carried("tail")
        self.assertEqual(field(line, "down"), str(len(b"last words\n") + len(TAIL)))

    def test_record_trickled_a_byte_at_a_time(self):
        t = RawTls(PORTS["echo"])
        try:
            t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            payload = b"one byte at a time\n"
            for b in t.record(payload):
                t.sock.send(bytes([b]))
            self.assertEqual(t.recv_exact(len(payload)), payload)
        finally:
            t.close()
        self.carried("echo", outcome=None)


class HttpReadBeforeRelay(Base):
    """With client setup on, an HTTPS connection without SNI has its first request read
    through OpenSSL to decide who answers it; a request for the backend then goes on as a
    relay. Whether the record layer then carries it (counting the records OpenSSL already
    read) or OpenSSL keeps such a session, the next request on the same connection must be
    understood: either record layer passes, a broken hand-over does not."""

    def test_second_request_on_a_keep_alive_connection(self):
        tmp = tempfile.mkdtemp(prefix="setup-", dir=TMP)
        https, admin = free_port(), free_port()
        blocks = """domains = [ "alpha.test" ];
autoconfig = {
  display_name = "Offload";
  imap = { host = "mail.%d"; port = 993; socket = "SSL"; };
  smtp = { host = "mail.%d"; port = 465; socket = "SSL"; };
};
"""
        listeners = [listener_entry("https", https, "http", "implicit",
                                    f"127.0.0.1:{HTTPD.server_address[1]}")]
        self.proc = start_proxy(config(listeners, blocks + f'admin = "127.0.0.1:{admin}";'),
                                tmp, [https, admin], 1)
        self.addCleanup(self.proc.stop)
        self.admin = admin
        self.mark()
        # No SNI: the chain is still checked, the name cannot be.
        t = RawTls(https, sni=None, ctx=client_ctx(check_hostname=False))
        try:
            for which in ("first", "second"):
                t.send(b"GET /small HTTP/1.1\r\nHost: webmail.alpha.test\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    try:
                        head += t.read()
                    except ssl.SSLError as e:
                        self.fail(f"{which} request on the connection: {e}")
                self.assertTrue(head.startswith(b"HTTP/1.0 200") or
                                head.startswith(b"HTTP/1.1 200"), head)
                body = head.split(b"\r\n\r\n", 1)[1]
                want = b"hello from the webmail backend\n"
                while len(body) < len(want):
                    body += t.read()
                self.assertEqual(body, want)
        finally:
            t.close()
        (line,) = conn_lines(self.proc, self.pos, "https", 1)
        self.assertIn(field(line, "record"), ("own", "openssl"), line)


# ------------------------------------------------------------------------------------------
# tls.offload = false
# ------------------------------------------------------------------------------------------

class OffloadOff(Base):
    def test_tls13_stays_on_openssl(self):
        tmp = tempfile.mkdtemp(prefix="off-", dir=TMP)
        port, admin = free_port(), free_port()
        self.proc = start_proxy(config(
            [listener_entry("echo", port, "http", "implicit", ECHO.addr)],
            f'admin = "127.0.0.1:{admin}";', tls_extra="offload = false;"), tmp, [port, admin], 1)
        self.addCleanup(self.proc.stop)
        self.admin = admin
        self.mark()
        self.assertEqual(self.one_echo(port, tls13_only(), b"thirteen\n"), "TLSv1.3")
        (line,) = self.carried("echo", record="openssl")
        self.assertEqual(field(line, "tls"), "TLSv1.3")


if __name__ == "__main__":
    unittest.main()
