"""Handshake hardening (issue 13, items 5, 6, 7 and 21), against the real binary:

- ALPN: a mail listener refuses a ClientHello whose ALPN list names only other protocols
  (ALPACA), selects its own protocol when offered, and carries on without ALPN otherwise; an
  HTTP listener refuses a list of mail protocols only.
- Session resumption is bound to the SNI name (and listener) the session was made for, in
  TLS 1.2 and 1.3, with and without shared ticket keys.
- A wildcard for a whole top-level domain (`*.com`) is refused with a warning.
- Two certificates alike in name, key type and expiry: the one listed first is served, at
  every reload.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import unittest

from mailsnid_runner import MAILSNID, SLOW, MailsnidProcess, free_port
from fakebackend import EchoBackend
import certs

PKI: dict[str, str] = {}
TMP = ""
NO_APP = r"(?i)alert no.application.protocol"  # the alert, as Python's ssl reports it


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-hardtls-")
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def config(listeners: str, tls_extra: str = "", certificates: str | None = None) -> str:
    if certificates is None:
        certificates = (f'{{ cert = "{PKI["alpha_ec_cert"]}"; key = "{PKI["alpha_ec_key"]}"; }},'
                        f'{{ cert = "{PKI["beta_wild_cert"]}"; key = "{PKI["beta_wild_key"]}"; }}')
    return f"""
