"""Issue 13, the mail STARTTLS engine: items 3, 4, 13, 14, 15, 16 and the QUIT/LOGOUT part of 17.

Real clients (smtplib, swaks, imaplib, poplib) against real Postfix and Dovecot where that is
what a user would have (tests/harness/backends.py, on 127.0.0.2):
  PLAIN   ssl = no: advertises AUTH=PLAIN / USER / SASL / AUTH before TLS, as a backend behind a
          TLS proxy is set up to (smtpd_tls_auth_only = no, disable_plaintext_auth = no).
  STRICT  Dovecot with ssl = required: it advertises STARTTLS/STLS itself, and answers it with
          "Begin TLS negotiation now" -- what an implicit-TLS listener must not pass on. Reached
          through its haproxy ports, so the PROXY v2 SSL TLV lets logins through.
Small scripted backends where a line no real backend sends is needed (a 1000-byte EHLO line).
"""

from __future__ import annotations

import imaplib
import os
import poplib
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mailsnid_runner import SLOW, MailsnidProcess, free_port, listener_entry
import certs
from backends import USERS, MailBackends

TMP = ""
PKI: dict[str, str] = {}
PLAIN: MailBackends | None = None
STRICT: MailBackends | None = None
PROXY: MailsnidProcess | None = None
PORTS: dict[str, int] = {}
SCRIPTED: dict[str, "Scripted"] = {}
T = 15 * SLOW
ALICE = "alice@alpha.test"


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Scripted:
    """A line-based mail backend: GREETING first, then ANSWER(line) for each command line."""

    def __init__(self, greeting: bytes, answer):
        self.greeting = greeting
        self.answer = answer
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket):
        try:
            c.sendall(self.greeting)
            buf = b""
            while True:
                chunk = c.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    reply = self.answer(line.rstrip(b"\r"))
                    if reply is None:
                        return
                    c.sendall(reply)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def long_ehlo(line: bytes) -> bytes | None:
    """An SMTP backend that offers STARTTLS last, after a 1000-byte keyword line."""
    verb = line.split(b" ")[0].upper()
    if verb == b"EHLO":
        return b"250-scripted.test\r\n250-X" + b"L" * 1000 + b"\r\n250 STARTTLS\r\n"
    if verb == b"QUIT":
        return None
    return b"250 2.0.0 ok\r\n"


def listener(name: str, proto: str, tls: str, backend: str, extra: str = "") -> str:
    PORTS[name] = free_port(avoid=PORTS.values())
    return listener_entry(name, PORTS[name], proto, tls, backend, extra)


def setUpModule():
    global TMP, PLAIN, STRICT, PROXY
    TMP = tempfile.mkdtemp(prefix="mailsnid-hst-")
    os.chmod(TMP, 0o755)
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))
    PLAIN = MailBackends(os.path.join(TMP, "plain")).start()
    STRICT = MailBackends(os.path.join(TMP, "strict"), strict=True, postfix=False).start()
    SCRIPTED["long_ehlo"] = Scripted(b"220 scripted.test ESMTP\r\n", long_ehlo)
    req = 'starttls = "required";'
    v2 = 'proxy_protocol = "v2";'
    P, S = PLAIN, STRICT
    listeners = [
        listener("sub_req", "smtp", "starttls", P.addr("submission"), req),
        listener("smtp_opt", "smtp", "starttls", P.addr("smtp")),
        listener("imap_req", "imap", "starttls", P.addr("imap"), req),
        listener("imap_opt", "imap", "starttls", P.addr("imap")),
        listener("pop3_req", "pop3", "starttls", P.addr("pop3"), req),
        listener("pop3_opt", "pop3", "starttls", P.addr("pop3")),
        listener("imaps", "imap", "implicit", S.addr("imap_haproxy"), v2),
        listener("pop3s", "pop3", "implicit", S.addr("pop3_haproxy"), v2),
        listener("smtps", "smtp", "implicit", P.addr("submission")),
        listener("smtp_long", "smtp", "starttls", SCRIPTED["long_ehlo"].addr),
        listener("quit_smtp", "smtp", "starttls", P.addr("smtp")),
        listener("quit_imap", "imap", "starttls", P.addr("imap")),
        listener("quit_pop3", "pop3", "starttls", P.addr("pop3"), req),
    ]
    joined = ",\n  ".join(listeners)
    cfg = f"""
workers = 1;
log = {{ level = "info"; }};
drain_timeout = 5;
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
listeners = (
  {joined}
);
"""
    PROXY = MailsnidProcess(cfg, os.path.join(TMP, "proxy")).start(list(PORTS.values()))


