"""Mail protocols through the real binary, against real Dovecot and Postfix (issue 3).

Real clients (curl, swaks, imaplib, poplib, smtplib) log in to `mail.alpha.test` (an exact
certificate) and `mail.beta.test` (covered by `*.beta.test`) with hostname verification on:
Python's contexts verify against the test CA with the name as server_hostname, curl gets
`--cacert` + `--resolve` and additionally pins the domain's own public key, and swaks (whose
`--tls-verify` checks the chain but not the name) saves the certificate it got, which must be
the domain's own. Python resolves `*.test` names to 127.0.0.1 for the duration of the module
(the same thing `curl --resolve` does), so every client connects by name.

Backends (tests/harness/backends.py, all on 127.0.0.2):
  PLAIN   ssl = no: the listeners without a PROXY header go here.
  STRICT  ssl = required, disable_plaintext_auth = yes: only reachable through the haproxy
          ports, where a PROXY v2 header with the SSL TLV is what makes a login possible.
  DOWN    stopped and restarted by the backend-down tests (fixed ports, so the proxy's
          configuration stays valid).
  CAPTURE small Python servers (one per protocol) that speak just enough IMAP/POP3/SMTP and
          record every byte per connection: proof of what did, and did not, reach a backend.

One mailsnid serves every listener of the module (the routes test has its own, as routes are
global). Its log, the backends' logs and the capture servers are read from a position taken at
the start of each test, so tests stay independent.
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import uuid
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # run as a file or by discover
from mailsnid_runner import SLOW, MailsnidProcess, config_text, free_port, listener_entry
import certs
from backends import (PP2_SIGNATURE, USERS, MailBackends, find_free_base, proxy_v1,
                      proxy_v2)

PKI: dict[str, str] = {}
TMP = ""
PLAIN: MailBackends | None = None
STRICT: MailBackends | None = None
DOWN: MailBackends | None = None
CAPTURE: dict[str, "CaptureBackend"] = {}
PROXY: MailsnidProcess | None = None
PORTS: dict[str, int] = {}

# What each test name logs in as, and the certificate that name must be served.
ACCOUNT = {"mail.alpha.test": "alice@alpha.test", "mail.beta.test": "bob@beta.test",
           "mail.hoster.test": "carol@hoster.test"}
CERT_OF = {"mail.alpha.test": "alpha_ec_cert", "mail.beta.test": "beta_wild_cert",
           "mail.hoster.test": "default_cert"}
FINGERPRINT: dict[str, str] = {}     # name -> SHA-256 of the certificate it must get
PIN: dict[str, str] = {}             # name -> curl --pinnedpubkey value
T = 20 * SLOW                        # generous client timeout

_real_getaddrinfo = socket.getaddrinfo


def _test_getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".test"):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


# ------------------------------------------------------------------------------------------
# Capturing backends
# ------------------------------------------------------------------------------------------

def _header_length(buf: bytes) -> int | None:
    """Length of a PROXY header at the start of BUF: 0 when there is none, None when more
    bytes are needed to tell."""
    if buf.startswith(PP2_SIGNATURE):
        if len(buf) < 16:
            return None
        return 16 + int.from_bytes(buf[14:16], "big")
    if buf.startswith(b"PROXY "):
        end = buf.find(b"\r\n")
        return None if end < 0 else end + 2
    if PP2_SIGNATURE.startswith(buf) or b"PROXY ".startswith(buf):
        return None
    return 0


class CapturedConn:
    def __init__(self):
        self.raw = b""
        self.header: bytes | None = None
        self.lines: list[bytes] = []
        self.done = threading.Event()

    @property
    def payload(self) -> bytes:
        return self.raw[len(self.header or b""):]


class CaptureBackend:
    """Speaks just enough IMAP, POP3 or SMTP for a client and the proxy's STARTTLS engine;
    records everything each connection sent (after a PROXY header, kept apart)."""

    GREETING = {
        "imap": b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] capture ready\r\n",
        "pop3": b"+OK capture ready\r\n",
        "smtp": b"220 capture.test ESMTP capture\r\n",
    }

    def __init__(self, proto: str, advertise_starttls: bool = False):
        """ADVERTISE_STARTTLS: list STARTTLS/STLS among the capabilities, as a backend with
        its own TLS set up does (Dovecot with ssl = yes/required)."""
        self.proto = proto
        self.adv = advertise_starttls
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[CapturedConn] = []
        self.lock = threading.Lock()
        self.closed = False
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            conn = CapturedConn()
            with self.lock:
                self.conns.append(conn)
                self._socks.append(s)
            threading.Thread(target=self._serve, args=(s, conn), daemon=True).start()

    def _answer(self, line: bytes) -> tuple[bytes, bool]:
        text = line.decode("latin-1")
        if self.proto == "imap":
            tag, _, rest = text.partition(" ")
            cmd = rest.split(" ")[0].upper()
            if not rest:
                return b"* BAD no command\r\n", False
            if cmd == "CAPABILITY":
                caps = "IMAP4rev1 STARTTLS AUTH=PLAIN" if self.adv else "IMAP4rev1 AUTH=PLAIN"
                return (f"* CAPABILITY {caps}\r\n{tag} OK CAPABILITY completed\r\n"
                        .encode(), False)
            if cmd == "LOGOUT":
                return f"* BYE capture logging out\r\n{tag} OK LOGOUT completed\r\n".encode(), True
            return f"{tag} OK {cmd} completed (capture)\r\n".encode(), False
        if self.proto == "pop3":
            cmd = text.split(" ")[0].upper()
            if cmd == "CAPA":
                return (b"+OK Capability list follows\r\nUSER\r\n" + (b"STLS\r\n" if self.adv else b"")
                        + b"TOP\r\n.\r\n", False)
            if cmd == "QUIT":
                return b"+OK capture signing off\r\n", True
            return f"+OK {cmd} done (capture)\r\n".encode(), False
        verb = text.split(" ")[0].upper()
        if verb == "EHLO":
            return (b"250-capture.test\r\n250-PIPELINING\r\n" + (b"250-STARTTLS\r\n" if self.adv else b"")
                    + b"250 8BITMIME\r\n", False)
        if verb == "QUIT":
            return b"221 2.0.0 capture bye\r\n", True
        return f"250 2.0.0 {verb} ok (capture)\r\n".encode(), False

    def _serve(self, s: socket.socket, conn: CapturedConn) -> None:
        try:
            s.sendall(self.GREETING[self.proto])
            buf = b""
            header_done = False
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                with self.lock:
                    conn.raw += chunk
                buf += chunk
                if not header_done:
                    n = _header_length(buf)
                    if n is None:
                        continue
                    conn.header = buf[:n] if n else None
                    buf = buf[n:]
                    header_done = True
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    line = line.rstrip(b"\r")
                    conn.lines.append(line)
                    reply, close = self._answer(line)
                    s.sendall(reply)
                    if close:
                        return
        except OSError:
            pass
        finally:
            s.close()
            conn.done.set()

    def count(self) -> int:
        with self.lock:
            return len(self.conns)

    def new_conns(self, since: int, n: int, timeout: float = 10.0) -> list[CapturedConn]:
        """The N connections accepted after the first SINCE, once each has ended."""
        deadline = time.monotonic() + timeout * SLOW
        while self.count() < since + n:
            if time.monotonic() > deadline:
                raise AssertionError(f"capture {self.proto}: expected {n} new connections, "
                                     f"got {self.count() - since}")
            time.sleep(0.02)
        conns = self.conns[since:since + n]
        for c in conns:
            if not c.done.wait(max(0.1, deadline - time.monotonic())):
                raise AssertionError(f"capture {self.proto}: connection did not end; "
                                     f"got {c.raw!r}")
        return conns

    def stop(self) -> None:
        self.closed = True
        self.sock.close()
        with self.lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass


def parse_pp2(h: bytes) -> dict:
    """The fields of a PROXY v2 header (TCP over IPv4) a test wants to look at."""
    assert h.startswith(PP2_SIGNATURE), h
    body = h[16:16 + int.from_bytes(h[14:16], "big")]
    out = {"command": h[12] & 0x0F, "family": h[13]}
    rest = body
    if h[13] == 0x11:
        out.update(src=socket.inet_ntoa(body[0:4]), dst=socket.inet_ntoa(body[4:8]),
                   sport=int.from_bytes(body[8:10], "big"),
                   dport=int.from_bytes(body[10:12], "big"))
        rest = body[12:]

    def tlvs(data: bytes) -> dict[int, bytes]:
        found = {}
        while len(data) >= 3:
            kind, n = data[0], int.from_bytes(data[1:3], "big")
            found[kind] = data[3:3 + n]
            data = data[3 + n:]
        return found

    top = tlvs(rest)
    out["authority"] = top.get(0x02, b"").decode() or None
    out["alpn"] = top.get(0x01)
    if 0x20 in top:
        ssl_tlv = top[0x20]
        sub = tlvs(ssl_tlv[5:])
        out.update(ssl_client=ssl_tlv[0], ssl_version=sub.get(0x21, b"").decode(),
                   ssl_cipher=sub.get(0x23, b"").decode())
    return out


# ------------------------------------------------------------------------------------------
# Module setup: PKI, backends, one mailsnid with every listener
# ------------------------------------------------------------------------------------------

def tls_ctx() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=PKI["ca"])


def fingerprint_of(sock: ssl.SSLSocket) -> str:
    return hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest().upper()


def spki_pin(cert_path: str) -> str:
    pub = subprocess.run(["openssl", "x509", "-in", cert_path, "-pubkey", "-noout"],
                         capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         capture_output=True, check=True).stdout
    return "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def base_config(listeners: list[str], extra: str = "") -> str:
    return config_text(PKI, ("alpha_ec", "alpha_rsa", "beta_wild"), listeners, extra)


def listener(name: str, proto: str, tls: str, backend: str, extra: str = "") -> str:
    PORTS[name] = free_port(avoid=PORTS.values())
    return listener_entry(name, PORTS[name], proto, tls, backend, extra)


LB = 'proxy_protocol_in = true; trusted = [ "127.0.0.0/8" ];'


def main_listeners() -> list[str]:
    P, S, D, C = PLAIN, STRICT, DOWN, CAPTURE
    req = 'starttls = "required";'
    return [
        # The everyday set, to the backends' plain ports.
        listener("imaps", "imap", "implicit", P.addr("imap")),
        listener("imap", "imap", "starttls", P.addr("imap")),
        listener("pop3s", "pop3", "implicit", P.addr("pop3")),
        listener("pop3", "pop3", "starttls", P.addr("pop3")),
        listener("smtps", "smtp", "implicit", P.addr("submission")),
        listener("submission", "smtp", "starttls", P.addr("submission"), req),
        listener("mx", "smtp", "starttls", P.addr("smtp")),
        # PROXY v2 to the strict backend's haproxy ports.
        listener("imaps_pp2", "imap", "implicit", S.addr("imap_haproxy"), 'proxy_protocol = "v2";'),
        listener("imap_pp2", "imap", "starttls", S.addr("imap_haproxy"), 'proxy_protocol = "v2";'),
        listener("pop3s_pp2", "pop3", "implicit", S.addr("pop3_haproxy"), 'proxy_protocol = "v2";'),
        listener("pop3_pp2", "pop3", "starttls", S.addr("pop3_haproxy"), 'proxy_protocol = "v2";'),
        listener("submission_pp2", "smtp", "starttls", S.addr("submission_haproxy"),
                 'proxy_protocol = "v2"; ' + req),
        # Behind a load balancer that sends PROXY headers.
        listener("lb_imaps", "imap", "implicit", S.addr("imap_haproxy"), 'proxy_protocol = "v2"; ' + LB),
        listener("lb_imap", "imap", "starttls", S.addr("imap_haproxy"), 'proxy_protocol = "v2"; ' + LB),
        listener("lb_pop3s", "pop3", "implicit", S.addr("pop3_haproxy"), 'proxy_protocol = "v2"; ' + LB),
        listener("lb_smtps", "smtp", "implicit", S.addr("submission_haproxy"),
                 'proxy_protocol = "v2"; ' + LB),
        listener("lb_imaps_v1", "imap", "implicit", P.addr("imap_haproxy"), 'proxy_protocol = "v1"; ' + LB),
        listener("lb_mx_v1", "smtp", "starttls", S.addr("smtp_haproxy"), 'proxy_protocol = "v1"; ' + LB),
        listener("lb_capture", "imap", "implicit", C["imap"].addr,
                 'proxy_protocol = "v2"; handshake_timeout = 1; ' + LB),
        listener("lb_untrusted", "imap", "implicit", C["imap"].addr,
                 'proxy_protocol = "v2"; proxy_protocol_in = true; trusted = [ "10.0.0.0/8" ];'),
        # STARTTLS dialogues against the capturing backends.
        listener("inj_imap", "imap", "starttls", C["imap"].addr),
        listener("inj_pop3", "pop3", "starttls", C["pop3"].addr),
        listener("inj_smtp", "smtp", "starttls", C["smtp"].addr),
        listener("req_imap", "imap", "starttls", C["imap"].addr, req),
        listener("req_pop3", "pop3", "starttls", C["pop3"].addr, req),
        listener("req_smtp", "smtp", "starttls", C["smtp"].addr, req),
        listener("adv_imap", "imap", "starttls", C["imap_adv"].addr),
        listener("adv_pop3", "pop3", "starttls", C["pop3_adv"].addr),
        listener("adv_smtp", "smtp", "starttls", C["smtp_adv"].addr),
        # The backend that gets stopped and restarted.
        listener("down_imaps", "imap", "implicit", D.addr("imap"), "connect_timeout = 2;"),
        listener("down_imap", "imap", "starttls", D.addr("imap"), "connect_timeout = 2;"),
        listener("down_pop3s", "pop3", "implicit", D.addr("pop3"), "connect_timeout = 2;"),
        listener("down_pop3", "pop3", "starttls", D.addr("pop3"), "connect_timeout = 2;"),
        listener("down_smtps", "smtp", "implicit", D.addr("submission"), "connect_timeout = 2;"),
        listener("down_submission", "smtp", "starttls", D.addr("submission"),
                 "connect_timeout = 2; " + req),
    ]


def setUpModule():
    global TMP, PLAIN, STRICT, DOWN, PROXY
    TMP = tempfile.mkdtemp(prefix="mailsnid-mail-")
    try:
        PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))
        for name, key in CERT_OF.items():
            FINGERPRINT[name] = certs.cert_fingerprint(PKI[key])
            PIN[name] = spki_pin(PKI[key])
        PLAIN = MailBackends(os.path.join(TMP, "plain")).start()
        STRICT = MailBackends(os.path.join(TMP, "strict"), strict=True).start()
        DOWN = MailBackends(os.path.join(TMP, "down"),
                            base_port=find_free_base(seed=os.path.join(TMP, "down"))).start()
        for proto in ("imap", "pop3", "smtp"):
            CAPTURE[proto] = CaptureBackend(proto)
            CAPTURE[proto + "_adv"] = CaptureBackend(proto, advertise_starttls=True)
        socket.getaddrinfo = _test_getaddrinfo
        PROXY = MailsnidProcess(base_config(main_listeners()), os.path.join(TMP, "proxy"))
        PROXY.start(list(PORTS.values()))
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    global PROXY
    socket.getaddrinfo = _real_getaddrinfo
    errors = []
    try:
        if PROXY is not None:
            PROXY.stop()
    except AssertionError as e:
        errors.append(e)
    PROXY = None
    for cap in CAPTURE.values():
        cap.stop()
    CAPTURE.clear()
    for mb in (PLAIN, STRICT, DOWN):
        if mb is not None:
            mb.stop()
    shutil.rmtree(TMP, ignore_errors=True)
    if errors:
        raise errors[0]


# ------------------------------------------------------------------------------------------
# Client helpers
# ------------------------------------------------------------------------------------------

def token() -> str:
    return "tok" + uuid.uuid4().hex[:12]


def message(frm: str, to: str, tok: str) -> bytes:
    return (f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: {tok}\r\n"
            f"Message-ID: <{tok}@mailsnid.test>\r\n\r\nbody of {tok}\r\n").encode()


class Wire:
    """A raw client socket with line reading, and an in-place STARTTLS upgrade."""

    def __init__(self, port: int | None, header: bytes = b"", sock: socket.socket | None = None):
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=T)
        if header:
            self.sock.sendall(header)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed; unread: {self.buf!r}")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def imap(self, tag: str) -> list[bytes]:
        """Lines up to and including the tagged response TAG."""
        out = []
        while True:
            out.append(self.line())
            if out[-1].startswith(tag.encode() + b" "):
                return out

    def smtp(self) -> list[bytes]:
        """One SMTP reply (all its lines)."""
        out = [self.line()]
        while out[-1][3:4] == b"-":
            out.append(self.line())
        return out

    def pop3_multi(self) -> list[bytes]:
        out = [self.line()]
        if out[0].startswith(b"+OK"):
            while out[-1] != b".\r\n":
                out.append(self.line())
        return out

    def starttls(self, name: str) -> str:
        """Upgrade in place; nothing may have come after the STARTTLS reply. Returns the
        fingerprint of the certificate served."""
        self.sock.settimeout(0.3)
        try:
            extra = self.sock.recv(65536)
        except socket.timeout:
            extra = b""
        self.sock.settimeout(T)
        assert self.buf + extra == b"", f"bytes after the STARTTLS reply: {self.buf + extra!r}"
        self.sock = tls_ctx().wrap_socket(self.sock, server_hostname=name)
        return fingerprint_of(self.sock)

    def rest(self, timeout: float = 10.0) -> bytes:
        """Everything until the peer closes."""
        self.sock.settimeout(timeout * SLOW)
        data = self.buf
        self.buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            data += chunk
        return data

    def quiet(self, wait: float = 0.3) -> bytes:
        """Whatever arrives within WAIT seconds (expected: nothing)."""
        self.sock.settimeout(wait)
        data = self.buf
        self.buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, ssl.SSLWantReadError):
            pass
        self.sock.settimeout(T)
        return data


def closed_without_data(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Reads until the peer closes; returns what came (a test expects b"")."""
    sock.settimeout(timeout * SLOW)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return data


