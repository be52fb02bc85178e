"""Reload without a signal: the file watcher picks up certbot's renewals (new archive files and
live/ symlinks swapped one by one, as certbot does), new domain folders and removed ones, and
an edited config file; many reloads while handshakes run lose no handshake.

Run under SANITIZE=1 too, where the same test also checks that no reload leaks.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
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
    TMP = tempfile.mkdtemp(prefix="mailsnid-reload-")
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def served(port: int, sni: str) -> str:
    ctx = ssl.create_default_context(cafile=PKI["ca"])
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            return certs.cert_fingerprint(ssl.DER_cert_to_PEM_cert(s.getpeercert(True)))


def wait_served(port: int, sni: str, want: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout * SLOW
    got = None
    while time.monotonic() < deadline:
        got = served(port, sni)
        if got == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"{sni}: still served {got}, want {want}")


class Watcher(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="w-", dir=TMP)
        self.le = os.path.join(self.dir, "letsencrypt")
        self.ca = certs.CA.load(PKI["ca_dir"])
        self.backend = EchoBackend()
        self.addCleanup(self.backend.stop)
        self.port = free_port()

    def config(self) -> str:
        return f"""
workers = 2;
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
cert_dirs = ( "{self.le}/live" );
listeners = ( {{ name = "imaps"; listen = "127.0.0.1:{self.port}"; protocol = "imap";
                tls = "implicit"; backend = "{self.backend.addr}"; }} );
"""

    def start(self) -> MailsnidProcess:
        p = MailsnidProcess(self.config(), self.dir).start([self.port])
        self.addCleanup(p.stop)
        return p

    def test_certbot_renewal_is_picked_up_without_a_signal(self):
        lineage = certs.make_certbot_tree(self.le, "alpha.test", self.ca, ["mail.alpha.test"])
        proc = self.start()
        first = certs.cert_fingerprint(lineage.fullchain)
        self.assertEqual(served(self.port, "mail.alpha.test"), first)
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        open_conn = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port)),
                                    server_hostname="mail.alpha.test")
        open_conn.sendall(b"one\r\n")
        self.assertEqual(open_conn.recv(10), b"one\r\n")

        renewed = certs.renew_certbot(self.le, "alpha.test")
        second = certs.cert_fingerprint(renewed.fullchain)
        self.assertNotEqual(first, second)
        wait_served(self.port, "mail.alpha.test", second)
        proc.wait_log(r"reload \(files changed\)")
        # The connection opened before the renewal still relays both ways.
        open_conn.sendall(b"two\r\n")
        self.assertEqual(open_conn.recv(10), b"two\r\n")
        open_conn.close()

    def test_new_domain_folder_is_served_and_a_removed_one_falls_back(self):
        certs.make_certbot_tree(self.le, "alpha.test", self.ca, ["mail.alpha.test"])
        proc = self.start()
        default = certs.cert_fingerprint(PKI["default_cert"])
        self.assertEqual(served(self.port, "mail.newcomer.test"), default)
        lineage = certs.make_certbot_tree(self.le, "newcomer.test", self.ca, ["mail.newcomer.test"])
        wait_served(self.port, "mail.newcomer.test", certs.cert_fingerprint(lineage.fullchain))
        shutil.rmtree(os.path.join(self.le, "live", "newcomer.test"))
        wait_served(self.port, "mail.newcomer.test", default)
        proc.wait_log(r"reload \(files changed\): .*-1 removed")

    def test_many_reloads_while_handshakes_run(self):
        certs.make_certbot_tree(self.le, "alpha.test", self.ca, ["mail.alpha.test"])
        proc = self.start()
        want = served(self.port, "mail.alpha.test")
        failures: list[str] = []
        done = threading.Event()
        count = [0]

        def client():
            ctx = ssl.create_default_context(cafile=PKI["ca"])
            while not done.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
                        with ctx.wrap_socket(raw, server_hostname="mail.alpha.test") as s:
                            s.sendall(b"x")
                            if s.recv(1) != b"x":
                                failures.append("no echo")
                    count[0] += 1
                except OSError as e:
                    failures.append(repr(e))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        reloads = 200
        for _ in range(reloads):
            proc.signal(signal.SIGHUP)
            time.sleep(0.01)
        proc.wait_log(r"reload \(", count=2)
        time.sleep(0.5 * SLOW)
        done.set()
        for t in threads:
            t.join(30)
        self.assertEqual(failures, [])
        self.assertGreater(count[0], 20)
        self.assertEqual(served(self.port, "mail.alpha.test"), want)

    def test_broken_config_edit_keeps_serving(self):
        lineage = certs.make_certbot_tree(self.le, "alpha.test", self.ca, ["mail.alpha.test"])
        proc = self.start()
        with open(proc.config, "a") as f:
            f.write("\nbogus_key = 1;\n")
        lines = proc.wait_log(r"\.cfg:\d+: .*bogus_key")
        self.assertIn(proc.config, lines[0])
        proc.wait_log(r"reload \(files changed\) failed")
        self.assertEqual(served(self.port, "mail.alpha.test"), certs.cert_fingerprint(lineage.fullchain))


if __name__ == "__main__":
    unittest.main()


class FailedReloads(unittest.TestCase):
    def test_unreadable_key_keeps_the_old_pair_and_is_counted(self):
        d = tempfile.mkdtemp(prefix="f-", dir=TMP)
        ca = certs.CA.load(PKI["ca_dir"])
        leaf = ca.issue(["mail.epsilon.test"], out_dir=os.path.join(d, "eps"))
        cert, key = os.path.join(d, "eps.pem"), os.path.join(d, "eps.key")
        shutil.copy(leaf.fullchain, cert)
        shutil.copy(leaf.key, key)
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port, admin = free_port(), free_port()
        cfg = f"""
admin = "127.0.0.1:{admin}";
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
certificates = (
  {{ cert = "{cert}";
     key = "{key}"; }}
);
listeners = ( {{ name = "imaps"; listen = "127.0.0.1:{port}"; protocol = "imap";
                tls = "implicit"; backend = "{backend.addr}"; }} );
"""
        proc = MailsnidProcess(cfg, d).start([port])
        self.addCleanup(proc.stop)
        want = certs.cert_fingerprint(cert)
        self.assertEqual(served(port, "mail.epsilon.test"), want)
        # The key disappears (a half-finished deploy): the next reload fails, names the config
        # line of the pair, and the pair already loaded keeps serving.
        os.unlink(key)
        os.symlink(os.path.join(d, "nowhere.key"), key)
        proc.signal(signal.SIGHUP)
        line = next(i + 1 for i, l in enumerate(cfg.splitlines()) if "{ cert = " in l)
        proc.wait_log(rf"{re.escape(proc.config)}:{line}: .*(cannot read|No such file)")
        proc.wait_log(r"reload \(.*\) failed")
        self.assertEqual(served(port, "mail.epsilon.test"), want)
        import urllib.request
        body = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
        self.assertRegex(body, r'mailsnid_reloads_total\{result="failed"\} [1-9]')