workers = 1;
log = {{ level = "debug"; }};
drain_timeout = 5;
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; {tls_extra} }};
certificates = ( {certificates} );
listeners = ( {listeners} );
"""


def listener(name: str, port: int, proto: str, backend: str, extra: str = "") -> str:
    return (f'{{ name = "{name}"; listen = "127.0.0.1:{port}"; protocol = "{proto}"; '
            f'tls = "implicit"; backend = "{backend}"; {extra} }}')


def client_ctx(alpn: list[str] | None = None, version: ssl.TLSVersion | None = None):
    ctx = ssl.create_default_context(cafile=PKI["ca"])
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    if version is not None:
        ctx.maximum_version = version
    return ctx


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)

    def start(self, cfg: str, ports: list[int], name: str = "mailsnid") -> MailsnidProcess:
        p = MailsnidProcess(cfg, self.dir, name=name).start(ports)
        self.addCleanup(p.stop)
        return p

    def echo(self, greeting: bytes = b"") -> EchoBackend:
        b = EchoBackend(greeting=greeting)
        self.addCleanup(b.stop)
        return b


# ---- item 5: cross-protocol ALPN ----

class Alpn(Base):
    @classmethod
    def setUpClass(cls):
        cls.backend = EchoBackend()
        cls.ports = {p: free_port() for p in ("imap", "pop3", "smtp", "http")}
        cls.dir_ = tempfile.mkdtemp(prefix="alpn-", dir=TMP)
        cls.proc = MailsnidProcess(config(", ".join(
            listener(p + "s", port, p, cls.backend.addr) for p, port in cls.ports.items())),
            cls.dir_).start(list(cls.ports.values()))

    @classmethod
    def tearDownClass(cls):
        cls.proc.stop()
        cls.backend.stop()

    def connect(self, proto: str, alpn: list[str] | None) -> str | None:
        """Handshakes (ALPN list ALPN, or none) and returns the protocol the server selected."""
        with socket.create_connection(("127.0.0.1", self.ports[proto]), timeout=10 * SLOW) as raw:
            with client_ctx(alpn).wrap_socket(raw, server_hostname="mail.alpha.test") as s:
                s.sendall(b"ping")
                self.assertEqual(s.recv(4), b"ping")
                return s.selected_alpn_protocol()

    def refused(self, proto: str, alpn: list[str]) -> None:
        before = len(self.backend.received)
        with socket.create_connection(("127.0.0.1", self.ports[proto]), timeout=10 * SLOW) as raw:
            with self.assertRaises(ssl.SSLError) as cm:
                with client_ctx(alpn).wrap_socket(raw, server_hostname="mail.alpha.test") as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: mail.alpha.test\r\n\r\n")
                    s.recv(100)
        self.assertRegex(str(cm.exception), NO_APP, (proto, alpn))
        self.assertEqual(len(self.backend.received), before, "a backend was connected")

    def test_mail_listeners_refuse_a_list_of_other_protocols(self):
        for proto in ("imap", "pop3", "smtp"):
            with self.subTest(proto=proto):
                self.refused(proto, ["http/1.1"])
                self.refused(proto, ["h2", "http/1.1"])
                others = [p for p in ("imap", "pop3", "smtp") if p != proto]
                self.refused(proto, others)
        self.proc.wait_log(r"conn listener=imaps .*outcome=handshake_failed "
                           r".*no application protocol")

    def test_mail_listeners_select_their_own_protocol(self):
        for proto in ("imap", "pop3", "smtp"):
            with self.subTest(proto=proto):
                self.assertEqual(self.connect(proto, [proto]), proto)
                self.assertEqual(self.connect(proto, ["http/1.1", proto]), proto)
                self.assertIsNone(self.connect(proto, None))

    def test_http_listener(self):
        self.assertEqual(self.connect("http", ["h2", "http/1.1"]), "http/1.1")
        self.assertIsNone(self.connect("http", None))
        self.assertIsNone(self.connect("http", ["h2"]))  # as before: no ALPN, carry on
        self.refused("http", ["imap"])
        self.refused("http", ["smtp", "pop3"])

    def test_openssl_s_client(self):
        def s_client(alpn: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{self.ports['imap']}",
                 "-servername", "mail.alpha.test", "-alpn", alpn, "-CAfile", PKI["ca"]],
                input=b"a NOOP\r\n", capture_output=True, timeout=20 * SLOW)

        r = s_client("http/1.1")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"no application protocol", r.stderr)
        r = s_client("imap")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"ALPN protocol: imap", r.stdout)

    def test_starttls_listener(self):
        backend = self.echo(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        port = free_port()
        self.start(config(f'{{ name = "imap"; listen = "127.0.0.1:{port}"; protocol = "imap"; '
                          f'tls = "starttls"; backend = "{backend.addr}"; }}'), [port])

        def upgrade(alpn: list[str]) -> ssl.SSLSocket:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
            self.addCleanup(raw.close)
            self.assertTrue(raw.recv(200).startswith(b"* OK"))
            raw.sendall(b"s STARTTLS\r\n")
            self.assertTrue(raw.recv(200).startswith(b"s OK"))
            return client_ctx(alpn).wrap_socket(raw, server_hostname="mail.alpha.test")

        with self.assertRaisesRegex(ssl.SSLError, NO_APP):
            upgrade(["http/1.1"])
        s = upgrade(["imap", "http/1.1"])
        self.assertEqual(s.selected_alpn_protocol(), "imap")
        s.close()


class AlpnToDovecot(Base):
    """The selected protocol reaches a real Dovecot in the PROXY v2 ALPN TLV, which it accepts
    only when it is the service's own; the login works over IMAP and POP3."""

    def test_imap_and_pop3_login_with_alpn(self):
        from backends import USERS, MailBackends
        import imaplib
        import poplib
        dovecot = MailBackends(os.path.join(self.dir, "backends"), strict=True,
                               postfix=False).start()
        self.addCleanup(dovecot.stop)
        imaps, pop3s = free_port(), free_port()
        pp2 = 'proxy_protocol = "v2";'
        self.start(config(listener("imaps", imaps, "imap", dovecot.addr("imap_haproxy"), pp2) +
                          ", " + listener("pop3s", pop3s, "pop3", dovecot.addr("pop3_haproxy"),
                                          pp2)), [imaps, pop3s])
        user = "alice@alpha.test"
        m = imaplib.IMAP4_SSL("127.0.0.1", imaps, timeout=10 * SLOW,
                              ssl_context=self.ctx("mail.alpha.test", ["h2", "imap"]))
        self.assertEqual(m.sock.selected_alpn_protocol(), "imap")
        self.assertEqual(m.login(user, USERS[user])[0], "OK")
        m.logout()
        p = poplib.POP3_SSL("127.0.0.1", pop3s, timeout=10 * SLOW,
                            context=self.ctx("mail.alpha.test", ["pop3", "http/1.1"]))
        self.assertEqual(p.sock.selected_alpn_protocol(), "pop3")
        p.user(user)
        self.assertTrue(p.pass_(USERS[user]).startswith(b"+OK"))
        p.quit()

    @staticmethod
    def ctx(sni: str, alpn: list[str]) -> ssl.SSLContext:
        # imaplib and poplib connect to 127.0.0.1; the name goes in SNI through a wrapper.
        ctx = client_ctx(alpn)
        wrap = ctx.wrap_socket
        ctx.wrap_socket = lambda sock, **kw: wrap(sock, **{**kw, "server_hostname": sni})
        return ctx


# ---- item 6: resumption bound to the name ----