def log_pos() -> int:
    return os.path.getsize(PROXY.log_path)


def proxy_log_since(pos: int, proc: MailsnidProcess | None = None) -> str:
    with open((proc or PROXY).log_path, "rb") as f:
        f.seek(pos)
        return f.read().decode(errors="replace")


def wait_proxy_log(pattern: str, since: int, proc: MailsnidProcess | None = None,
                   timeout: float = 5.0) -> str:
    rx = re.compile(pattern, re.M)
    deadline = time.monotonic() + timeout * SLOW
    while True:
        text = proxy_log_since(since, proc)
        m = rx.search(text)
        if m:
            return text[text.rfind("\n", 0, m.start()) + 1:text.find("\n", m.end())]
        if time.monotonic() > deadline:
            raise AssertionError(f"mailsnid log has no {pattern!r} since {since}:\n{text[-4000:]}")
        time.sleep(0.05)


def header_sender(cls, header: bytes):
    """A subclass of an imaplib/poplib client class that sends HEADER first (a load
    balancer's PROXY header), then speaks the protocol (TLS first for the *_SSL classes)."""
    plain_base = imaplib.IMAP4 if issubclass(cls, imaplib.IMAP4) else poplib.POP3

    class WithHeader(cls):
        def _create_socket(self, timeout):
            sock = socket.create_connection((self.host, self.port), timeout)
            sock.sendall(header)
            if cls is plain_base:
                return sock
            context = getattr(self, "ssl_context", None) or getattr(self, "context")
            return context.wrap_socket(sock, server_hostname=self.host)

    return WithHeader


class SMTPWithHeader(smtplib.SMTP):
    header = b""

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout)
        sock.sendall(self.header)
        return sock


class SMTPSWithHeader(smtplib.SMTP_SSL):
    header = b""

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout)
        sock.sendall(self.header)
        return self.context.wrap_socket(sock, server_hostname=self._host)


