"""An HTTPS proxy in front of a test's pebble that adds what pebble 2.4 lacks or cannot be made
to do, while pebble does every real part (accounts, nonces, validation, issuance):

    proxy = CaProxy(pebble_port, cert=..., key=..., trust=...)
    proxy.directory            # https://localhost:PORT/dir: pebble's, plus "renewalInfo"
    proxy.window               # {cert_id: (start, end)} for renewalInfo; others get `future`
    proxy.retry_after = "60"   # the Retry-After of renewalInfo answers
    proxy.ari_asked            # [(monotonic time, cert_id)] as they came
    proxy.new_orders           # the payloads of newOrder requests pebble accepted (dicts), in
                               # order; one it refused (its 15 % badNonce) is not an order
    proxy.stuck_authz          # domains whose challenges it accepts itself, never telling
                               # pebble: their authorizations stay "pending" at pebble for ever
    proxy.stuck_order          # domains whose order it shows as "processing" instead of "valid"
    proxy.stall_orders         # seconds it holds a newOrder request, then drops it unanswered
                               # (a CA that stops answering); 0: passed on at once

Requests are passed on with their Host header, so the URLs pebble puts in its answers (and
checks in every JWS) name the proxy, and the client never learns pebble's own port.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import ssl
import threading
import time
import urllib.parse

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def b64u_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class CaProxy:
    def __init__(self, upstream_port: int, *, cert: str, key: str, trust: str):
        self.upstream = upstream_port
        self.up_ctx = ssl.create_default_context(cafile=trust)
        now = time.time()
        self.future = (now + 30 * 86400, now + 31 * 86400)
        self.window: dict[str, tuple[float, float]] = {}
        self.retry_after = "60"
        self.ari_asked: list[tuple[float, str]] = []
        self.new_orders: list[dict] = []
        self.stuck_authz: set[str] = set()
        self.stuck_order: set[str] = set()
        self.stall_orders = 0.0
        self._swallowed: set[str] = set()     # challenge paths of stuck_authz domains
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/renewal-info/"):
                    proxy._renewal_info(self)
                else:
                    proxy._forward(self)

            do_HEAD = do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.directory = f"https://localhost:{self.port}/dir"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _renewal_info(self, h) -> None:
        cert_id = h.path[len("/renewal-info/"):]
        self.ari_asked.append((time.monotonic(), cert_id))
        start, end = self.window.get(cert_id, self.future)
        body = json.dumps({"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Retry-After", self.retry_after)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _forward(self, h) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) if h.command == "POST" else None
        if body and h.path in self._swallowed:
            # "Validate this": accepted here, so pebble never starts. The answer carries no
            # nonce; the client fetches a new one.
            data = json.dumps({"status": "processing"}).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        if body:
            payload = json.loads(body).get("payload")
            doc = json.loads(b64u_decode(payload)) if payload else None
            order = doc if isinstance(doc, dict) and "identifiers" in doc else None
        else:
            order = None
        if order is not None and self.stall_orders:
            time.sleep(self.stall_orders)
            h.close_connection = True
            return
        up = http.client.HTTPSConnection("localhost", self.upstream, context=self.up_ctx, timeout=30)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP}
        up.request(h.command, h.path, body=body, headers=headers)
        r = up.getresponse()
        data = r.read()
        up.close()
        if order is not None and r.status == 201:
            self.new_orders.append(order)
        data = self._rewrite(h.path, data)
        h.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP:
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _rewrite(self, path: str, data: bytes) -> bytes:
        """Pebble's answer as the client gets it: only the directory and orders change."""
        try:
            doc = json.loads(data)
        except ValueError:
            return data                   # a PEM chain, or nothing
        if not isinstance(doc, dict):
            return data
        name = doc.get("identifier", {}).get("value", "")
        if name and name.split(".", 1)[-1] in self.stuck_authz:   # an authorization
            for ch in doc.get("challenges", []):
                self._swallowed.add(urllib.parse.urlsplit(ch.get("url", "")).path)
            return data
        if path == "/dir":
            doc["renewalInfo"] = f"https://localhost:{self.port}/renewal-info/"
        elif "finalize" in doc and doc.get("status") == "valid" and any(
                i.get("value", "").split(".", 1)[-1] in self.stuck_order
                for i in doc.get("identifiers", [])):
            doc["status"] = "processing"
            doc.pop("certificate", None)
        else:
            return data
        return json.dumps(doc).encode()
