"""Core behaviour of the real binary: certificate choice by SNI, relaying with integrity,
half-close, back-pressure, protocol errors when the backend is down, handshake timeout,
`-t`, `--certs`, `-V` and drain on SIGTERM.

The PKI is generated at test time (tests/harness/certs.py); clients verify the hostname
against the test CA. Backends are small Python servers here; tests/integration/test_mail.py
runs real Dovecot and Postfix.
"""

from __future__ import annotations

import hashlib
import re
import http.server
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

from mailsnid_runner import MAILSNID, SLOW, MailsnidProcess, free_port, wait_port
from fakebackend import EchoBackend, SourceBackend
import certs

PKI: dict[str, str] = {}
TMP = ""


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-core-")
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def base_config(listeners: str, extra: str = "") -> str:
    return f"""
workers = 1;
log = {{ level = "debug"; }};
drain_timeout = 5;
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
certificates = (
  {{ cert = "{PKI['alpha_ec_cert']}"; key = "{PKI['alpha_ec_key']}"; }},
  {{ cert = "{PKI['alpha_rsa_cert']}"; key = "{PKI['alpha_rsa_key']}"; }},
  {{ cert = "{PKI['beta_wild_cert']}"; key = "{PKI['beta_wild_key']}"; }},
  {{ cert = "{PKI['gamma_expired_cert']}"; key = "{PKI['gamma_expired_key']}"; }}
);
listeners = ( {listeners} );
{extra}
"""


def listener(name: str, port: int, proto: str, backend: str, extra: str = "") -> str:
    return (f'{{ name = "{name}"; listen = "127.0.0.1:{port}"; protocol = "{proto}"; '
            f'tls = "implicit"; backend = "{backend}"; {extra} }}')


def peer_cert(port: int, sni: str | None, ctx: ssl.SSLContext | None = None) -> dict:
    """Handshake with SNI (or none) and return the certificate the server sent, decoded."""
    if ctx is None:
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            der = s.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der)
    return {"fingerprint": certs.cert_fingerprint(pem), "pem": pem}


def fingerprint(path: str) -> str:
    return certs.cert_fingerprint(path)


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)

    def start(self, config: str, ports: list[int]) -> MailsnidProcess:
        p = MailsnidProcess(config, self.dir).start(ports)
        self.addCleanup(p.stop)
        return p