class Base(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self.pos = log_pos() if PROXY else 0
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)

    # -- IMAP ------------------------------------------------------------------------------

    def imaplib_session(self, name: str, port: int, tok: str, *, starttls: bool,
                        cls=None, starttls_gone: bool = True) -> None:
        """Log in as NAME's user, LIST, find the message whose subject is TOK and FETCH it.
        STARTTLS_GONE: check that STARTTLS is no longer advertised once TLS is up (see
        Bugs.test_*_not_advertised_after_tls for backends that advertise it themselves)."""
        user = ACCOUNT[name]
        if starttls:
            m = (cls or imaplib.IMAP4)(name, port, timeout=T)
        else:
            m = (cls or imaplib.IMAP4_SSL)(name, port, ssl_context=tls_ctx(), timeout=T)
        try:
            if starttls:
                self.assertIn("STARTTLS", m.capabilities)
                m.starttls(ssl_context=tls_ctx())
                if starttls_gone:
                    self.assertNotIn("STARTTLS", m.capabilities,
                                     "STARTTLS still advertised after TLS")
            self.assertEqual(fingerprint_of(m.sock), FINGERPRINT[name])
            self.assertEqual(m.login(user, USERS[user])[0], "OK")
            typ, boxes = m.list()
            self.assertEqual(typ, "OK")
            self.assertTrue(any(b"INBOX" in b for b in boxes), boxes)
            self.assertEqual(m.select("INBOX", readonly=True)[0], "OK")
            typ, data = m.search(None, "SUBJECT", tok)
            nums = data[0].split()
            self.assertEqual(len(nums), 1, (tok, data))
            typ, msg = m.fetch(nums[0], "(BODY.PEEK[])")
            self.assertEqual(typ, "OK")
            self.assertIn(f"body of {tok}".encode(), msg[0][1])
            m.logout()
        finally:
            if m.state != "LOGOUT":
                m.shutdown()

    def curl(self, scheme: str, name: str, port: int, path: str, *, starttls: bool = False,
             user: str | None = None, extra: tuple = ()) -> str:
        user = user or ACCOUNT[name]
        args = ["curl", "-sS", "--max-time", str(int(30 * SLOW)), "--cacert", PKI["ca"],
                "--resolve", f"{name}:{port}:127.0.0.1", "--pinnedpubkey", PIN[name],
                "-u", f"{user}:{USERS[user]}"]
        if starttls:
            args.append("--ssl-reqd")
        args += [*extra, f"{scheme}://{name}:{port}{path}"]
        r = subprocess.run(args, capture_output=True, text=True, timeout=60 * SLOW)
        self.assertEqual(r.returncode, 0, f"{' '.join(args)}\n{r.stderr}")
        return r.stdout

    def curl_imap_session(self, scheme: str, name: str, port: int, tok: str,
                          starttls: bool = False) -> None:
        listing = self.curl(scheme, name, port, "/", starttls=starttls)
        self.assertIn("INBOX", listing)
        found = self.curl(scheme, name, port, f"/INBOX?SUBJECT%20{tok}", starttls=starttls)
        m = re.search(r"\* SEARCH (\d+)", found)
        self.assertTrue(m, found)
        body = self.curl(scheme, name, port, f"/INBOX;MAILINDEX={m.group(1)}", starttls=starttls)
        self.assertIn(f"body of {tok}", body)

    # -- POP3 ------------------------------------------------------------------------------

    def poplib_session(self, name: str, port: int, tok: str, *, starttls: bool,
                       cls=None, starttls_gone: bool = True) -> None:
        user = ACCOUNT[name]
        if starttls:
            p = (cls or poplib.POP3)(name, port, timeout=T)
        else:
            p = (cls or poplib.POP3_SSL)(name, port, context=tls_ctx(), timeout=T)
        try:
            if starttls:
                self.assertIn("STLS", p.capa())
                p.stls(context=tls_ctx())
                if starttls_gone:
                    self.assertNotIn("STLS", p.capa(), "STLS still advertised after TLS")
            self.assertEqual(fingerprint_of(p.sock), FINGERPRINT[name])
            p.user(user)
            p.pass_(USERS[user])
            count, _ = p.stat()
            for i in range(count, 0, -1):
                _, lines, _ = p.retr(i)
                if f"body of {tok}".encode() in b"\r\n".join(lines):
                    break
            else:
                self.fail(f"{tok} not among {count} messages")
            p.quit()
        finally:
            p.close()

    def curl_pop3_session(self, scheme: str, name: str, port: int, tok: str,
                          starttls: bool = False) -> None:
        listing = self.curl(scheme, name, port, "/", starttls=starttls)
        nums = [int(l.split()[0]) for l in listing.splitlines() if l.strip()]
        self.assertTrue(nums, listing)
        for n in sorted(nums, reverse=True):
            if f"body of {tok}" in self.curl(scheme, name, port, f"/{n}", starttls=starttls):
                return
        self.fail(f"{tok} not found over {scheme}")

    # -- SMTP ------------------------------------------------------------------------------

    def swaks(self, port: int, name: str, frm: str, to: str, tok: str, *, mode: str) -> None:
        """mode: "tlsc" (TLS on connect) or "tls" (STARTTLS required)."""
        peer = os.path.join(self.dir, f"peer-{tok}.pem")
        args = ["swaks", "--server", f"127.0.0.1:{port}", f"-{mode}", "--tls-sni", name,
                "--tls-verify", "--tls-ca-path", PKI["ca"], "--tls-get-peer-cert", peer,
                "--ehlo", "client.test", "--auth", "PLAIN", "--auth-user", frm,
                "--auth-password", USERS[frm], "--from", frm, "--to", to,
                "--header", f"Subject: {tok}", "--body", f"body of {tok}",
                "--timeout", str(int(20 * SLOW))]
        r = subprocess.run(args, capture_output=True, text=True, timeout=60 * SLOW)
        self.assertEqual(r.returncode, 0, f"{' '.join(args)}\n{r.stdout}\n{r.stderr}")
        self.assertEqual(certs.cert_fingerprint(peer), FINGERPRINT[name])

    def smtplib_send(self, name: str, port: int, frm: str, to: str, tok: str, *,
                     starttls: bool, cls=None) -> None:
        if starttls:
            s = (cls or smtplib.SMTP)(name, port, local_hostname="client.test", timeout=T)
        else:
            s = (cls or smtplib.SMTP_SSL)(name, port, local_hostname="client.test",
                                          context=tls_ctx(), timeout=T)
        try:
            if starttls:
                s.ehlo()
                self.assertTrue(s.has_extn("starttls"))
                s.starttls(context=tls_ctx())
                s.ehlo()
                self.assertFalse(s.has_extn("starttls"), "STARTTLS still advertised after TLS")
            self.assertEqual(fingerprint_of(s.sock), FINGERPRINT[name])
            s.login(frm, USERS[frm])
            s.sendmail(frm, [to], message(frm, to, tok))
            s.quit()
        finally:
            s.close()


# ------------------------------------------------------------------------------------------
# IMAP, POP3, SMTP with real clients
# ------------------------------------------------------------------------------------------

class Imap(Base):
    def put(self, name: str, mb: MailBackends | None = None) -> str:
        tok = token()
        user = ACCOUNT[name]
        (mb or PLAIN).put_message(user, message("carol@hoster.test", user, tok))
        return tok

    def test_imaps_imaplib_exact_and_wildcard(self):
        for name in ("mail.alpha.test", "mail.beta.test"):
            with self.subTest(name=name):
                self.imaplib_session(name, PORTS["imaps"], self.put(name), starttls=False)

    def test_imaps_curl_exact_and_wildcard(self):
        for name in ("mail.alpha.test", "mail.beta.test"):
            with self.subTest(name=name):
                self.curl_imap_session("imaps", name, PORTS["imaps"], self.put(name))

    def test_imap_starttls_imaplib_exact_and_wildcard(self):
        for name in ("mail.alpha.test", "mail.beta.test"):
            with self.subTest(name=name):
                self.imaplib_session(name, PORTS["imap"], self.put(name), starttls=True)

    def test_imap_starttls_curl_exact_and_wildcard(self):
        for name in ("mail.alpha.test", "mail.beta.test"):
            with self.subTest(name=name):
                self.curl_imap_session("imap", name, PORTS["imap"], self.put(name),
                                       starttls=True)

    def test_hostname_verification_is_on(self):
        # A name with no certificate of its own gets the default one: every client refuses.
        port = PORTS["imaps"]
        with self.assertRaises(ssl.SSLCertVerificationError):
            imaplib.IMAP4_SSL("mail.nobody.test", port, ssl_context=tls_ctx(), timeout=T)
        r = subprocess.run(["curl", "-sS", "--cacert", PKI["ca"], "--resolve",
                            f"mail.nobody.test:{port}:127.0.0.1", "-u", "a:b",
                            f"imaps://mail.nobody.test:{port}/"],
                           capture_output=True, text=True, timeout=30 * SLOW)
        self.assertEqual(r.returncode, 60, r.stderr)     # CURLE_PEER_FAILED_VERIFICATION

    def test_starttls_capability_edited_before_tls_only(self):
        w = Wire(PORTS["imap"])
        try:
            greeting = w.line()
            self.assertRegex(greeting, rb"^\* OK \[CAPABILITY [^\]]* STARTTLS[ \]]")
            w.send(b"a CAPABILITY\r\n")
            lines = w.imap("a")
            self.assertRegex(lines[0], rb"^\* CAPABILITY .*\bSTARTTLS\b")
            self.assertEqual(lines[-1][:5], b"a OK ")
            w.send(b"b STARTTLS\r\n")
            self.assertEqual(w.line(), b"b OK Begin TLS negotiation now\r\n")
            self.assertEqual(w.starttls("mail.alpha.test"), FINGERPRINT["mail.alpha.test"])
            # The fresh backend session's greeting was swallowed: the next thing is our reply.
            w.send(b"c CAPABILITY\r\n")
            lines = w.imap("c")
            self.assertRegex(lines[0], rb"^\* CAPABILITY ")
            self.assertNotIn(b"STARTTLS", b"".join(lines))
            self.assertEqual(len(lines), 2, lines)
        finally:
            w.close()


