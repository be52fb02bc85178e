"""Binary upgrade with SIGUSR2 (issue 9, items 4-5), against the real binary.

The old process hands its listening sockets and its admin socket to a new process started from
the same path with the same arguments; once the new one says it accepts, the old one stops
accepting and serves its open sessions until they end, then exits 0. A loop opening sessions
throughout sees no failure; sessions opened before keep working on the old process; the pid file
names the new process. A new process that cannot start (a broken config on disk) leaves the old
one serving, and a second SIGUSR2 while an upgrade runs is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import urllib.request

from mailsnid_runner import SLOW, MailsnidProcess, free_port
from backends import USERS, MailBackends
from fakebackend import EchoBackend
from greeting_session import Session, client_context
import certs
from test_live_config import Loop

PKI: dict[str, str] = {}
TMP = ""


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-upgrade-")
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))
    import test_live_config
    test_live_config.PKI.update(PKI)


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(l.startswith("State:") and "Z" in l.split()[1] for l in f)
    except OSError:
        return False


class Upgrade(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)
        self.backend = EchoBackend(greeting=b"A\r\n")
        self.addCleanup(self.backend.stop)
        self.port, self.admin = free_port(), free_port()
        self.pid_file = os.path.join(self.dir, "mailsnid.pid")
        self.ctx = client_context(PKI["ca"])

    def config(self, extra: str = "") -> str:
        return f"""workers = 2;