class CertificateSelection(Base):
    @classmethod
    def setUpClass(cls):
        cls.backend = EchoBackend()
        cls.port = free_port()
        cls.dir_ = tempfile.mkdtemp(prefix="sel-", dir=TMP)
        cls.proc = MailsnidProcess(base_config(listener("tls", cls.port, "imap", cls.backend.addr)),
                                   cls.dir_).start([cls.port])

    @classmethod
    def tearDownClass(cls):
        cls.proc.stop()
        cls.backend.stop()

    def test_exact_name_gets_its_certificate(self):
        got = peer_cert(self.port, "mail.alpha.test")["fingerprint"]
        self.assertEqual(got, fingerprint(PKI["alpha_ec_cert"]))

    def test_case_and_trailing_dot_do_not_matter(self):
        # Python refuses to send a trailing dot itself, so use openssl s_client for that one.
        self.assertEqual(peer_cert(self.port, "WebMail.Alpha.TEST")["fingerprint"],
                         fingerprint(PKI["alpha_ec_cert"]))
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}",
                              "-servername", "mail.alpha.test.", "-CAfile", PKI["ca"],
                              "-verify_hostname", "mail.alpha.test", "-verify_return_error"],
                             input=b"", capture_output=True, timeout=10)
        self.assertIn(b"Verify return code: 0 (ok)", out.stdout)

    def test_wildcard_covers_one_label(self):
        self.assertEqual(peer_cert(self.port, "mail.beta.test")["fingerprint"],
                         fingerprint(PKI["beta_wild_cert"]))
        # Two labels deep, or the bare domain: not covered, so the default certificate.
        self.assertEqual(peer_cert(self.port, "a.b.beta.test")["fingerprint"],
                         fingerprint(PKI["default_cert"]))
        self.assertEqual(peer_cert(self.port, "beta.test")["fingerprint"],
                         fingerprint(PKI["default_cert"]))

    def test_unknown_name_and_no_sni_get_the_default(self):
        self.assertEqual(peer_cert(self.port, "mail.unknown.test")["fingerprint"],
                         fingerprint(PKI["default_cert"]))
        self.assertEqual(peer_cert(self.port, None)["fingerprint"],
                         fingerprint(PKI["default_cert"]))

    def test_expired_certificate_served_only_when_nothing_valid_matches(self):
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.assertEqual(peer_cert(self.port, "mail.gamma.test", ctx)["fingerprint"],
                         fingerprint(PKI["gamma_expired_cert"]))

    def test_rsa_only_client_gets_the_rsa_certificate(self):
        ec = peer_cert(self.port, "mail.alpha.test")
        self.assertEqual(ec["fingerprint"], fingerprint(PKI["alpha_ec_cert"]))
        out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}",
                              "-servername", "mail.alpha.test", "-CAfile", PKI["ca"],
                              "-sigalgs", "rsa_pss_rsae_sha256:RSA+SHA256",
                              "-verify_hostname", "mail.alpha.test", "-verify_return_error"],
                             input=b"", capture_output=True, timeout=10)
        self.assertIn(b"Verify return code: 0 (ok)", out.stdout)
        self.assertEqual(certs.cert_fingerprint(out.stdout.decode()),
                         fingerprint(PKI["alpha_rsa_cert"]))
        # A TLS 1.2 client with only ECDHE-RSA suites, through Python's ssl module.
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        self.assertEqual(peer_cert(self.port, "mail.alpha.test", ctx)["fingerprint"],
                         fingerprint(PKI["alpha_rsa_cert"]))

    def test_hostname_verification_passes_with_the_chain(self):
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        for name in ("mail.alpha.test", "webmail.alpha.test", "mail.beta.test", "mail.hoster.test"):
            with socket.create_connection(("127.0.0.1", self.port)) as raw:
                with ctx.wrap_socket(raw, server_hostname=name) as s:
                    s.sendall(b"ping\r\n")
                    self.assertEqual(s.recv(100), b"ping\r\n")

    def test_log_line_names_the_choice(self):
        peer_cert(self.port, "mail.beta.test")
        line = self.proc.wait_log(r"conn listener=tls .*sni=mail\.beta\.test")[-1]
        self.assertIn("kind=wildcard", line)
        self.assertIn(f"cert={PKI['beta_wild_cert']}", line)
        self.assertIn("tls=TLSv1.3", line)
        self.assertIn(f"backend={self.backend.addr}", line)