class Pop3(Base):
    def put(self, name: str) -> str:
        tok = token()
        user = ACCOUNT[name]
        PLAIN.put_message(user, message("carol@hoster.test", user, tok))
        return tok

    def test_pop3s_poplib_exact_and_wildcard(self):
        for name in ("mail.alpha.test", "mail.beta.test"):
            with self.subTest(name=name):
                self.poplib_session(name, PORTS["pop3s"], self.put(name), starttls=False)

    def test_pop3s_curl_exact_and_wildcard(self):
        for name in ("mail.alpha.test", "mail.beta.test"):
            with self.subTest(name=name):
                self.curl_pop3_session("pop3s", name, PORTS["pop3s"], self.put(name))

    def test_pop3_stls_poplib_exact_and_wildcard(self):
        for name in ("mail.alpha.test", "mail.beta.test"):
            with self.subTest(name=name):
                self.poplib_session(name, PORTS["pop3"], self.put(name), starttls=True)

    def test_pop3_stls_curl_exact_and_wildcard(self):
        for name in ("mail.alpha.test", "mail.beta.test"):
            with self.subTest(name=name):
                self.curl_pop3_session("pop3", name, PORTS["pop3"], self.put(name),
                                       starttls=True)


class Smtp(Base):
    """Sending with AUTH through 465-style and 587-style listeners, read back over IMAP
    through the proxy."""

    def read_back(self, rcpt: str, tok: str) -> None:
        PLAIN.wait_for_mail(rcpt, timeout=15 * SLOW, contains=tok.encode())
        name = next(n for n, u in ACCOUNT.items() if u == rcpt)
        self.imaplib_session(name, PORTS["imaps"], tok, starttls=False)

    def test_smtps_swaks(self):
        tok = token()
        self.swaks(PORTS["smtps"], "mail.alpha.test", "alice@alpha.test", "bob@beta.test",
                   tok, mode="tlsc")
        self.read_back("bob@beta.test", tok)

    def test_smtps_smtplib(self):
        tok = token()
        self.smtplib_send("mail.beta.test", PORTS["smtps"], "bob@beta.test",
                          "alice@alpha.test", tok, starttls=False)
        self.read_back("alice@alpha.test", tok)

    def test_submission_swaks(self):
        tok = token()
        self.swaks(PORTS["submission"], "mail.beta.test", "bob@beta.test", "alice@alpha.test",
                   tok, mode="tls")
        self.read_back("alice@alpha.test", tok)

    def test_submission_smtplib(self):
        tok = token()
        self.smtplib_send("mail.alpha.test", PORTS["submission"], "alice@alpha.test",
                          "bob@beta.test", tok, starttls=True)
        self.read_back("bob@beta.test", tok)

    def test_submission_refuses_auth_and_mail_before_tls(self):
        # Postfix itself would take AUTH in plaintext here (smtpd_tls_auth_only = no, as a
        # port behind a TLS proxy must have it): the refusal is the proxy's.
        pos = PLAIN.log_positions()["postfix"]
        s = smtplib.SMTP("mail.alpha.test", PORTS["submission"], local_hostname="client.test",
                         timeout=T)
        try:
            s.ehlo()
            self.assertTrue(s.has_extn("starttls"))
            # AUTH is not offered before TLS (issue 13, item 3); sent anyway, it is refused.
            self.assertFalse(s.has_extn("auth"))
            cred = base64.b64encode(b"\0alice@alpha.test\0" + USERS["alice@alpha.test"].encode())
            code, _ = s.docmd("AUTH PLAIN " + cred.decode())
            self.assertEqual(code, 530)
            code, _ = s.docmd("MAIL FROM:<alice@alpha.test>")
            self.assertEqual(code, 530)
            self.assertEqual(s.noop()[0], 250)
        finally:
            s.quit()
        time.sleep(0.3)
        self.assertNotIn("sasl_username", PLAIN.postfix_log(pos))


class Port25(Base):
    """An MTA-facing listener with optional STARTTLS, in front of Postfix's port 25."""

    def test_plaintext_session_without_starttls_delivers(self):
        tok = token()
        s = smtplib.SMTP("127.0.0.1", PORTS["mx"], local_hostname="mta.example", timeout=T)
        try:
            s.ehlo()
            self.assertTrue(s.has_extn("starttls"))      # offered, never taken
            s.sendmail("someone@example.org", ["carol@hoster.test"],
                       message("someone@example.org", "carol@hoster.test", tok))
        finally:
            s.quit()
        PLAIN.wait_for_mail("carol@hoster.test", timeout=15 * SLOW, contains=tok.encode())

    def test_helo_only_session_with_pipelining_delivers(self):
        # An old MTA: HELO, then envelope and data in one write (as PIPELINING would).
        tok = token()
        w = Wire(PORTS["mx"])
        try:
            self.assertEqual(w.smtp()[0][:4], b"220 ")
            w.send(b"HELO mta.example\r\n")
            self.assertEqual(w.smtp()[0][:4], b"250 ")
            w.send(b"MAIL FROM:<someone@example.org>\r\nRCPT TO:<carol@hoster.test>\r\nDATA\r\n")
            self.assertEqual(w.smtp()[0][:3], b"250")
            self.assertEqual(w.smtp()[0][:3], b"250")
            self.assertEqual(w.smtp()[0][:3], b"354")
            w.send(message("someone@example.org", "carol@hoster.test", tok) + b".\r\nQUIT\r\n")
            self.assertEqual(w.smtp()[0][:3], b"250")
            self.assertEqual(w.smtp()[0][:3], b"221")
        finally:
            w.close()
        PLAIN.wait_for_mail("carol@hoster.test", timeout=15 * SLOW, contains=tok.encode())

    def test_large_messages_intact_plaintext_and_tls(self):
        # 4 MB each way of the relay's two paths: plaintext (blind) and after STARTTLS.
        body = base64.encodebytes(os.urandom(3 * 1024 * 1024))
        for starttls in (False, True):
            with self.subTest(starttls=starttls):
                tok = token()
                msg = (f"From: <someone@example.org>\r\nTo: <carol@hoster.test>\r\n"
                       f"Subject: {tok}\r\n\r\n").encode() + body.replace(b"\n", b"\r\n")
                s = smtplib.SMTP("mail.hoster.test", PORTS["mx"], local_hostname="mta.example",
                                 timeout=T)
                try:
                    s.ehlo()
                    if starttls:
                        s.starttls(context=tls_ctx())
                        self.assertEqual(fingerprint_of(s.sock), FINGERPRINT["mail.hoster.test"])
                        s.ehlo()
                    s.sendmail("someone@example.org", ["carol@hoster.test"], msg)
                    s.quit()
                finally:
                    s.close()
                got = PLAIN.wait_for_mail("carol@hoster.test", timeout=30 * SLOW,
                                          contains=tok.encode())
                self.assertIn(body.replace(b"\n", b"\r\n"), got.replace(b"\r\n", b"\n")
                              .replace(b"\n", b"\r\n"))

    def test_starttls_session_delivers(self):
        tok = token()
        s = smtplib.SMTP("mail.alpha.test", PORTS["mx"], local_hostname="mta.example", timeout=T)
        try:
            s.ehlo()
            s.starttls(context=tls_ctx())
            self.assertEqual(fingerprint_of(s.sock), FINGERPRINT["mail.alpha.test"])
            s.ehlo()
            self.assertFalse(s.has_extn("starttls"))
            s.sendmail("someone@example.org", ["alice@alpha.test"],
                       message("someone@example.org", "alice@alpha.test", tok))
        finally:
            s.quit()
        PLAIN.wait_for_mail("alice@alpha.test", timeout=15 * SLOW, contains=tok.encode())


# ------------------------------------------------------------------------------------------
# STARTTLS: command injection, and starttls = "required"
# ------------------------------------------------------------------------------------------

