"""Privilege drop: with `user`/`group` set, mailsnid binds and reads keys as root, then serves as
that user; reloads read keys again as that user (keys must be group-readable); a user that does
not exist stops the start instead of serving as root. The suite runs as root (Postfix needs it)."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import unittest

import mailsnid_runner
from mailsnid_runner import MAILSNID, MailsnidProcess, free_port
from fakebackend import EchoBackend
import certs


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class PrivilegeDrop(unittest.TestCase):
    def setUp(self):
        self.assertEqual(os.geteuid(), 0, "the integration suite runs as root")
        self.dir = tempfile.mkdtemp(prefix="mailsnid-privs-")
        os.chmod(self.dir, 0o755)
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.pki = certs.standard_pki(os.path.join(self.dir, "pki"))
        os.chmod(os.path.join(self.dir, "pki"), 0o755)
        self.backend = EchoBackend()
        self.addCleanup(self.backend.stop)
        self.port = free_port()

    def config(self, user: str) -> str:
        return f"""
user = "{user}"; group = "nogroup";
tls = {{ default_cert = "{self.pki['default_cert']}"; default_key = "{self.pki['default_key']}"; }};
certificates = ( {{ cert = "{self.pki['alpha_ec_cert']}"; key = "{self.pki['alpha_ec_key']}"; }} );
listeners = ( {{ name = "imaps"; listen = "127.0.0.1:{self.port}"; protocol = "imap";
                tls = "implicit"; backend = "{self.backend.addr}"; }} );
