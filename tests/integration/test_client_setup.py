"""Mail client setup served per listed domain (issue 11) and the plain HTTP listener (issue 10,
item 4), against the real binary with real clients: curl (hostname verification on, names
resolved to 127.0.0.1 with --resolve) and Python's http.client; XML read with xml.etree.

alpha.example and beta.example are listed, gamma.example is not. An HTTP backend records every
byte it receives, so "goes to the backend byte for byte" is checked on the bytes themselves.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import xml.etree.ElementTree as ET

from mailsnid_runner import MAILSNID, SLOW, MailsnidProcess, free_port
from greeting_session import reload_and_wait
import certs

TMP = ""
PKI: dict[str, str] = {}
LISTED = ["alpha.example", "beta.example"]
UNLISTED = "gamma.example"
AD_RESPONSE = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
TB_NS = ""  # clientConfig has no namespace


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-setup-")
    ca = certs.make_ca(os.path.join(TMP, "pki"))
    names = [f"{h}.{d}" for d in LISTED + [UNLISTED]
             for h in ("autoconfig", "autodiscover", "mta-sts", "webmail")]
    leaf = ca.issue(names)
    default = ca.issue(["default.example"])
    PKI.update(ca=ca.ca_pem, cert=leaf.fullchain, key=leaf.key, default_cert=default.fullchain,
               default_key=default.key)


def tearDownModule():
    shutil.rmtree(TMP, ignore_errors=True)


class HTTPBackend:
    """Reads one request head (and a Content-Length body), records the raw bytes received on
    the connection, answers "backend <first line>" and closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket):
        data = b""
        c.settimeout(5)
        try:
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
            # Whatever else the client sends in the next moment (pipelined bytes) is recorded too.
            c.settimeout(0.3)
            try:
                while chunk := c.recv(65536):
                    data += chunk
            except (socket.timeout, OSError):
                pass
            body = b"backend " + data.split(b"\r\n", 1)[0]
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                      b"Connection: close\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        finally:
            with self.lock:
                self.received.append(data)
            c.close()

    def wait_received(self, n: int) -> list[bytes]:
        deadline = time.monotonic() + 5 * SLOW
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= n:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"backend got {len(self.received)} connections, want {n}")

    def stop(self):
        self.sock.close()


def setup_blocks(imap_host: str = "mail.%d", imap_port: int = 993, imap_socket: str = "SSL",
                 mta_sts: bool = True) -> str:
    text = f"""autoconfig = {{
  display_name = "Example Hosting <Mail> & %d";
  imap = {{ host = "{imap_host}"; port = {imap_port}; socket = "{imap_socket}"; }};
  pop3 = {{ host = "pop.%d"; port = 995; socket = "SSL"; }};
  smtp = {{ host = "smtp.%d"; port = 587; socket = "STARTTLS"; }};
}};
"""
    if mta_sts:
        text += 'mta_sts = { mode = "enforce"; mx = [ "mail.%d", "*.mx.%d" ]; max_age = 604800; };\n'
    return text