class StarttlsInjection(Base):
    """Bytes pipelined behind STARTTLS must never reach the backend, in plaintext or after
    TLS (CVE-2011-0411, CVE-2014-3556). The capturing backend records every byte."""

    def dropped(self, listener: str, n: int) -> None:
        wait_proxy_log(rf"listener {listener}: dropped {n} bytes pipelined after STARTTLS",
                       self.pos)
        wait_proxy_log(rf"conn listener={listener} .* discarded={n} ", self.pos)

    def test_imap(self):
        cap = CAPTURE["imap"]
        before = cap.count()
        w = Wire(PORTS["inj_imap"])
        try:
            self.assertIn(b"STARTTLS", w.line())
            w.send(b"a STARTTLS\r\nb NOOP\r\n")
            self.assertEqual(w.line(), b"a OK Begin TLS negotiation now\r\n")
            self.assertEqual(w.starttls("mail.alpha.test"), FINGERPRINT["mail.alpha.test"])
            w.send(b"c NOOP\r\n")
            self.assertEqual(w.imap("c"), [b"c OK NOOP completed (capture)\r\n"])
            w.send(b"d LOGOUT\r\n")
            rest = w.rest()
            self.assertNotIn(b"b OK", rest)
        finally:
            w.close()
        plain, tls = cap.new_conns(before, 2)
        self.assertEqual(plain.payload, b"")     # STARTTLS was answered by the proxy
        self.assertEqual(tls.lines, [b"c NOOP", b"d LOGOUT"])
        self.dropped("inj_imap", len(b"b NOOP\r\n"))

    def test_imap_starttls_behind_a_pending_command(self):
        cap = CAPTURE["imap"]
        before = cap.count()
        w = Wire(PORTS["inj_imap"])
        try:
            w.line()
            w.send(b"a CAPABILITY\r\nb STARTTLS\r\nc NOOP\r\n")
            lines = w.imap("a")
            self.assertIn(b"STARTTLS", lines[0])
            self.assertEqual(w.line(), b"b OK Begin TLS negotiation now\r\n")
            w.starttls("mail.beta.test")
            w.send(b"d NOOP\r\n")
            self.assertEqual(w.imap("d"), [b"d OK NOOP completed (capture)\r\n"])
        finally:
            w.close()
        plain, tls = cap.new_conns(before, 2)
        self.assertEqual(plain.lines, [b"a CAPABILITY"])
        self.assertEqual(tls.lines, [b"d NOOP"])
        self.dropped("inj_imap", len(b"c NOOP\r\n"))

    def test_pop3(self):
        cap = CAPTURE["pop3"]
        before = cap.count()
        w = Wire(PORTS["inj_pop3"])
        try:
            self.assertEqual(w.line(), b"+OK capture ready\r\n")
            w.send(b"STLS\r\nNOOP\r\n")
            self.assertEqual(w.line(), b"+OK Begin TLS negotiation\r\n")
            self.assertEqual(w.starttls("mail.alpha.test"), FINGERPRINT["mail.alpha.test"])
            w.send(b"CAPA\r\n")
            capa = w.pop3_multi()
            self.assertEqual(capa[0], b"+OK Capability list follows\r\n")
            self.assertNotIn(b"STLS\r\n", capa)
            w.send(b"QUIT\r\n")
            self.assertEqual(w.line(), b"+OK capture signing off\r\n")
            self.assertEqual(w.rest(), b"")
        finally:
            w.close()
        plain, tls = cap.new_conns(before, 2)
        self.assertEqual(plain.payload, b"")
        self.assertEqual(tls.lines, [b"CAPA", b"QUIT"])
        self.dropped("inj_pop3", len(b"NOOP\r\n"))

    def test_smtp(self):
        cap = CAPTURE["smtp"]
        before = cap.count()
        w = Wire(PORTS["inj_smtp"])
        try:
            w.smtp()
            w.send(b"EHLO client.test\r\n")
            self.assertIn(b"250-STARTTLS\r\n", w.smtp())
            w.send(b"STARTTLS\r\nRSET\r\n")
            self.assertEqual(w.smtp(), [b"220 2.0.0 Ready to start TLS\r\n"])
            self.assertEqual(w.starttls("mail.beta.test"), FINGERPRINT["mail.beta.test"])
            w.send(b"EHLO client.test\r\n")
            ehlo = w.smtp()
            self.assertEqual(ehlo[0], b"250-capture.test\r\n")
            self.assertNotIn(b"STARTTLS", b"".join(ehlo))
            w.send(b"QUIT\r\n")
            self.assertEqual(w.smtp(), [b"221 2.0.0 capture bye\r\n"])
        finally:
            w.close()
        plain, tls = cap.new_conns(before, 2)
        self.assertEqual(plain.lines, [b"EHLO client.test"])
        self.assertEqual(tls.lines, [b"EHLO client.test", b"QUIT"])
        self.dropped("inj_smtp", len(b"RSET\r\n"))

    def test_imap_starttls_line_split_across_packets(self):
        cap = CAPTURE["imap"]
        before = cap.count()
        w = Wire(PORTS["inj_imap"])
        try:
            w.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            w.line()
            for piece in (b"a ST", b"ART", b"TLS", b"\r", b"\nb NOOP\r\n"):
                w.send(piece)
                time.sleep(0.05)
            self.assertEqual(w.line(), b"a OK Begin TLS negotiation now\r\n")
            w.starttls("mail.alpha.test")
            w.send(b"c NOOP\r\n")
            self.assertEqual(w.imap("c"), [b"c OK NOOP completed (capture)\r\n"])
        finally:
            w.close()
        plain, tls = cap.new_conns(before, 2)
        self.assertEqual(plain.payload, b"")
        self.assertEqual(tls.lines, [b"c NOOP"])
        self.dropped("inj_imap", len(b"b NOOP\r\n"))

    def test_imap_starttls_before_the_greeting(self):
        # The client does not wait for the greeting: the proxy relays it first, then answers.
        cap = CAPTURE["imap"]
        before = cap.count()
        w = Wire(PORTS["inj_imap"])
        try:
            w.send(b"a STARTTLS\r\nb NOOP\r\n")
            self.assertIn(b"STARTTLS", w.line())
            self.assertEqual(w.line(), b"a OK Begin TLS negotiation now\r\n")
            w.starttls("mail.alpha.test")
            w.send(b"c NOOP\r\n")
            self.assertEqual(w.imap("c"), [b"c OK NOOP completed (capture)\r\n"])
        finally:
            w.close()
        plain, tls = cap.new_conns(before, 2)
        self.assertEqual(plain.payload, b"")
        self.assertEqual(tls.lines, [b"c NOOP"])

    def test_overlong_line_before_tls_is_refused(self):
        cap = CAPTURE["imap"]
        before = cap.count()
        w = Wire(PORTS["inj_imap"])
        try:
            w.line()
            sent = 0
            try:
                chunk = b"a LOGIN " + b"x" * (1 << 20)
                while sent < 10 * (1 << 20):          # 10 MB, no CRLF
                    w.send(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                self.assertEqual(w.line(), b"* BYE Command line too long\r\n")
            except (EOFError, ConnectionResetError):
                pass     # the reset of the unread bytes may overtake the reply
        finally:
            w.close()
        (plain,) = cap.new_conns(before, 1)
        self.assertEqual(plain.payload, b"")
        wait_proxy_log(r"conn listener=inj_imap .*outcome=protocol_error", self.pos)

    def test_smtp_ehlo_starttls_and_injection_in_one_packet_real_postfix(self):
        w = Wire(PORTS["mx"])
        try:
            w.smtp()
            w.send(b"EHLO client.test\r\nSTARTTLS\r\nRSET\r\n")
            self.assertIn(b"250-STARTTLS\r\n", w.smtp())
            self.assertEqual(w.smtp(), [b"220 2.0.0 Ready to start TLS\r\n"])
            w.starttls("mail.beta.test")
            w.send(b"EHLO client.test\r\n")
            self.assertEqual(w.smtp()[0], b"250-mail.hoster.test\r\n")
            w.send(b"QUIT\r\n")
            self.assertEqual(w.smtp()[0][:3], b"221")
        finally:
            w.close()
        self.dropped("mx", len(b"RSET\r\n"))

    def test_smtp_against_real_postfix(self):
        # Had RSET reached Postfix in the TLS session, its "250 2.0.0 Ok" would come first.
        w = Wire(PORTS["mx"])
        try:
            w.smtp()
            w.send(b"EHLO client.test\r\n")
            w.smtp()
            w.send(b"STARTTLS\r\nRSET\r\n")
            self.assertEqual(w.smtp(), [b"220 2.0.0 Ready to start TLS\r\n"])
            w.starttls("mail.alpha.test")
            w.send(b"EHLO client.test\r\n")
            self.assertEqual(w.smtp()[0], b"250-mail.hoster.test\r\n")
            w.send(b"QUIT\r\n")
            self.assertEqual(w.smtp()[0][:3], b"221")
            self.assertEqual(w.quiet(), b"")
        finally:
            w.close()
        self.dropped("mx", len(b"RSET\r\n"))


class StarttlsRequired(Base):
    """starttls = "required": credentials and mail commands before TLS get the protocol's
    refusal and never reach the backend; harmless commands go through."""

    def test_imap(self):
        cap = CAPTURE["imap"]
        before = cap.count()
        w = Wire(PORTS["req_imap"])
        try:
            greeting = w.line()
            self.assertRegex(greeting, rb"\[CAPABILITY [^\]]*\bSTARTTLS\b")
            self.assertRegex(greeting, rb"\[CAPABILITY [^\]]*\bLOGINDISABLED\b")
            w.send(b"a CAPABILITY\r\n")
            lines = w.imap("a")
            self.assertRegex(lines[0], rb"STARTTLS.*LOGINDISABLED|LOGINDISABLED.*STARTTLS")
            for tag, cmd in (("b", b"LOGIN alice@alpha.test alice-pass-1"),
                             ("c", b"AUTHENTICATE PLAIN AGFsaWNlQGFscGhhLnRlc3QAYWxpY2UtcGFzcy0x"),
                             ("d", b"SELECT INBOX")):
                w.send(tag.encode() + b" " + cmd + b"\r\n")
                self.assertEqual(w.imap(tag), [tag.encode() + b" NO [PRIVACYREQUIRED] "
                                               b"TLS is required: use STARTTLS first\r\n"])
            w.send(b"e NOOP\r\n")
            self.assertEqual(w.imap("e"), [b"e OK NOOP completed (capture)\r\n"])
            w.send(b"f STARTTLS\r\n")
            self.assertEqual(w.line(), b"f OK Begin TLS negotiation now\r\n")
            w.starttls("mail.alpha.test")
            w.send(b"g LOGIN alice@alpha.test alice-pass-1\r\n")
            self.assertEqual(w.imap("g"), [b"g OK LOGIN completed (capture)\r\n"])
            w.send(b"h LOGOUT\r\n")
            w.rest()
        finally:
            w.close()
        plain, tls = cap.new_conns(before, 2)
        self.assertEqual(plain.lines, [b"a CAPABILITY", b"e NOOP"])
        self.assertEqual(tls.lines, [b"g LOGIN alice@alpha.test alice-pass-1", b"h LOGOUT"])

    def test_imap_logout_goes_through(self):
        cap = CAPTURE["imap"]
        before = cap.count()
        w = Wire(PORTS["req_imap"])
        try:
            w.line()
            w.send(b"a LOGOUT\r\n")
            lines = w.imap("a")
            self.assertEqual(lines[-1], b"a OK LOGOUT completed\r\n")
        finally:
            w.close()
        (plain,) = cap.new_conns(before, 1)
        self.assertEqual(plain.lines, [b"a LOGOUT"])

    def test_pop3(self):
        cap = CAPTURE["pop3"]
        before = cap.count()
        w = Wire(PORTS["req_pop3"])
        try:
            w.line()
            w.send(b"CAPA\r\n")
            self.assertIn(b"STLS\r\n", w.pop3_multi())
            for cmd in (b"USER alice@alpha.test", b"PASS alice-pass-1", b"AUTH PLAIN",
                        b"APOP alice@alpha.test 0123456789abcdef0123456789abcdef", b"STAT"):
                w.send(cmd + b"\r\n")
                self.assertTrue(w.line().startswith(b"-ERR "), cmd)
            w.send(b"NOOP\r\n")
            self.assertEqual(w.line(), b"+OK NOOP done (capture)\r\n")
            w.send(b"STLS\r\n")
            self.assertEqual(w.line(), b"+OK Begin TLS negotiation\r\n")
            w.starttls("mail.beta.test")
            w.send(b"USER bob@beta.test\r\n")
            self.assertEqual(w.line(), b"+OK USER done (capture)\r\n")
            w.send(b"QUIT\r\n")
            self.assertEqual(w.line(), b"+OK capture signing off\r\n")
        finally:
            w.close()
        plain, tls = cap.new_conns(before, 2)
        self.assertEqual(plain.lines, [b"CAPA", b"NOOP"])
        self.assertEqual(tls.lines, [b"USER bob@beta.test", b"QUIT"])

    def test_smtp(self):
        cap = CAPTURE["smtp"]
        before = cap.count()
        w = Wire(PORTS["req_smtp"])
        try:
            w.smtp()
            w.send(b"EHLO client.test\r\n")
            self.assertIn(b"250-STARTTLS\r\n", w.smtp())
            for cmd in (b"AUTH PLAIN AGFsaWNlQGFscGhhLnRlc3QAYWxpY2UtcGFzcy0x",
                        b"MAIL FROM:<alice@alpha.test>", b"RCPT TO:<bob@beta.test>", b"DATA",
                        b"VRFY bob"):
                w.send(cmd + b"\r\n")
                reply = w.smtp()
                self.assertEqual(reply, [b"530 5.7.0 Must issue a STARTTLS command first\r\n"],
                                 cmd)
            for cmd in (b"NOOP", b"RSET"):
                w.send(cmd + b"\r\n")
                self.assertEqual(w.smtp()[0][:4], b"250 ", cmd)
            w.send(b"STARTTLS\r\n")
            self.assertEqual(w.smtp(), [b"220 2.0.0 Ready to start TLS\r\n"])
            w.starttls("mail.alpha.test")
            w.send(b"EHLO client.test\r\nMAIL FROM:<alice@alpha.test>\r\nQUIT\r\n")
            self.assertEqual(w.smtp()[0], b"250-capture.test\r\n")
            self.assertEqual(w.smtp(), [b"250 2.0.0 MAIL ok (capture)\r\n"])
            self.assertEqual(w.smtp(), [b"221 2.0.0 capture bye\r\n"])
        finally:
            w.close()
        plain, tls = cap.new_conns(before, 2)
        self.assertEqual(plain.lines, [b"EHLO client.test", b"NOOP", b"RSET"])
        self.assertEqual(tls.lines, [b"EHLO client.test", b"MAIL FROM:<alice@alpha.test>",
                                     b"QUIT"])

    def test_smtp_quit_goes_through(self):
        cap = CAPTURE["smtp"]
        before = cap.count()
        w = Wire(PORTS["req_smtp"])
        try:
            w.smtp()
            w.send(b"QUIT\r\n")
            self.assertEqual(w.smtp(), [b"221 2.0.0 capture bye\r\n"])
        finally:
            w.close()
        (plain,) = cap.new_conns(before, 1)
        self.assertEqual(plain.lines, [b"QUIT"])


# ------------------------------------------------------------------------------------------
# PROXY protocol to the backend, and from a load balancer
# ------------------------------------------------------------------------------------------

def login_line(user: str, rip: str, lip: str = r"[0-9.]+", local_name: str | None = None,
               proto: str = "imap") -> str:
    """Dovecot's login line (format in tests/harness/backends.py): secured + local_name when
    LOCAL_NAME is given, neither otherwise."""
    rx = (rf"{proto}-login: Info: Login: user=<{re.escape(user)}>, method=\w+, "
          rf"rip={re.escape(rip)}, lip={lip}, mpid=\d+, ")
    if local_name:
        return rx + rf"secured, session=<[^>]+>, local_name={re.escape(local_name)}$"
    return rx + r"session=<[^>]+>$"


class ProxyProtocolToBackend(Base):
    """proxy_protocol = "v2" to Dovecot's haproxy ports with ssl = required: the SSL TLV makes
    the session secured, the AUTHORITY TLV carries the SNI name."""

    def put(self, name: str) -> str:
        tok = token()
        user = ACCOUNT[name]
        STRICT.put_message(user, message("carol@hoster.test", user, tok))
        return tok

    def test_strict_dovecot_refuses_plaintext_login_directly(self):
        # The control: without the proxy, the strict backend does not take the password.
        m = imaplib.IMAP4(STRICT.host, STRICT.imap_port, timeout=T)
        try:
            with self.assertRaises(imaplib.IMAP4.error):
                m.login("alice@alpha.test", USERS["alice@alpha.test"])
        finally:
            m.shutdown()

    def test_imaps_v2_login_is_secured(self):
        pos = STRICT.log_positions()["dovecot"]
        self.imaplib_session("mail.alpha.test", PORTS["imaps_pp2"], self.put("mail.alpha.test"),
                             starttls=False)
        STRICT.wait_for_log("dovecot", login_line("alice@alpha.test", "127.0.0.1", r"127\.0\.0\.1",
                                                  "mail.alpha.test"), since=pos)

    def test_imap_starttls_v2_login_is_secured(self):
        pos = STRICT.log_positions()["dovecot"]
        self.imaplib_session("mail.beta.test", PORTS["imap_pp2"], self.put("mail.beta.test"),
                             starttls=True)
        STRICT.wait_for_log("dovecot", login_line("bob@beta.test", "127.0.0.1", r"127\.0\.0\.1",
                                                  "mail.beta.test"), since=pos)
        # The plaintext session before STARTTLS carried no TLS facts: not secured, no name.
        log = STRICT.dovecot_log(pos)
        plain = [l for l in log.splitlines() if "imap-login" in l and "Disconnected" in l]
        self.assertTrue(plain, log)
        self.assertNotIn("secured", plain[0])
        self.assertNotIn("local_name", plain[0])

    def test_pop3s_and_stls_v2_login_is_secured(self):
        for listener, starttls in (("pop3s_pp2", False), ("pop3_pp2", True)):
            with self.subTest(listener=listener):
                pos = STRICT.log_positions()["dovecot"]
                self.poplib_session("mail.alpha.test", PORTS[listener],
                                    self.put("mail.alpha.test"), starttls=starttls)
                STRICT.wait_for_log("dovecot", login_line("alice@alpha.test", "127.0.0.1",
                                                          local_name="mail.alpha.test",
                                                          proto="pop3"), since=pos)

    def test_client_alpn_reaches_dovecot_only_as_its_own_protocol(self):
        # Dovecot drops a connection whose ALPN TLV is not its own protocol: a mail client
        # offering "imap" among h2/http/1.1 gets "imap" selected, and Dovecot takes it.
        ctx = tls_ctx()
        ctx.set_alpn_protocols(["h2", "http/1.1", "imap"])
        pos = STRICT.log_positions()["dovecot"]
        m = imaplib.IMAP4_SSL("mail.alpha.test", PORTS["imaps_pp2"], ssl_context=ctx, timeout=T)
        try:
            self.assertEqual(m.sock.selected_alpn_protocol(), "imap")
            self.assertEqual(m.login("alice@alpha.test", USERS["alice@alpha.test"])[0], "OK")
            m.logout()
        finally:
            if m.state != "LOGOUT":
                m.shutdown()
        STRICT.wait_for_log("dovecot", login_line("alice@alpha.test", "127.0.0.1",
                                                  local_name="mail.alpha.test"), since=pos)

    def test_submission_v2_delivers_and_reads_back(self):
        tok = token()
        pos = STRICT.log_positions()["postfix"]
        self.smtplib_send("mail.beta.test", PORTS["submission_pp2"], "bob@beta.test",
                          "alice@alpha.test", tok, starttls=True)
        STRICT.wait_for_log("postfix", r"postfix/submission-haproxy/smtpd\[\d+\]: \w+: "
                            r"client=unknown\[127\.0\.0\.1\], sasl_method=PLAIN, "
                            r"sasl_username=bob@beta\.test", since=pos)
        STRICT.wait_for_mail("alice@alpha.test", timeout=15 * SLOW, contains=tok.encode())
        self.imaplib_session("mail.alpha.test", PORTS["imaps_pp2"], tok, starttls=False)


class LoadBalancer(Base):
    """proxy_protocol_in: the load balancer's PROXY header names the real client, and that
    address is what the backends log."""

    def put(self, name: str, mb: MailBackends) -> str:
        tok = token()
        user = ACCOUNT[name]
        mb.put_message(user, message("carol@hoster.test", user, tok))
        return tok

    def test_v1_and_v2_headers_reach_dovecot_as_real_address(self):
        port = PORTS["lb_imaps"]
        for kind, src in (("v1", "192.0.2.7"), ("v2", "192.0.2.8")):
            with self.subTest(header=kind):
                hdr = (proxy_v1 if kind == "v1" else proxy_v2)(src, "127.0.0.1", 40000, port)
                pos = STRICT.log_positions()["dovecot"]
                self.imaplib_session("mail.alpha.test", port, self.put("mail.alpha.test", STRICT),
                                     starttls=False, cls=header_sender(imaplib.IMAP4_SSL, hdr))
                STRICT.wait_for_log("dovecot", login_line("alice@alpha.test", src,
                                                          r"127\.0\.0\.1", "mail.alpha.test"),
                                    since=pos)
                wait_proxy_log(rf"conn listener=lb_imaps client={re.escape(src)}:40000 "
                               r"sni=mail\.alpha\.test .*outcome=ok", self.pos)

    def test_starttls_behind_load_balancer(self):
        port = PORTS["lb_imap"]
        hdr = proxy_v2("192.0.2.9", "127.0.0.1", 40001, port)
        pos = STRICT.log_positions()["dovecot"]
        self.imaplib_session("mail.beta.test", port, self.put("mail.beta.test", STRICT),
                             starttls=True, cls=header_sender(imaplib.IMAP4, hdr))
        STRICT.wait_for_log("dovecot", login_line("bob@beta.test", "192.0.2.9", r"127\.0\.0\.1",
                                                  "mail.beta.test"), since=pos)

    def test_commands_right_behind_the_header(self):
        # Header, then an IMAP command in the same packet, before any greeting.
        port = PORTS["lb_imap"]
        w = Wire(port, proxy_v2("192.0.2.14", "127.0.0.1", 40006, port) + b"a CAPABILITY\r\n")
        try:
            # Dovecot may first say "* OK Waiting for authentication process to respond.."
            # (a command came before its auth connection was up): any untagged OK is fine.
            lines = w.imap("a")
            self.assertTrue(all(l.startswith(b"* ") for l in lines[:-1]), lines)
            self.assertTrue(any(re.match(rb"\* CAPABILITY .*\bSTARTTLS\b", l) for l in lines),
                            lines)
            self.assertEqual(lines[-1][:5], b"a OK ")
        finally:
            w.close()

    def test_pop3s_behind_load_balancer(self):
        port = PORTS["lb_pop3s"]
        hdr = proxy_v1("192.0.2.10", "127.0.0.1", 40002, port)
        pos = STRICT.log_positions()["dovecot"]
        self.poplib_session("mail.beta.test", port, self.put("mail.beta.test", STRICT),
                            starttls=False, cls=header_sender(poplib.POP3_SSL, hdr))
        STRICT.wait_for_log("dovecot", login_line("bob@beta.test", "192.0.2.10",
                                                  local_name="mail.beta.test", proto="pop3"),
                            since=pos)

    def test_postfix_logs_real_address(self):
        tok = token()
        port = PORTS["lb_smtps"]
        pos = STRICT.log_positions()["postfix"]

        class Client(SMTPSWithHeader):
            header = proxy_v2("192.0.2.7", "127.0.0.1", 40003, port)

        self.smtplib_send("mail.alpha.test", port, "alice@alpha.test", "bob@beta.test", tok,
                          starttls=False, cls=Client)
        STRICT.wait_for_log("postfix", r"postfix/submission-haproxy/smtpd\[\d+\]: "
                            r"connect from unknown\[192\.0\.2\.7\]", since=pos)
        STRICT.wait_for_log("postfix", r"client=unknown\[192\.0\.2\.7\], sasl_method=PLAIN, "
                            r"sasl_username=alice@alpha\.test", since=pos)
        STRICT.wait_for_mail("bob@beta.test", timeout=15 * SLOW, contains=tok.encode())

    def test_proxy_protocol_v1_to_backend(self):
        # v1 carries the address but no TLS facts: Dovecot logs the real client, not secured.
        port = PORTS["lb_imaps_v1"]
        hdr = proxy_v2("192.0.2.11", "127.0.0.1", 40004, port)
        pos = PLAIN.log_positions()["dovecot"]
        tok = self.put("mail.alpha.test", PLAIN)
        self.imaplib_session("mail.alpha.test", port, tok, starttls=False,
                             cls=header_sender(imaplib.IMAP4_SSL, hdr))
        PLAIN.wait_for_log("dovecot", login_line("alice@alpha.test", "192.0.2.11",
                                                 r"127\.0\.0\.1"), since=pos)

    def test_proxy_protocol_v1_to_postfix_port25(self):
        port = PORTS["lb_mx_v1"]
        for starttls, src in ((False, "192.0.2.12"), (True, "192.0.2.13")):
            with self.subTest(starttls=starttls):
                tok = token()
                pos = STRICT.log_positions()["postfix"]

                class Client(SMTPWithHeader):
                    header = proxy_v1(src, "127.0.0.1", 40005, port)

                s = Client("mail.alpha.test", port, local_hostname="mta.example", timeout=T)
                try:
                    s.ehlo()
                    if starttls:
                        s.starttls(context=tls_ctx())
                        self.assertEqual(fingerprint_of(s.sock), FINGERPRINT["mail.alpha.test"])
                        s.ehlo()
                    s.sendmail("someone@example.org", ["alice@alpha.test"],
                               message("someone@example.org", "alice@alpha.test", tok))
                finally:
                    s.quit()
                STRICT.wait_for_log("postfix", r"postfix/smtp-haproxy/smtpd\[\d+\]: "
                                    rf"connect from unknown\[{re.escape(src)}\]", since=pos)
                STRICT.wait_for_mail("alice@alpha.test", timeout=15 * SLOW,
                                     contains=tok.encode())

    def test_header_passed_on_carries_client_sni_and_tls(self):
        cap = CAPTURE["imap"]
        port = PORTS["lb_capture"]
        for kind in ("v1", "v2"):
            with self.subTest(header=kind):
                before = cap.count()
                hdr = (proxy_v1 if kind == "v1" else proxy_v2)("192.0.2.7", "127.0.0.1", 5555, 993)
                raw = socket.create_connection(("127.0.0.1", port), timeout=T)
                raw.sendall(hdr)
                with tls_ctx().wrap_socket(raw, server_hostname="mail.beta.test") as s:
                    w = Wire(None, sock=s)
                    self.assertEqual(w.line(), CaptureBackend.GREETING["imap"])
                    w.send(b"a NOOP\r\n")
                    self.assertEqual(w.imap("a"), [b"a OK NOOP completed (capture)\r\n"])
                (conn,) = cap.new_conns(before, 1)
                self.assertEqual(conn.lines, [b"a NOOP"])
                got = parse_pp2(conn.header)
                self.assertEqual((got["src"], got["sport"], got["dst"], got["dport"]),
                                 ("192.0.2.7", 5555, "127.0.0.1", 993))
                self.assertEqual(got["authority"], "mail.beta.test")
                self.assertEqual(got["ssl_client"] & 0x01, 0x01)
                self.assertEqual(got["ssl_version"], "TLSv1.3")
                self.assertTrue(got["ssl_cipher"])
                self.assertIsNone(got["alpn"])
                wait_proxy_log(r"conn listener=lb_capture client=192\.0\.2\.7:5555 "
                               r"sni=mail\.beta\.test ", self.pos)

    def refused(self, port: int, data: bytes, listener: str, detail: str, *,
                wait: float = 10.0) -> None:
        cap = CAPTURE["imap"]
        before = cap.count()
        pos = log_pos()
        with socket.create_connection(("127.0.0.1", port), timeout=T) as s:
            try:
                if data:
                    s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.assertEqual(closed_without_data(s, wait), b"")
        wait_proxy_log(rf"conn listener={listener} .*outcome=proxy_header_refused "
                       rf"detail=\"{detail}", pos)
        time.sleep(0.2)
        self.assertEqual(cap.count(), before, "a connection reached the backend")

    def client_hello(self) -> bytes:
        """The first flight of a real TLS client, as bytes."""
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = tls_ctx().wrap_bio(inc, out, server_hostname="mail.alpha.test")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return out.read()

    def test_untrusted_source_refused(self):
        port = PORTS["lb_untrusted"]
        self.refused(port, proxy_v2("192.0.2.7", "127.0.0.1", 5555, 993) + self.client_hello(),
                     "lb_untrusted", "PROXY header refused: source not in trusted")

    def test_malformed_header_refused(self):
        port = PORTS["lb_capture"]
        for data in (b"PROXY TCP4 192.0.2.7 not-an-address 5555 993\r\n",
                     b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 99999\r\n",
                     PP2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),     # version 3
                     self.client_hello()):                                   # no header at all
            with self.subTest(data=data[:40]):
                self.refused(port, data, "lb_capture", "PROXY header refused: malformed header")

    def test_oversized_header_refused(self):
        self.refused(PORTS["lb_capture"], b"PROXY TCP4 " + b"1" * 200 + b"\r\n", "lb_capture",
                     "PROXY header refused: (header too long|malformed header)")

    def test_no_header_within_handshake_timeout(self):
        # handshake_timeout = 1 on this listener.
        self.refused(PORTS["lb_capture"], b"", "lb_capture", "no PROXY header in time")

    def test_partial_header_then_silence(self):
        self.refused(PORTS["lb_capture"], b"PROXY TCP4 192.0.2.7 ", "lb_capture",
                     "no PROXY header in time")


