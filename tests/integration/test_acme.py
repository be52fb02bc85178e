"""ACME against a real CA: Debian's pebble, with pebble-challtestsrv as its DNS, both started here
on free ports, nonce rejection left at pebble's default (15 %) so badNonce retries happen, and
PEBBLE_VA_NOSLEEP=1 so validations do not wait 0-15 s.

mailsnid orders over TLS-ALPN-01 on its own TLS listener (pebble's tlsPort points at it), serves
what it got with pebble's chain (verified against the root from pebble's management port), keeps
it across a restart without a new order, orders a domain a reload adds, backs off on a domain
whose validation fails without holding up the others, renews when the renewal window says so,
and two instances sharing one storage order each domain once (and each answers validations for
orders the other placed). Faults: a CA that cannot be reached, answers nonsense, a 429 or a
problem document (FakeCA); TLS to pebble that does not verify; an account pebble deactivated;
storage full or read-only; and, through tests/harness/ca_proxy.py in front of pebble, orders
that stay pending and renewal information (RFC 9773, which pebble 2.4 lacks).
"""

from __future__ import annotations

import base64
import errno
import glob
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

from mailsnid_runner import MAILSNID, SLOW, MailsnidProcess, free_port, wait_port
from pebble import acme_config
from ca_proxy import CaProxy
import certs

TMP = ""
PKI: dict[str, str] = {}
PEBBLE = shutil.which("pebble")


def free_udp_tcp_port() -> int:
    return free_port(udp_too=True)


def setUpModule():
    global TMP
    TMP = tempfile.mkdtemp(prefix="mailsnid-acme-")
    ca = certs.make_ca(os.path.join(TMP, "pki"))
    leaf = ca.issue(["localhost"])
    default = ca.issue(["mail.hoster.test"])
    PKI.update(ca=ca.ca_pem, pebble_cert=leaf.fullchain, pebble_key=leaf.key,
               default_cert=default.fullchain, default_key=default.key, ca_dir=ca.dir)


def tearDownModule():
    if not os.environ.get("MAILSNID_KEEP"):
        shutil.rmtree(TMP, ignore_errors=True)


class Pebble:
    """pebble + pebble-challtestsrv; tls_port is where its validator connects for TLS-ALPN-01."""

    def __init__(self, workdir: str, tls_port: int, nonce_reject: int | None = None,
                 http_port: int | None = None):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port, self.mgmt = free_port(), free_port()
        self.dns, self.chall_mgmt = free_udp_tcp_port(), free_port()
        cfg = {"pebble": {"listenAddress": f"127.0.0.1:{self.port}",
                          "managementListenAddress": f"127.0.0.1:{self.mgmt}",
                          "certificate": PKI["pebble_cert"], "privateKey": PKI["pebble_key"],
                          "httpPort": http_port or free_port(), "tlsPort": tls_port,
                          "ocspResponderURL": "", "externalAccountBindingRequired": False}}
        path = os.path.join(workdir, "pebble.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        self.log_path = os.path.join(workdir, "pebble.log")
        self._log = open(self.log_path, "ab")
        self.chall = subprocess.Popen(
            ["pebble-challtestsrv", "-defaultIPv6", "", "-defaultIPv4", "127.0.0.1",
             "-dns01", f"127.0.0.1:{self.dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-management", f"127.0.0.1:{self.chall_mgmt}"],
            stdout=self._log, stderr=subprocess.STDOUT)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1")
        env.pop("PEBBLE_WFE_NONCEREJECT", None)   # pebble's default rejection stays on
        if nonce_reject is not None:
            env["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject)
        self.proc = subprocess.Popen(["pebble", "-config", path, "-dnsserver",
                                      f"127.0.0.1:{self.dns}"],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            for port in (self.chall_mgmt, self.port, self.mgmt):
                wait_port(port, timeout=30)
        except TimeoutError as e:
            self.stop()
            raise TimeoutError(f"pebble did not start ({e}); its log:\n{self.log()[-3000:]}")
        self.directory = f"https://localhost:{self.port}/dir"
        ctx = ssl.create_default_context(cafile=PKI["ca"])
        with urllib.request.urlopen(f"https://localhost:{self.mgmt}/roots/0", context=ctx) as r:
            self.root_pem = r.read().decode()
        self.root = os.path.join(workdir, "pebble-root.pem")
        with open(self.root, "w") as f:
            f.write(self.root_pem)

    def add_a(self, host: str, addr: str) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.chall_mgmt}/add-a",
                                     data=json.dumps({"host": host + ".", "addresses": [addr]}).encode(),
                                     method="POST")
        urllib.request.urlopen(req).read()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        for p in (self.proc, self.chall):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._log.close()


def config(*, listen: str, backend: int, admin: int, directory: str, storage: str,
           domains: list[str], extra: str = "", ca_file: str | None = None) -> str:
    doms = ", ".join(f'"{d}"' for d in domains)
    return f"""
log = {{ level = "info"; }};
admin = "127.0.0.1:{admin}";
tls = {{ default_cert = "{PKI['default_cert']}"; default_key = "{PKI['default_key']}"; }};
listeners = (
  {{ name = "https"; listen = "{listen}"; protocol = "http"; tls = "implicit"; backend = "127.0.0.1:{backend}"; }}
);
domains = [ {doms} ];
""" + acme_config(directory, storage, ca_file or PKI["ca"], extra)


def served(host: str, port: int, sni: str, cafile: str | None,
           check_hostname: bool = True) -> tuple[bytes, dict | None]:
    """The leaf served for SNI, and (when CAFILE is given) its verified certificate dict."""
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.check_hostname = check_hostname
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            return s.getpeercert(True), (s.getpeercert() if cafile else None)


def wait_issued(host: str, port: int, sni: str, root: str, timeout: float = 60.0) -> bytes:
    """Polls until SNI gets a certificate that verifies against pebble's root (hostname included)."""
    deadline = time.monotonic() + timeout * SLOW
    last = None
    while time.monotonic() < deadline:
        try:
            der, _ = served(host, port, sni, root)
            return der
        except (ssl.SSLError, OSError) as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{sni}: no certificate from pebble after {timeout} s ({last})")


def metric(admin: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics") as r:
        text = r.read().decode()
    m = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else -1.0


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def es256(key_path: str, data: bytes) -> bytes:
    """An ES256 JWS signature (r || s, 32 bytes each) by openssl, from its DER form."""
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key_path], input=data,
                         capture_output=True, check=True).stdout
    i, out = 3 if der[1] & 0x80 else 2, b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out += int.from_bytes(der[i + 2:i + 2 + n], "big").to_bytes(32, "big")
        i += 2 + n
    return out


