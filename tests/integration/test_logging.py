"""Logging: the syslog target really writes to syslog (/dev/log), and no credential or key
material reaches the log at any level — including IMAP LOGIN and SMTP AUTH lines a client sends
in plaintext before TLS, and the ticket keys file."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

from mailsnid_runner import MAILSNID, SLOW, MailsnidProcess, free_port, wait_port
from fakebackend import EchoBackend
import certs

TMP = ""
PKI: dict[str, str] = {}


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-log-")
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def config(listeners: str, log: str, extra_tls: str = "") -> str:
    return f"""
log = {{ {log} }};
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; {extra_tls} }};
listeners = ( {listeners} );
"""


class Logging(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)

    def test_syslog_target(self):
        self.assertEqual(os.geteuid(), 0, "the integration suite runs as root")
        backend = EchoBackend()
        self.addCleanup(backend.stop)
        port = free_port()
        cfg_path = os.path.join(self.dir, "s.cfg")
        with open(cfg_path, "w") as f:
            f.write(config(f'{{ name = "imaps"; listen = "127.0.0.1:{port}"; protocol = "imap"; '
                           f'tls = "implicit"; backend = "{backend.addr}"; }}',
                           'level = "info"; target = "syslog";'))
        log_sock = os.path.join(self.dir, "log")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(log_sock)
        sock.settimeout(10 * SLOW)
        self.addCleanup(sock.close)
        # glibc's syslog() writes to /dev/log. Give mailsnid its own: in a private mount
        # namespace our socket is bind-mounted there, so the machine's syslog is untouched.
        if os.path.exists("/dev/log"):
            cmd = ["unshare", "-m", "sh", "-c",
                   f"mount --bind {log_sock} /dev/log && exec {MAILSNID} -c {cfg_path}"]
        else:
            os.symlink(log_sock, "/dev/log")
            self.addCleanup(os.unlink, "/dev/log")
            cmd = [MAILSNID, "-c", cfg_path]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.terminate)
        wait_port(port)
        messages = []
        deadline = time.monotonic() + 10 * SLOW
        while not any("mailsnid running" in m for m in messages) and time.monotonic() < deadline:
            messages.append(sock.recv(4096).decode(errors="replace"))
        self.assertTrue(any("mailsnid[" in m and "mailsnid running" in m for m in messages), messages)
        proc.terminate()
        out, err = proc.communicate(timeout=10 * SLOW)
        self.assertEqual(proc.returncode, 0, err)
        self.assertNotIn(b"mailsnid running", err)  # it went to syslog, not stderr

    def test_no_credentials_or_keys_in_the_log(self):
        backend = EchoBackend(greeting=b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
        smtp_backend = EchoBackend(greeting=b"220 mx ESMTP\r\n")
        self.addCleanup(backend.stop)
        self.addCleanup(smtp_backend.stop)
        imap_port, smtp_port, imaps_port = free_port(), free_port(), free_port()
        key = os.urandom(80)
        tickets = os.path.join(self.dir, "tickets.key")
        with open(tickets, "w") as f:
            f.write(base64.b64encode(key).decode() + "\n")
        proc = MailsnidProcess(config(
            f'{{ name = "imap"; listen = "127.0.0.1:{imap_port}"; protocol = "imap"; '
            f'tls = "starttls"; backend = "{backend.addr}"; }}, '
            f'{{ name = "sub"; listen = "127.0.0.1:{smtp_port}"; protocol = "smtp"; '
            f'tls = "starttls"; starttls = "required"; backend = "{smtp_backend.addr}"; }}, '
            f'{{ name = "imaps"; listen = "127.0.0.1:{imaps_port}"; protocol = "imap"; '
            f'tls = "implicit"; backend = "{backend.addr}"; }}',
            'level = "debug";', f'ticket_keys = "{tickets}";'), self.dir).start(
                [imap_port, smtp_port, imaps_port])
        secret = "s3cret-Pa55word"
        auth = base64.b64encode(f"\0alice@alpha.test\0{secret}".encode()).decode()
        with socket.create_connection(("127.0.0.1", imap_port), timeout=10 * SLOW) as s:
            s.recv(200)
            s.sendall(f"a1 LOGIN alice@alpha.test {secret}\r\n".encode())
            s.recv(200)
        with socket.create_connection(("127.0.0.1", smtp_port), timeout=10 * SLOW) as s:
            s.recv(200)
            s.sendall(f"AUTH PLAIN {auth}\r\n".encode())
            self.assertTrue(s.recv(200).startswith(b"530"))
        import ssl
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", imaps_port)),
                             server_hostname="mail.hoster.test") as s:
            s.recv(200)
            s.sendall(f"a1 LOGIN alice {secret}\r\n".encode())
            s.recv(200)
        proc.wait_log(r"conn listener=imaps", count=2)
        proc.stop()
        log = proc.log()
        self.assertIn("conn listener=sub", log)
        for needle in (secret, auth, base64.b64encode(key).decode()[:16], "LOGIN", "AUTH PLAIN"):
            self.assertNotIn(needle, log)
        with open(PKI["default_key"]) as f:
            pem_body = f.read().splitlines()[1]
        self.assertNotIn(pem_body, log)


if __name__ == "__main__":
    unittest.main()