def ctx_for(version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = client_ctx(version=version)
    ctx.check_hostname = False  # the no-SNI handshake gets the default certificate
    return ctx


class Resumption(Base):
    def handshake(self, port: int, sni: str | None, ctx: ssl.SSLContext, session=None):
        """Returns (session, reused, fingerprint of the certificate seen in a full handshake).
        A session is only accepted back by the SSLContext that made it: one CTX per test."""
        with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni, session=session) as s:
                s.sendall(b"x")
                self.assertEqual(s.recv(1), b"x")  # TLS 1.3 tickets come after the handshake
                der = s.getpeercert(binary_form=True)
                fp = certs.cert_fingerprint(ssl.DER_cert_to_PEM_cert(der)) if der else None
                return s.session, s.session_reused, fp

    def ticket_file(self, key: bytes) -> str:
        path = os.path.join(self.dir, "tickets.key")
        with open(path, "w") as f:
            f.write(base64.b64encode(key).decode() + "\n")
        return path

    def check_bound_to_name(self, port: int, proc: MailsnidProcess, version: ssl.TLSVersion,
                            other_port: int | None = None):
        ctx = ctx_for(version)
        sess, reused, _ = self.handshake(port, "mail.alpha.test", ctx)
        self.assertFalse(reused)
        # Same name: resumed.
        _, reused, _ = self.handshake(other_port or port, "mail.alpha.test", ctx, sess)
        self.assertTrue(reused, "same-name resumption")
        # Another name: a full handshake with that name's certificate, logged as that name.
        _, reused, fp = self.handshake(port, "x.beta.test", ctx, sess)
        self.assertFalse(reused, "resumed alpha's session under beta")
        self.assertEqual(fp, certs.cert_fingerprint(PKI["beta_wild_cert"]))
        # No SNI at all is another name too.
        _, reused, _ = self.handshake(port, None, ctx, sess)
        self.assertFalse(reused, "resumed alpha's session without SNI")
        line = proc.wait_log(r"conn listener=\S+ .*sni=x\.beta\.test")[-1]
        self.assertIn(PKI["beta_wild_cert"], line)

    def test_tls12_and_tls13_on_one_instance(self):
        backend = self.echo()
        port = free_port()
        proc = self.start(config(listener("imaps", port, "imap", backend.addr)), [port])
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=version):
                self.check_bound_to_name(port, proc, version)

    def test_shared_ticket_keys(self):
        backend = self.echo()
        keys = self.ticket_file(os.urandom(80))
        a, b = free_port(), free_port()
        proc_a = self.start(config(listener("imaps", a, "imap", backend.addr),
                                   f'ticket_keys = "{keys}";'), [a], name="a")
        self.start(config(listener("imaps", b, "imap", backend.addr),
                          f'ticket_keys = "{keys}";'), [b], name="b")
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=version):
                self.check_bound_to_name(a, proc_a, version, other_port=b)

    def test_not_resumed_on_another_listener(self):
        # With shared keys every listener decrypts every ticket: a session made on the IMAP
        # listener must not be resumed by the POP3 one (another protocol, another backend).
        backend = self.echo()
        keys = self.ticket_file(os.urandom(80))
        imaps, pop3s = free_port(), free_port()
        self.start(config(listener("imaps", imaps, "imap", backend.addr) + ", " +
                          listener("pop3s", pop3s, "pop3", backend.addr),
                          f'ticket_keys = "{keys}";'), [imaps, pop3s])
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(version=version):
                ctx = ctx_for(version)
                sess, _, _ = self.handshake(imaps, "mail.alpha.test", ctx)
                self.assertTrue(self.handshake(imaps, "mail.alpha.test", ctx, sess)[1])
                self.assertFalse(self.handshake(pop3s, "mail.alpha.test", ctx, sess)[1])

    def test_openssl_s_client_sess_out_sess_in(self):
        backend = self.echo()
        port = free_port()
        self.start(config(listener("imaps", port, "imap", backend.addr)), [port])
        sess = os.path.join(self.dir, "sess.pem")

        def s_client(sni: str, *args: str) -> str:
            r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                                "-servername", sni, "-tls1_2", "-CAfile", PKI["ca"], *args],
                               input=b"", capture_output=True, timeout=20 * SLOW)
            return r.stdout.decode(errors="replace")

        self.assertIn("New, ", s_client("mail.alpha.test", "-sess_out", sess))
        self.assertIn("Reused, ", s_client("mail.alpha.test", "-sess_in", sess))
        out = s_client("x.beta.test", "-sess_in", sess)
        self.assertIn("New, ", out)
        self.assertNotIn("Reused, ", out)


# ---- item 7: no wildcard for a whole top-level domain ----