class Relay(Base):
    def test_multi_megabyte_both_ways_intact(self):
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port = free_port()
        self.start(base_config(listener("tls", port, "imap", backend.addr)), [port])
        payload = os.urandom(8 * 1024 * 1024)
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw, server_hostname="mail.alpha.test") as s:
                received = bytearray()

                def reader():
                    while len(received) < len(payload):
                        chunk = s.recv(1 << 16)
                        if not chunk:
                            break
                        received.extend(chunk)

                t = threading.Thread(target=reader)
                t.start()
                s.sendall(payload)
                t.join(60)
        self.assertEqual(hashlib.sha256(received).hexdigest(), hashlib.sha256(payload).hexdigest())
        self.assertEqual(hashlib.sha256(backend.received[0]).hexdigest(),
                         hashlib.sha256(payload).hexdigest())

    def test_half_close_lets_the_backend_answer(self):
        backend = EchoBackend(reply_after_eof=b"bye after eof\r\n")
        self.addCleanup(backend.stop)
        port = free_port()
        proc = self.start(base_config(listener("tls", port, "http", backend.addr)), [port])
        # TLS over a raw socket through memory BIOs, so that the client can end its direction
        # with a TCP FIN and still read and decrypt what comes back.
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="mail.alpha.test")
        raw = socket.create_connection(("127.0.0.1", port))
        raw.settimeout(10 * SLOW)
        self.addCleanup(raw.close)

        def pump_out():
            data = outgoing.read()
            if data:
                raw.sendall(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump_out()
                incoming.write(raw.recv(65536))
        tls.write(b"request")
        pump_out()
        raw.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            chunk = raw.recv(65536)
            if not chunk:
                break
            incoming.write(chunk)
            while True:
                try:
                    data = tls.read(65536)
                except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                    break
                if not data:
                    break
                answer += data
        self.assertEqual(answer, b"requestbye after eof\r\n")
        self.assertEqual(backend.received[0], b"request")
        proc.wait_log(r"conn listener=tls .*outcome=ok")

    def test_slow_reader_does_not_make_the_proxy_buffer(self):
        backend = SourceBackend()
        self.addCleanup(backend.stop)
        port = free_port()
        proc = self.start(base_config(listener("tls", port, "http", f"127.0.0.1:{backend.port}")),
                          [port])
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s = ctx.wrap_socket(raw, server_hostname="mail.alpha.test")
        s.sendall(b"go")
        time.sleep(0.5 * SLOW)
        rss_before = proc.rss_kb()
        sent_before = backend.sent
        time.sleep(1.5 * SLOW)
        rss_after = proc.rss_kb()
        # The backend stalls too, because the proxy stopped reading it: a few MB of socket
        # buffers at most, and the proxy's memory does not grow with what the backend offers.
        self.assertLess(backend.sent - sent_before, 8 * 1024 * 1024)
        self.assertLess(rss_after - rss_before, 4096)
        s.close()


class BackendDown(Base):
    def test_each_protocol_answers_in_its_own_words(self):
        dead = f"127.0.0.1:{free_port()}"
        ports = {p: free_port() for p in ("imap", "pop3", "smtp", "http")}
        config = base_config(", ".join(listener(p, ports[p], p, dead) for p in ports))
        proc = self.start(config, list(ports.values()))
        want = {"imap": b"* BYE [UNAVAILABLE]", "pop3": b"-ERR [SYS/TEMP]",
                "smtp": b"421 4.3.0", "http": b"HTTP/1.1 502"}
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        for proto, port in ports.items():
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with ctx.wrap_socket(raw, server_hostname="mail.alpha.test") as s:
                    s.settimeout(10 * SLOW)
                    if proto == "http":
                        s.sendall(b"GET / HTTP/1.1\r\nHost: mail.alpha.test\r\n\r\n")
                    data = b""
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
            self.assertTrue(data.startswith(want[proto]), (proto, data))
        lines = proc.wait_log(r"outcome=backend_down", count=4)
        self.assertTrue(all(f"backend={dead} " in l for l in lines), lines)

    def test_backend_dying_before_it_answers_a_starttls_client(self):
        # A backend that greets, then dies on the first command (a restart mid-session): the
        # client waiting for the answer hears "try later" in plaintext, not a bare close.
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        self.addCleanup(srv.close)

        def serve():
            c, _ = srv.accept()
            c.sendall(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
            c.recv(100)
            c.close()

        threading.Thread(target=serve, daemon=True).start()
        port = free_port()
        cfg = base_config(
            f'{{ name = "imap"; listen = "127.0.0.1:{port}"; protocol = "imap"; tls = "starttls"; '
            f'backend = "127.0.0.1:{srv.getsockname()[1]}"; }}')
        self.start(cfg, [port])
        time.sleep(0.3)  # the readiness probe took the first backend connection; let it go
        threading.Thread(target=serve, daemon=True).start()
        with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW) as s:
            self.assertIn(b"STARTTLS", s.recv(200))
            s.sendall(b"a1 CAPABILITY\r\n")
            data = b""
            while True:
                chunk = s.recv(200)
                if not chunk:
                    break
                data += chunk
        self.assertTrue(data.startswith(b"* BYE [UNAVAILABLE]"), data)

    def test_second_backend_in_the_list_is_used(self):
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port = free_port()
        dead = f"127.0.0.1:{free_port()}"
        config = base_config(
            f'{{ name = "tls"; listen = "127.0.0.1:{port}"; protocol = "imap"; tls = "implicit"; '
            f'backend = [ "{dead}", "{backend.addr}" ]; }}')
        self.start(config, [port])
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw, server_hostname="mail.alpha.test") as s:
                s.sendall(b"hello\r\n")
                self.assertEqual(s.recv(100), b"hello\r\n")