class StarttlsAfterTls(Base):
    """After STARTTLS the proxy must not advertise STARTTLS/STLS any more (SPEC.md; issue 3:
    "add STARTTLS/STLS to the capabilities the backend advertises ... and drop it from them
    after TLS"). A backend with TLS of its own (Dovecot with ssl = yes or required, which
    operators may keep behind the proxy) advertises it itself on the fresh session."""

    # BUG (proxy/mail/starttls.c, greeting_backend_input -> relay_start): after STARTTLS the fresh
    # backend session is relayed blind, so the backend's own STARTTLS/STLS reaches the client.
    def test_imap_strict_dovecot(self):
        w = Wire(PORTS["imap_pp2"])
        try:
            w.line()
            w.send(b"a STARTTLS\r\n")
            self.assertEqual(w.line(), b"a OK Begin TLS negotiation now\r\n")
            w.starttls("mail.alpha.test")
            w.send(b"b CAPABILITY\r\n")
            lines = w.imap("b")
            self.assertEqual(lines[-1][:5], b"b OK ")
            self.assertNotIn(b"STARTTLS", b"".join(lines))
        finally:
            w.close()

    # BUG: as above.
    def test_pop3_strict_dovecot(self):
        w = Wire(PORTS["pop3_pp2"])
        try:
            w.line()
            w.send(b"STLS\r\n")
            self.assertEqual(w.line(), b"+OK Begin TLS negotiation\r\n")
            w.starttls("mail.alpha.test")
            w.send(b"CAPA\r\n")
            capa = w.pop3_multi()
            self.assertEqual(capa[0][:3], b"+OK")
            self.assertNotIn(b"STLS\r\n", capa)
        finally:
            w.close()

    # BUG: as above.
    def test_capture_backends_advertising_starttls(self):
        for proto, listener_name in (("imap", "adv_imap"), ("pop3", "adv_pop3"),
                                     ("smtp", "adv_smtp")):
            with self.subTest(proto=proto):
                w = Wire(PORTS[listener_name])
                try:
                    if proto == "imap":
                        w.line()
                        w.send(b"a STARTTLS\r\n")
                        w.line()
                        w.starttls("mail.beta.test")
                        w.send(b"b CAPABILITY\r\n")
                        reply = w.imap("b")
                    elif proto == "pop3":
                        w.line()
                        w.send(b"STLS\r\n")
                        w.line()
                        w.starttls("mail.beta.test")
                        w.send(b"CAPA\r\n")
                        reply = w.pop3_multi()
                    else:
                        w.smtp()
                        w.send(b"EHLO client.test\r\n")
                        w.smtp()
                        w.send(b"STARTTLS\r\n")
                        w.smtp()
                        w.starttls("mail.beta.test")
                        w.send(b"EHLO client.test\r\n")
                        reply = w.smtp()
                        self.assertEqual(reply[-1], b"250 8BITMIME\r\n")
                    self.assertNotIn(b"STARTTLS", b"".join(reply))
                    self.assertNotIn(b"STLS", b"".join(reply))
                finally:
                    w.close()


    # BUG: as above -- after TLS a second STARTTLS is relayed to the backend, which (when it
    # has TLS of its own) starts a handshake inside the tunnel. The proxy should refuse it.
    def test_second_starttls_is_not_forwarded(self):
        for proto, listener_name in (("imap", "inj_imap"), ("pop3", "inj_pop3"),
                                     ("smtp", "inj_smtp")):
            with self.subTest(proto=proto):
                cap = CAPTURE[proto]
                before = cap.count()
                w = Wire(PORTS[listener_name])
                try:
                    if proto == "imap":
                        w.line()
                        w.send(b"a STARTTLS\r\n")
                        w.line()
                        w.starttls("mail.alpha.test")
                        w.send(b"b STARTTLS\r\n")
                        self.assertTrue(w.line().startswith(b"b BAD "))
                        w.send(b"c LOGOUT\r\n")
                    elif proto == "pop3":
                        w.line()
                        w.send(b"STLS\r\n")
                        w.line()
                        w.starttls("mail.alpha.test")
                        w.send(b"STLS\r\n")
                        self.assertTrue(w.line().startswith(b"-ERR "))
                        w.send(b"QUIT\r\n")
                    else:
                        w.smtp()
                        w.send(b"STARTTLS\r\n")
                        w.smtp()
                        w.starttls("mail.alpha.test")
                        w.send(b"STARTTLS\r\n")
                        self.assertEqual(w.smtp()[0][:1], b"5")
                        w.send(b"QUIT\r\n")
                    w.rest()
                finally:
                    w.close()
                _, tls = cap.new_conns(before, 2)
                self.assertFalse(any(b"STARTTLS" in l.upper() or l.upper().startswith(b"STLS")
                                     for l in tls.lines), tls.lines)


