"""Routes and domains reload while mailsnid runs (issue 9, items 1-3 for `routes` and `domains`).

Three echo backends that greet with their own letter stand for mailbox servers. A route sends
mail.alpha.test to A; the config is edited to send it to B: sessions opened before keep talking to
A, new ones reach B; an added route applies, a removed one falls back to the listener's backend; a
broken edit changes nothing. Every reload is the real one (SIGHUP or the file watcher).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import unittest

from mailsnid_runner import SLOW, MailsnidProcess, free_port
from fakebackend import EchoBackend
from greeting_session import Session, client_context, reload_and_wait
import certs

PKI: dict[str, str] = {}
TMP = ""


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-routes-")
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


class LiveRoutes(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)
        self.backends = {}
        for letter in "ABC":
            b = EchoBackend(greeting=f"{letter}\r\n".encode())
            self.addCleanup(b.stop)
            self.backends[letter] = b
        self.port = free_port()

    def config(self, routes: str, domains: str = "") -> str:
        return f"""workers = 2;
drain_timeout = 2;
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
listeners = (
  {{ name = "imaps"; listen = "127.0.0.1:{self.port}"; protocol = "imap"; tls = "implicit";
    backend = "{self.backends['C'].addr}"; }}
);
routes = ( {routes} );
{domains}
"""

    def route(self, names: str, letter: str) -> str:
        return f'{{ names = [ {names} ]; imap = "{self.backends[letter].addr}"; }}'

    def greeting(self, sni: str) -> bytes:
        s = Session(self.port, client_context(PKI["ca"]), sni)
        try:
            return s.greeting
        finally:
            s.close()

    @staticmethod
    def domains(n: int) -> str:
        """A `domains` list of N entries: each edit gets its own count, so that the reload line
        ("R routes, N domains") tells which edit a reload applied (the file watcher may still
        be applying an earlier one)."""
        return "domains = [ " + ", ".join(f'"d{i}.example"' for i in range(n)) + " ];"

    def reload(self, proc: MailsnidProcess, text: str, want: str | None) -> None:
        """Applies TEXT; WANT is what the reload line must say ("R routes, N domains"), or None
        for a reload that must fail."""
        reload_and_wait(proc, text, rf"reload \(.*\): .* {want} in" if want else r"reload \(.*\) failed",
                        timeout=10)

    def test_a_moved_domain_keeps_old_sessions_and_sends_new_ones_to_the_new_server(self):
        proc = MailsnidProcess(self.config(self.route('"mail.alpha.test"', "A")), self.dir).start([self.port])
        self.addCleanup(proc.stop)
        old = Session(self.port, client_context(PKI["ca"]), "mail.alpha.test")
        self.addCleanup(old.close)
        self.assertEqual(old.greeting, b"A\r\n")
        self.assertEqual(self.greeting("mail.other.test"), b"C\r\n")

        self.reload(proc, self.config(self.route('"mail.alpha.test"', "B") + ", " +
                                      self.route('"*.beta.test"', "A"),
                                      'domains = [ "alpha.test", "beta.test" ];'),
                    "2 routes, 2 domains")
        self.assertEqual(self.greeting("mail.alpha.test"), b"B\r\n")
        self.assertEqual(self.greeting("webmail.beta.test"), b"A\r\n")
        self.assertEqual(self.greeting("a.b.beta.test"), b"C\r\n")
        # The session opened before the reload still talks to A, both ways.
        self.assertEqual(old.echo(b"still here\r\n"), b"still here\r\n")
        self.assertIn(b"still here\r\n", b"".join(self.backends["A"].received))

        # A route removed: its name falls back to the listener's backend.
        self.reload(proc, self.config(self.route('"*.beta.test"', "A"), self.domains(3)),
                    "1 routes, 3 domains")
        self.assertEqual(self.greeting("mail.alpha.test"), b"C\r\n")

        # A broken edit changes nothing.
        self.reload(proc, self.config('{ names = [ "mail.alpha.test" ]; imap = "10.0.0.1"; }'), None)
        self.assertEqual(self.greeting("mail.alpha.test"), b"C\r\n")
        self.assertEqual(self.greeting("www.beta.test"), b"A\r\n")
        self.assertEqual(old.echo(b"and now\r\n"), b"and now\r\n")

    def test_many_routes_reload_under_traffic(self):
        """10,000 routes; the map flips between A and B on each reload while sessions open: every
        session gets one of the two and all of them after the last reload get the last map."""
        def routes(letter: str) -> str:
            return ",\n".join(self.route(f'"mail.d{i}.test"', letter) for i in range(10000))
        proc = MailsnidProcess(self.config(routes("A")), self.dir).start([self.port])
        self.addCleanup(proc.stop)
        self.assertEqual(self.greeting("mail.d9999.test"), b"A\r\n")
        for n, letter in enumerate("BABAB"):
            self.reload(proc, self.config(routes(letter), self.domains(n + 1)),
                        f"10000 routes, {n + 1} domains")
            for i in (0, 5000, 9999):
                self.assertEqual(self.greeting(f"mail.d{i}.test"), f"{letter}\r\n".encode(),
                                 f"after reload {n + 1}")
        self.assertEqual(self.greeting("mail.d10000.test"), b"C\r\n")


if __name__ == "__main__":
    unittest.main()