class Timeouts(Base):
    def test_silent_client_closed_at_handshake_timeout(self):
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port = free_port()
        proc = self.start(base_config(listener("tls", port, "imap", backend.addr,
                                               "handshake_timeout = 1;")), [port])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10 * SLOW)
            start = time.monotonic()
            self.assertEqual(s.recv(10), b"")   # closed by the proxy, not by us
            self.assertGreater(time.monotonic() - start, 0.5)
        proc.wait_log(r"outcome=handshake_timeout")
        self.assertEqual(backend.received, [])

    def test_garbage_instead_of_a_client_hello(self):
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port = free_port()
        proc = self.start(base_config(listener("tls", port, "imap", backend.addr)), [port])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10 * SLOW)
            s.sendall(b"a1 LOGIN alice secret\r\n")
            data = s.recv(100)
            # A fatal TLS alert record (content type 21, level 2), never a relay.
            self.assertEqual(data[:1], b"\x15", data)
            self.assertEqual(data[5:6], b"\x02", data)
        proc.wait_log(r"outcome=handshake_failed")
        self.assertEqual(backend.received, [])

    def test_plain_http_on_the_https_port_gets_a_readable_400(self):
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port = free_port()
        self.start(base_config(listener("https", port, "http", backend.addr)), [port])
        r = subprocess.run(["curl", "-sS", "-i", f"http://127.0.0.1:{port}/"],
                           capture_output=True, text=True, timeout=20)
        self.assertIn("400 Bad Request", r.stdout)
        self.assertIn("speaks HTTPS", r.stdout)
        self.assertEqual(backend.received, [])


class CommandLine(Base):
    def run_cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([MAILSNID, *args], capture_output=True, text=True, timeout=30)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_check_good_config(self):
        path = self.write("good.cfg", base_config(listener("a", free_port(), "imap", "127.0.0.1:1")))
        r = self.run_cli("-t", "-c", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("OK", r.stdout)
        # The expired certificate is a warning, not an error.
        self.assertIn("expired", r.stderr.lower())

    def test_check_bad_config_names_file_and_line(self):
        cfg = base_config(listener("a", free_port(), "imap", "127.0.0.1:1")).replace(
            'protocol = "imap"', 'protocol = "imap"; colour = "blue"')
        path = self.write("bad.cfg", cfg)
        r = self.run_cli("-t", "-c", path)
        self.assertEqual(r.returncode, 1)
        line = next(i + 1 for i, l in enumerate(cfg.splitlines()) if "colour" in l)
        self.assertRegex(r.stderr, rf"{path}:{line}: .*colour")

    def test_check_mismatched_key(self):
        cfg = base_config(listener("a", free_port(), "imap", "127.0.0.1:1")).replace(
            PKI["alpha_ec_key"], PKI["default_key"])
        path = self.write("mismatch.cfg", cfg)
        r = self.run_cli("-t", "-c", path)
        self.assertEqual(r.returncode, 1)
        line = next(i + 1 for i, l in enumerate(cfg.splitlines()) if PKI["alpha_ec_cert"] in l)
        self.assertRegex(r.stderr, rf"{path}:{line}: .*(match|mismatch)")

    def test_syntax_error(self):
        path = self.write("syntax.cfg", "workers = 1;\ntls = { default_cert = \"x\" \n")
        r = self.run_cli("-t", "-c", path)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, rf"{path}:\d+: ")

    def test_missing_file(self):
        r = self.run_cli("-t", "-c", os.path.join(self.dir, "nope.cfg"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("nope.cfg", r.stderr)

    def test_certs_lists_every_name(self):
        path = self.write("good.cfg", base_config(listener("a", free_port(), "imap", "127.0.0.1:1")))
        r = self.run_cli("--certs", "-c", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertTrue(any(l.startswith("mail.alpha.test exact") and "rsa" in l for l in lines))
        self.assertTrue(any(l.startswith("mail.alpha.test exact") and "ecdsa" in l for l in lines))
        self.assertTrue(any(l.startswith("*.beta.test wildcard") for l in lines))
        self.assertTrue(any(" default " in l and PKI["default_cert"] in l for l in lines))

    def test_version(self):
        r = self.run_cli("-V")
        self.assertEqual(r.returncode, 0)
        for lib in ("mailsnid", "OpenSSL 3", "libuv", "libconfig", "jemalloc"):
            self.assertIn(lib, r.stdout)


class Drain(Base):
    def test_sigterm_drains_then_exits(self):
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port = free_port()
        proc = MailsnidProcess(base_config(listener("tls", port, "imap", backend.addr)),
                               self.dir).start([port])
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        raw = socket.create_connection(("127.0.0.1", port))
        s = ctx.wrap_socket(raw, server_hostname="mail.alpha.test")
        s.sendall(b"before\r\n")
        self.assertEqual(s.recv(100), b"before\r\n")
        proc.signal(signal.SIGTERM)
        proc.wait_log("draining")
        # No new connections...
        with self.assertRaises(OSError):
            for _ in range(50):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                time.sleep(0.05)
        # ...but the open one still works until it ends.
        s.sendall(b"during\r\n")
        self.assertEqual(s.recv(100), b"during\r\n")
        self.assertIsNone(proc.proc.poll())
        s.close()
        self.assertEqual(proc.proc.wait(10 * SLOW), 0)
        proc.stop()

    def test_second_sigterm_exits_at_once(self):
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port = free_port()
        proc = MailsnidProcess(base_config(listener("tls", port, "imap", backend.addr)),
                               self.dir).start([port])
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                            server_hostname="mail.alpha.test")
        s.sendall(b"x")
        s.recv(10)
        proc.signal(signal.SIGTERM)
        proc.wait_log("draining")
        proc.signal(signal.SIGTERM)
        self.assertEqual(proc.proc.wait(5 * SLOW), 0)
        proc.wait_log("outcome=drain")
        proc.stop()
        s.close()


class HttpsWithCurl(Base):
    def test_curl_https_with_hostname_verification(self):
        docroot = os.path.join(self.dir, "www")
        os.makedirs(docroot)
        with open(os.path.join(docroot, "index.html"), "w") as f:
            f.write("hello from the webmail backend\n")
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=docroot, **k)
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        self.addCleanup(httpd.shutdown)
        port = free_port()
        self.start(base_config(listener("https", port, "http",
                                        f"127.0.0.1:{httpd.server_address[1]}")), [port])
        for name in ("webmail.alpha.test", "webmail.beta.test"):
            r = subprocess.run(["curl", "-sS", "--fail", "--cacert", PKI["ca"], "--resolve",
                                f"{name}:{port}:127.0.0.1", f"https://{name}:{port}/"],
                               capture_output=True, text=True, timeout=20)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, "hello from the webmail backend\n")
        # A name with no certificate fails verification: the client sees the mismatch.
        r = subprocess.run(["curl", "-sS", "--cacert", PKI["ca"], "--resolve",
                            f"webmail.nobody.test:{port}:127.0.0.1",
                            f"https://webmail.nobody.test:{port}/"],
                           capture_output=True, text=True, timeout=20)
        self.assertNotEqual(r.returncode, 0)