# ------------------------------------------------------------------------------------------
# Routes by SNI name to a second backend
# ------------------------------------------------------------------------------------------

class Routes(Base):
    """mail.beta.test's IMAP and POP3 go to the strict backend (with PROXY v2, set on the
    route); everything else to the listeners' own backend (PLAIN). Routes are global, so this
    class has its own mailsnid."""

    @classmethod
    def setUpClass(cls):
        cls.ports: dict[str, int] = {}
        saved = dict(PORTS)
        try:
            ls = [listener("r_imaps", "imap", "implicit", PLAIN.addr("imap")),
                  listener("r_imap", "imap", "starttls", PLAIN.addr("imap")),
                  listener("r_pop3s", "pop3", "implicit", PLAIN.addr("pop3")),
                  listener("r_smtps", "smtp", "implicit", PLAIN.addr("submission"))]
            cls.ports = {k: PORTS[k] for k in PORTS if k.startswith("r_")}
        finally:
            PORTS.clear()
            PORTS.update(saved)
        routes = f"""routes = (
  {{ names = [ "mail.beta.test" ]; imap = "{STRICT.addr('imap_haproxy')}";
    pop3 = "{STRICT.addr('pop3_haproxy')}"; proxy_protocol = "v2"; }}
);"""
        cls.proc = MailsnidProcess(base_config(ls, routes), os.path.join(TMP, "routes"),
                                   name="routes").start(list(cls.ports.values()))

    @classmethod
    def tearDownClass(cls):
        cls.proc.stop()

    def test_imap_route_by_sni(self):
        for listener_name, starttls in (("r_imaps", False), ("r_imap", True)):
            with self.subTest(listener=listener_name):
                port = self.ports[listener_name]
                # bob's message exists only on STRICT, alice's only on PLAIN.
                tok_b, tok_a = token(), token()
                STRICT.put_message("bob@beta.test", message("c@hoster.test", "bob@beta.test", tok_b))
                PLAIN.put_message("alice@alpha.test",
                                  message("c@hoster.test", "alice@alpha.test", tok_a))
                pos_s = STRICT.log_positions()["dovecot"]
                pos_p = PLAIN.log_positions()["dovecot"]
                self.imaplib_session("mail.beta.test", port, tok_b, starttls=starttls)
                self.imaplib_session("mail.alpha.test", port, tok_a, starttls=starttls)
                STRICT.wait_for_log("dovecot", login_line("bob@beta.test", "127.0.0.1",
                                                          local_name="mail.beta.test"),
                                    since=pos_s)
                PLAIN.wait_for_log("dovecot", login_line("alice@alpha.test", "127.0.0.1",
                                                         r"127\.0\.0\.2"), since=pos_p)
                self.assertNotIn("alice@alpha.test", STRICT.dovecot_log(pos_s))
                self.assertNotIn("bob@beta.test", PLAIN.dovecot_log(pos_p))

    def test_pop3_route_by_sni(self):
        tok = token()
        STRICT.put_message("bob@beta.test", message("c@hoster.test", "bob@beta.test", tok))
        pos = STRICT.log_positions()["dovecot"]
        self.poplib_session("mail.beta.test", self.ports["r_pop3s"], tok, starttls=False)
        STRICT.wait_for_log("dovecot", login_line("bob@beta.test", "127.0.0.1",
                                                  local_name="mail.beta.test", proto="pop3"),
                            since=pos)

    def test_protocol_without_route_uses_listener_backend(self):
        # The route names no smtp backend: mail.beta.test's SMTP stays on PLAIN.
        tok = token()
        pos = PLAIN.log_positions()["postfix"]
        self.smtplib_send("mail.beta.test", self.ports["r_smtps"], "bob@beta.test",
                          "carol@hoster.test", tok, starttls=False)
        PLAIN.wait_for_log("postfix", r"sasl_username=bob@beta\.test", since=pos)
        PLAIN.wait_for_mail("carol@hoster.test", timeout=15 * SLOW, contains=tok.encode())
        wait_proxy_log(rf"conn listener=r_smtps .*sni=mail\.beta\.test .*"
                       rf"backend={re.escape(PLAIN.addr('submission'))} ", 0, self.proc)