def tearDownModule():
    try:
        if PROXY:
            PROXY.stop()
    finally:
        for s in SCRIPTED.values():
            s.close()
        for mb in (PLAIN, STRICT):
            if mb:
                mb.stop()
        shutil.rmtree(TMP, ignore_errors=True)


def connect(name: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", PORTS[name]), timeout=T)


def read_until(s, *endings: bytes) -> bytes:
    """Reads until the data ends with one of ENDINGS (or the stream ends)."""
    data = b""
    while not any(data.endswith(e) for e in endings):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_lines(s, n: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n")[:n]


def smtp_reply(s) -> bytes:
    """One complete (possibly multi-line) SMTP reply."""
    data = b""
    while True:
        chunk = s.recv(1)
        if not chunk:
            return data
        data += chunk
        if data.endswith(b"\r\n"):
            last = data[:-2].rsplit(b"\r\n", 1)[-1]
            if len(last) >= 4 and last[3:4] == b" ":
                return data


def read_all(s) -> bytes:
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


class RecordingSMTP(smtplib.SMTP):
    """smtplib as it is, with every command it sends kept."""

    def __init__(self, *a, **kw):
        self.sent: list[bytes] = []
        super().__init__(*a, **kw)

    def send(self, s):
        self.sent.append(s if isinstance(s, bytes) else s.encode())
        super().send(s)


# ------------------------------------------------------------------------------------------
# Item 3: no login offered before TLS on required listeners
# ------------------------------------------------------------------------------------------

class LoginHiddenBeforeTls(unittest.TestCase):
    def test_smtplib_sends_no_auth_in_clear(self):
        c = RecordingSMTP("127.0.0.1", PORTS["sub_req"], timeout=T)
        try:
            c.ehlo("client.example")
            self.assertFalse(c.has_extn("auth"), c.esmtp_features)
            self.assertTrue(c.has_extn("starttls"))
            with self.assertRaises(smtplib.SMTPNotSupportedError):
                c.login(ALICE, USERS[ALICE])
            self.assertFalse([x for x in c.sent if x.upper().startswith(b"AUTH")], c.sent)
            # After TLS the backend's AUTH is offered and works.
            c.starttls(context=insecure())
            c.ehlo("client.example")
            self.assertTrue(c.has_extn("auth"), c.esmtp_features)
            c.login(ALICE, USERS[ALICE])
        finally:
            c.close()

    def test_swaks_sends_no_auth_in_clear(self):
        r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(PORTS["sub_req"]),
                            "--to", ALICE, "--from", ALICE, "--auth", "PLAIN",
                            "--auth-user", ALICE, "--auth-password", USERS[ALICE],
                            "--quit-after", "AUTH", "--timeout", str(int(T))],
                           capture_output=True, text=True, timeout=T * 2)
        out = r.stdout + r.stderr
        self.assertNotIn(" -> AUTH", out)
        self.assertIn("250-STARTTLS", out)

    def test_imap_greeting_and_capability(self):
        with connect("imap_req") as s:
            greeting = read_until(s, b"\r\n")
            s.sendall(b"a CAPABILITY\r\n")
            caps = read_until(s, b"have more.\r\n")
        for text in (greeting, caps):
            self.assertIn(b"CAPABILITY", text)
            self.assertNotIn(b"AUTH=", text.upper())
            self.assertIn(b"LOGINDISABLED", text)
            self.assertIn(b"STARTTLS", text)

    def test_imaplib_login_after_starttls(self):
        m = imaplib.IMAP4("127.0.0.1", PORTS["imap_req"], timeout=T)
        try:
            self.assertFalse([c for c in m.capabilities if c.startswith("AUTH=")], m.capabilities)
            self.assertIn("LOGINDISABLED", m.capabilities)
            m.starttls(ssl_context=insecure())
            self.assertIn("AUTH=PLAIN", m.capabilities)
            m.login(ALICE, USERS[ALICE])
        finally:
            m.logout()

    def test_poplib_capa_then_login_after_stls(self):
        p = poplib.POP3("127.0.0.1", PORTS["pop3_req"], timeout=T)
        try:
            caps = p.capa()
            self.assertNotIn("USER", caps)
            self.assertNotIn("SASL", caps)
            self.assertIn("STLS", caps)
            p.stls(context=insecure())
            caps = p.capa()
            self.assertIn("USER", caps)
            p.user(ALICE)
            p.pass_(USERS[ALICE])
            p.quit()
        finally:
            p.close()


