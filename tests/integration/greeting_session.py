"""Helpers for the live-configuration tests: a TLS session that reads its backend's one-line
greeting (the test backends greet with a letter, so the greeting says which backend a session
reached), and a reload that waits for the proxy's own line saying it applied the edit."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import time

from mailsnid_runner import SLOW, MailsnidProcess


def client_context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    return ctx


class Session:
    """A TLS session through mailsnid that has read its backend's greeting line."""

    def __init__(self, port: int, ctx: ssl.SSLContext, sni: str = "mail.hoster.test"):
        raw = socket.create_connection(("127.0.0.1", port), timeout=20 * SLOW)
        self.s = ctx.wrap_socket(raw, server_hostname=sni)
        self.greeting = self.line()

    def line(self) -> bytes:
        got = b""
        while not got.endswith(b"\n"):
            chunk = self.s.recv(1)
            if not chunk:
                break
            got += chunk
        return got

    def echo(self, data: bytes) -> bytes:
        self.s.sendall(data)
        return self.line()

    def close(self) -> None:
        try:
            self.s.close()
        except OSError:
            pass


def reload_and_wait(proc: MailsnidProcess, text: str, pattern: str, timeout: float = 15.0) -> None:
    """Writes TEXT as the config (aside, then renamed, as a control panel should: the file watcher
    never sees half a file), sends SIGHUP, and returns once the log shows PATTERN after the edit.
    The watcher may reload first; a pattern that names what the edit changed tells them apart."""
    mark = len(proc.log())
    with open(proc.config + ".new", "w") as f:
        f.write(text)
    os.replace(proc.config + ".new", proc.config)
    proc.signal(signal.SIGHUP)
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout * SLOW
    while not rx.search(proc.log()[mark:]):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} after the edit:\n{proc.log()[mark:][-3000:]}")
        time.sleep(0.02)
