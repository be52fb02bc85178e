"""Limits against abuse: connection caps answer "try later" in the protocol's words; a
slowloris crowd trickling bytes does not stop a legitimate client; a plaintext STARTTLS session
that never upgrades is cut after the pre-TLS command cap."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
import unittest

from mailsnid_runner import SLOW, MailsnidProcess, free_port
from fakebackend import EchoBackend
import certs

TMP = ""
PKI: dict[str, str] = {}


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-limits-")
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def tls_connect(port: int, source: str = "127.0.0.1") -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=PKI["ca"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW,
                                   source_address=(source, 0))
    return ctx.wrap_socket(raw, server_hostname="mail.alpha.test")


def read_all(s) -> bytes:
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except (ssl.SSLError, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


class Limits(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="l-", dir=TMP)
        self.backend = EchoBackend(greeting=b"220 backend ESMTP\r\n")
        self.addCleanup(self.backend.stop)

    def start(self, top: str, listeners: str, ports: list[int]) -> MailsnidProcess:
        cfg = f"""
{top}
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
certificates = ( {{ cert = "{PKI['alpha_ec_cert']}"; key = "{PKI['alpha_ec_key']}"; }} );
listeners = ( {listeners} );
"""
        p = MailsnidProcess(cfg, self.dir).start(ports)
        self.addCleanup(p.stop)
        return p

    def test_per_client_cap_answers_try_later(self):
        port = free_port()
        proc = self.start("max_connections_per_client = 3;",
                          f'{{ name = "imaps"; listen = "127.0.0.1:{port}"; protocol = "imap"; '
                          f'tls = "implicit"; backend = "{self.backend.addr}"; }}', [port])
        time.sleep(0.2)  # let the readiness probe's connection close
        held = [tls_connect(port) for _ in range(3)]
        for s in held:
            self.assertEqual(s.recv(100), b"220 backend ESMTP\r\n")
        refused = tls_connect(port)
        self.assertTrue(read_all(refused).startswith(b"* BYE [UNAVAILABLE] Too many connections"))
        # Another address is not affected; a freed slot is usable again.
        other = tls_connect(port, source="127.0.0.2")
        self.assertEqual(other.recv(100), b"220 backend ESMTP\r\n")
        held.pop().close()
        time.sleep(0.2 * SLOW)
        again = tls_connect(port)
        self.assertEqual(again.recv(100), b"220 backend ESMTP\r\n")
        proc.wait_log(r"outcome=limit .*max_connections_per_client")
        for s in held + [other, again, refused]:
            s.close()

    def test_balancer_local_connections_are_not_clients(self):
        # PROXY v2 LOCAL is a balancer speaking for itself: HAProxy's checks of a mail port
        # send it (send-proxy-v2 with `check` and no check port). Several of them at once, from
        # the one balancer address, must never meet the per-client limit.
        port = free_port()
        proc = self.start("max_connections_per_client = 1;",
                          f'{{ name = "imaps"; listen = "127.0.0.1:{port}"; protocol = "imap"; '
                          f'tls = "implicit"; backend = "{self.backend.addr}"; '
                          f'proxy_protocol_in = true; trusted = [ "127.0.0.1/32" ]; }}', [port])
        time.sleep(0.2)
        local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"   # v2, LOCAL, AF_UNSPEC, no body
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        held = []
        for _ in range(3):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
            raw.sendall(local)
            held.append(ctx.wrap_socket(raw, server_hostname="mail.alpha.test"))
        for s in held:
            self.assertEqual(s.recv(100), b"220 backend ESMTP\r\n")
            s.close()
        self.assertNotIn("max_connections_per_client", proc.log())

    def test_listener_cap_on_starttls_answers_in_plaintext(self):
        port = free_port()
        proc = self.start("", f'{{ name = "smtp"; listen = "127.0.0.1:{port}"; protocol = "smtp"; '
                       f'tls = "starttls"; backend = "{self.backend.addr}"; max_connections = 2; }}',
                   [port])
        time.sleep(0.2)
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        for s in held:
            got = s.recv(100)
            self.assertTrue(got.startswith(b"220 backend"), (got, proc.log()[-2000:]))
        third = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        got = read_all(third)
        self.assertTrue(got.startswith(b"421 4.7.0 Too many connections"), got)
        for s in held + [third]:
            s.close()

    def test_slowloris_does_not_stop_a_real_client(self):
        tls_port, st_port = free_port(), free_port()
        self.start("max_connections_per_client = 400;",
                   f'{{ name = "imaps"; listen = "127.0.0.1:{tls_port}"; protocol = "imap"; '
                   f'tls = "implicit"; backend = "{self.backend.addr}"; handshake_timeout = 20; }}, '
                   f'{{ name = "smtp"; listen = "127.0.0.1:{st_port}"; protocol = "smtp"; '
                   f'tls = "starttls"; backend = "{self.backend.addr}"; }}', [tls_port, st_port])
        crowd: list[socket.socket] = []
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", tls_port if i % 2 else st_port))
            crowd.append(s)
        stop = threading.Event()

        def trickle():
            # One byte per connection per round: a ClientHello that never completes, an SMTP
            # command that never ends.
            while not stop.is_set():
                for i, s in enumerate(crowd):
                    try:
                        s.send(b"\x16" if i % 2 else b"E")
                    except OSError:
                        pass
                time.sleep(0.2)

        t = threading.Thread(target=trickle)
        t.start()
        try:
            time.sleep(1.0)
            start = time.monotonic()
            s = tls_connect(tls_port, source="127.0.0.2")
            self.assertEqual(s.recv(100), b"220 backend ESMTP\r\n")
            s.sendall(b"a LOGIN alice secret\r\n")
            self.assertEqual(s.recv(100), b"a LOGIN alice secret\r\n")
            s.close()
            plain = socket.create_connection(("127.0.0.1", st_port), timeout=10 * SLOW,
                                             source_address=("127.0.0.2", 0))
            self.assertTrue(plain.recv(100).startswith(b"220 backend"))
            plain.close()
            # Not a performance assertion: a generous bound that only a stalled loop misses.
            self.assertLess(time.monotonic() - start, 10 * SLOW)
        finally:
            stop.set()
            t.join()
            for c in crowd:
                c.close()

    def test_plaintext_session_that_never_upgrades_is_cut(self):
        port = free_port()
        self.start("", f'{{ name = "smtp"; listen = "127.0.0.1:{port}"; protocol = "smtp"; '
                       f'tls = "starttls"; starttls = "required"; backend = "{self.backend.addr}"; }}',
                   [port])
        s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        s.recv(100)
        s.sendall(b"MAIL FROM:<a@b>\r\n" * 100)
        data = read_all(s)
        self.assertIn(b"530 5.7.0 Must issue a STARTTLS command first", data)
        self.assertIn(b"421 4.7.0 Too many commands", data)
        self.assertNotIn(b"MAIL FROM", b"".join(self.backend.received))


if __name__ == "__main__":
    unittest.main()