class TldWildcard(Base):
    def test_refused_with_a_warning_other_names_load(self):
        ca = certs.CA.load(PKI["ca_dir"])
        leaf = ca.issue(["*.com", "mail.delta.test", "*.delta.test"], basename="tldwild")
        backend = self.echo()
        port = free_port()
        cfg_text = config(listener("imaps", port, "imap", backend.addr), certificates=(
            f'{{ cert = "{leaf.fullchain}"; key = "{leaf.key}"; }},'
            f'{{ cert = "{PKI["alpha_ec_cert"]}"; key = "{PKI["alpha_ec_key"]}"; '
            f'names = [ "*.test", "mail.alpha.test" ]; }}'))
        cfg = os.path.join(self.dir, "t.cfg")
        with open(cfg, "w") as f:
            f.write(cfg_text)
        r = subprocess.run([MAILSNID, "-t", "-c", cfg], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, re.escape(leaf.fullchain) + r": .*\*\.com")
        self.assertRegex(r.stderr, re.escape(PKI["alpha_ec_cert"]) + r": .*\*\.test")
        r = subprocess.run([MAILSNID, "--certs", "-c", cfg], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        names = [line.split()[0] for line in r.stdout.splitlines() if not line.startswith("#")]
        self.assertNotIn("*.com", names)
        self.assertNotIn("*.test", names)
        self.assertIn("mail.delta.test", names)
        self.assertIn("*.delta.test", names)
        self.assertIn("mail.alpha.test", names)

        self.start(cfg_text, [port])
        ctx = client_ctx()
        ctx.check_hostname = False
        for sni, want in (("x.com", PKI["default_cert"]), ("other.test", PKI["default_cert"]),
                          ("mail.delta.test", leaf.fullchain),
                          ("imap.delta.test", leaf.fullchain)):
            with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW) as raw:
                with ctx.wrap_socket(raw, server_hostname=sni) as s:
                    der = s.getpeercert(binary_form=True)
            self.assertEqual(certs.cert_fingerprint(ssl.DER_cert_to_PEM_cert(der)),
                             certs.cert_fingerprint(want), sni)


# ---- item 21: ties between certificates broken by configuration order ----

class Ties(Base):
    def test_first_listed_is_served_at_every_reload(self):
        ca = certs.CA.load(PKI["ca_dir"])
        nb = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        nb -= datetime.timedelta(hours=1)
        na = nb + datetime.timedelta(days=60)
        a = ca.issue(["mail.tie.test"], basename="tie_a", not_before=nb, not_after=na)
        b = ca.issue(["mail.tie.test"], basename="tie_b", not_before=nb, not_after=na)
        fp = {certs.cert_fingerprint(a.fullchain): "a", certs.cert_fingerprint(b.fullchain): "b"}
        backend = self.echo()
        port = free_port()

        def cfg(first, second) -> str:
            return config(listener("imaps", port, "imap", backend.addr), certificates=", ".join(
                f'{{ cert = "{x.fullchain}"; key = "{x.key}"; }}' for x in (first, second)))

        proc = self.start(cfg(b, a), [port])

        def served() -> str:
            ctx = client_ctx()
            with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW) as raw:
                with ctx.wrap_socket(raw, server_hostname="mail.tie.test") as s:
                    der = s.getpeercert(binary_form=True)
            return fp[certs.cert_fingerprint(ssl.DER_cert_to_PEM_cert(der))]

        reloads = 0

        def reload(touch: bool) -> None:
            nonlocal reloads
            if touch:  # new file identities: both pairs are read again, at new addresses
                for x in (a, b):
                    for path in (x.fullchain, x.key):
                        st = os.stat(path)
                        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
            reloads += 1
            proc.signal(signal.SIGHUP)
            proc.wait_log(r"reload \(", count=reloads)

        seen = [served()]
        for i in range(8):
            reload(touch=i % 2 == 0)
            seen.append(served())
        self.assertEqual(seen, ["b"] * len(seen))

        # The order is the configuration's: swap the entries and the other one wins, even
        # though both pairs are reused unchanged from the previous snapshot.
        with open(proc.config, "w") as f:
            f.write(cfg(a, b))
        seen = []
        for i in range(4):
            reload(touch=i == 3)
            seen.append(served())
        self.assertEqual(seen, ["a"] * len(seen))

        r = subprocess.run([MAILSNID, "--certs", "-c", proc.config], capture_output=True,
                           text=True)
        lines = [line for line in r.stdout.splitlines() if line.startswith("mail.tie.test ")]
        self.assertEqual(len(lines), 2, r.stdout)
        self.assertIn(a.fullchain, lines[0])
        self.assertIn(b.fullchain, lines[1])


if __name__ == "__main__":
    unittest.main()
