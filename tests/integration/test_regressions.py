"""Regressions found in review, each reproduced against the real binary. The first two were heap
use-after-frees that only the SANITIZE=1 build shows (MailsnidProcess.stop() fails on any
sanitizer report); the others are visible in any build."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import struct
import tempfile
import threading
import time
import unittest
import urllib.request

from mailsnid_runner import SLOW, MailsnidProcess, free_port
import certs

TMP = ""
PKI: dict[str, str] = {}


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-regr-")
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def reset(s: ssl.SSLSocket) -> None:
    """Ends the client's direction with a FIN (the proxy stops reading it), then resets the
    connection, which the proxy only learns about when it next writes."""
    raw = socket.socket(fileno=os.dup(s.fileno()))
    raw.shutdown(socket.SHUT_WR)
    time.sleep(0.3 * SLOW)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    s.close()


class Backend:
    """A scripted backend: each accepted connection runs the next function of SCRIPT."""

    def __init__(self, *script):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.script = list(script)
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        for step in self.script:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._guard, args=(step, c), daemon=True).start()

    @staticmethod
    def _guard(step, c):
        try:
            step(c)
        except OSError:
            pass

    def close(self):
        self.sock.close()


def ignore(c):
    c.recv(100)


class Regressions(unittest.TestCase):
    def start(self, listener: str, port: int) -> MailsnidProcess:
        d = tempfile.mkdtemp(prefix="r-", dir=TMP)
        # One worker: the scripted backends expect connections in order, and the readiness
        # probe's must come first.
        cfg = f"""