# ------------------------------------------------------------------------------------------
# Item 4: implicit-TLS listeners do not pass the backend's STARTTLS/STLS on
# ------------------------------------------------------------------------------------------

class ImplicitTlsNoStarttls(unittest.TestCase):
    def test_strict_dovecot_offers_starttls_itself(self):
        # The premise: without mailsnid's editing this backend offers (and answers) STARTTLS.
        with socket.create_connection((STRICT.host, STRICT.imap_port), timeout=T) as s:
            self.assertIn(b"STARTTLS", read_until(s, b"\r\n"))

    def test_imaps_imaplib(self):
        m = imaplib.IMAP4_SSL("127.0.0.1", PORTS["imaps"], ssl_context=insecure(), timeout=T)
        try:
            self.assertNotIn("STARTTLS", m.capabilities)     # the greeting's [CAPABILITY]
            typ, data = m.capability()
            self.assertEqual(typ, "OK")
            self.assertNotIn(b"STARTTLS", data[0])
            with self.assertRaisesRegex(imaplib.IMAP4.error, "already active"):
                m._simple_command("STARTTLS")
            m.login(ALICE, USERS[ALICE])
            self.assertEqual(m.select("INBOX")[0], "OK")
        finally:
            m.logout()

    def test_pop3s_poplib(self):
        p = poplib.POP3_SSL("127.0.0.1", PORTS["pop3s"], context=insecure(), timeout=T)
        try:
            self.assertNotIn("STLS", p.capa())
            with self.assertRaisesRegex(poplib.error_proto, "already active"):
                p._shortcmd("STLS")
            p.user(ALICE)
            p.pass_(USERS[ALICE])
            p.stat()
            p.quit()
        finally:
            p.close()

    def test_smtps_smtplib(self):
        c = smtplib.SMTP_SSL("127.0.0.1", PORTS["smtps"], context=insecure(), timeout=T)
        try:
            c.ehlo("client.example")
            self.assertFalse(c.has_extn("starttls"))
            code, text = c.docmd("STARTTLS")
            self.assertEqual(code, 554, text)
            self.assertIn(b"TLS already active", text)
            c.login(ALICE, USERS[ALICE])
            c.sendmail(ALICE, [ALICE], b"Subject: implicit\r\n\r\nhello\r\n")
            c.quit()
        finally:
            c.close()


# ------------------------------------------------------------------------------------------
# Item 13: refusals wait behind earlier replies
# ------------------------------------------------------------------------------------------

class RepliesInOrder(unittest.TestCase):
    def test_smtp_required_noop_then_mail(self):
        with connect("sub_req") as s:
            smtp_reply(s)
            s.sendall(b"EHLO c\r\n")
            smtp_reply(s)
            s.sendall(b"NOOP\r\nMAIL FROM:<a@alpha.test>\r\n")
            first, second = smtp_reply(s), smtp_reply(s)
        self.assertTrue(first.startswith(b"250"), (first, second))
        self.assertTrue(second.startswith(b"530"), (first, second))

    def test_pop3_required_capa_then_user(self):
        with connect("pop3_req") as s:
            read_until(s, b"\r\n")
            s.sendall(b"CAPA\r\nUSER alice\r\n")
            data = read_until(s, b"use STLS first\r\n")
        capa_end = data.find(b"\r\n.\r\n")
        refusal = data.find(b"-ERR")
        self.assertGreater(capa_end, 0, data)
        self.assertGreater(refusal, capa_end, data)

    def test_smtp_optional_noop_then_starttls_with_argument(self):
        with connect("smtp_opt") as s:
            smtp_reply(s)
            s.sendall(b"NOOP\r\nSTARTTLS x\r\n")
            first, second = smtp_reply(s), smtp_reply(s)
        self.assertTrue(first.startswith(b"250"), (first, second))
        self.assertTrue(second.startswith(b"501"), (first, second))

    def test_smtp_optional_refusal_then_plaintext_mail(self):
        # The client goes on in plaintext (MAIL) while a refusal still waits its turn.
        with connect("smtp_opt") as s:
            smtp_reply(s)
            s.sendall(b"EHLO c\r\n")
            smtp_reply(s)
            s.sendall(b"NOOP\r\nSTARTTLS x\r\nMAIL FROM:<a@alpha.test>\r\nRSET\r\n")
            replies = [smtp_reply(s)[:3] for _ in range(4)]
        self.assertEqual(replies, [b"250", b"501", b"250", b"250"])