class ClientSetup(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)
        self.backend = HTTPBackend()
        self.addCleanup(self.backend.stop)
        self.https, self.http, self.http_be = free_port(), free_port(), free_port()

    def config(self, blocks: str, domains: list[str] = LISTED) -> str:
        listed = ", ".join(f'"{d}"' for d in domains)
        return f"""workers = 2;
drain_timeout = 2;
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
certificates = ( {{ cert = "{PKI['cert']}"; key = "{PKI['key']}"; }} );
listeners = (
  {{ name = "https"; listen = "127.0.0.1:{self.https}"; protocol = "http"; tls = "implicit";
    backend = "{self.backend.addr}"; }},
  {{ name = "http"; listen = "127.0.0.1:{self.http}"; protocol = "http"; tls = "none"; }},
  {{ name = "http-be"; listen = "127.0.0.1:{self.http_be}"; protocol = "http"; tls = "none";
    backend = "{self.backend.addr}"; handshake_timeout = 2; }}
);
domains = [ {listed} ];
{blocks}
"""

    def start(self, blocks: str | None = None, domains: list[str] = LISTED) -> MailsnidProcess:
        proc = MailsnidProcess(self.config(setup_blocks() if blocks is None else blocks, domains),
                               self.dir)
        proc.start([self.https, self.http, self.http_be])
        self.addCleanup(proc.stop)
        return proc

    # ---- clients ----

    def curl(self, url: str, *args: str, port: int | None = None) -> tuple[int, dict, bytes]:
        """curl with the test CA and hostname verification; the URL's host resolves to
        127.0.0.1. Returns status, headers (lower-cased names) and body."""
        host = url.split("/")[2]
        port = port or (self.https if url.startswith("https:") else self.http)
        hdr = os.path.join(self.dir, "headers")
        out = subprocess.run(["curl", "-sS", "--cacert", PKI["ca"], "--resolve",
                              f"{host}:{port}:127.0.0.1", "-D", hdr, "--max-time", "10",
                              *args, url.replace(host, f"{host}:{port}", 1)],
                             capture_output=True, timeout=20 * SLOW)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        with open(hdr, "rb") as f:
            lines = f.read().decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ": " in line:
                k, v = line.split(": ", 1)
                headers[k.lower()] = v
        return status, headers, out.stdout

    def https_request(self, host: str, method: str, path: str, body: bytes | None = None,
                      headers: dict | None = None, sni: str | None = "") -> http.client.HTTPResponse:
        """http.client over TLS to 127.0.0.1, verifying the certificate for HOST."""
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        port = self.https

        class Conn(http.client.HTTPSConnection):
            def connect(self):
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                self.sock = ctx.wrap_socket(raw, server_hostname=host if sni == "" else sni)

        if sni is None:
            ctx.check_hostname = False
        conn = Conn(host, port, context=ctx, timeout=10)
        self.addCleanup(conn.close)
        conn.request(method, path, body=body, headers=headers or {})
        return conn.getresponse()

    def raw_tls(self, data: bytes, sni: str | None) -> bytes:
        """Sends DATA over TLS (SNI as given; None = no SNI) and reads the answer to the end."""
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        ctx.check_hostname = False
        with socket.create_connection(("127.0.0.1", self.https), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=sni) as s:
                s.sendall(data)
                return self.read_all(s)

    def raw_plain(self, port: int, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(data)
            return self.read_all(s)

    @staticmethod
    def read_all(s) -> bytes:
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ssl.SSLError, ConnectionResetError):
            pass
        return out

    # ---- checks ----

    def check_autoconfig(self, xml: bytes, domain: str, imap=("mail", 993, "SSL")):
        root = ET.fromstring(xml)
        self.assertEqual(root.tag, "clientConfig")
        self.assertEqual(root.get("version"), "1.1")
        provider = root.find("emailProvider")
        self.assertEqual(provider.get("id"), domain)
        self.assertEqual(provider.findtext("domain"), domain)
        self.assertEqual(provider.findtext("displayName"), f"Example Hosting <Mail> & {domain}")
        servers = {s.get("type"): s for s in provider.findall("incomingServer")}
        servers["smtp"] = provider.find("outgoingServer")
        want = {"imap": (f"{imap[0]}.{domain}", str(imap[1]), imap[2]),
                "pop3": (f"pop.{domain}", "995", "SSL"),
                "smtp": (f"smtp.{domain}", "587", "STARTTLS")}
        for kind, (host, port, sock) in want.items():
            s = servers[kind]
            self.assertEqual((s.findtext("hostname"), s.findtext("port"), s.findtext("socketType")),
                             (host, port, sock), kind)
            self.assertEqual(s.findtext("username"), "%EMAILADDRESS%")

    # ---- tests ----

    def test_autoconfig_per_domain_over_https_and_http(self):
        self.start()
        for domain in LISTED:
            for path in ("/mail/config-v1.1.xml?emailaddress=joe%40" + domain,
                         "/.well-known/autoconfig/mail/config-v1.1.xml"):
                status, headers, body = self.curl(f"https://autoconfig.{domain}{path}")
                self.assertEqual(status, 200)
                self.assertEqual(headers["content-type"], "application/xml; charset=utf-8")
                self.assertEqual(headers["content-length"], str(len(body)))
                self.assertEqual(headers["cache-control"], "no-cache")
                self.assertEqual(headers["connection"], "close")
                self.check_autoconfig(body, domain)
            status, headers, body = self.curl(f"http://autoconfig.{domain}/mail/config-v1.1.xml")
            self.assertEqual(status, 200)
            self.check_autoconfig(body, domain)
        # HEAD: the same headers, no body.
        _, _, full = self.curl("https://autoconfig.alpha.example/mail/config-v1.1.xml")
        status, headers, _ = self.curl("https://autoconfig.alpha.example/mail/config-v1.1.xml", "-I")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-length"], str(len(full)))
        answer = self.raw_tls(b"HEAD /mail/config-v1.1.xml HTTP/1.1\r\nHost: autoconfig.alpha.example"
                              b"\r\n\r\n", "autoconfig.alpha.example")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n"), answer)
        self.assertIn(b"\r\nContent-Length: %d\r\n" % len(full), answer)
        status, _, _ = self.curl("https://autoconfig.alpha.example/mail/other.xml")
        self.assertEqual(status, 404)
        self.assertEqual(self.backend.received, [])

    def test_autodiscover_with_a_real_request_body(self):
        self.start()
        for domain in LISTED:
            email = f"Jane.Doe+x@{domain}"
            body = f"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{email}</EMailAddress>
    <AcceptableResponseSchema>{AD_RESPONSE}</AcceptableResponseSchema>
  </Request>