workers = 1;
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
listeners = ( {listener} );
"""
        p = MailsnidProcess(cfg, d).start([port])
        self.addCleanup(p.stop)
        return p

    def test_backend_gone_between_commands_before_tls_gets_try_later(self):
        """A backend that greets and then goes away (a restart) before the client's next
        command: the client's EHLO meets the protocol's 421, not a bare close (the soak's
        --strict-unavailable caught this one)."""
        def greet_then_close(c):
            c.sendall(b"220 scripted ESMTP\r\n")
            c.close()

        backend = Backend(ignore, greet_then_close)   # readiness probe, the session
        self.addCleanup(backend.close)
        port = free_port()
        proc = self.start(f'{{ name = "sub"; listen = "127.0.0.1:{port}"; protocol = "smtp"; '
                          f'tls = "starttls"; starttls = "required"; backend = "{backend.addr}"; }}',
                          port)
        with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW) as raw:
            f = raw.makefile("rb")
            self.assertTrue(f.readline().startswith(b"220 "))
            proc.wait_log(r"conn listener=sub .*outcome=backend_error", timeout=10)
            try:
                raw.sendall(b"EHLO client\r\n")
            except OSError:
                pass
            self.assertTrue(f.readline().startswith(b"421 4.3.0"))

    def test_backend_reset_at_accept_gets_502_every_time(self):
        """A backend being stopped completes connects from its queue and resets them: whether
        mailsnid then meets the reset writing the request or reading the answer, the client gets
        the 502, never a bare close (the soak's strict check caught the write side)."""
        def reset_at_once(c):
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

        n = 40
        backend = Backend(*([reset_at_once] * n))   # (an implicit-TLS probe reaches no backend)
        self.addCleanup(backend.close)
        port = free_port()
        self.start(f'{{ name = "https"; listen = "127.0.0.1:{port}"; protocol = "http"; '
                   f'tls = "implicit"; backend = "{backend.addr}"; }}', port)
        answers = []
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW) as raw:
                with insecure().wrap_socket(raw, server_hostname="webmail.alpha.test") as s:
                    try:
                        s.sendall(b"GET / HTTP/1.1\r\nHost: webmail.alpha.test\r\n\r\n")
                    except OSError:
                        pass
                    got = b""
                    try:
                        while len(got) < 12:
                            chunk = s.recv(100)
                            if not chunk:
                                break
                            got += chunk
                    except OSError:
                        pass
                    answers.append(got[:12])
        self.assertEqual(answers.count(b"HTTP/1.1 502"), n, answers)

    def test_teardown_inside_the_starttls_engine(self):
        def fresh(c):
            c.sendall(b"* OK ready\r\n")
            c.recv(100)
            time.sleep(0.8 * SLOW)
            c.sendall(b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN IDLE\r\na OK done\r\n")
            time.sleep(2 * SLOW)

        def greet(c):
            c.sendall(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
            c.recv(100)

        backend = Backend(ignore, greet, fresh)  # readiness probe, plaintext session, after TLS
        self.addCleanup(backend.close)
        port = free_port()
        proc = self.start(f'{{ name = "imap"; listen = "127.0.0.1:{port}"; protocol = "imap"; '
                          f'tls = "starttls"; backend = "{backend.addr}"; }}', port)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        raw.recv(200)
        raw.sendall(b"s STARTTLS\r\n")
        raw.recv(200)
        s = insecure().wrap_socket(raw, server_hostname="mail.alpha.test")
        s.sendall(b"a CAPABILITY\r\n")
        time.sleep(0.2 * SLOW)
        reset(s)
        # The backend's answer now fails to reach the client: the connection ends from inside
        # the capability editing, which must not touch what the teardown released.
        proc.wait_log(r"conn listener=imap .*outcome=client_error", timeout=10)

    def test_failed_queued_write(self):
        def flood(c):
            c.recv(100)
            c.sendall(b"A" * (16 << 20))

        backend = Backend(flood)  # implicit TLS: the readiness probe never reaches a backend
        self.addCleanup(backend.close)
        port = free_port()
        proc = self.start(f'{{ name = "imaps"; listen = "127.0.0.1:{port}"; protocol = "imap"; '
                          f'tls = "implicit"; backend = "{backend.addr}"; }}', port)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s = insecure().wrap_socket(raw, server_hostname="mail.alpha.test")
        # A whole line: before login an IMAP listener reads the client's commands by lines.
        s.sendall(b"x\r\n")
        time.sleep(0.5 * SLOW)
        reset(s)
        proc.wait_log(r"conn listener=imaps .*outcome=client_error .*client write", timeout=10)

    def test_backend_that_never_greets_after_starttls(self):
        def greet(c):
            c.sendall(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
            c.recv(100)

        def silent(c):
            time.sleep(20)

        backend = Backend(ignore, greet, silent)
        self.addCleanup(backend.close)
        port = free_port()
        self.start(f'{{ name = "imap"; listen = "127.0.0.1:{port}"; protocol = "imap"; '
                   f'tls = "starttls"; backend = "{backend.addr}"; connect_timeout = 1; }}', port)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
        raw.recv(200)
        raw.sendall(b"s STARTTLS\r\n")
        raw.recv(200)
        s = insecure().wrap_socket(raw, server_hostname="mail.alpha.test")
        self.assertTrue(s.recv(200).startswith(b"* BYE [UNAVAILABLE]"))
        s.close()

    def test_one_alert_and_the_sni_logged_when_the_handshake_fails(self):
        port = free_port()
        proc = self.start(f'{{ name = "imaps"; listen = "127.0.0.1:{port}"; protocol = "imap"; '
                          f'tls = "implicit"; backend = "127.0.0.1:1"; }}', port)
        ctx = insecure()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("AES128-SHA")  # no suite in common with mailsnid's defaults
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="mail.alpha.test")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW) as raw:
            raw.sendall(outgoing.read())
            data = b""
            while True:
                chunk = raw.recv(100)
                if not chunk:
                    break
                data += chunk
        self.assertEqual(data[:1], b"\x15")
        self.assertEqual(len(data), 7, data)  # exactly one alert record
        line = proc.wait_log(r"outcome=handshake_failed")[-1]
        self.assertIn("sni=mail.alpha.test", line)

    def test_connection_reset_before_accept_is_no_refused_proxy_header(self):
        # A balancer's plain TCP check (HAProxy's `check` without a check port) connects and
        # resets at once. When the reset wins the race with accept(), the peer address is gone:
        # that was logged as `client=- ... PROXY header refused: source not in trusted` and
        # counted in mailsnid_proxy_headers_refused_total, an alarm for operators.
        port, admin = free_port(), free_port()
        d = tempfile.mkdtemp(prefix="r-", dir=TMP)
        proc = MailsnidProcess(f"""
admin = "127.0.0.1:{admin}";
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
listeners = ( {{ name = "imaps"; listen = "127.0.0.1:{port}"; protocol = "imap";
  tls = "implicit"; backend = "127.0.0.1:1"; proxy_protocol_in = true;
  trusted = [ "127.0.0.1/32" ]; }} );
""", d).start([admin])
        self.addCleanup(proc.stop)
        # Stopped, mailsnid accepts nothing: the connections complete and are reset in the queue.
        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(5):
                s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        proc.wait_log(r"conn listener=imaps ", count=5)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        self.assertIn("mailsnid_proxy_headers_refused_total 0\n", metrics)
        self.assertNotIn("PROXY header refused", proc.log())


if __name__ == "__main__":
    unittest.main()