"""

    def test_serves_as_the_configured_user_and_reloads_keys_with_its_rights(self):
        proc = MailsnidProcess(self.config("nobody"), self.dir).start([self.port])
        self.addCleanup(proc.stop)
        proc.wait_log("running as uid")
        with open(f"/proc/{proc.proc.pid}/status") as f:
            status = f.read()
        uid_line = next(l for l in status.splitlines() if l.startswith("Uid:"))
        gid_line = next(l for l in status.splitlines() if l.startswith("Gid:"))
        nogroup = grp.getgrnam("nogroup").gr_gid
        self.assertEqual(set(uid_line.split()[1:]), {"65534"}, uid_line)
        self.assertEqual(set(gid_line.split()[1:]), {str(nogroup)}, gid_line)
        ctx = ssl.create_default_context(cafile=self.pki["ca"])
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port)),
                             server_hostname="mail.alpha.test") as s:
            s.sendall(b"hi")
            self.assertEqual(s.recv(2), b"hi")

        # A renewed pair whose key is 0600 root: a reload as nobody cannot read it, fails, and
        # keeps the old pair serving. (Unchanged files are not re-read at all.)
        renewed = certs.CA.load(self.pki["ca_dir"]).issue(
            ["mail.alpha.test"], out_dir=os.path.join(self.dir, "renewed"))
        shutil.copy(renewed.fullchain, self.pki["alpha_ec_cert"])
        shutil.copy(renewed.key, self.pki["alpha_ec_key"])
        os.chmod(self.pki["alpha_ec_key"], 0o600)
        proc.signal(signal.SIGHUP)
        proc.wait_log(r"reload \(SIGHUP\) failed")
        proc.wait_log(r"Permission denied|permission denied")
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port)),
                             server_hostname="mail.alpha.test") as s:
            s.sendall(b"ok")
            self.assertEqual(s.recv(2), b"ok")
        # Group-readable keys (the documented model) reload fine.
        for key in (self.pki["default_key"], self.pki["alpha_ec_key"]):
            os.chown(key, 0, nogroup)
            os.chmod(key, 0o640)
        proc.signal(signal.SIGHUP)
        proc.wait_log(r"reload \(SIGHUP\): ")

    def test_a_reload_binds_a_port_below_1024_after_the_switch(self):
        low = next(p for p in range(990, 600, -1) if port_free(p))
        proc = MailsnidProcess(self.config("nobody"), self.dir).start([self.port])
        self.addCleanup(proc.stop)
        proc.wait_log("running as uid")
        with open(f"/proc/{proc.proc.pid}/status") as f:
            caps = dict(l.split(":\t") for l in f.read().splitlines() if l.startswith("Cap"))
        # Nothing of root but binding low ports.
        self.assertEqual(int(caps["CapEff"], 16), 1 << 10, caps)
        self.assertEqual(int(caps["CapPrm"], 16), 1 << 10, caps)
        mark = len(proc.log())
        with open(proc.config, "w") as f:
            own = f'backend = "{self.backend.addr}"; }} );'
            f.write(self.config("nobody").replace(
                own, f'backend = "{self.backend.addr}"; }}, {{ name = "low"; listen = "127.0.0.1:{low}"; '
                     f'protocol = "imap"; tls = "implicit"; backend = "{self.backend.addr}"; }} );'))
        proc.signal(signal.SIGHUP)
        proc.wait_log(r"reload \(.*\): generation 2: 2 listeners")
        self.assertNotRegex(proc.log()[mark:], r"reload \(.*\) failed")
        ctx = ssl.create_default_context(cafile=self.pki["ca"])
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", low)),
                             server_hostname="mail.alpha.test") as s:
            s.sendall(b"low")
            self.assertEqual(s.recv(3), b"low")

    def test_the_upgraded_process_keeps_the_low_port_capability(self):
        # The retired process runs as nobody and starts the binary again: it must be somewhere
        # nobody can reach (a checkout in /root is not, as /usr/sbin is in production).
        exe = os.path.join(self.dir, "mailsnid")
        shutil.copy2(mailsnid_runner.MAILSNID, exe)
        os.chmod(exe, 0o755)
        saved, mailsnid_runner.MAILSNID = mailsnid_runner.MAILSNID, exe
        self.addCleanup(setattr, mailsnid_runner, "MAILSNID", saved)
        pid_file = os.path.join(self.dir, "mailsnid.pid")
        cfg = self.config("nobody") + f'pid_file = "{pid_file}";\n'
        os.chmod(self.dir, 0o777)              # nobody (the upgraded process) writes the pid file
        # The new process starts as nobody: keys group-readable, as the README asks for reloads.
        nogroup = grp.getgrnam("nogroup").gr_gid
        for key in (self.pki["default_key"], self.pki["alpha_ec_key"]):
            os.chown(key, 0, nogroup)
            os.chmod(key, 0o640)
        proc = MailsnidProcess(cfg, self.dir).start([self.port])
        self.addCleanup(proc.stop)
        proc.wait_log("running as uid")
        proc.signal(signal.SIGUSR2)
        line = proc.wait_log(r"upgrade: the new process \(pid \d+\) accepts")[0]
        new_pid = int(line.split("pid ")[1].split(")")[0])
        self.addCleanup(lambda: os.kill(new_pid, signal.SIGTERM))
        with open(f"/proc/{new_pid}/status") as f:
            caps = dict(l.split(":\t") for l in f.read().splitlines() if l.startswith("Cap"))
        self.assertEqual(int(caps["CapEff"], 16), 1 << 10, caps)
        self.assertEqual(int(caps["CapPrm"], 16), 1 << 10, caps)
        # The new process can bind a low port on its own reload.
        low = next(p for p in range(990, 600, -1) if port_free(p))
        own = f'backend = "{self.backend.addr}"; }} );'
        with open(proc.config, "w") as f:
            f.write(cfg.replace(own, f'backend = "{self.backend.addr}"; }}, {{ name = "low"; '
                                     f'listen = "127.0.0.1:{low}"; protocol = "imap"; tls = "implicit"; '
                                     f'backend = "{self.backend.addr}"; }} );'))
        os.kill(new_pid, signal.SIGHUP)
        proc.wait_log(r"reload \(SIGHUP\): generation 2: 2 listeners")
        ctx = ssl.create_default_context(cafile=self.pki["ca"])
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", low)),
                             server_hostname="mail.alpha.test") as s:
            s.sendall(b"low")
            self.assertEqual(s.recv(3), b"low")

    def test_unknown_user_refuses_to_start(self):
        cfg = os.path.join(self.dir, "bad.cfg")
        with open(cfg, "w") as f:
            f.write(self.config("no-such-user-here"))
        r = subprocess.run([MAILSNID, "-c", cfg], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no-such-user-here", r.stderr)
        self.assertIn("refusing", r.stderr)


if __name__ == "__main__":
    unittest.main()