if __name__ == "__main__":
    unittest.main()


class AdminAndReload(Base):
    def http_get(self, port: int, path: str) -> tuple[int, str]:
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def test_metrics_and_health(self):
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port, admin = free_port(), free_port()
        proc = MailsnidProcess(base_config(listener("tls", port, "imap", backend.addr),
                                           f'admin = "127.0.0.1:{admin}";'), self.dir).start([port, admin])
        peer_cert(port, "mail.beta.test")
        peer_cert(port, None)
        proc.wait_log(r"conn listener=tls .*sni=mail\.beta\.test")
        status, body = self.http_get(admin, "/metrics")
        self.assertEqual(status, 200)
        self.assertRegex(body, r'mailsnid_connections_total\{listener="tls"\} [1-9]')
        self.assertRegex(body, r'mailsnid_sni_selections_total\{kind="wildcard"\} [1-9]')
        self.assertRegex(body, r'mailsnid_sni_selections_total\{kind="none"\} [1-9]')
        self.assertRegex(body, r'mailsnid_handshakes_total\{outcome="ok"\} [1-9]')
        self.assertRegex(body, rf'mailsnid_certificate_expiry_seconds\{{cert="{re.escape(PKI["alpha_ec_cert"])}",key="ecdsa"\}} [1-9]')
        self.assertRegex(body, rf'mailsnid_certificate_expiry_seconds\{{cert="{re.escape(PKI["gamma_expired_cert"])}",key="ecdsa"\}} -[1-9]')
        self.assertIn("mailsnid_config_generation 1\n", body)
        self.assertEqual(self.http_get(admin, "/healthz")[0], 200)
        self.assertEqual(self.http_get(admin, "/other")[0], 404)
        # A drain fails the health check while an open connection keeps the process alive.
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                            server_hostname="mail.alpha.test")
        s.sendall(b"x")
        s.recv(1)
        proc.signal(signal.SIGTERM)
        proc.wait_log("draining")
        self.assertEqual(self.http_get(admin, "/healthz")[0], 503)
        s.close()
        proc.stop()

    def test_sighup_picks_up_a_replaced_certificate_and_keeps_open_connections(self):
        ca = certs.CA.load(PKI["ca_dir"])
        leaf = ca.issue(["mail.delta.test"], out_dir=os.path.join(self.dir, "delta"))
        cert, key = os.path.join(self.dir, "delta.pem"), os.path.join(self.dir, "delta.key")
        shutil.copy(leaf.fullchain, cert)
        shutil.copy(leaf.key, key)
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port, admin = free_port(), free_port()
        cfg = base_config(listener("tls", port, "imap", backend.addr),
                          f'admin = "127.0.0.1:{admin}";').replace(
            "certificates = (", f'certificates = (\n  {{ cert = "{cert}"; key = "{key}"; }},')
        proc = self.start(cfg, [port])
        self.assertEqual(peer_cert(port, "mail.delta.test")["fingerprint"], fingerprint(cert))
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        old = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                              server_hostname="mail.delta.test")
        old.sendall(b"before\r\n")
        self.assertEqual(old.recv(100), b"before\r\n")

        renewed = ca.issue(["mail.delta.test"], out_dir=os.path.join(self.dir, "delta2"))
        shutil.copy(renewed.fullchain, cert)
        shutil.copy(renewed.key, key)
        proc.signal(signal.SIGHUP)
        proc.wait_log(r"reload \(SIGHUP\):")
        self.assertEqual(peer_cert(port, "mail.delta.test")["fingerprint"], fingerprint(cert))
        self.assertNotEqual(fingerprint(cert), fingerprint(leaf.fullchain))
        old.sendall(b"after\r\n")
        self.assertEqual(old.recv(100), b"after\r\n")

        # A broken reload (key of another certificate) keeps the renewed pair serving.
        shutil.copy(PKI["default_key"], key)
        proc.signal(signal.SIGHUP)
        proc.wait_log(r"reload \(SIGHUP\) failed")
        proc.wait_log(rf"{re.escape(self.dir)}/\S+\.cfg:\d+: .*match")
        self.assertEqual(peer_cert(port, "mail.delta.test")["fingerprint"], fingerprint(cert))
        status, body = self.http_get(admin, "/metrics")
        # The file watcher may add its own (debounced) reloads to the two signals.
        ok = int(re.search(r'mailsnid_reloads_total\{result="ok"\} (\d+)', body).group(1))
        failed = int(re.search(r'mailsnid_reloads_total\{result="failed"\} (\d+)', body).group(1))
        self.assertGreaterEqual(ok, 1)
        self.assertGreaterEqual(failed, 1)
        self.assertIn(f"mailsnid_config_generation {1 + ok}\n", body)
        old.sendall(b"still\r\n")
        self.assertEqual(old.recv(100), b"still\r\n")
        old.close()