# ------------------------------------------------------------------------------------------
# Item 14: a half-close before TLS still gets the replies
# ------------------------------------------------------------------------------------------

class HalfCloseBeforeTls(unittest.TestCase):
    def test_smtp_ehlo_quit_fin(self):
        with connect("smtp_opt") as s:
            smtp_reply(s)
            s.sendall(b"EHLO c\r\nQUIT\r\n")
            s.shutdown(socket.SHUT_WR)
            data = read_all(s)
        self.assertIn(b"250 ", data)
        self.assertIn(b"250-STARTTLS", data)
        self.assertIn(b"221 ", data)

    def test_imap_capability_logout_fin(self):
        with connect("imap_opt") as s:
            read_until(s, b"\r\n")
            s.sendall(b"a CAPABILITY\r\nb LOGOUT\r\n")
            s.shutdown(socket.SHUT_WR)
            data = read_all(s)
        self.assertIn(b"a OK", data)
        self.assertIn(b"b OK", data)

    def test_required_refusal_still_comes_after_fin(self):
        with connect("pop3_req") as s:
            read_until(s, b"\r\n")
            s.sendall(b"CAPA\r\nUSER alice\r\n")
            s.shutdown(socket.SHUT_WR)
            data = read_all(s)
        self.assertIn(b"\r\n.\r\n", data)
        self.assertIn(b"-ERR [AUTH]", data)


# ------------------------------------------------------------------------------------------
# Item 15: IMAP tags up to the line limit
# ------------------------------------------------------------------------------------------

class LongImapTags(unittest.TestCase):
    def starttls_with_tag(self, name: str, tag: bytes):
        with connect(name) as s:
            read_until(s, b"\r\n")
            s.sendall(tag + b" STARTTLS\r\n")
            reply = read_until(s, b"\r\n")
            self.assertEqual(reply, tag + b" OK Begin TLS negotiation now\r\n")
            t = insecure().wrap_socket(s)
            t.sendall(b"a CAPABILITY\r\n")
            caps = read_until(t, b"have more.\r\n")
            self.assertIn(b"a OK", caps)
            self.assertNotIn(b"STARTTLS", caps)
            t.close()

    def test_optional_tag_of_100(self):
        self.starttls_with_tag("imap_opt", b"T" * 100)

    def test_required_tag_of_4000(self):
        self.starttls_with_tag("imap_req", b"x" * 4000)


# ------------------------------------------------------------------------------------------
# Item 16: the after-TLS EHLO filter edits lines of any length
# ------------------------------------------------------------------------------------------

class LongEhloLines(unittest.TestCase):
    def test_starttls_last_after_a_long_line(self):
        c = smtplib.SMTP("127.0.0.1", PORTS["smtp_long"], timeout=T)
        try:
            c.starttls(context=insecure())
            code, text = c.ehlo("client.example")
            self.assertEqual(code, 250)
            self.assertFalse(c.has_extn("starttls"), text[-200:])
            self.assertTrue(text.endswith(b"X" + b"L" * 1000), text[-100:])
        finally:
            c.close()


# ------------------------------------------------------------------------------------------
# Item 17 (part): the client's own QUIT / LOGOUT before TLS is a normal end
# ------------------------------------------------------------------------------------------

class QuitIsOk(unittest.TestCase):
    def ends_ok(self, name: str, greeting_end: bytes, cmd: bytes, reply_end: bytes):
        with connect(name) as s:
            read_until(s, greeting_end)
            s.sendall(cmd)
            read_until(s, reply_end)
            read_all(s)     # the proxy closes first: the client waits for it
        line = PROXY.wait_log(rf"conn listener={name} ")[-1]
        self.assertIn("outcome=ok", line)

    def test_smtp_quit(self):
        self.ends_ok("quit_smtp", b"\r\n", b"QUIT\r\n", b"\r\n")

    def test_imap_logout(self):
        self.ends_ok("quit_imap", b"\r\n", b"a LOGOUT\r\n", b"a OK Logout completed.\r\n")

    def test_pop3_quit(self):
        self.ends_ok("quit_pop3", b"\r\n", b"QUIT\r\n", b"\r\n")


if __name__ == "__main__":
    unittest.main()