# ------------------------------------------------------------------------------------------
# The backend goes away and comes back
# ------------------------------------------------------------------------------------------

class BackendDown(Base):
    WANT = {"imap": b"* BYE [UNAVAILABLE] ", "pop3": b"-ERR [SYS/TEMP] ",
            "smtp": b"421 4.3.0 "}
    LISTENERS = (("down_imaps", "imap", True), ("down_imap", "imap", False),
                 ("down_pop3s", "pop3", True), ("down_pop3", "pop3", False),
                 ("down_smtps", "smtp", True), ("down_submission", "smtp", False))

    def tearDown(self):
        if not DOWN.started:
            DOWN.start()

    def works(self) -> None:
        """Every listener of DOWN serves a real session."""
        tok = token()
        DOWN.put_message("alice@alpha.test", message("c@hoster.test", "alice@alpha.test", tok))
        m = imaplib.IMAP4_SSL("mail.alpha.test", PORTS["down_imaps"], ssl_context=tls_ctx(),
                              timeout=T)
        m.login("alice@alpha.test", USERS["alice@alpha.test"])
        m.logout()
        m = imaplib.IMAP4("mail.alpha.test", PORTS["down_imap"], timeout=T)
        m.starttls(ssl_context=tls_ctx())
        m.login("alice@alpha.test", USERS["alice@alpha.test"])
        m.logout()
        for port, starttls in ((PORTS["down_pop3s"], False), (PORTS["down_pop3"], True)):
            if starttls:
                p = poplib.POP3("mail.alpha.test", port, timeout=T)
                p.stls(context=tls_ctx())
            else:
                p = poplib.POP3_SSL("mail.alpha.test", port, context=tls_ctx(), timeout=T)
            p.user("alice@alpha.test")
            p.pass_(USERS["alice@alpha.test"])
            self.assertGreaterEqual(p.stat()[0], 1)
            p.quit()
        s = smtplib.SMTP_SSL("mail.alpha.test", PORTS["down_smtps"], context=tls_ctx(),
                             local_hostname="client.test", timeout=T)
        s.login("alice@alpha.test", USERS["alice@alpha.test"])
        s.quit()
        s = smtplib.SMTP("mail.alpha.test", PORTS["down_submission"],
                         local_hostname="client.test", timeout=T)
        s.starttls(context=tls_ctx())
        s.login("alice@alpha.test", USERS["alice@alpha.test"])
        s.quit()

    def test_each_protocol_answers_then_service_resumes(self):
        pid = PROXY.proc.pid
        self.works()
        # A session open when the backend goes: it ends, it does not hang.
        open_session = imaplib.IMAP4_SSL("mail.alpha.test", PORTS["down_imaps"],
                                         ssl_context=tls_ctx(), timeout=T)
        open_session.login("alice@alpha.test", USERS["alice@alpha.test"])
        DOWN.stop()
        try:
            open_session.noop()
            open_session.noop()
        except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError):
            pass
        finally:
            open_session.shutdown()
        for listener, proto, implicit in self.LISTENERS:
            with self.subTest(listener=listener):
                pos = log_pos()
                reply = first_line(PORTS[listener], implicit)
                self.assertTrue(reply.startswith(self.WANT[proto]), reply)
                wait_proxy_log(rf"conn listener={listener} .*outcome=backend_down", pos)
        DOWN.start()
        self.assertIsNone(PROXY.proc.poll())
        self.assertEqual(PROXY.proc.pid, pid)
        self.works()

    def test_backend_gone_between_starttls_and_the_fresh_session(self):
        # The plaintext session worked; by the time TLS is up the backend is gone: the client
        # hears it over TLS.
        w = Wire(PORTS["down_imap"])
        try:
            w.line()
            w.send(b"a STARTTLS\r\n")
            self.assertEqual(w.line(), b"a OK Begin TLS negotiation now\r\n")
            DOWN.stop()
            w.starttls("mail.alpha.test")
            self.assertTrue(w.line().startswith(b"* BYE [UNAVAILABLE] "))
        finally:
            w.close()
        wait_proxy_log(r"conn listener=down_imap .*outcome=backend_down", self.pos)
        DOWN.start()
        self.works()


def first_line(port: int, implicit: bool) -> bytes:
    """The first line a client gets on PORT (over TLS when IMPLICIT), and that the
    connection then closes."""
    w = Wire(port)
    try:
        if implicit:
            w.sock = tls_ctx().wrap_socket(w.sock, server_hostname="mail.alpha.test")
        line = w.line()
        rest = w.rest()
        assert rest == b"", rest
        return line
    finally:
        w.close()


if __name__ == "__main__":
    unittest.main()
