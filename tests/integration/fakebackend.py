"""Small plaintext backends for the core tests (the mail tests use real Dovecot/Postfix).

EchoBackend echoes every byte (optionally after a greeting line) and records what it received,
so a test can check both data integrity and that nothing unexpected reached the backend.
Each accepted connection runs in its own thread; stop() closes everything.
"""

from __future__ import annotations

import socket
import threading


class EchoBackend:
    def __init__(self, greeting: bytes = b"", port: int = 0, reply_after_eof: bytes = b""):
        self.greeting = greeting
        self.reply_after_eof = reply_after_eof
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []      # per connection, in accept order
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
                index = len(self.received)
                self.received.append(b"")
            threading.Thread(target=self._serve, args=(c, index), daemon=True).start()

    def _serve(self, c: socket.socket, index: int) -> None:
        try:
            if self.greeting:
                c.sendall(self.greeting)
            while True:
                data = c.recv(65536)
                if not data:
                    break
                with self.lock:
                    self.received[index] += data
                c.sendall(data)
            if self.reply_after_eof:
                c.sendall(self.reply_after_eof)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self) -> None:
        self.closed = True
        self.sock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass


class SourceBackend:
    """Writes endlessly to every connection: for the slow-reader (back-pressure) test."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.sent = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        chunk = b"x" * 65536
        try:
            while not self.closed:
                c.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self) -> None:
        self.closed = True
        self.sock.close()