def acme_post(directory: str, key_path: str, kid: str, url: str, payload: dict) -> tuple[int, dict]:
    """A kid-signed POST to pebble (RFC 8555 6.2), retried on badNonce."""
    ctx = ssl.create_default_context(cafile=PKI["ca"])
    with urllib.request.urlopen(directory, context=ctx) as r:
        new_nonce = json.load(r)["newNonce"]
    for _ in range(20):
        with urllib.request.urlopen(urllib.request.Request(new_nonce, method="HEAD"), context=ctx) as r:
            nonce = r.headers["Replay-Nonce"]
        protected = b64u(json.dumps({"alg": "ES256", "kid": kid, "nonce": nonce, "url": url}).encode())
        body = b64u(json.dumps(payload).encode())
        sig = b64u(es256(key_path, f"{protected}.{body}".encode()))
        req = urllib.request.Request(url, method="POST", headers={"Content-Type": "application/jose+json"},
                                     data=json.dumps({"protected": protected, "payload": body,
                                                      "signature": sig}).encode())
        try:
            with urllib.request.urlopen(req, context=ctx) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            doc = json.load(e)
            if not doc.get("type", "").endswith(":badNonce"):
                return e.code, doc
    raise AssertionError("pebble rejected 20 nonces in a row")


def ari_cert_id(der: bytes) -> str:
    """RFC 9773 4.1: base64url(AKI keyIdentifier) "." base64url(the serial's DER content), as
    openssl reads them from the certificate."""
    text = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-ext",
                           "authorityKeyIdentifier", "-serial"], input=der, capture_output=True,
                          check=True).stdout.decode()
    aki = re.search(r"Authority Key Identifier:\s*(?:keyid:)?([0-9A-F:]+)", text).group(1)
    serial = int(re.search(r"serial=([0-9A-F]+)", text).group(1), 16)
    # DER content octets: big-endian, with a leading zero when the top bit is set.
    return (b64u(bytes.fromhex(aki.replace(":", ""))) + "." +
            b64u(serial.to_bytes(serial.bit_length() // 8 + 1, "big")))


def storage_consistent(test: unittest.TestCase, storage: str) -> None:
    """Nothing half-written: no temporary files, and every archive folder is the whole pair a
    certs/ link points at (a folder no link names would be one left by a failed write)."""
    test.assertEqual([f for f in glob.glob(os.path.join(storage, "**", "*.tmp*"), recursive=True)], [])
    linked = {os.path.basename(os.readlink(os.path.join(storage, "certs", d)))
              for d in os.listdir(os.path.join(storage, "certs"))}
    for d in glob.glob(os.path.join(storage, "archive", "*")):
        test.assertIn(os.path.basename(d), linked, f"{d}: left behind")
        test.assertEqual(sorted(os.listdir(d)), ["fullchain.pem", "privkey.pem"], d)


class FakeCA:
    """An HTTPS server that answers every request with BODY: a CA gone wrong."""

    def __init__(self, body: bytes, status: int = 200, headers: dict | None = None):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(PKI["pebble_cert"], PKI["pebble_key"])
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class CaFaults(unittest.TestCase):
    """A CA that cannot be reached or answers nonsense: logged, retried with back-off, and
    serving goes on."""

    def run_against(self, directory: str, pattern: str):
        d = tempfile.mkdtemp(prefix="f-", dir=TMP)
        port, admin = free_port(), free_port()
        p = MailsnidProcess(config(listen=f"127.0.0.1:{port}", backend=free_port(), admin=admin,
                                   directory=directory, storage=os.path.join(d, "acme"),
                                   domains=["alpha.test", "beta.test"]), d)
        p.start([port])
        try:
            lines = p.wait_log(r"acme: alpha.test: order failed", count=2, timeout=20)
            self.assertRegex(lines[0], pattern)
            self.assertIn("next in 1 s", lines[0])
            self.assertIn("next in 2 s", lines[1])
            p.wait_log(r"acme: beta.test: order failed")
            _, info = served("127.0.0.1", port, "mail.alpha.test", PKI["ca"], check_hostname=False)
            self.assertIn(("DNS", "mail.hoster.test"), info["subjectAltName"])
            self.assertGreaterEqual(metric(admin, 'mailsnid_acme_orders_total{result="failed"}'), 3)
        finally:
            self.assertEqual(p.stop(), 0)

    def test_unreachable(self):
        self.run_against(f"https://localhost:{free_port()}/dir", r"directory: .*(connect|Connection)")

    def test_garbage_json(self):
        ca = FakeCA(b'{"newNonce": 5, "newAccount": ["x"], "newOrder": {"a": ')
        try:
            self.run_against(f"https://localhost:{ca.port}/dir",
                             r"no newNonce, newAccount or newOrder URL")
        finally:
            ca.stop()

    def test_rate_limited(self):
        # A 429 with Retry-After: that wait, not the back-off, and every domain waits with it.
        # Up to four orders run at once, so those already in flight meet the 429 too; the
        # other domains are not even tried until the wait is over.
        ca = FakeCA(b'{"type": "urn:ietf:params:acme:error:rateLimited", "detail": "slow down"}',
                    status=429, headers={"Retry-After": "4"})
        d = tempfile.mkdtemp(prefix="f-", dir=TMP)
        port = free_port()
        domains = [f"d{i}.test" for i in range(8)]
        p = MailsnidProcess(config(listen=f"127.0.0.1:{port}", backend=free_port(), admin=free_port(),
                                   directory=f"https://localhost:{ca.port}/dir",
                                   storage=os.path.join(d, "acme"), domains=domains), d)
        p.start([port])
        try:
            first = p.wait_log(r"acme: \S+: order failed", timeout=10)[0]
            self.assertRegex(first, r"next in 4 s\): directory: HTTP 429 rateLimited: slow down$")
            time.sleep(2.5)
            failed = re.findall(r"acme: (\S+): order failed.*", p.log())
            self.assertLessEqual(len(failed), 4)
            self.assertEqual(len(re.findall(r"order failed.*next in 4 s", p.log())), len(failed))
            p.wait_log(r"acme: \S+: order failed", count=len(failed) + 1, timeout=10)
        finally:
            self.assertEqual(p.stop(), 0)
            ca.stop()

    def test_error_document(self):
        ca = FakeCA(b'{"type": "urn:ietf:params:acme:error:serverInternal", '
                    b'"detail": "down for\\nmaintenance\\u001b[31m"}', status=503)
        try:
            self.run_against(f"https://localhost:{ca.port}/dir",
                             r"directory: HTTP 503 serverInternal: down for maintenance \[31m$")
        finally:
            ca.stop()


@unittest.skipUnless(PEBBLE and shutil.which("pebble-challtestsrv"), "pebble is not installed")
class Acme(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="t-", dir=TMP)
        self.port = free_port()
        self.admin = free_port()
        # One test rejects more nonces, so that badNonce retries surely happen there.
        reject = 30 if self._testMethodName == "test_issue_serve_restart" else None
        self.http_port = free_port()
        self.pebble = Pebble(os.path.join(self.dir, "pebble"), self.port, reject, self.http_port)
        self.storage = os.path.join(self.dir, "acme")
        self.procs: list[MailsnidProcess] = []
        self.proxy: CaProxy | None = None

    def tearDown(self):
        for p in self.procs:
            p.stop()
        if self.proxy:
            self.proxy.stop()
        self.pebble.stop()

    def ca_proxy(self) -> CaProxy:
        """tests/harness/ca_proxy.py in front of this test's pebble."""
        self.proxy = CaProxy(self.pebble.port, cert=PKI["pebble_cert"], key=PKI["pebble_key"],
                             trust=PKI["ca"])
        return self.proxy

    def start(self, domains, name="mailsnid", listen=None, admin=None, extra="", directory=None,
              ca_file=None):
        listen = listen or f"127.0.0.1:{self.port}"
        p = MailsnidProcess(config(listen=listen, backend=free_port(), admin=admin or self.admin,
                                   directory=directory or self.pebble.directory,
                                   storage=self.storage, domains=domains, extra=extra,
                                   ca_file=ca_file),
                            self.dir, name=name)
        host, port = listen.rsplit(":", 1)
        p.start([int(port)] if host == "127.0.0.1" else [])
        if host != "127.0.0.1":
            wait_port(int(port), host=host)
        self.procs.append(p)
        return p

    def certs_output(self, p: MailsnidProcess) -> str:
        return subprocess.run([MAILSNID, "--certs", "-c", p.config], capture_output=True,
                              text=True, check=True).stdout

    def test_issue_serve_restart(self):
        domains = ["alpha.test", "beta.test", "gamma.test"]
        p = self.start(domains)
        ders = {}
        for d in domains:
            for n in (f"mail.{d}", f"webmail.{d}"):
                ders[n] = wait_issued("127.0.0.1", self.port, n, self.pebble.root)
        # One certificate per domain covering both names; the chain verified against the root
        # from the management port, so the intermediate was served too.
        for d in domains:
            self.assertEqual(ders[f"mail.{d}"], ders[f"webmail.{d}"])
        self.assertEqual(len(set(ders.values())), 3)
        # Other names still get the default.
        _, info = served("127.0.0.1", self.port, "mail.hoster.test", PKI["ca"])
        self.assertIn(("DNS", "mail.hoster.test"), info["subjectAltName"])
        key = os.stat(os.path.join(self.storage, "certs", "alpha.test", "privkey.pem"))
        self.assertEqual(key.st_mode & 0o777, 0o600)
        p.wait_log(r"acme: gamma.test: certificate issued")
        self.assertEqual(len(re.findall(r"certificate issued", p.log())), 3)
        retried = [int(n) for n in re.findall(r"certificate issued.*after (\d+) badNonce", p.log())]
        self.assertGreater(max(retried), 0)
        self.assertEqual(metric(self.admin, 'mailsnid_acme_orders_total{result="ok"}'), 3)
        out = self.certs_output(p)
        self.assertRegex(out, r"(?m)^mail\.alpha\.test acme valid until \d{4}-")
        self.assertIn("/acme/certs/beta.test/fullchain.pem", out)
        # A restart serves what is stored at once and orders nothing.
        self.assertEqual(p.stop(), 0)
        self.procs.remove(p)
        before = self.pebble.log().count("Added order ")
        os.rename(p.log_path, p.log_path + ".1")
        p2 = self.start(domains)
        for n, der in ders.items():
            got, _ = served("127.0.0.1", self.port, n, self.pebble.root)
            self.assertEqual(got, der, n)
        time.sleep(2 * SLOW)
        self.assertNotIn("ordering", p2.log())
        self.assertEqual(self.pebble.log().count("Added order "), before)

    def test_http01_on_the_plain_listener(self):
        """HTTP-01: pebble's validator fetches /.well-known/acme-challenge/TOKEN from mailsnid's
        plain HTTP listener (tls = "none"); the certificates are then served on the TLS one.
        Anything else on port 80 still gets the redirect, and an unknown token a 404."""
        text = config(listen=f"127.0.0.1:{self.port}", backend=free_port(), admin=self.admin,
                      directory=self.pebble.directory, storage=self.storage,
                      domains=["alpha.test", "beta.test"])
        text = text.replace('challenges = [ "tls-alpn-01" ];', 'challenges = [ "http-01" ];')
        text = text.replace("}\n);\ndomains", f'}},\n  {{ name = "http"; listen = "127.0.0.1:{self.http_port}"; '
                                              f'protocol = "http"; tls = "none"; }}\n);\ndomains')
        p = MailsnidProcess(text, self.dir).start([self.port, self.http_port])
        self.procs.append(p)
        for d in ("alpha.test", "beta.test"):
            wait_issued("127.0.0.1", self.port, f"mail.{d}", self.pebble.root)
        self.assertIn("http acme-challenge 200", p.log())
        self.assertNotIn("answering a tls-alpn-01", p.log())
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        conn.request("GET", "/.well-known/acme-challenge/unknown-token", headers={"Host": "mail.alpha.test"})
        self.assertEqual(conn.getresponse().status, 404)
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        conn.request("GET", "/inbox?x=1", headers={"Host": "webmail.alpha.test"})
        r = conn.getresponse()
        self.assertEqual((r.status, r.getheader("Location")), (301, "https://webmail.alpha.test/inbox?x=1"))

    def test_reload_adds_domain(self):
        p = self.start(["alpha.test"])
        wait_issued("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)
        with open(p.config) as f:
            text = f.read()
        with open(p.config, "w") as f:
            f.write(text.replace('domains = [ "alpha.test" ]', 'domains = [ "alpha.test", "delta.test" ]'))
        p.signal(signal.SIGHUP)
        wait_issued("127.0.0.1", self.port, "webmail.delta.test", self.pebble.root)
        self.assertEqual(len(re.findall(r"acme: alpha.test: ordering", p.log())), 1)

    def test_reload_adds_name(self):
        p = self.start(["alpha.test"])
        first = wait_issued("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)
        with open(p.config) as f:
            text = f.read()
        with open(p.config, "w") as f:
            f.write(text.replace('"webmail.%d" ]', '"webmail.%d", "autoconfig.%d" ]'))
        p.signal(signal.SIGHUP)
        der = wait_issued("127.0.0.1", self.port, "autoconfig.alpha.test", self.pebble.root)
        self.assertNotEqual(der, first)
        self.assertEqual(served("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)[0], der)
        self.assertEqual(len(re.findall(r"acme: alpha.test: ordering", p.log())), 2)

    def test_failing_domain_backs_off(self):
        # mail.bad.test resolves to an address where nothing listens: validation fails.
        self.pebble.add_a("mail.bad.test", "127.0.0.9")
        p = self.start(["bad.test", "good.test"])
        wait_issued("127.0.0.1", self.port, "mail.good.test", self.pebble.root)
        lines = p.wait_log(r"acme: bad.test: order failed", count=3, timeout=60)
        waits = [int(re.search(r"next in (\d+) s", l).group(1)) for l in lines[:3]]
        self.assertEqual(waits, [1, 2, 3])              # doubling, capped at backoff_max
        self.assertRegex(lines[0], r"tls-alpn-01 validation invalid: .*127\.0\.0\.9")
        self.assertGreaterEqual(metric(self.admin, 'mailsnid_acme_orders_total{result="failed"}'), 3)
        out = self.certs_output(p)
        self.assertRegex(out, r"(?m)^mail\.bad\.test acme failing: .*127\.0\.0\.9")
        self.assertRegex(out, r"(?m)^mail\.good\.test acme valid until ")
        # Still the default for the failing name: handshakes go on.
        _, info = served("127.0.0.1", self.port, "mail.bad.test", PKI["ca"], check_hostname=False)
        self.assertIn(("DNS", "mail.hoster.test"), info["subjectAltName"])

    def test_pace(self):
        # One new order per hour: whichever domain takes it, the other waits for the budget.
        p = self.start(["alpha.test", "beta.test"], extra="pace_orders = 1; pace_window = 3600;")
        first = p.wait_log(r"acme: \S+: certificate issued", timeout=60)[0]
        done, waiting = ("alpha", "beta") if "alpha.test" in first else ("beta", "alpha")
        wait_issued("127.0.0.1", self.port, f"mail.{done}.test", self.pebble.root)
        time.sleep(3 * SLOW)
        self.assertEqual(self.pebble.log().count("Added order "), 1)
        self.assertNotIn(f"{waiting}.test: ordering", p.log())
        out = self.certs_output(p)
        self.assertRegex(out, rf"(?m)^mail\.{waiting}\.test acme pending$")
        self.assertRegex(out, rf"(?m)^mail\.{done}\.test acme valid until ")

    def test_renewal(self):
        # Pebble's certificates last about five years: a window of ten makes each due at once.
        p = self.start(["alpha.test"], extra="renew_before_days = 3650;")
        first = wait_issued("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)
        p.wait_log(r"acme: alpha.test: certificate issued \(renewal\)", timeout=60)
        deadline = time.monotonic() + 20 * SLOW
        while served("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)[0] == first:
            self.assertLess(time.monotonic(), deadline, "the renewed certificate is not served")
            time.sleep(0.2)
        self.assertGreaterEqual(metric(self.admin, "mailsnid_acme_renewals_total"), 1)

    def test_account_deactivated(self):
        """The account is deactivated at the CA (its owner or the CA may do that; pebble has no
        revocation of accounts, and a revoked one is refused the same way). The next order is
        refused: logged, backed off; then the key is put aside, a new account registered, and
        ordering goes on, while what was issued before is served all along."""
        p = self.start(["alpha.test"])
        first = wait_issued("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)
        with open(os.path.join(self.storage, "account.json")) as f:
            url = json.load(f)["url"]
        status, doc = acme_post(self.pebble.directory, os.path.join(self.storage, "account.key"),
                                url, url, {"status": "deactivated"})
        self.assertEqual((status, doc.get("status")), (200, "deactivated"))
        with open(p.config) as f:
            text = f.read()
        with open(p.config, "w") as f:
            f.write(text.replace('domains = [ "alpha.test" ]', 'domains = [ "alpha.test", "beta.test" ]'))
        p.signal(signal.SIGHUP)
        line = p.wait_log(r"acme: beta.test: order failed", timeout=30)[0]
        self.assertRegex(line, r"\(attempt 1, next in 1 s\): newOrder: HTTP 40[13] unauthorized: .*deactivated")
        p.wait_log(r"acme: the CA refuses the account key \(newAccount: HTTP 40[13] unauthorized: .*"
                   r"deactivated\); it is kept as .*/account\.key\.deactivated-\d+ and a new account "
                   r"is registered", timeout=30)
        wait_issued("127.0.0.1", self.port, "mail.beta.test", self.pebble.root)
        self.assertEqual(served("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)[0], first)
        with open(os.path.join(self.storage, "account.json")) as f:
            self.assertNotEqual(json.load(f)["url"], url)
        self.assertEqual(len(glob.glob(os.path.join(self.storage, "account.key.deactivated-*"))), 1)
        self.assertRegex(p.log(), r"acme: registered the account https://\S+")

    def reconfigure(self, p: MailsnidProcess, *changes: tuple[str, str]) -> None:
        """Replaces each OLD text of P's configuration with NEW, and reloads."""
        with open(p.config) as f:
            text = f.read()
        for old, new in changes:
            self.assertIn(old, text)
            text = text.replace(old, new)
        with open(p.config, "w") as f:
            f.write(text)
        p.signal(signal.SIGHUP)

    def still_default(self, name: str) -> None:
        """A handshake for NAME works meanwhile, with the default certificate."""
        _, info = served("127.0.0.1", self.port, name, PKI["ca"], check_hostname=False)
        self.assertIn(("DNS", "mail.hoster.test"), info["subjectAltName"])

    def test_tls_failure_to_the_ca(self):
        """TLS to the CA fails: a ca_file without pebble's issuer, then a directory URL whose
        name pebble's certificate lacks, then plain HTTP where HTTPS should be. Each attempt is
        logged naming the domain and libcurl's own words, backs off, and handshakes go on;
        the reload that sets it right gets the domain issued."""
        other = certs.make_ca(os.path.join(self.dir, "other-ca"), intermediate=False)
        p = self.start(["alpha.test"], ca_file=other.ca_pem)
        lines = p.wait_log(r"acme: alpha.test: order failed", count=2, timeout=20)
        self.assertRegex(lines[0], r"\(attempt 1, next in 1 s\): directory: https://localhost:\d+/dir: "
                                   r"SSL peer certificate or SSH remote key was not OK: SSL "
                                   r"certificate problem: unable to get local issuer certificate$")
        self.assertIn("(attempt 2, next in 2 s)", lines[1])
        self.still_default("mail.alpha.test")

        url = f"https://127.0.0.1:{self.pebble.port}/dir"
        self.reconfigure(p, (f'directory = "{self.pebble.directory}"', f'directory = "{url}"'),
                         (f'ca_file = "{other.ca_pem}"', f'ca_file = "{PKI["ca"]}"'))
        p.wait_log(r"acme: alpha.test: order failed \(attempt \d+, next in 3 s\): directory: "
                   + re.escape(url) + r": SSL peer certificate or SSH remote key was not OK: SSL: "
                   r"no alternative certificate subject name matches target host name '127\.0\.0\.1'$",
                   timeout=20)
        self.still_default("mail.alpha.test")

        plain = f"https://localhost:{self.pebble.chall_mgmt}/dir"   # pebble-challtestsrv: HTTP
        self.reconfigure(p, (f'directory = "{url}"', f'directory = "{plain}"'))
        p.wait_log(r"acme: alpha.test: order failed \(attempt \d+, next in 3 s\): directory: "
                   + re.escape(plain) + r": SSL connect error: .*wrong version number$", timeout=20)
        self.still_default("mail.alpha.test")

        self.reconfigure(p, (f'directory = "{plain}"', f'directory = "{self.pebble.directory}"'))
        wait_issued("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)

    def test_order_that_stays_pending(self):
        """A CA that never decides: the proxy in front of pebble keeps the challenges of p1-p3
        from pebble, so their authorizations stay "pending" at pebble, and shows p4's order as
        "processing" where pebble says "valid". Each
        order is abandoned when order_timeout runs out, logged with the state it stayed in, and
        backed off. The four stuck domains sort first, so they take all four order threads at
        the start: q.test is ordered only because a stuck order gave its thread up."""
        proxy = self.ca_proxy()
        stuck = ["p1.test", "p2.test", "p3.test", "p4.test"]
        proxy.stuck_authz.update(stuck[:3])
        proxy.stuck_order.add("p4.test")
        # Long enough for pebble to validate p4 (whose order then shows "processing"), also
        # when ASan slows the proxy's answer to the validation.
        timeout = int(2 * SLOW)
        p = self.start(stuck + ["q.test"], directory=proxy.directory,
                       extra=f"order_timeout = {timeout};")
        wait_issued("127.0.0.1", self.port, "mail.q.test", self.pebble.root, timeout=30)
        log = p.log()
        self.assertLess(log.index(": order failed"), log.index("acme: q.test: ordering"))
        for d in stuck:
            lines = p.wait_log(rf"acme: {re.escape(d)}: order failed", count=2, timeout=30)
            state = (rf"(mail|webmail)\.{re.escape(d)}: authorization is still pending"
                     if d != "p4.test" else "the order is still processing")
            self.assertRegex(lines[0], rf"\(attempt 1, next in 1 s\): {state} after the order's "
                                       rf"{timeout} s \(order_timeout\)$")
            self.assertRegex(lines[1], rf"\(attempt 2, next in 2 s\): {state} after")
        self.still_default("mail.p1.test")
        self.assertRegex(self.certs_output(p), r"(?m)^mail\.p4\.test acme failing: the order is "
                                               r"still processing after")

    def test_ca_that_stops_answering(self):
        """The CA takes newOrder requests and never answers them: each attempt gives up when
        the order's time (order_timeout) is over, not after libcurl's minute per request, says
        so, and backs off; handshakes go on; once the CA answers again the domain is issued."""
        proxy = self.ca_proxy()
        proxy.stall_orders = 30 * SLOW
        timeout = int(2 * SLOW)
        p = self.start(["alpha.test"], directory=proxy.directory, extra=f"order_timeout = {timeout};")
        began = time.monotonic()
        lines = p.wait_log(r"acme: alpha.test: order failed", count=2, timeout=30)
        self.assertLess(time.monotonic() - began, proxy.stall_orders)
        self.assertRegex(lines[0], rf"\(attempt 1, next in 1 s\): "
                                   rf"{re.escape(proxy.directory[:-4])}\S+: no answer, and the "
                                   rf"order's {timeout} s \(order_timeout\) are over$")
        self.still_default("mail.alpha.test")
        self.assertRegex(self.certs_output(p), r"(?m)^mail\.alpha\.test acme failing: https://"
                                               r"\S+: no answer, and the order's")
        proxy.stall_orders = 0
        wait_issued("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)

    def test_ari_renewal(self):
        """ACME Renewal Information (RFC 9773), which pebble 2.4 lacks: the proxy in front of
        pebble adds renewalInfo to the directory and answers it (a window a month ahead,
        Retry-After 60 s); pebble issues. The fresh certificate is not renewed; when the CA
        moves its window into the past, the client sees it at its next look, no sooner than
        Retry-After, and renews with an order that names the certificate it replaces."""
        proxy = self.ca_proxy()
        p = self.start(["alpha.test"], directory=proxy.directory)
        first = wait_issued("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)
        cert_id = ari_cert_id(first)
        deadline = time.monotonic() + 20 * SLOW
        while cert_id not in [i for _, i in proxy.ari_asked]:
            self.assertLess(time.monotonic(), deadline, f"renewalInfo not asked: {proxy.ari_asked}")
            time.sleep(0.1)
        self.assertEqual(len(proxy.new_orders), 1)
        self.assertNotIn("replaces", proxy.new_orders[0])
        time.sleep(2 * SLOW)
        self.assertEqual(len(proxy.new_orders), 1, "a certificate whose window is ahead was renewed")
        self.assertEqual([i for _, i in proxy.ari_asked], [cert_id])
        now = time.time()
        proxy.window[cert_id] = (now - 7200, now - 3600)
        p.wait_log(r"acme: alpha.test: certificate issued \(renewal\)", timeout=90)
        asked = [t for t, i in proxy.ari_asked if i == cert_id]
        self.assertGreaterEqual(asked[1] - asked[0], 59)     # whole seconds on the client's side
        self.assertEqual(proxy.new_orders[1].get("replaces"), cert_id)
        deadline = time.monotonic() + 20 * SLOW
        while served("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)[0] == first:
            self.assertLess(time.monotonic(), deadline, "the renewed certificate is not served")
            time.sleep(0.2)
        self.assertGreaterEqual(metric(self.admin, "mailsnid_acme_renewals_total"), 1)

    def test_two_instances_share_storage(self):
        # Two instances on one port, different addresses; pebble's DNS sends each domain's
        # names to one of them, so each answers validations for orders the other may have placed.
        domains = ["a1.test", "a2.test", "a3.test", "a4.test"]
        for i, d in enumerate(domains):
            for n in (f"mail.{d}", f"webmail.{d}"):
                self.pebble.add_a(n, "127.0.0.2" if i % 2 == 0 else "127.0.0.3")
        # "two" may place one order only, so "one" orders most domains, some of them under
        # names that resolve to "two": those validations are answered by "two".
        p1 = self.start(domains, name="one", listen=f"127.0.0.2:{self.port}")
        p2 = self.start(domains, name="two", listen=f"127.0.0.3:{self.port}", admin=free_port(),
                        extra="pace_orders = 1; pace_window = 3600;")
        for i, d in enumerate(domains):
            for host in ("127.0.0.2", "127.0.0.3"):
                wait_issued(host, self.port, f"mail.{d}", self.pebble.root)
        issued = re.findall(r"acme: (\S+): certificate issued", p1.log() + p2.log())
        self.assertEqual(sorted(issued), domains)
        # One certificate per domain. (Orders may be more: one placed before the other
        # instance listens fails its validation and is tried again.)
        self.assertEqual(self.pebble.log().count("Issued certificate serial"), 4)
        by_one = set(re.findall(r"acme: (\S+): certificate issued", p1.log()))
        answered_by_two = set(re.findall(r"answering a tls-alpn-01 validation for mail\.(\S+)", p2.log()))
        self.assertTrue(by_one & answered_by_two, (by_one, answered_by_two))

    def test_two_instances_share_one_order_budget(self):
        # Instances sharing storage share the account, and the CA limits the account's new
        # orders: two per hour here, for the two of them together, not two each.
        domains = ["b1.test", "b2.test", "b3.test", "b4.test"]
        for d in domains:
            for n in (f"mail.{d}", f"webmail.{d}"):
                self.pebble.add_a(n, "127.0.0.2")
        pace = "pace_orders = 2; pace_window = 3600;"
        p1 = self.start(domains, name="one", listen=f"127.0.0.2:{self.port}", extra=pace)
        p2 = self.start(domains, name="two", listen=f"127.0.0.3:{self.port}", admin=free_port(),
                        extra=pace)
        issued = lambda: re.findall(r"acme: (\S+): certificate issued", p1.log() + p2.log())
        deadline = time.monotonic() + 60 * SLOW
        while len(issued()) < 2:
            self.assertLess(time.monotonic(), deadline, p1.log() + p2.log())
            time.sleep(0.2)
        time.sleep(3 * SLOW)      # time enough for a third order, were there a budget for it
        self.assertEqual(len(issued()), 2, issued())
        self.assertEqual(self.pebble.log().count("Added order "), 2)
        out = self.certs_output(p1)
        self.assertEqual(len(re.findall(r"(?m)^mail\.b\d\.test acme valid until ", out)), 2, out)
        # (Pending, or "pending: another instance orders it" where one instance met the
        # other's lock while that one asked the budget.)
        self.assertEqual(len(re.findall(r"(?m)^mail\.b\d\.test acme pending(: .*)?$", out)), 2, out)
        self.assertTrue(os.path.exists(os.path.join(self.storage, "pace-2-3600")))


def mount_namespace_ok() -> bool:
    """A private mount namespace with a tmpfs in it, and nsenter: refused in some containers."""
    d = tempfile.mkdtemp(prefix="ns-", dir=TMP)
    return shutil.which("nsenter") is not None and subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {d}"],
        capture_output=True).returncode == 0


@unittest.skipUnless(PEBBLE and shutil.which("pebble-challtestsrv") and shutil.which("unshare"),
                     "pebble or unshare is not installed")
class AcmeStorageFaults(unittest.TestCase):
    """acme.storage full or read-only, for real: mailsnid runs in a private mount namespace
    where the storage folder is a small tmpfs, which the test fills and frees through
    /proc/PID/root and remounts through nsenter; the host's mounts never change."""

    PAGE = 4096

    def setUp(self):
        if not mount_namespace_ok():
            self.skipTest("no private mount namespace with a tmpfs here")
        self.dir = tempfile.mkdtemp(prefix="s-", dir=TMP)
        self.port, self.admin = free_port(), free_port()
        self.pebble = Pebble(os.path.join(self.dir, "pebble"), self.port)
        self.storage = os.path.join(self.dir, "acme")
        os.makedirs(self.storage)
        wrap = ["unshare", "-m", "sh", "-c",
                'mount -t tmpfs -o size=1m,mode=0700 tmpfs "$0" && exec "$@"', self.storage]
        self.p = MailsnidProcess(config(listen=f"127.0.0.1:{self.port}", backend=free_port(),
                                        admin=self.admin, directory=self.pebble.directory,
                                        storage=self.storage, domains=["alpha.test"]),
                                 self.dir, wrap=wrap).start([self.port])
        self.first = wait_issued("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)
        self.view = f"/proc/{self.p.proc.pid}/root{self.storage}"   # the storage as mailsnid sees it

    def tearDown(self):
        self.p.stop()
        self.pebble.stop()

    def add_domain(self, domain: str) -> None:
        with open(self.p.config) as f:
            text = f.read()
        with open(self.p.config, "w") as f:
            f.write(text.replace('domains = [ "alpha.test" ]', f'domains = [ "alpha.test", "{domain}" ]'))
        self.p.signal(signal.SIGHUP)

    def still_serving(self, waiting: str) -> None:
        """The pair issued before is served; the name waiting gets the default."""
        self.assertEqual(served("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)[0],
                         self.first)
        _, info = served("127.0.0.1", self.port, f"mail.{waiting}", PKI["ca"], check_hostname=False)
        self.assertIn(("DNS", "mail.hoster.test"), info["subjectAltName"])

    def test_storage_full(self):
        # Fill the tmpfs, then give back three pages: enough for the domain's lock, its status
        # line and one challenge at a time, not for the new pair's two files. So the order goes
        # all the way and fails where it stores the pair, half-written.
        filler = os.path.join(self.view, "filler")
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * self.PAGE)
            except OSError as e:
                self.assertEqual(e.errno, errno.ENOSPC)
        os.truncate(filler, (os.path.getsize(filler) // self.PAGE - 3) * self.PAGE)
        self.assertEqual(os.statvfs(self.view).f_bavail, 3)
        self.add_domain("beta.test")
        lines = self.p.wait_log(r"acme: beta.test: order failed", count=2, timeout=30)
        self.assertRegex(lines[0], r"\(attempt 1, next in 1 s\): cannot store the certificate: "
                                   r"No space left on device$")
        self.assertRegex(lines[1], r"\(attempt 2, next in 2 s\): .*No space left on device$")
        self.still_serving("beta.test")
        storage_consistent(self, self.view)
        os.unlink(filler)
        wait_issued("127.0.0.1", self.port, "mail.beta.test", self.pebble.root)
        storage_consistent(self, self.view)
        self.assertEqual(served("127.0.0.1", self.port, "mail.alpha.test", self.pebble.root)[0],
                         self.first)

    def test_storage_read_only(self):
        def remount(mode: str) -> None:
            # -r: mailsnid's root as well (entering a mount namespace resets the root to the
            # namespace's, which is not the chroot's when the suite runs inside one).
            subprocess.run(["nsenter", "-t", str(self.p.proc.pid), "-m", "-r", "mount", "-o",
                            f"remount,{mode}", self.storage], check=True)
        remount("ro")
        self.add_domain("beta.test")
        lines = self.p.wait_log(r"acme: beta.test: order failed", count=2, timeout=30)
        for n, line in enumerate(lines[:2]):
            self.assertRegex(line, rf"\(attempt {n + 1}, next in {n + 1} s\): cannot lock in "
                                   rf"{re.escape(self.storage)}: Read-only file system$")
        self.still_serving("beta.test")
        remount("rw")
        wait_issued("127.0.0.1", self.port, "mail.beta.test", self.pebble.root)
        storage_consistent(self, self.view)


if __name__ == "__main__":
    unittest.main()
