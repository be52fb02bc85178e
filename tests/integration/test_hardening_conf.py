"""Configuration hardening (issue 13, items 18-20), against the real binary.

- An integer libconfig 1.5 would wrap to 32 bits is refused with FILE:LINE by `-t`, at start and
  on reload (the old configuration keeps serving).
- A backend that leads back to the listener (directly, or through another listener) is refused.
- A second process on a listener's address (another mailsnid, or anything with SO_REUSEPORT)
  makes mailsnid refuse to start instead of quietly taking a share of the clients.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import unittest

from mailsnid_runner import MAILSNID, SLOW, MailsnidProcess, free_port
from fakebackend import EchoBackend
import certs

PKI: dict[str, str] = {}
TMP = ""


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-hconf-")
    PKI.update(certs.standard_pki(os.path.join(TMP, "pki")))


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


def config(port: int, backend: str, extra: str = "", listener_extra: str = "") -> str:
    return f"""workers = 2;
drain_timeout = 2;
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
listeners = (
  {{ name = "imaps"; listen = "127.0.0.1:{port}"; protocol = "imap"; tls = "implicit";
    backend = "{backend}"; {listener_extra} }}
);
{extra}
"""


def line_of(text: str, needle: str) -> int:
    return next(i + 1 for i, l in enumerate(text.splitlines()) if needle in l)


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def check(self, text: str) -> subprocess.CompletedProcess:
        path = self.write("check.cfg", text)
        return subprocess.run([MAILSNID, "-t", "-c", path], capture_output=True, text=True,
                              timeout=30 * SLOW)

    def echo(self) -> EchoBackend:
        b = EchoBackend()
        self.addCleanup(b.stop)
        return b

    def roundtrip(self, port: int, data: bytes = b"ping\r\n") -> bytes:
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW) as raw:
            with ctx.wrap_socket(raw) as s:
                s.sendall(data)
                got = b""
                while len(got) < len(data):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                return got


class WrappedIntegers(Base):
    def test_check_refuses_values_that_wrap(self):
        port = free_port()
        for key, value, where in (("idle_timeout", "4294967298", "listener"),
                                  ("max_connections", "4294967296", "listener"),
                                  ("max_connections", "4294967296", "top"),
                                  ("drain_timeout", "0x100000002", "top")):
            with self.subTest(key=key, value=value, where=where):
                setting = f"{key} = {value};"
                text = (config(port, "127.0.0.1:1", listener_extra=setting) if where == "listener"
                        else config(port, "127.0.0.1:1", extra=setting))
                r = self.check(text)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                path = os.path.join(self.dir, "check.cfg")
                self.assertRegex(r.stderr, rf"{path}:{line_of(text, setting)}: {value} does not fit "
                                           r"in 32 bits \(libconfig would read it as -?\d+\)")

    def test_a_64_bit_value_is_read_as_written(self):
        port = free_port()
        r = self.check(config(port, "127.0.0.1:1", listener_extra="idle_timeout = 4294967298L;"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("idle_timeout: must be more than 0 and at most 4294967 seconds", r.stderr)
        r = self.check(config(port, "127.0.0.1:1", extra="max_connections = 3000000000L;"))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_reload_with_a_wrapped_value_keeps_serving(self):
        backend = self.echo()
        port = free_port()
        good = config(port, f"127.0.0.1:{backend.port}")
        proc = MailsnidProcess(good, self.dir).start([port])
        self.addCleanup(proc.stop)
        self.assertEqual(self.roundtrip(port), b"ping\r\n")
        bad = config(port, f"127.0.0.1:{backend.port}", listener_extra="max_connections = 4294967296;")
        with open(proc.config, "w") as f:
            f.write(bad)
        proc.signal(signal.SIGHUP)
        proc.wait_log(rf"{proc.config}:{line_of(bad, 'max_connections')}: 4294967296 does not fit")
        proc.wait_log(r"reload \(.*\) failed")
        self.assertEqual(self.roundtrip(port), b"ping\r\n")


class BackendLoops(Base):
    def test_backend_is_the_listener_itself(self):
        port = free_port()
        text = config(port, f"127.0.0.1:{port}")
        r = self.check(text)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn(f"{line_of(text, 'backend =')}: listeners[0].backend: 127.0.0.1:{port} is the "
                      "address of listener imaps itself", r.stderr)

    def test_a_loop_through_another_listener(self):
        a, b = free_port(), free_port()
        text = config(a, f"127.0.0.1:{b}", extra="").replace(
            "\n);", f',\n  {{ name = "imap"; listen = "0.0.0.0:{b}"; protocol = "imap"; '
                    f'tls = "starttls"; backend = [ "127.0.0.1:1", "127.0.0.1:{a}" ]; }}\n);')
        r = self.check(text)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn(f"listeners[1].backend[1]: 127.0.0.1:{a} is listener imaps", r.stderr)
        self.assertIn("connections would loop", r.stderr)

    def test_a_chain_that_ends_is_fine(self):
        a, b = free_port(), free_port()
        text = config(a, f"127.0.0.1:{b}").replace(
            "\n);", f',\n  {{ name = "imap"; listen = "127.0.0.1:{b}"; protocol = "imap"; '
                    f'tls = "starttls"; backend = "127.0.0.1:1"; }}\n);')
        r = self.check(text)
        self.assertEqual(r.returncode, 0, r.stderr)


class AddressHeldElsewhere(Base):
    def test_second_mailsnid_refuses_to_start(self):
        backend = self.echo()
        port = free_port()
        text = config(port, f"127.0.0.1:{backend.port}")
        first = MailsnidProcess(text, self.dir, name="first").start([port])
        self.addCleanup(first.stop)
        second = subprocess.run([MAILSNID, "-c", first.config], capture_output=True, text=True,
                                timeout=30 * SLOW)
        self.assertNotEqual(second.returncode, 0)
        self.assertIn(f"cannot listen on 127.0.0.1:{port}: another process listens there",
                      second.stderr)
        # Every client still reaches the first instance.
        for _ in range(8):
            self.assertEqual(self.roundtrip(port), b"ping\r\n")

    def test_a_reuseport_socket_of_another_program(self):
        port = free_port()
        other = socket.socket()
        self.addCleanup(other.close)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))
        other.listen(16)
        path = self.write("held.cfg", config(port, "127.0.0.1:1"))
        r = subprocess.run([MAILSNID, "-c", path], capture_output=True, text=True, timeout=30 * SLOW)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("another process listens there", r.stderr)


if __name__ == "__main__":
    unittest.main()
