"""Every setting reloads, in generations (issue 9, items 1-2), against the real binary.

200 TLS sessions stay open (IMAP IDLE's shape) while a loop opens new sessions throughout. A
reload then changes the listener's backend, its idle timeout and the log level, adds a route,
adds a listener and removes another: the open sessions keep their old backend and timeout, new
sessions get the new ones, the removed port refuses connects, the added one serves, and the loop
never fails. A reload that cannot bind its new port changes nothing. /metrics shows the current
generation and the connections still open under each one.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
import unittest
import urllib.request

from mailsnid_runner import SLOW, MailsnidProcess, free_port
from fakebackend import EchoBackend
from greeting_session import Session, client_context, reload_and_wait
import certs

PKI: dict[str, str] = {}
TMP = ""


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-live-")
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def client_ctx() -> ssl.SSLContext:
    return client_context(PKI["ca"])


def session(port: int, sni: str = "mail.hoster.test", ctx: ssl.SSLContext | None = None) -> Session:
    return Session(port, ctx or client_ctx(), sni)


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)
        self.backend = {}
        for letter in "ABC":
            b = EchoBackend(greeting=f"{letter}\r\n".encode())
            self.addCleanup(b.stop)
            self.backend[letter] = b
        self.admin = free_port()

    def config(self, listeners: list[tuple[str, int, str, str]], routes: str = "",
               level: str = "info") -> str:
        ls = ",\n".join(
            f'  {{ name = "{name}"; listen = "127.0.0.1:{port}"; protocol = "imap"; tls = "implicit"; '
            f'backend = "{self.backend[letter].addr}"; {extra} }}'
            for name, port, letter, extra in listeners)
        return f"""workers = 2;
drain_timeout = 3;
admin = "127.0.0.1:{self.admin}";
log = {{ level = "{level}"; }};
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
listeners = (
{ls}
);
{routes}
"""

    def reload(self, proc: MailsnidProcess, text: str, pattern: str) -> None:
        reload_and_wait(proc, text, pattern)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as r:
            return r.read().decode()


class Loop(threading.Thread):
    """Opens sessions one after another, as clients keep arriving, and records what each got."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.greetings: list[bytes] = []
        self.failures: list[str] = []

    def run(self):
        ctx = client_ctx()
        while not self.stop.is_set():
            try:
                s = session(self.port, ctx=ctx)
                ok = s.echo(b"ping\r\n") == b"ping\r\n"
                s.close()
                self.greetings.append(s.greeting)
                if not ok:
                    self.failures.append(f"echo failed after {s.greeting!r}")
            except Exception as e:  # any failure, a refused connect included, counts
                self.failures.append(repr(e))


