"""Drain behind a load balancer (issue 12, item 0), against the real binary.

With `drain_grace`, SIGTERM makes /healthz answer 503 at once while the listeners keep accepting
for the grace period (the balancer sends connections until its next check), then stop; every
connection accepted is served. Connections already waiting in the kernel's accept queue when
accepting stops are served too, not reset.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
import unittest
import urllib.error
import urllib.request

from mailsnid_runner import SLOW, MailsnidProcess, free_port
from fakebackend import EchoBackend
from greeting_session import Session, client_context
import certs

PKI: dict[str, str] = {}
TMP = ""


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-grace-")
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


class DrainGrace(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)
        self.backend = EchoBackend(greeting=b"A\r\n")
        self.addCleanup(self.backend.stop)
        self.port, self.admin = free_port(), free_port()
        self.ctx = client_context(PKI["ca"])

    def config(self, grace: str) -> str:
        return f"""workers = 2;
drain_timeout = 20;
{grace}
admin = "127.0.0.1:{self.admin}";
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
listeners = ( {{ name = "imaps"; listen = "127.0.0.1:{self.port}"; protocol = "imap";
  tls = "implicit"; backend = "{self.backend.addr}"; }} );
"""

    def health(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/healthz", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def test_health_fails_first_and_accepting_goes_on_for_the_grace(self):
        grace = 3.0 * SLOW
        proc = MailsnidProcess(self.config(f"drain_grace = {grace};"), self.dir).start(
            [self.port, self.admin])
        self.assertEqual(self.health(), 200)
        held = Session(self.port, self.ctx)
        t0 = time.monotonic()
        proc.signal(signal.SIGTERM)
        proc.wait_log(r"draining: /healthz answers 503; accepting for")
        self.assertEqual(self.health(), 503)
        # Inside the grace, new clients are still served, start to end.
        during = [Session(self.port, self.ctx) for _ in range(5)]
        self.assertLess(time.monotonic() - t0, grace, "the machine is too slow for this check")
        self.assertEqual({s.greeting for s in during}, {b"A\r\n"})
        for s in during:
            self.assertEqual(s.echo(b"x\r\n"), b"x\r\n")
            s.close()
        # After it, nothing is accepted; the open session still works.
        proc.wait_log(r"draining: no new connections", timeout=grace + 10)
        deadline = time.monotonic() + 10 * SLOW
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            except ConnectionRefusedError:
                break
            self.assertLess(time.monotonic(), deadline, "still accepting after drain_grace")
            time.sleep(0.05)
        self.assertEqual(held.echo(b"y\r\n"), b"y\r\n")
        held.close()
        proc.proc.wait(timeout=15 * SLOW)
        self.assertEqual(proc.stop(), 0)

    def test_without_grace_the_drain_starts_at_once(self):
        proc = MailsnidProcess(self.config(""), self.dir).start([self.port, self.admin])
        proc.signal(signal.SIGTERM)
        proc.wait_log(r"draining: no new connections")
        self.assertNotIn("accepting for", proc.log())
        proc.proc.wait(timeout=15 * SLOW)
        self.assertEqual(proc.stop(), 0)

    def test_connections_queued_when_accepting_stops_are_served(self):
        proc = MailsnidProcess(self.config(""), self.dir).start([self.port, self.admin])
        # Stopped, mailsnid accepts nothing: these connects complete in the kernel's queues.
        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            queued = [socket.create_connection(("127.0.0.1", self.port), timeout=10) for _ in range(20)]
            os.kill(proc.proc.pid, signal.SIGTERM)
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        served = 0
        for raw in queued:
            try:
                s = self.ctx.wrap_socket(raw, server_hostname="mail.hoster.test")
                s.settimeout(10 * SLOW)
                served += s.recv(3) == b"A\r\n"
                s.close()
            except OSError:
                raw.close()
        self.assertEqual(served, 20)
        proc.proc.wait(timeout=15 * SLOW)
        self.assertEqual(proc.stop(), 0)

    def test_a_reload_during_the_drain_binds_nothing(self):
        grace = 3.0 * SLOW
        proc = MailsnidProcess(self.config(f"drain_grace = {grace};"), self.dir).start(
            [self.port, self.admin])
        proc.signal(signal.SIGTERM)
        proc.wait_log(r"draining: /healthz answers 503")
        extra = free_port()
        with open(proc.config, "w") as f:
            f.write(self.config(f"drain_grace = {grace};").replace(
                " } );", f' }}, {{ name = "late"; listen = "127.0.0.1:{extra}"; protocol = "imap"; '
                         f'tls = "implicit"; backend = "{self.backend.addr}"; }} );'))
        proc.signal(signal.SIGHUP)
        proc.wait_log(r"reload \(SIGHUP\) ignored: this process is draining")
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", extra), timeout=2).close()
        proc.proc.wait(timeout=grace + 15 * SLOW)
        self.assertEqual(proc.stop(), 0)

    def test_a_second_sigterm_during_the_grace_exits_cleanly(self):
        proc = MailsnidProcess(self.config(f"drain_grace = {30 * SLOW};"), self.dir).start(
            [self.port, self.admin])
        proc.signal(signal.SIGTERM)
        proc.wait_log(r"draining: /healthz answers 503")
        proc.signal(signal.SIGTERM)
        proc.proc.wait(timeout=15 * SLOW)
        self.assertEqual(proc.stop(), 0)      # exit 0 and, under SANITIZE=1, no leak report


if __name__ == "__main__":
    unittest.main()
