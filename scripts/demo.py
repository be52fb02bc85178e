#!/usr/bin/env python3
"""mailsnid demo: the proxy in front of real Dovecot and Postfix and a webmail stand-in.

Run through scripts/demo.sh (`make demo`), which installs dependencies and builds first.

    python3 scripts/demo.py            start everything, print the commands to try, wait for
                                       Ctrl-C / SIGTERM, stop everything
    python3 scripts/demo.py --check    the same, then run every printed command, report each as
                                       OK/FAIL, stop, exit 0 only if all passed

Everything lives in a new directory under the temp dir (/tmp/mailsnid-demo-XXXXXX, printed at
start; never under the checkout, which may sit in a 0700 home that Dovecot's and Postfix's
unprivileged users cannot enter):
    pki/          demo CA (ca.pem: what clients trust) and the server certificates
    backends/     Dovecot + Postfix (tests/harness/backends.py), their configs, logs, maildirs
    mailsnid.cfg  mailsnid.log  webmail.log  hello-bob.eml  demo.pid
--check removes it when every command passed; otherwise it is kept for a look.

Ports: the defaults below (10xxx, admin 19180) when they are all free; otherwise, and always with
--check (the test suite runs it, maybe twice at once), a free block picked at start.

Only the standard library and tests/harness/ are used.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))

import backends as B  # noqa: E402  (tests/harness)
import certs as C  # noqa: E402

MAILSNID = os.environ.get("MAILSNID") or os.path.join(ROOT, "build", "mailsnid")
LISTEN_HOST = "127.0.0.1"
# The demo's clients connect from this address, so that the backends' logs show an address that
# only the PROXY header can have told them (mailsnid itself reaches them from 127.0.0.1).
CLIENT_ADDR = "127.0.0.5"
DEFAULT_ADMIN_PORT = 19180
DRAIN_TIMEOUT = 5

# name, port, protocol, tls, starttls, backend attribute (or "webmail"), PROXY to the backend
LISTENERS = [
    ("imaps",      10993, "imap", "implicit", None,       "imap_haproxy_port",       "v2"),
    ("imap",       10143, "imap", "starttls", "optional", "imap_haproxy_port",       "v2"),
    ("pop3s",      10995, "pop3", "implicit", None,       "pop3_haproxy_port",       "v2"),
    ("pop3",       10110, "pop3", "starttls", "optional", "pop3_haproxy_port",       "v2"),
    ("smtps",      10465, "smtp", "implicit", None,       "submission_haproxy_port", "v2"),
    ("submission", 10587, "smtp", "starttls", "required", "submission_haproxy_port", "v2"),
    ("smtp",       10025, "smtp", "starttls", "optional", "smtp_haproxy_port",       "v2"),
    ("https",      10443, "http", "implicit", None,       "webmail",                 "v2"),
]
DEFAULT_PORTS = {name: port for name, port, *_ in LISTENERS} | {"admin": DEFAULT_ADMIN_PORT}

ALICE, ALICE_PW = "alice@alpha.test", B.USERS["alice@alpha.test"]
BOB, BOB_PW = "bob@beta.test", B.USERS["bob@beta.test"]


def say(msg: str = "") -> None:
    print(msg, flush=True)


def bold(s: str) -> str:
    return f"\033[1m{s}\033[0m" if sys.stdout.isatty() else s


class DemoError(RuntimeError):
    pass


class Stop(BaseException):
    """Raised by the SIGTERM handler (SIGINT raises KeyboardInterrupt)."""


# ----------------------------------------------------------------------------------------------
# Webmail stand-in: HTTP behind mailsnid, reading the PROXY v2 header mailsnid sends first
# ----------------------------------------------------------------------------------------------

PP2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
SSL_VERSIONS = {0x21: "tls_version", 0x22: "client_cn", 0x23: "cipher", 0x24: "sig_alg",
                0x25: "key_alg"}


def parse_proxy_v2(rfile) -> dict:
    """Read one PROXY v2 header from `rfile`; return what it says (raises ValueError)."""
    head = rfile.read(16)
    if len(head) < 16 or head[:12] != PP2_SIG:
        raise ValueError("no PROXY v2 header (this port sits behind mailsnid)")
    ver_cmd, fam, length = head[12], head[13], struct.unpack("!H", head[14:16])[0]
    body = rfile.read(length)
    if len(body) < length or ver_cmd >> 4 != 2:
        raise ValueError("truncated or wrong-version PROXY header")
    info: dict = {"command": "PROXY" if ver_cmd & 0xF == 1 else "LOCAL"}
    pos = 0
    if fam == 0x11:                                 # TCP over IPv4
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        info["client"] = f"{socket.inet_ntop(socket.AF_INET, src)}:{sport}"
        info["proxy_local"] = f"{socket.inet_ntop(socket.AF_INET, dst)}:{dport}"
        pos = 12
    elif fam == 0x21:                               # TCP over IPv6
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        info["client"] = f"[{socket.inet_ntop(socket.AF_INET6, src)}]:{sport}"
        info["proxy_local"] = f"[{socket.inet_ntop(socket.AF_INET6, dst)}]:{dport}"
        pos = 36
    while pos + 3 <= len(body):                     # TLVs
        t, ln = body[pos], struct.unpack("!H", body[pos + 1:pos + 3])[0]
        val = body[pos + 3:pos + 3 + ln]
        pos += 3 + ln
        if t == 0x01:
            info["alpn"] = val.decode(errors="replace")
        elif t == 0x02:
            info["authority (SNI)"] = val.decode(errors="replace")
        elif t == 0x20 and len(val) >= 5:
            info["client used TLS"] = "yes" if val[0] & 0x01 else "no"
            sp = 5
            while sp + 3 <= len(val):
                st, sl = val[sp], struct.unpack("!H", val[sp + 1:sp + 3])[0]
                if st in SSL_VERSIONS:
                    info[SSL_VERSIONS[st]] = val[sp + 3:sp + 3 + sl].decode(errors="replace")
                sp += 3 + sl
    return info


class WebmailHandler(BaseHTTPRequestHandler):
    server_version = "demo-webmail/1"
    proxy_info: dict = {}
    log_file = None

    def handle(self) -> None:
        try:
            self.proxy_info = parse_proxy_v2(self.rfile)
        except ValueError as e:
            self.wfile.write(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n\r\n"
                             + str(e).encode() + b"\n")
            return
        super().handle()

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "?").rsplit(":", 1)[0]
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>\n"
                       for k, v in self.proxy_info.items())
        text = (f"<!doctype html>\n<title>Webmail for {html.escape(host)}</title>\n"
                f"<h1>Webmail for {html.escape(host)}</h1>\n"
                f"<p>This is the demo webmail backend, reached through mailsnid. "
                f"Host header: {html.escape(host)}.</p>\n"
                f"<p>What mailsnid told it (PROXY protocol v2):</p>\n<table>\n{rows}</table>\n")
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_HEAD = do_GET

    def log_message(self, fmt: str, *args) -> None:
        if self.log_file:
            self.log_file.write(f"{self.proxy_info.get('client', '-')} {fmt % args}\n")
            self.log_file.flush()


class Webmail:
    def __init__(self, host: str, log_path: str):
        self.log = open(log_path, "a")
        handler = type("Handler", (WebmailHandler,), {"log_file": self.log})
        ThreadingHTTPServer.daemon_threads = True
        self.server = ThreadingHTTPServer((host, 0), handler)
        self.addr = f"{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webmail",
                                       daemon=True)

    def start(self) -> "Webmail":
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join(5)
        self.server.server_close()
        self.log.close()


# ----------------------------------------------------------------------------------------------
# Set-up
# ----------------------------------------------------------------------------------------------

def port_owner(port: int) -> str:
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    m = re.search(r'users:\(\("([^"]+)",pid=(\d+)', out)
    return f" (held by {m.group(1)}, pid {m.group(2)})" if m else (f" ({out})" if out else "")


def busy_ports(ports: dict) -> list[str]:
    """One line per port of `ports` that cannot be bound on LISTEN_HOST, saying who holds it."""
    busy = []
    for port in ports.values():
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((LISTEN_HOST, port))
        except OSError as e:
            busy.append(f"  {LISTEN_HOST}:{port}: {e.strerror}{port_owner(port)}")
        finally:
            s.close()
    return busy


def choose_ports(want_defaults: bool) -> dict:
    """name -> port for every listener and "admin": the defaults when asked for and all free,
    else a free block (the one the harness's backends use too, so parallel runs pick apart)."""
    if want_defaults:
        busy = busy_ports(DEFAULT_PORTS)
        if not busy:
            return dict(DEFAULT_PORTS)
        say("demo: the default ports are not all free (another demo running?); using others:\n"
            + "\n".join(busy))
    base = B.find_free_base(LISTEN_HOST, seed=f"demo-{time.monotonic_ns()}")
    return {name: base + i for i, name in enumerate(DEFAULT_PORTS)}


def make_pki(d: str) -> dict:
    ca = C.make_ca(d)
    issue = lambda names, kt, base: ca.issue(names, key_type=kt, basename=base, days=365)
    return {
        "ca": ca.ca_pem,
        "default": issue(["mail.hoster.test"], "ec", "hoster.default.ec"),
        "alpha_ec": issue(["mail.alpha.test", "webmail.alpha.test"], "ec", "alpha.ec"),
        "alpha_rsa": issue(["mail.alpha.test", "webmail.alpha.test"], "rsa", "alpha.rsa"),
        "beta_wild": issue(["*.beta.test"], "ec", "beta.wildcard.ec"),
    }


def write_config(path: str, pki: dict, mb: B.MailBackends, webmail_addr: str,
                 ports: dict) -> None:
    def pair(leaf) -> str:
        return f'  {{ cert = "{leaf.fullchain}"; key = "{leaf.key}"; }}'

    lines = []
    for name, _, proto, tls, starttls, backend, pp in LISTENERS:
        addr = webmail_addr if backend == "webmail" else f"{mb.host}:{getattr(mb, backend)}"
        st = f' starttls = "{starttls}";' if starttls else ""
        lines.append(f'  {{ name = "{name}"; listen = "{LISTEN_HOST}:{ports[name]}"; '
                     f'protocol = "{proto}"; tls = "{tls}";{st}\n'
                     f'    backend = "{addr}"; proxy_protocol = "{pp}"; }}')
    listeners = ",\n".join(lines)
    text = f"""\
# Written by scripts/demo.py for `make demo`; recreated at every start.
workers = 2;
log = {{ level = "info"; target = "stderr"; }};
admin = "127.0.0.1:{ports['admin']}";
drain_timeout = {DRAIN_TIMEOUT};

tls = {{
  default_cert = "{pki['default'].fullchain}";   # mail.hoster.test: no SNI / unknown name
  default_key  = "{pki['default'].key}";
  min_version  = "TLSv1.2";
}};

certificates = (
  # mail.alpha.test + webmail.alpha.test, exact names, ECDSA and RSA (the client chooses)
{pair(pki['alpha_ec'])},
{pair(pki['alpha_rsa'])},
  # *.beta.test: wildcard
{pair(pki['beta_wild'])}
);

# Backends: Dovecot and Postfix on {mb.host} (tests/harness/backends.py), their PROXY-protocol
# ports; the webmail stand-in reads the PROXY v2 header too.
listeners = (
{listeners}
);
"""
    with open(path, "w") as f:
        f.write(text)


def wait_listening(proc: subprocess.Popen, ports: list[int], log_path: str,
                   timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise DemoError(f"mailsnid exited with status {proc.returncode} at start; "
                            f"its log ({log_path}):\n{tail(log_path, 40)}")
        missing = set(ports) - B._listening_ports(LISTEN_HOST)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"mailsnid does not listen on {sorted(missing)} after {timeout:.0f} s;"
                            f" its log:\n{tail(log_path, 40)}")
        time.sleep(0.02)


def quiet(out: str) -> str:
    """Output without curl's progress meter (it goes to stderr when stdout is no terminal)."""
    meter = re.compile(r"^\s*(% Total|Dload|\d+\s+\S+\s+\d+\s+\S+\s+\d+.*:--|\d+\s+\d+\s+\d+\s+\d+\s+\d+)")
    return "\n".join(l for l in out.splitlines() if l.strip() and not meter.match(l))


def tail(path: str, n: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except FileNotFoundError:
        return "(no log)\n"


def set_pdeathsig() -> None:
    """In the child before exec: SIGTERM it if the demo process dies (SIGKILL included)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:
        pass


# ----------------------------------------------------------------------------------------------
# The commands: printed for people, run by --check
# ----------------------------------------------------------------------------------------------

@dataclass
class Step:
    title: str
    cmd: str
    expect: list = field(default_factory=list)   # regexes the output must match
    note: str = ""                                # printed as a comment above the command
    before: Callable | None = None                # --check only: wait for what it depends on
    after: Callable | None = None                 # --check only: returns an error or None
    timeout: float = 30.0


@dataclass
class Section:
    title: str
    steps: list


def build_steps(ctx: "Demo") -> list[Section]:
    mb, P, ca, run = ctx.mb, ctx.ports, ctx.ca, ctx.run
    rel_bin = os.path.relpath(MAILSNID, ROOT)
    dlog, plog = mb.dovecot_log_path, mb.postfix_log_path
    src = f"--interface {CLIENT_ADDR}"

    def curl_tls(host: str, port: int) -> str:
        return f"curl {src} --cacert {ca} --resolve {host}:{port}:{LISTEN_HOST}"

    def curl_starttls(host: str, port: int) -> str:
        return f"curl {src} --ssl-reqd --cacert {ca} --resolve {host}:{port}:{LISTEN_HOST}"

    def openssl_sc(port: int, name: str | None, verify: str, extra: str = "") -> str:
        sni = f"-servername {name}" if name else "-noservername"
        return (f"openssl s_client -connect {LISTEN_HOST}:{port} {sni}{extra} -CAfile {ca} "
                f"-verify_hostname {verify} -verify_return_error -brief")

    def swaks(port: int, tls: str, sni: str, to: str, subject: str, body: str,
              user: str | None = None, pw: str | None = None, sender: str | None = None) -> str:
        auth = f" --auth PLAIN --auth-user {user} --auth-password {pw}" if user else ""
        return (f"swaks --server {LISTEN_HOST}:{port} --local-interface {CLIENT_ADDR} {tls} "
                f"--tls-verify --tls-ca-path {ca} --tls-sni {sni}{auth} --from {sender or user} "
                f"--to {to} --header {shlex.quote('Subject: ' + subject)} "
                f"--body {shlex.quote(body)}")

    def wait_mail(user: str, needle: str):
        return lambda: mb.wait_for_mail(user, timeout=15, contains=needle.encode())

    def wait_reload():
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if re.search(r"reload.*(ok|pairs)", tail(ctx.log_path, 200), re.I):
                return None
            time.sleep(0.1)
        return "no reload line in mailsnid's log within 10 s"

    s465 = f"mailsnid demo: SMTPS on {P['smtps']}"
    s587 = f"mailsnid demo: submission with STARTTLS on {P['submission']}"
    b465 = (f"Hello alice, this went through mailsnid on port {P['smtps']} "
            f"(TLS from the first byte).")
    b587 = f"Hello again alice, this one went through port {P['submission']} after STARTTLS."
    b25 = f"Hello bob, an MTA delivered this through port {P['smtp']} with STARTTLS."
    client_rx = re.escape(CLIENT_ADDR)

    return [
        Section("Webmail over HTTPS (the page names the host; the table is mailsnid's PROXY v2 "
                f"header; the client connects from {CLIENT_ADDR})", [
            Step("HTTPS webmail.alpha.test (exact name)",
                 f"{curl_tls('webmail.alpha.test', P['https'])} "
                 f"https://webmail.alpha.test:{P['https']}/",
                 [r"<h1>Webmail for webmail\.alpha\.test</h1>",
                  r"authority \(SNI\)</td><td>webmail\.alpha\.test",
                  rf"client</td><td>{client_rx}:\d+"]),
            Step("HTTPS webmail.beta.test (wildcard *.beta.test)",
                 f"{curl_tls('webmail.beta.test', P['https'])} "
                 f"https://webmail.beta.test:{P['https']}/",
                 [r"<h1>Webmail for webmail\.beta\.test</h1>"]),
        ]),
        Section("Which certificate each name gets", [
            Step("mail.beta.test gets the wildcard certificate",
                 openssl_sc(P["imaps"], "mail.beta.test", "mail.beta.test"),
                 [r"Peer certificate: CN ?= ?\*\.beta\.test", r"Verification: OK"],
                 note="prints the certificate it got; type `a LOGIN bob@beta.test bob-pass-2`, "
                      "Ctrl-D to leave"),
            Step("no SNI gets the default certificate (mail.hoster.test)",
                 openssl_sc(P["imaps"], None, "mail.hoster.test"),
                 [r"Peer certificate: CN ?= ?mail\.hoster\.test", r"Verification: OK"]),
            Step("an RSA-only client gets alpha's RSA certificate",
                 openssl_sc(P["imaps"], "mail.alpha.test", "mail.alpha.test",
                            " -sigalgs RSA-PSS+SHA256:RSA+SHA256 -tls1_2"),
                 [r"Peer certificate: CN ?= ?mail\.alpha\.test", r"Verification: OK",
                  r"Ciphersuite: ECDHE-RSA-"]),
            Step("submission: STARTTLS, then the name is checked",
                 openssl_sc(P["submission"], "mail.alpha.test", "mail.alpha.test",
                            " -starttls smtp"),
                 [r"Peer certificate: CN ?= ?mail\.alpha\.test", r"Verification: OK"]),
        ]),
        Section("Send mail (swaks checks the chain against the demo CA; this swaks version "
                "cannot check the name, the curl line and the openssl line above do)", [
            Step(f"swaks: SMTPS {P['smtps']} with AUTH, alice -> alice",
                 swaks(P["smtps"], "--tlsc", "mail.alpha.test", ALICE, s465, b465,
                       ALICE, ALICE_PW),
                 [r"<~ +250 2\.0\.0 Ok: queued", r"~> QUIT"]),
            Step(f"swaks: submission {P['submission']}, STARTTLS required, alice -> alice",
                 swaks(P["submission"], "--tls", "mail.alpha.test", ALICE, s587, b587,
                       ALICE, ALICE_PW),
                 [r"<- +220 .*(TLS|Ready)", r"<~ +250 2\.0\.0 Ok: queued"]),
            Step(f"curl: submission {P['submission']} with STARTTLS and hostname check, "
                 "alice -> bob",
                 f"{curl_starttls('mail.alpha.test', P['submission'])} "
                 f"-u {ALICE}:{ALICE_PW} --mail-from {ALICE} --mail-rcpt {BOB} "
                 f"-T {run}/hello-bob.eml smtp://mail.alpha.test:{P['submission']}",
                 [], note=f"{run}/hello-bob.eml is a ready-made message"),
            Step(f"swaks: port {P['smtp']} as an MTA (no AUTH, STARTTLS optional), -> bob",
                 swaks(P["smtp"], "--tls", "mail.beta.test", BOB,
                       f"mailsnid demo: MTA on {P['smtp']}", b25,
                       sender="postmaster@example.org"),
                 [r"<~ +250 2\.0\.0 Ok: queued"]),
        ]),
        Section("Read it back", [
            Step(f"IMAPS {P['imaps']}: alice's first message",
                 f"{curl_tls('mail.alpha.test', P['imaps'])} -u {ALICE}:{ALICE_PW} "
                 f"'imaps://mail.alpha.test:{P['imaps']}/INBOX;UID=1'",
                 [re.escape(s465), re.escape(b465)], before=wait_mail(ALICE, b465)),
            Step(f"IMAP {P['imap']} with STARTTLS: alice's second message",
                 f"{curl_starttls('mail.alpha.test', P['imap'])} -u {ALICE}:{ALICE_PW} "
                 f"'imap://mail.alpha.test:{P['imap']}/INBOX;UID=2'",
                 [re.escape(s587), re.escape(b587)], before=wait_mail(ALICE, b587)),
            Step(f"POP3S {P['pop3s']} (wildcard name): bob's first message",
                 f"{curl_tls('mail.beta.test', P['pop3s'])} -u {BOB}:{BOB_PW} "
                 f"pop3s://mail.beta.test:{P['pop3s']}/1",
                 [r"Subject: mailsnid demo: curl through \d+"],
                 before=wait_mail(BOB, "mailsnid demo: curl through")),
            Step(f"POP3 {P['pop3']} with STLS: list bob's messages",
                 f"{curl_starttls('mail.beta.test', P['pop3'])} -u {BOB}:{BOB_PW} "
                 f"pop3://mail.beta.test:{P['pop3']}/",
                 [r"(?m)^1 \d+\r?$", r"(?m)^2 \d+\r?$"], before=wait_mail(BOB, b25)),
            Step(f"Dovecot saw the real client ({CLIENT_ADDR}; mailsnid itself connects from "
                 f"{LISTEN_HOST}), 'secured', and the SNI name",
                 f"grep -h 'Login:' {dlog}",
                 [rf"user=<alice@alpha\.test>.*rip={client_rx},.*secured.*"
                  r"local_name=mail\.alpha\.test",
                  rf"user=<bob@beta\.test>.*rip={client_rx},.*secured.*"
                  r"local_name=mail\.beta\.test"]),
            Step(f"Postfix saw the real client address ({CLIENT_ADDR})",
                 f"grep -h 'connect from' {plog}",
                 [rf"postfix/submission-haproxy/smtpd\[\d+\]: connect from \S*\[{client_rx}\]",
                  rf"postfix/smtp-haproxy/smtpd\[\d+\]: connect from \S*\[{client_rx}\]"]),
        ]),
        Section("Operate it", [
            Step("the SNI map",
                 f"{rel_bin} --certs -c {run}/mailsnid.cfg",
                 [r"(?m)^\*\.beta\.test\s+wildcard\s", r"(?m)^mail\.alpha\.test\s+exact\s",
                  r"(?m)^\S+\s+default\s+\S*hoster"]),
            Step("metrics",
                 f"curl -s http://127.0.0.1:{P['admin']}/metrics",
                 [r"mailsnid_connections_total", r"mailsnid_sni_selections_total"]),
            Step("health",
                 f"curl -s -i http://127.0.0.1:{P['admin']}/healthz", [r"^HTTP/1\.[01] 200"]),
            Step("reload certificates and config without dropping connections",
                 f"kill -HUP {ctx.proc.pid}", [], after=wait_reload,
                 note=f"then: grep reload {run}/mailsnid.log"),
            Step("the per-connection log", f"tail -n 5 {run}/mailsnid.log", [],
                 note=f"tail -f {run}/mailsnid.log to watch it live"),
        ]),
    ]


def bob_eml(port: int) -> str:
    return ("From: alice@alpha.test\r\nTo: bob@beta.test\r\n"
            f"Subject: mailsnid demo: curl through {port}\r\n\r\n"
            f"Hello bob, curl sent this through port {port} after STARTTLS,\r\n"
            "having checked that the certificate is mail.alpha.test's.\r\n")


# ----------------------------------------------------------------------------------------------
# The demo
# ----------------------------------------------------------------------------------------------

class Demo:
    def __init__(self, check: bool) -> None:
        self.check = check
        self.mb: B.MailBackends | None = None
        self.webmail: Webmail | None = None
        self.proc: subprocess.Popen | None = None
        self.run = ""               # the demo's directory and what lies in it, set by start()
        self.ca = self.log_path = self.cfg = ""
        self.ports: dict = {}
        self._log = None

    def start(self) -> None:
        if not os.access(MAILSNID, os.X_OK):
            raise DemoError(f"{MAILSNID} is missing: run `make` (scripts/demo.sh does)")
        # --check runs inside test suites, maybe two at once: never the fixed ports there.
        self.ports = choose_ports(want_defaults=not self.check)
        # Not under the checkout: Dovecot's and Postfix's unprivileged users must reach it.
        self.run = B.shared_tempdir("mailsnid-demo-")
        self.ca = os.path.join(self.run, "pki", "ca.pem")
        self.log_path = os.path.join(self.run, "mailsnid.log")
        self.cfg = os.path.join(self.run, "mailsnid.cfg")
        with open(os.path.join(self.run, "demo.pid"), "w") as f:
            f.write(f"{os.getpid()}\n")
        say(f"demo: files in {self.run}")
        say("demo: making the demo CA and certificates ...")
        self.pki = make_pki(os.path.join(self.run, "pki"))
        with open(os.path.join(self.run, "hello-bob.eml"), "w") as f:
            f.write(bob_eml(self.ports["submission"]))
        say("demo: starting Dovecot and Postfix ...")
        self.mb = B.MailBackends(os.path.join(self.run, "backends"), strict=True).start()
        self.webmail = Webmail(self.mb.host, os.path.join(self.run, "webmail.log"))
        self._log = open(self.log_path, "ab")
        for attempt in range(3):
            write_config(self.cfg, self.pki, self.mb, self.webmail.addr, self.ports)
            t = subprocess.run([MAILSNID, "-t", "-c", self.cfg], capture_output=True, text=True)
            if t.returncode != 0:
                raise DemoError(f"`mailsnid -t -c {self.cfg}` failed ({t.returncode}):\n"
                                f"{t.stdout}{t.stderr}")
            say("demo: starting mailsnid ...")
            # Own session: a Ctrl-C in the terminal reaches only us, and we stop it in order.
            self.proc = subprocess.Popen([MAILSNID, "-c", self.cfg], stdin=subprocess.DEVNULL,
                                         stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         start_new_session=True, preexec_fn=set_pdeathsig)
            try:
                wait_listening(self.proc, list(self.ports.values()), self.log_path)
                break
            except DemoError:
                # A port picked free can be taken before mailsnid binds it (a parallel test
                # suite): pick others. The defaults a person asked for are not changed.
                last = tail(self.log_path, 20)
                if (self.proc.poll() is None or attempt == 2
                        or ("in use" not in last and "another process listens there" not in last)):
                    raise
                say("demo: a port was taken meanwhile; picking others")
                self.ports = choose_ports(want_defaults=False)
        self.webmail.start()

    def stop(self) -> list[str]:
        """Stop everything; return problems (empty when all went cleanly)."""
        problems = []
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(DRAIN_TIMEOUT + 5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    problems.append("mailsnid did not exit on SIGTERM; killed")
            if self.proc.returncode not in (0, -signal.SIGKILL) and not problems:
                problems.append(f"mailsnid exited with status {self.proc.returncode}")
        if self._log:
            self._log.close()
        if self.webmail is not None:
            self.webmail.stop()
        if self.mb is not None:
            try:
                self.mb.stop()
            except B.BackendError as e:
                problems.append(f"backends: {e}")
            left = self.mb.remaining_processes()
            if left:
                problems.append(f"backend processes left: {left}")
        return problems

    # -- printing ------------------------------------------------------------------------------

    def banner(self, sections: list[Section]) -> None:
        mb = self.mb
        w = 78
        say()
        say(bold("=" * w))
        say(bold(f" mailsnid demo is running (demo pid {os.getpid()}, mailsnid pid "
                 f"{self.proc.pid})"))
        say(bold("=" * w))
        say(f" files    {self.run}/  (config mailsnid.cfg, log mailsnid.log)")
        say(f" trust    {self.ca}  (every command below verifies against it, never -k)")
        say(f" stop     Ctrl-C here, or from another shell: kill {os.getpid()}"
            f"   (= kill $(cat {self.run}/demo.pid))")
        say(f" listeners on {LISTEN_HOST} -> backends on {mb.host}, all with PROXY protocol v2;"
            f" the commands")
        say(f" connect from {CLIENT_ADDR}, the address the backends then log:")
        labels = {"imaps": "IMAPS", "imap": "IMAP + STARTTLS", "pop3s": "POP3S",
                  "pop3": "POP3 + STLS", "smtps": "SMTPS (submission)",
                  "submission": "submission, STARTTLS required", "smtp": "SMTP (MTA), STARTTLS "
                  "optional", "https": "HTTPS"}
        for name, _, proto, tls, st, backend, pp in LISTENERS:
            port = self.ports[name]
            target = ("webmail stand-in" if backend == "webmail" else
                      ("Dovecot" if proto in ("imap", "pop3") else "Postfix"))
            addr = self.webmail.addr if backend == "webmail" else \
                f"{mb.host}:{getattr(mb, backend)}"
            say(f"   {port:<6} {labels[name]:<34} -> {target} {addr}")
        say(f"   {self.ports['admin']:<6} admin: /metrics /healthz")
        say(" certificates:")
        say("   mail.alpha.test webmail.alpha.test   exact, ECDSA + RSA")
        say("   *.beta.test                          wildcard, ECDSA")
        say("   mail.hoster.test                     default (no SNI, unknown names)")
        say(f" users    {ALICE} / {ALICE_PW}    {BOB} / {BOB_PW}")
        say(f" Dovecot runs with ssl = required: logins work only because mailsnid's PROXY")
        say(f" header says the client used TLS.")
        say()
        say(bold(f"Try it from {ROOT} in another terminal:"))
        n = 0
        for sec in sections:
            say()
            say(bold(f"## {sec.title}"))
            for st in sec.steps:
                n += 1
                say(f"# {n}. {st.title}" + (f"  ({st.note})" if st.note else ""))
                say(f"  {st.cmd}")
        say()

    # -- --check -------------------------------------------------------------------------------

    def run_checks(self, sections: list[Section]) -> bool:
        say(bold("Running every command above (--check):"))
        ok_all = True
        n = 0
        results = []
        for sec in sections:
            for st in sec.steps:
                n += 1
                ok, why, out, secs = self.run_step(st)
                results.append(ok)
                mark = "  OK  " if ok else " FAIL "
                say(f"[{mark}] {n:2}. {st.title}  ({secs:.2f} s)")
                if not ok:
                    ok_all = False
                    say(f"         command: {st.cmd}")
                    say(f"         why:     {why}")
                    say("         output (last 25 lines):")
                    for line in quiet(out).rstrip().splitlines()[-25:]:
                        say(f"           | {line}")
                    say("         mailsnid log (last 15 lines):")
                    for line in tail(self.log_path, 15).rstrip().splitlines():
                        say(f"           | {line}")
        say(f"--check: {sum(results)}/{len(results)} passed")
        return ok_all

    def run_step(self, st: Step) -> tuple[bool, str, str, float]:
        t0 = time.monotonic()
        try:
            if st.before:
                st.before()
        except Exception as e:  # noqa: BLE001 -- report, do not crash the other checks
            return False, f"waiting before the command: {e}", "", time.monotonic() - t0
        try:
            p = subprocess.run(shlex.split(st.cmd), cwd=ROOT, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=st.timeout)
            out = (p.stdout + p.stderr).decode(errors="replace")
            rc = p.returncode
        except subprocess.TimeoutExpired as e:
            out = ((e.stdout or b"") + (e.stderr or b"")).decode(errors="replace")
            return False, f"timed out after {st.timeout:.0f} s", out, time.monotonic() - t0
        if rc != 0:
            return False, f"exit status {rc}", out, time.monotonic() - t0
        for rx in st.expect:
            if not re.search(rx, out):
                return False, f"output lacks /{rx}/", out, time.monotonic() - t0
        if st.after:
            err = st.after()
            if err:
                return False, err, out, time.monotonic() - t0
        if self.proc.poll() is not None:
            return False, f"mailsnid exited ({self.proc.returncode})", out, time.monotonic() - t0
        return True, "", out, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="run every printed command, report OK/FAIL, stop; exit 0 iff all pass")
    args = ap.parse_args()
    if os.geteuid() != 0:
        say("demo: needs root (Postfix's master); use scripts/demo.sh, which uses sudo")
        return 2

    def on_term(signum, frame):
        raise Stop()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    t0 = time.monotonic()
    demo = Demo(args.check)
    ok = False
    try:
        demo.start()
        sections = build_steps(demo)
        demo.banner(sections)
        say(f"demo: ready in {time.monotonic() - t0:.1f} s")
        if args.check:
            ok = demo.run_checks(sections)
        else:
            say(bold("Press Ctrl-C to stop mailsnid, Dovecot, Postfix and the webmail server."))
            while demo.proc.poll() is None:
                time.sleep(0.5)
            say(f"demo: mailsnid exited by itself (status {demo.proc.returncode}); its log:")
            say(tail(demo.log_path, 20))
    except (KeyboardInterrupt, Stop):
        say("\ndemo: stopping ...")
        ok = not args.check
    except (DemoError, B.BackendError, C.OpensslError) as e:
        say(f"demo: ERROR: {e}")
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave daemons behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        t_stop = time.monotonic()
        started = demo.mb is not None
        problems = demo.stop()
        for p in problems:
            say(f"demo: stop: {p}")
        if problems:
            ok = False
        if started:
            say(f"demo: stopped everything in {time.monotonic() - t_stop:.1f} s"
                + ("" if problems else ", no processes left")
                + f" (whole run {time.monotonic() - t0:.1f} s)")
        if demo.run:
            if args.check and ok:
                shutil.rmtree(demo.run, ignore_errors=True)
            else:
                say(f"demo: its files stay in {demo.run} (rm -r it when done)")
    if args.check:
        say(f"demo --check: {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