class Resumption(Base):
    def session_from(self, port: int, ctx: ssl.SSLContext, session=None):
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw, server_hostname="mail.alpha.test", session=session) as s:
                s.sendall(b"x")
                self.assertEqual(s.recv(1), b"x")  # TLS 1.3 tickets arrive after the handshake
                return s.session, s.session_reused

    def ticket_file(self, *keys: bytes) -> str:
        import base64
        path = os.path.join(self.dir, f"tickets-{len(os.listdir(self.dir))}.key")
        with open(path, "w") as f:
            for k in keys:
                f.write(base64.b64encode(k).decode() + "\n")
        return path

    def instance(self, tickets: str | None, backend: EchoBackend, admin: int | None = None) -> int:
        port = free_port()
        extra = f'ticket_keys = "{tickets}"; ' if tickets else ""
        cfg = base_config(listener("tls", port, "imap", backend.addr),
                          f'admin = "127.0.0.1:{admin}";' if admin else "").replace(
            "tls = {", "tls = { " + extra, 1)
        p = MailsnidProcess(cfg, self.dir, name=f"m{port}").start([port] + ([admin] if admin else []))
        self.addCleanup(p.stop)
        self.procs = getattr(self, "procs", []) + [p]
        return port

    def test_tls13_and_tls12_resume_on_one_instance(self):
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port = self.instance(None, backend)
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            ctx = ssl.create_default_context(cafile=PKI["ca"])
            ctx.maximum_version = version
            sess, reused = self.session_from(port, ctx)
            self.assertFalse(reused)
            _, reused = self.session_from(port, ctx, sess)
            self.assertTrue(reused, version)

    def test_resumed_handshakes_are_counted_and_logged(self):
        # What an operator watches after distributing ticket keys: the share of resumed
        # handshakes, on /metrics and per session in the log (TLS 1.3 sessions are carried by the
        # own record layer, TLS 1.2 ones by OpenSSL: both say it).
        import urllib.request
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        admin = free_port()
        port = self.instance(None, backend, admin)
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            ctx = ssl.create_default_context(cafile=PKI["ca"])
            ctx.maximum_version = version
            sess, _ = self.session_from(port, ctx)
            self.assertTrue(self.session_from(port, ctx, sess)[1])
            self.assertTrue(self.session_from(port, ctx, sess)[1])
        proc = self.procs[-1]
        proc.wait_log(r"conn listener=tls .*outcome=ok", count=6)
        lines = [l for l in proc.log().splitlines() if "conn listener=tls" in l and "outcome=ok" in l]
        self.assertEqual([re.search(r" resumed=(\S+)", l).group(1) for l in lines],
                         ["no", "yes", "yes"] * 2, lines)
        self.assertEqual(sum("record=own resumed=" in l for l in lines), 3, lines)
        # A resumed handshake sends no certificate, and the log does not name one.
        self.assertEqual([re.search(r" cert=(\S+)", l).group(1) == "-" for l in lines],
                         [False, True, True] * 2, lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            body = r.read().decode()
        self.assertIn('mailsnid_handshakes_total{outcome="ok"} 6\n', body)
        self.assertIn("mailsnid_handshakes_resumed_total 4\n", body)

    def test_fleet_sharing_a_key_file_resumes_each_others_sessions(self):
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        k1, k2 = os.urandom(80), os.urandom(80)
        shared = self.ticket_file(k1)
        a, b = self.instance(shared, backend), self.instance(shared, backend)
        other = self.instance(self.ticket_file(k2), backend)
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        sess, _ = self.session_from(a, ctx)
        self.assertTrue(self.session_from(b, ctx, sess)[1])
        self.assertFalse(self.session_from(other, ctx, sess)[1])

        # Rotation: a new key first, the old one kept: B still resumes A's old session after
        # a reload, and issues new tickets with the new key.
        with open(shared, "w") as f:
            import base64
            f.write(base64.b64encode(k2).decode() + "\n" + base64.b64encode(k1).decode() + "\n")
        self.procs[1].signal(signal.SIGHUP)
        self.procs[1].wait_log(r"reload \(")
        self.assertTrue(self.session_from(b, ctx, sess)[1])
        new_sess, _ = self.session_from(b, ctx)
        self.assertTrue(self.session_from(other, ctx, new_sess)[1])  # other uses k2

    def test_bad_ticket_key_file_is_refused_with_its_line(self):
        path = self.ticket_file(os.urandom(80))
        with open(path, "a") as f:
            f.write("not-base64-of-80-bytes\n")
        cfg = base_config(listener("a", free_port(), "imap", "127.0.0.1:1")).replace(
            "tls = {", f'tls = {{ ticket_keys = "{path}"; ', 1)
        cfg_path = os.path.join(self.dir, "t.cfg")
        with open(cfg_path, "w") as f:
            f.write(cfg)
        r = subprocess.run([MAILSNID, "-t", "-c", cfg_path], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn(f"{path}:2: not a ticket key", r.stderr)


class SystemdNotify(Base):
    def test_ready_reloading_stopping(self):
        sock_path = os.path.join(self.dir, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        sock.settimeout(10 * SLOW)
        self.addCleanup(sock.close)
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port = free_port()
        os.environ["NOTIFY_SOCKET"] = sock_path
        try:
            proc = MailsnidProcess(base_config(listener("tls", port, "imap", backend.addr)),
                                   self.dir).start([port])
        finally:
            del os.environ["NOTIFY_SOCKET"]
        self.assertIn(b"READY=1", sock.recv(512))
        proc.signal(signal.SIGHUP)
        self.assertIn(b"RELOADING=1", sock.recv(512))
        self.assertIn(b"READY=1", sock.recv(512))
        proc.signal(signal.SIGTERM)
        self.assertIn(b"STOPPING=1", sock.recv(512))
        proc.stop()