class LiveConfig(Base):
    def test_everything_reloads_and_no_session_is_dropped(self):
        p_imaps, p_old, p_new = free_port(), free_port(), free_port()
        first = self.config([("imaps", p_imaps, "A", "idle_timeout = 600;"),
                             ("legacy", p_old, "C", "")])
        proc = MailsnidProcess(first, self.dir).start([p_imaps, p_old, self.admin])
        self.addCleanup(proc.stop)

        held = [session(p_imaps) for _ in range(200)]
        self.addCleanup(lambda: [s.close() for s in held])
        self.assertEqual({s.greeting for s in held}, {b"A\r\n"})
        loop = Loop(p_imaps)
        loop.start()
        self.addCleanup(loop.stop.set)
        time.sleep(0.5)

        second = self.config([("imaps", p_imaps, "B", "idle_timeout = 1;"),
                              ("submissions", p_new, "C", "")],
                             routes=f'routes = ( {{ names = [ "mail.alpha.test" ]; '
                                    f'imap = "{self.backend["C"].addr}"; }} );',
                             level="notice")
        self.reload(proc, second, r"reload \(.*\): generation 2: 2 listeners")
        time.sleep(0.5)
        loop.stop.set()
        loop.join(30)

        # The loop never failed, and once the reload was in, every new session met B.
        self.assertEqual(loop.failures, [])
        self.assertGreater(len(loop.greetings), 5)
        self.assertEqual(set(loop.greetings) - {b"A\r\n", b"B\r\n"}, set())
        self.assertEqual(loop.greetings[-1], b"B\r\n")
        self.assertEqual(session(p_imaps).greeting, b"B\r\n")
        # The route, the added listener, the removed one.
        self.assertEqual(session(p_imaps, sni="mail.alpha.test").greeting, b"C\r\n")
        self.assertEqual(session(p_new).greeting, b"C\r\n")
        deadline = time.monotonic() + 10 * SLOW
        while True:
            try:
                socket.create_connection(("127.0.0.1", p_old), timeout=2).close()
            except ConnectionRefusedError:
                break
            self.assertLess(time.monotonic(), deadline, "the removed listener still accepts")
            time.sleep(0.05)

        # /metrics: generation 2 is current; generation 1 still has the 200 held sessions.
        m = self.metrics()
        self.assertRegex(m, r"mailsnid_config_generation 2\b")
        g1 = int(re.search(r'mailsnid_generation_connections\{generation="1"\} (\d+)', m).group(1))
        self.assertGreaterEqual(g1, 200)
        self.assertIn('mailsnid_connections_open{listener="submissions"}', m)
        self.assertNotIn('listener="legacy"', m)

        # New sessions have the new idle timeout (1 s); the held ones keep 600 s.
        fresh = session(p_imaps)
        fresh.s.settimeout(10 * SLOW)
        self.assertEqual(fresh.s.recv(10), b"")          # closed as idle
        for s in held[:20]:
            self.assertEqual(s.echo(b"still\r\n"), b"still\r\n")
        self.assertIn(b"still\r\n", b"".join(self.backend["A"].received))
        self.assertNotIn(b"still\r\n", b"".join(self.backend["B"].received))

        # The log level went to notice: no more per-connection info lines.
        mark = len(proc.log())
        session(p_imaps).close()
        time.sleep(0.3)
        self.assertNotRegex(proc.log()[mark:], r"info: conn listener=imaps .* outcome=")

        # When the last session of generation 1 ends, generation 1 is gone.
        for s in held:
            s.close()
        deadline = time.monotonic() + 10 * SLOW
        while 'generation="1"' in self.metrics():
            self.assertLess(time.monotonic(), deadline, "generation 1 was never freed")
            time.sleep(0.05)

    def test_a_reload_that_cannot_bind_changes_nothing(self):
        p_imaps, p_taken = free_port(), free_port()
        proc = MailsnidProcess(self.config([("imaps", p_imaps, "A", "")]), self.dir).start(
            [p_imaps, self.admin])
        self.addCleanup(proc.stop)
        taken = socket.socket()
        taken.bind(("127.0.0.1", p_taken))
        taken.listen(1)
        self.addCleanup(taken.close)
        bad = self.config([("imaps", p_imaps, "B", ""), ("extra", p_taken, "C", "")])
        self.reload(proc, bad, r"reload \(.*\) failed")
        line = next(i + 1 for i, l in enumerate(bad.splitlines()) if '"extra"' in l)
        self.assertRegex(proc.log(), rf"{re.escape(proc.config)}:{line}: listener extra: cannot "
                                     rf"listen on 127\.0\.0\.1:{p_taken}")
        self.assertEqual(session(p_imaps).greeting, b"A\r\n")
        self.assertRegex(self.metrics(), r"mailsnid_config_generation 1\b")

    def test_moving_a_listener_to_an_overlapping_address_says_how(self):
        # 127.0.0.1:P -> 0.0.0.0:P in one reload: the kernel refuses the new socket while this
        # process holds the old. The reload fails naming the listener in the way and the two
        # steps that work, and the old one keeps serving; the two steps then do work.
        port = free_port()
        proc = MailsnidProcess(self.config([("imaps", port, "A", "")]), self.dir).start(
            [port, self.admin])
        self.addCleanup(proc.stop)
        moved = self.config([("imaps", port, "B", "")]).replace(
            f'listen = "127.0.0.1:{port}"', f'listen = "0.0.0.0:{port}"')
        self.reload(proc, moved, r"reload \(.*\) failed")
        line = next(i + 1 for i, l in enumerate(moved.splitlines()) if '"imaps"' in l)
        self.assertRegex(proc.log(), rf"{re.escape(proc.config)}:{line}: listener imaps: cannot "
                                     rf"listen on 0\.0\.0\.0:{port} while this process listens on "
                                     rf"127\.0\.0\.1:{port} \(listener imaps\) on the same port")
        self.assertNotIn("another process listens there", proc.log())
        self.assertEqual(session(port).greeting, b"A\r\n")
        self.reload(proc, self.config([("other", free_port(), "A", "")]),
                    r"reload \(.*\): generation \d+: 1 listeners")
        self.reload(proc, moved, r"reload \(.*\): generation \d+: 1 listeners")
        # (The file watcher may have reloaded the first step's file after the signal did.)
        deadline = time.monotonic() + 10 * SLOW
        while True:
            try:
                if session(port).greeting == b"B\r\n":
                    break
            except OSError:
                pass
            self.assertLess(time.monotonic(), deadline, proc.log()[-3000:])
            time.sleep(0.1)

    def test_a_listener_removed_and_added_again_still_counts_its_sessions(self):
        # max_connections = 1. A session opened before one reload removed the listener runs on;
        # the next reload adds the listener again (new sockets on the same address). That
        # session still counts: a second is refused, /metrics shows 1 open, and once the first
        # ends a new one is served.
        port, other = free_port(), free_port()
        limited = ("imaps", port, "A", "max_connections = 1;")
        proc = MailsnidProcess(self.config([limited]), self.dir).start([port, self.admin])
        self.addCleanup(proc.stop)
        # The start-up probe's connect to the port counts until mailsnid has seen it close.
        deadline = time.monotonic() + 10 * SLOW
        while not re.search(r'mailsnid_connections_open\{listener="imaps"\} 0\b', self.metrics()):
            self.assertLess(time.monotonic(), deadline, self.metrics())
            time.sleep(0.05)
        held = session(port)
        self.assertEqual(held.greeting, b"A\r\n")
        self.reload(proc, self.config([("other", other, "B", "")]),
                    r"reload \(.*\): generation \d+: 1 listeners")
        self.reload(proc, self.config([limited, ("other", other, "B", "")]),
                    r"reload \(.*\): generation \d+: 2 listeners")
        self.assertEqual(held.echo(b"still here\r\n"), b"still here\r\n")
        self.assertRegex(self.metrics(), r'mailsnid_connections_open\{listener="imaps"\} 1\b')
        try:
            second = session(port)
            got = second.greeting
            second.close()
        except (OSError, ssl.SSLError) as e:
            got = repr(e).encode()
        self.assertNotEqual(got, b"A\r\n", proc.log()[-3000:])
        proc.wait_log(r"max_connections reached", timeout=10)
        held.close()
        deadline = time.monotonic() + 10 * SLOW
        while True:
            try:
                third = session(port)
                third.close()
                if third.greeting == b"A\r\n":
                    break
            except (OSError, ssl.SSLError):
                pass
            self.assertLess(time.monotonic(), deadline, proc.log()[-3000:])
            time.sleep(0.1)

    def test_admin_address_moves_on_reload(self):
        p_imaps = free_port()
        proc = MailsnidProcess(self.config([("imaps", p_imaps, "A", "")]), self.dir).start(
            [p_imaps, self.admin])
        self.addCleanup(proc.stop)
        old_admin, self.admin = self.admin, free_port()
        self.reload(proc, self.config([("imaps", p_imaps, "A", "")]), r"reload \(.*\): generation 2")
        self.assertRegex(self.metrics(), r"mailsnid_config_generation 2\b")
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", old_admin), timeout=2).close()
        # An admin address that cannot be bound fails the reload and keeps the endpoint.
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        current, self.admin = self.admin, taken.getsockname()[1]
        self.reload(proc, self.config([("imaps", p_imaps, "B", "")]), r"reload \(.*\) failed")
        self.admin = current
        self.assertRegex(self.metrics(), r"mailsnid_config_generation 2\b")
        self.assertEqual(session(p_imaps).greeting, b"A\r\n")

    def test_an_edit_to_an_included_file_reloads_by_itself(self):
        p_imaps = free_port()
        routes = os.path.join(self.dir, "routes.cfg")

        def write_routes(letter: str) -> None:
            with open(routes + ".new", "w") as f:
                f.write(f'routes = ( {{ names = [ "mail.alpha.test" ]; imap = "{self.backend[letter].addr}"; }} );\n')
            os.replace(routes + ".new", routes)

        write_routes("B")
        proc = MailsnidProcess(self.config([("imaps", p_imaps, "A", "")], routes='@include "routes.cfg"'),
                               self.dir).start([p_imaps, self.admin])
        self.addCleanup(proc.stop)
        self.assertEqual(session(p_imaps, sni="mail.alpha.test").greeting, b"B\r\n")
        write_routes("C")
        proc.wait_log(r"reload \(files changed\): generation 2", timeout=10)
        self.assertEqual(session(p_imaps, sni="mail.alpha.test").greeting, b"C\r\n")

    def test_a_rotated_ticket_key_file_reloads_by_itself(self):
        p_imaps = free_port()
        keys = os.path.join(self.dir, "tickets.key")

        def write_keys(*keys_bytes: bytes) -> None:
            with open(keys + ".new", "w") as f:
                f.write("".join(base64.b64encode(k).decode() + "\n" for k in keys_bytes))
            os.replace(keys + ".new", keys)

        write_keys(os.urandom(80))
        text = self.config([("imaps", p_imaps, "A", "")]).replace(
            "default_key =", f'ticket_keys = "{keys}"; default_key =')
        proc = MailsnidProcess(text, self.dir).start([p_imaps, self.admin])
        self.addCleanup(proc.stop)
        write_keys(os.urandom(80), os.urandom(80))
        proc.wait_log(r"reload \(files changed\): generation 2", timeout=10)


if __name__ == "__main__":
    unittest.main()
