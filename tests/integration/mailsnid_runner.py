"""Runs the real mailsnid binary for integration tests.

`MailsnidProcess(config_text, workdir)` writes the config, starts `$MAILSNID -c FILE` in the
foreground, waits until every listener accepts connections, and on stop() sends SIGTERM and
checks the exit status. Its log (stderr) is kept in a file; `log()` reads it, `wait_log()` polls
it. Under SANITIZE=1 a sanitizer report in the log fails the test that stops the process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))

import backends as _backends  # noqa: E402

# Every test's files (configs, keys, mailboxes) must be reachable by the daemons' unprivileged
# users and by mailsnid after its privilege drop: not in a private TMPDIR.
tempfile.tempdir = _backends.shared_tmp_root()

MAILSNID = os.environ.get("MAILSNID", os.path.join(ROOT, "build", "mailsnid"))
SANITIZE = os.environ.get("SANITIZE", "0") == "1"
# Sanitizer builds are several times slower; waits scale with this.
SLOW = 4.0 if SANITIZE else 1.0


free_port = _backends.free_port


def listener_entry(name: str, port: int, proto: str, tls: str, backend: str,
                   extra: str = "") -> str:
    """One entry of a config's `listeners` list, on 127.0.0.1:PORT."""
    return (f'{{ name = "{name}"; listen = "127.0.0.1:{port}"; protocol = "{proto}"; '
            f'tls = "{tls}"; backend = "{backend}"; {extra} }}')


def config_text(pki: dict[str, str], cert_labels, listeners: list[str], extra: str = "",
                tls_extra: str = "") -> str:
    """A test config: one worker, debug log, the default pair of PKI (tests/harness/certs.py's
    standard_pki), one certificate per label (PKI[label + "_cert"] and "_key"), the LISTENERS
    entries (listener_entry()), then EXTRA. TLS_EXTRA goes inside `tls = { }`."""
    certificates = ",\n  ".join(f'{{ cert = "{pki[l + "_cert"]}"; key = "{pki[l + "_key"]}"; }}'
                                 for l in cert_labels)
    entries = ",\n  ".join(listeners)
    return f"""
workers = 1;
log = {{ level = "debug"; }};
drain_timeout = 5;
tls = {{ default_cert = "{pki['default_cert']}"; default_key = "{pki['default_key']}"; {tls_extra}}};
certificates = (
  {certificates}
);
listeners = (
  {entries}
);
{extra}
"""


def hold_ports(ports) -> list[socket.socket]:
    """Listen on each of `ports` that is free, as another program on the host might (one
    already taken is taken all the same); the caller closes the sockets."""
    held = []
    for port in ports:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            held.append(s)
        except OSError:
            s.close()
    return held


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout * SLOW
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port}")


class MailsnidProcess:
    def __init__(self, config_text: str, workdir: str, name: str = "mailsnid",
                 wrap: list[str] = ()):
        """WRAP: a command that runs the rest (e.g. unshare ... sh -c '...; exec "$@"'), and
        must exec it, so that the process is mailsnid itself."""
        self.wrap = list(wrap)
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.config = os.path.join(workdir, f"{name}.cfg")
        self.log_path = os.path.join(workdir, f"{name}.log")
        with open(self.config, "w") as f:
            f.write(config_text)
        self.proc: subprocess.Popen | None = None

    def start(self, ports: list[int] = (), timeout: float = 5.0) -> "MailsnidProcess":
        """Starts mailsnid and waits (TIMEOUT seconds, times SLOW) until PORTS listen."""
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.wrap, MAILSNID, "-c", self.config], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        try:
            for p in ports:
                wait_port(p, timeout=timeout)
        except TimeoutError:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("mailsnid did not start:\n" + self.log())
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_log(self, pattern: str, timeout: float = 5.0, count: int = 1) -> list[str]:
        deadline = time.monotonic() + timeout * SLOW
        rx = re.compile(pattern)
        while True:
            found = [line for line in self.log().splitlines() if rx.search(line)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"log has no {pattern!r} (x{count}):\n{self.log()[-4000:]}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, and insist on a clean exit (status 0, no sanitizer report)."""
        if not self.proc:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("mailsnid did not exit on SIGTERM:\n" + self.log()[-4000:])
        self._log.close()
        status = self.proc.returncode
        self.proc = None
        log = self.log()
        if re.search(r"ERROR: (Address|Leak)Sanitizer|runtime error:", log):
            raise AssertionError("sanitizer report:\n" + log[-8000:])
        if status != 0:
            raise AssertionError(f"mailsnid exited with {status}:\n{log[-4000:]}")
        return status