</Autodiscover>
""".encode()
            r = self.https_request(f"autodiscover.{domain}", "POST", "/AutoDiscover/AutoDiscover.xml",
                                   body, {"Content-Type": "text/xml"})
            data = r.read()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.getheader("Content-Type"), "text/xml; charset=utf-8")
            self.assertEqual(int(r.getheader("Content-Length")), len(data))
            ns = {"r": "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006",
                  "a": AD_RESPONSE}
            root = ET.fromstring(data)
            account = root.find("a:Response/a:Account", ns)
            self.assertEqual(account.findtext("a:Action", namespaces=ns), "settings")
            protos = {p.findtext("a:Type", namespaces=ns): p for p in account.findall("a:Protocol", ns)}
            self.assertEqual(sorted(protos), ["IMAP", "POP3", "SMTP"])
            for kind, host, port, enc in (("IMAP", "mail", "993", "SSL"), ("POP3", "pop", "995", "SSL"),
                                          ("SMTP", "smtp", "587", "TLS")):
                p = protos[kind]
                self.assertEqual(p.findtext("a:Server", namespaces=ns), f"{host}.{domain}")
                self.assertEqual(p.findtext("a:Port", namespaces=ns), port)
                self.assertEqual(p.findtext("a:Encryption", namespaces=ns), enc)
                self.assertEqual(p.findtext("a:LoginName", namespaces=ns), email)
        # curl posting the same way, over plain HTTP too.
        status, headers, data = self.curl(
            "http://autodiscover.alpha.example/autodiscover/autodiscover.xml",
            "--data-binary", "<Autodiscover><Request><EMailAddress>u@alpha.example</EMailAddress>"
            "</Request></Autodiscover>", "-H", "Content-Type: text/xml")
        self.assertEqual(status, 200)
        self.assertIn(b"<LoginName>u@alpha.example</LoginName>", data)

    def test_autodiscover_refuses_malformed_and_oversized_bodies(self):
        proc = self.start()
        for body in (b"", b"not xml at all", b"<Autodiscover><Request><EMailAddress>nobody"
                     b"</EMailAddress></Request></Autodiscover>",
                     b'<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><Autodiscover><Request>'
                     b"<EMailAddress>&e;</EMailAddress></Request></Autodiscover>",
                     b"<Autodiscover><Request><EMailAddress>u@alpha.example"):
            r = self.https_request("autodiscover.alpha.example", "POST",
                                   "/autodiscover/autodiscover.xml", body)
            r.read()
            self.assertEqual(r.status, 400, body)
        # Oversized: the whole 1 MB is sent, and the client still reads the 400 (no reset).
        big = b"<Autodiscover>" + b"x" * (1 << 20) + b"</Autodiscover>"
        r = self.https_request("autodiscover.alpha.example", "POST",
                               "/autodiscover/autodiscover.xml", big)
        r.read()
        self.assertEqual(r.status, 400)
        # A declared length with no body behind it, and a chunked body: 400 at once.
        answer = self.raw_tls(b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\n"
                              b"Host: autodiscover.alpha.example\r\nContent-Length: 99999999\r\n\r\n",
                              "autodiscover.alpha.example")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer[:80])
        answer = self.raw_tls(b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\n"
                              b"Host: autodiscover.alpha.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"5\r\nhello\r\n0\r\n\r\n", "autodiscover.alpha.example")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer[:80])
        # Still serving.
        status, _, _ = self.curl("https://autoconfig.alpha.example/mail/config-v1.1.xml")
        self.assertEqual(status, 200)
        self.assertEqual(self.backend.received, [])
        self.assertEqual(len(proc.wait_log(r"sni=autodiscover\.alpha\.example .*backend=- .*outcome=ok",
                                           count=8)), 8)

    def test_mta_sts_policy_over_https_only(self):
        self.start()
        status, headers, body = self.curl("https://mta-sts.beta.example/.well-known/mta-sts.txt")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "text/plain")
        self.assertEqual(headers["content-length"], str(len(body)))
        fields = [tuple(line.split(": ", 1)) for line in body.decode().split("\r\n") if line]
        self.assertEqual(fields, [("version", "STSv1"), ("mode", "enforce"),
                                  ("mx", "mail.beta.example"), ("mx", "*.mx.beta.example"),
                                  ("max_age", "604800")])
        self.assertTrue(body.endswith(b"\r\n"))
        # Plain HTTP never serves the policy: a redirect to https.
        status, headers, body = self.curl("http://mta-sts.beta.example/.well-known/mta-sts.txt")
        self.assertEqual(status, 301)
        self.assertEqual(headers["location"], "https://mta-sts.beta.example/.well-known/mta-sts.txt")
        self.assertNotIn(b"STSv1", body)

    def test_unlisted_domains_and_webmail_reach_the_backend_byte_for_byte(self):
        self.start()
        # An unlisted domain's setup hosts are the backend's, as before.
        status, _, body = self.curl(f"https://autoconfig.{UNLISTED}/mail/config-v1.1.xml")
        self.assertEqual((status, body), (200, b"backend GET /mail/config-v1.1.xml HTTP/1.1"))
        status, _, body = self.curl(f"https://mta-sts.{UNLISTED}/.well-known/mta-sts.txt")
        self.assertEqual(body, b"backend GET /.well-known/mta-sts.txt HTTP/1.1")
        # Webmail: odd but valid bytes, a body and a pipelined second request arrive unchanged,
        # whether the SNI says webmail (never parsed), is missing, or names a setup host (the
        # first head read to decide, then handed over as it came).
        request = (b"POST /login?x=1&y=%20 HTTP/1.1\r\nhOsT: webmail.alpha.example\r\n"
                   b"X-Odd:   spaced\t \r\nContent-Length: 11\r\n\r\nuser=a&pw=b"
                   b"GET /next HTTP/1.1\r\nHost: webmail.alpha.example\r\n\r\n")
        for n, sni in enumerate(("webmail.alpha.example", None, "autoconfig.alpha.example"), 3):
            answer = self.raw_tls(request, sni)
            self.assertIn(b"backend POST /login?x=1&y=%20 HTTP/1.1", answer)
            self.assertEqual(self.backend.wait_received(n)[-1], request, sni)
        # Not HTTP at all on a setup name: the backend judges it.
        junk = b"\x00\x01 garbage that is not a request\r\n\r\n"
        self.raw_tls(junk, "autoconfig.alpha.example")
        self.assertEqual(self.backend.wait_received(6)[-1], junk)

    def test_plain_listener_redirects_or_hands_to_its_backend(self):
        self.start()
        status, headers, body = self.curl("http://webmail.alpha.example/some/path?q=1&r=%2F")
        self.assertEqual(status, 301)
        self.assertEqual(headers["location"], "https://webmail.alpha.example/some/path?q=1&r=%2F")
        # Any host: the port is dropped, https has its own.
        answer = self.raw_plain(self.http, b"GET /x?y HTTP/1.0\r\nHost: Other.Example:8080\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 301 "), answer[:80])
        self.assertIn(b"\r\nLocation: https://other.example/x?y\r\n", answer)
        answer = self.raw_plain(self.http, b"HEAD / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 301 ") and answer.endswith(b"\r\n\r\n"))
        # No Host, or not HTTP: 400; a head too large: 431.
        self.assertTrue(self.raw_plain(self.http, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400 "))
        self.assertTrue(self.raw_plain(self.http, b"\x16\x03\x01\x00\x05hello").startswith(b"HTTP/1.1 400 "))
        big = b"GET / HTTP/1.1\r\nHost: a.example\r\nCookie: " + b"c" * 9000 + b"\r\n\r\n"
        self.assertTrue(self.raw_plain(self.http, big).startswith(b"HTTP/1.1 431 "))
        self.assertEqual(self.backend.received, [])
        # With a backend, what is not client setup goes there unchanged.
        request = b"GET /a?b=c HTTP/1.1\r\nHost: webmail.alpha.example\r\nX: y\r\n\r\n"
        answer = self.raw_plain(self.http_be, request)
        self.assertIn(b"backend GET /a?b=c HTTP/1.1", answer)
        self.assertEqual(self.backend.wait_received(1)[-1], request)
        status, _, body = self.curl("http://autoconfig.beta.example/mail/config-v1.1.xml",
                                    port=self.http_be)
        self.assertEqual(status, 200)
        self.check_autoconfig(body, "beta.example")

    def test_a_silent_client_is_dropped_after_handshake_timeout(self):
        proc = self.start()
        with socket.create_connection(("127.0.0.1", self.http_be), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\n")
            t0 = time.monotonic()
            self.assertEqual(self.read_all(s), b"")
            self.assertLess(time.monotonic() - t0, 6 * SLOW)
        proc.wait_log(r"listener=http-be .*outcome=idle_timeout")
        self.assertEqual(self.backend.received, [])

    def test_reload_changes_the_answers(self):
        proc = self.start()
        _, _, body = self.curl("https://autoconfig.alpha.example/mail/config-v1.1.xml")
        self.check_autoconfig(body, "alpha.example")
        status, _, _ = self.curl("https://mta-sts.alpha.example/.well-known/mta-sts.txt")
        self.assertEqual(status, 200)
        # New IMAP settings, gamma listed, MTA-STS removed.
        reload_and_wait(proc, self.config(setup_blocks("imap.%d", 143, "STARTTLS", mta_sts=False),
                                          LISTED + [UNLISTED]),
                        r"reload \(.*\): .* 3 domains in")
        for domain in LISTED + [UNLISTED]:
            _, _, body = self.curl(f"https://autoconfig.{domain}/mail/config-v1.1.xml")
            self.check_autoconfig(body, domain, imap=("imap", 143, "STARTTLS"))
        status, _, body = self.curl("https://mta-sts.alpha.example/.well-known/mta-sts.txt")
        self.assertEqual(body, b"backend GET /.well-known/mta-sts.txt HTTP/1.1")


def private_namespaces_work() -> bool:
    """unshare -mn with a bind mount inside: refused in some containers and in a chroot whose /
    is no mount point."""
    return subprocess.run(["unshare", "-mn", "sh", "-c", "mount --bind /dev/null /dev/null"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


@unittest.skipUnless(os.geteuid() == 0 and all(shutil.which(t) for t in
                     ("mta-sts-query", "pebble-challtestsrv", "unshare", "ip"))
                     and private_namespaces_work(),
                     "needs root, mta-sts-query (postfix-mta-sts-resolver), pebble-challtestsrv, "
                     "and private mount + network namespaces (unshare -mn)")
class MtaStsQuery(unittest.TestCase):
    """Debian's postfix-mta-sts-resolver fetches and validates the policy the way a sending MTA
    does: _mta-sts TXT from DNS (pebble-challtestsrv's mock DNS), then
    https://mta-sts.D/.well-known/mta-sts.txt on port 443, with certificate verification against
    the test CA (SSL_CERT_FILE). Ports 53 and 443 are needed, so it all runs in a private network
    namespace (its own loopback) with /etc/resolv.conf bind-mounted in a private mount namespace:
    nothing of the host's is taken or changed."""

    def run_query(self, blocks: str) -> str:
        d = tempfile.mkdtemp(prefix="t-", dir=TMP)
        cfg = os.path.join(d, "mailsnid.cfg")
        with open(cfg, "w") as f:
            f.write(f"""workers = 1;
drain_timeout = 1;
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
certificates = ( {{ cert = "{PKI['cert']}"; key = "{PKI['key']}"; }} );
listeners = ( {{ name = "https"; listen = "127.0.0.1:443"; protocol = "http"; tls = "implicit";
  backend = "127.0.0.1:9"; }} );
domains = [ "alpha.example" ];
{blocks}
""")
        script = f"""set -e
ip link set lo up
echo "nameserver 127.0.0.1" > {d}/resolv.conf
mount --bind {d}/resolv.conf /etc/resolv.conf
pebble-challtestsrv -dns01 127.0.0.1:53 -http01 "" -https01 "" -tlsalpn01 "" \\
    -management 127.0.0.1:8055 -defaultIPv6 "" > {d}/dns.log 2>&1 &
dns=$!
{MAILSNID} -c {cfg} > {d}/mailsnid.log 2>&1 &
m=$!
for i in $(seq 100); do
  curl -s -o /dev/null http://127.0.0.1:8055/ && curl -sk -o /dev/null https://127.0.0.1:443/ && break
  sleep 0.1
done
curl -s -d '{{"host":"_mta-sts.alpha.example.","value":"v=STSv1; id=20261204T1"}}' \\
    http://127.0.0.1:8055/set-txt
SSL_CERT_FILE={PKI['ca']} mta-sts-query alpha.example || true
kill -TERM $m; wait $m
kill $dns
"""
        out = subprocess.run(["unshare", "-mn", "bash", "-c", script], capture_output=True,
                             timeout=60 * SLOW)
        with open(f"{d}/mailsnid.log") as f:
            self.assertEqual(out.returncode, 0, out.stderr.decode() + f.read())
        return out.stdout.decode()

    def test_the_policy_validates(self):
        out = self.run_query('mta_sts = { mode = "enforce"; mx = [ "mail.%d", "*.mx.%d" ]; max_age = 86400; };')
        self.assertIn("(<STSFetchResult.VALID: 1>, ('20261204T1', {", out)
        self.assertIn("'mx': ['mail.alpha.example', '*.mx.alpha.example']", out)
        self.assertIn("'mode': 'enforce'", out)
        self.assertIn("'max_age': 86400", out)

    def test_without_the_block_there_is_no_policy(self):
        # The control: the same query when mailsnid does not serve the policy (the backend is
        # down, so the client gets a 502) must not validate.
        out = self.run_query("")
        self.assertIn("STSFetchResult.FETCH_ERROR", out)


if __name__ == "__main__":
    unittest.main()