drain_timeout = 3;
admin = "127.0.0.1:{self.admin}";
pid_file = "{self.pid_file}";
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
listeners = ( {{ name = "imaps"; listen = "127.0.0.1:{self.port}"; protocol = "imap";
  tls = "implicit"; backend = "{self.backend.addr}"; }} );
{extra}
"""

    def start(self, text: str, timeout: float = 5.0) -> MailsnidProcess:
        proc = MailsnidProcess(text, self.dir).start([self.port, self.admin], timeout=timeout)
        self.addCleanup(self.kill_successor)
        return proc

    def start_with_many_routes(self) -> MailsnidProcess:
        """100,000 routes keep a new process busy reading its config for a while, so an upgrade
        can be caught in the middle; the first process takes as long to start (a few seconds,
        more under ASan on a busy machine)."""
        routes = ",\n".join(f'{{ names = [ "mail.d{i}.test" ]; imap = "{self.backend.addr}"; }}'
                             for i in range(100000))
        return self.start(self.config(f"routes = (\n{routes}\n);"), timeout=30)

    def kill_successor(self):
        try:
            pid = int(open(self.pid_file).read())
        except (OSError, ValueError):
            return
        if pid > 0 and alive(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15 * SLOW
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def pid_in_file(self) -> int:
        """The pid file's pid. A process's listeners accept (start() returns) a moment before
        it is ready and writes the file, so a first look waits for the file to appear."""
        deadline = time.monotonic() + 5 * SLOW
        while not os.path.exists(self.pid_file) and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(self.pid_file) as f:
            return int(f.read())

    def health(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/healthz", timeout=10) as r:
            return r.status

    def test_upgrade_under_load_keeps_every_session(self):
        old = self.start(self.config())
        self.assertEqual(self.pid_in_file(), old.proc.pid)
        held = [Session(self.port, self.ctx) for _ in range(200)]
        self.addCleanup(lambda: [s.close() for s in held])
        loop = Loop(self.port)
        loop.start()
        self.addCleanup(loop.stop.set)
        time.sleep(0.3)

        old.signal(signal.SIGUSR2)
        line = old.wait_log(r"upgrade: the new process \(pid \d+\) accepts")[0]
        new_pid = int(re.search(r"pid (\d+)", line).group(1))
        self.assertNotEqual(new_pid, old.proc.pid)
        time.sleep(0.5)
        loop.stop.set()
        loop.join(30)
        self.assertEqual(loop.failures, [])
        self.assertGreater(len(loop.greetings), 5)

        self.assertEqual(self.pid_in_file(), new_pid)
        self.assertEqual(self.health(), 200)          # the new process answers on the same socket
        self.assertTrue(alive(new_pid))
        # The old process keeps its sessions, both ways, and accepts nothing new.
        for s in held[:20]:
            self.assertEqual(s.echo(b"still\r\n"), b"still\r\n")
        self.assertTrue(alive(old.proc.pid))
        # (Both processes log to the same stderr, so count the old one's descriptors instead:
        # a session it accepted would add two.)
        before = len(os.listdir(f"/proc/{old.proc.pid}/fd"))
        fresh = [Session(self.port, self.ctx) for _ in range(10)]
        self.assertEqual({s.greeting for s in fresh}, {b"A\r\n"})
        time.sleep(0.3)
        self.assertEqual(len(os.listdir(f"/proc/{old.proc.pid}/fd")), before)
        for s in fresh:
            s.close()
        # When the last of them ends, the old process exits 0 (stop() checks the status).
        for s in held:
            s.close()
        old.proc.wait(timeout=15 * SLOW)
        self.assertEqual(old.stop(), 0)
        self.assertEqual(Session(self.port, self.ctx).greeting, b"A\r\n")

    def test_systemd_hears_the_new_main_pid(self):
        """What systemd's unit (Type=notify, NotifyAccess=all) is told, and by whom: the new
        process's READY=1 and the old one's MAINPID= naming it (sender pids from SO_PASSCRED)."""
        path = os.path.join(self.dir, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.settimeout(20 * SLOW)
        self.addCleanup(sock.close)
        os.environ["NOTIFY_SOCKET"] = path
        try:
            old = self.start(self.config())
        finally:
            del os.environ["NOTIFY_SOCKET"]

        def datagram() -> tuple[int, bytes]:
            """(sender pid, first line of the message)"""
            msg, anc, _, _ = sock.recvmsg(512, socket.CMSG_SPACE(12))
            pid = next(struct.unpack("iII", data)[0] for level, kind, data in anc
                       if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
            return pid, msg.split(b"\n")[0]

        self.assertEqual(datagram(), (old.proc.pid, b"READY=1"))
        old.signal(signal.SIGUSR2)
        line = old.wait_log(r"upgrade: the new process \(pid \d+\) accepts")[0]
        new_pid = int(re.search(r"pid (\d+)", line).group(1))
        got = [datagram() for _ in range(2)]
        self.assertIn((old.proc.pid, f"MAINPID={new_pid}".encode()), got)
        self.assertIn((new_pid, b"READY=1"), got)
        old.proc.wait(timeout=15 * SLOW)
        self.assertEqual(old.stop(), 0)

    def test_a_new_process_that_cannot_start_leaves_the_old_one_serving(self):
        old = self.start(self.config())
        with open(old.config, "a") as f:
            f.write("colour = \"blue\";\n")
        old.signal(signal.SIGUSR2)
        old.wait_log(r"upgrade failed: the new process \(pid \d+\) exited \(status 1")
        self.assertIn("colour: unknown key", old.log())
        self.assertEqual(self.pid_in_file(), old.proc.pid)
        self.assertEqual(Session(self.port, self.ctx).greeting, b"A\r\n")
        self.assertEqual(self.health(), 200)
        old.stop()

    def test_sigterm_during_an_upgrade_stops_the_new_process_too(self):
        old = self.start_with_many_routes()
        old.signal(signal.SIGUSR2)
        line = old.wait_log(r"upgrade: started ")[0]
        child = int(re.search(r"\(pid (\d+)\)", line).group(1))
        old.signal(signal.SIGTERM)
        old.wait_log(rf"upgrade abandoned \(the process is stopping\): stopping the new process \(pid {child}\)")
        old.proc.wait(timeout=15 * SLOW)
        self.assertEqual(old.stop(), 0)
        deadline = time.monotonic() + 15 * SLOW
        while alive(child):
            self.assertLess(time.monotonic(), deadline, "the new process outlived the old one")
            time.sleep(0.05)
        self.assertNotIn("upgrade: the new process", old.log())

    def test_more_workers_after_an_upgrade_get_sockets(self):
        old = self.start(self.config())
        with open(old.config, "w") as f:
            f.write(self.config().replace("workers = 2;", "workers = 4;"))
        old.signal(signal.SIGUSR2)
        line = old.wait_log(r"upgrade: the new process \(pid \d+\) accepts")[0]
        new_pid = int(re.search(r"pid (\d+)", line).group(1))
        self.assertNotIn("gets no socket of its own", old.log())
        ss = subprocess.run(["ss", "-Hltnp", f"sport = :{self.port}"], capture_output=True,
                            text=True).stdout
        self.assertEqual(ss.count(f"pid={new_pid},"), 4, ss)
        self.assertEqual(Session(self.port, self.ctx).greeting, b"A\r\n")
        old.proc.wait(timeout=15 * SLOW)
        self.assertEqual(old.stop(), 0)

    def test_a_second_sigusr2_while_one_runs_is_refused(self):
        old = self.start_with_many_routes()
        old.signal(signal.SIGUSR2)
        old.wait_log(r"upgrade: started ")
        old.signal(signal.SIGUSR2)
        old.wait_log(r"SIGUSR2: an upgrade is already running \(new process pid \d+\): ignored")
        old.wait_log(r"upgrade: the new process \(pid \d+\) accepts", timeout=60)
        self.assertEqual(len(re.findall(r"upgrade: started ", old.log())), 1)
        old.proc.wait(timeout=15 * SLOW)
        self.assertEqual(old.stop(), 0)


class IdleAcrossAnUpgrade(unittest.TestCase):
    """Real Dovecot behind: an IMAP IDLE session opened before the upgrade hears of a message
    delivered after it (it stays on the old process, talking to the same Dovecot session)."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)
        self.mb = MailBackends(os.path.join(self.dir, "mail")).start()
        self.addCleanup(self.mb.stop)
        self.port = free_port()
        self.pid_file = os.path.join(self.dir, "mailsnid.pid")

    def test_idle_session_gets_exists_after_the_upgrade(self):
        text = f"""workers = 2;
pid_file = "{self.pid_file}";
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
listeners = ( {{ name = "imaps"; listen = "127.0.0.1:{self.port}"; protocol = "imap";
  tls = "implicit"; backend = "{self.mb.host}:{self.mb.imap_port}"; }} );
"""
        old = MailsnidProcess(text, self.dir).start([self.port])
        self.addCleanup(lambda: Upgrade.kill_successor(self))
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=40 * SLOW)
        s = client_context(PKI["ca"]).wrap_socket(raw, server_hostname="mail.alpha.test")
        self.addCleanup(s.close)
        f = s.makefile("rb")

        def command(tag: bytes, line: bytes) -> list[bytes]:
            s.sendall(tag + b" " + line + b"\r\n")
            got = []
            while not got or not got[-1].startswith(tag + b" "):
                got.append(f.readline())
            self.assertTrue(got[-1].startswith(tag + b" OK"), got)
            return got

        self.assertTrue(f.readline().startswith(b"* OK"))
        command(b"a", b'LOGIN alice@alpha.test "' + USERS["alice@alpha.test"].encode() + b'"')
        command(b"b", b"SELECT INBOX")
        s.sendall(b"c IDLE\r\n")
        self.assertTrue(f.readline().startswith(b"+"))

        old.signal(signal.SIGUSR2)
        old.wait_log(r"upgrade: the new process \(pid \d+\) accepts")
        self.mb.put_message("alice@alpha.test", b"Subject: after the upgrade\r\n\r\nhello\r\n")
        line = f.readline()
        while line and not re.match(rb"\* \d+ EXISTS", line):
            line = f.readline()
        self.assertRegex(line, rb"\* \d+ EXISTS")
        s.sendall(b"DONE\r\n")
        line = f.readline()
        while line.startswith(b"* "):
            line = f.readline()
        self.assertTrue(line.startswith(b"c OK"), line)
        command(b"d", b"LOGOUT")
        s.close()
        old.proc.wait(timeout=15 * SLOW)
        self.assertEqual(old.stop(), 0)


if __name__ == "__main__":
    unittest.main()
