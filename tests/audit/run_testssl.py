#!/usr/bin/env python3
"""TLS audit of mailsnid with testssl (Debian's testssl.sh), default TLS settings.

Starts two small plaintext backends (a webmail-like HTTP server and an IMAP server that answers
CAPABILITY), then mailsnid with NO `ciphers`, `ciphersuites` or `min_version` key, i.e. exactly
its built-in defaults, an HTTPS listener (protocol http, tls implicit) and an IMAP STARTTLS
listener (protocol imap, tls starttls). `mail.alpha.test` has an ECDSA P-256 and an RSA-2048
certificate, so both key types' paths are audited. Then testssl runs against both listeners,
in parallel, with SNI `mail.alpha.test` (`--ip 127.0.0.1`), the test CA added (`--add-ca`) and
no DNS lookups (`--nodns none`: `.test` names never resolve, and the audit must not depend on
the network). JSON, log and screen output go to OUT/<listener>.{json,log,out}.

Findings are then sorted into
  * mailsnid's findings: what the exit status is decided on;
  * fixture artefacts (FIXTURE_ARTEFACTS): properties of the throwaway test certificates,
    listed with the reason; a production certificate (Let's Encrypt etc.) does not have them;
  * tool notes (TOOL_NOTES): testssl reporting on itself (WARN), not on the server.
Coverage is checked too: a scan that could not talk to the listener (a broken STARTTLS dialog
makes testssl report "not offered" for everything) must fail, not pass quietly.

Usage:
    python3 tests/audit/run_testssl.py                 # full audit (every check testssl has)
    python3 tests/audit/run_testssl.py --quick         # the reduced set the unit test runs
    python3 tests/audit/run_testssl.py --out DIR --markdown DIR/summary.md
    python3 tests/audit/run_testssl.py --tls-extra 'ciphers = "..."; min_version = "TLSv1";'
                                                       # audit other settings than the defaults
Exit status: 0 no HIGH/CRITICAL finding; 1 a HIGH/CRITICAL finding; 2 the audit is incomplete
(testssl missing or failed, or a required check missing from its output).
"""

from __future__ import annotations

import argparse
import collections
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))

from mailsnid_runner import MAILSNID, MailsnidProcess, free_port  # noqa: E402
import certs  # noqa: E402

TESTSSL = os.environ.get("TESTSSL", "testssl")
SNI_NAME = "mail.alpha.test"
SEVERITIES = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN", "INFO", "OK"]
FAIL_SEVERITIES = {"HIGH", "CRITICAL"}

# Full run: testssl's --full: its default run (protocols, cipher categories, forward secrecy,
# server preference, server defaults, headers on HTTP, every vulnerability, client simulations)
# plus ciphers per protocol (-E, instead of the flat -e list) and the GREASE/bug checks (-g).
FULL_CHECKS = ["--full"]
# Reduced run: protocols, cipher categories, forward secrecy, server preference (cipher order),
# server defaults (certificate, tickets, extensions) and every vulnerability check (-U). It
# leaves out the per-cipher enumeration (-e/-E) and the client simulations (-c), which add
# nothing that -s/-f/-P do not already decide for a fixed cipher list, and take most of the time.
QUICK_CHECKS = ["-p", "-s", "-f", "-P", "-S", "-U"]
# Header checks only make sense over HTTP.
HTTP_EXTRA_CHECKS = {"quick": ["-h"], "full": []}

# testssl ids (the " <cert#N>" suffix removed) that describe the throwaway test certificate
# rather than mailsnid: excluded from the verdict, listed separately, each with its reason.
FIXTURE_ARTEFACTS = {
    "cert_revocation": "the test CA (tests/harness/certs.py) puts no CRL distribution point and "
                       "no OCSP URI in its leaves; public CAs (Let's Encrypt: CRL) do",
    "cert_crlDistributionPoints": "test CA: no CRL distribution point",
    "cert_ocspURL": "test CA: no OCSP responder",
    "OCSP_stapling": "nothing to staple: the test CA runs no OCSP responder (and mailsnid has "
                     "no stapling; Let's Encrypt has replaced OCSP by CRLs)",
    "cert_mustStapleExtension": "test CA: no must-staple extension",
    "cert_certificateTransparency": "test certificates are not logged to CT; a public CA's are",
    "DNS_CAArecord": ".test names have no DNS (and the audit runs with --nodns none)",
    "cert_validityPeriod": "test leaves are issued for 90 days, like Let's Encrypt's",
    "cert_expirationStatus": "test leaves are fresh; depends on the fixture's dates only",
    "cert_caIssuers": "test CA: no AIA caIssuers URL",
}

# WARN entries that are testssl describing itself or a flaky client-side probe.
TOOL_NOTES = {
    "engine_problem": "the local /usr/bin/openssl has no GOST engine (tool environment)",
    "sessionresumption_ticket": "testssl's s_client probe closes before the TLS 1.3 ticket arrives "
                                "(a race; `openssl s_server` shows the same); resumption by "
                                "ticket is checked directly in tests/integration/test_audit.py",
    "sessionresumption_ID": "the same s_client probe, for resumption by session ID",
}

# Ids that must appear in a scan's JSON for it to count as complete, per listener kind.
REQUIRED_IDS = {
    "common": ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3",
               "cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
               "cipherlist_3DES_IDEA", "cipherlist_AVERAGE", "cipherlist_STRONG",
               "PFS", "cipher_order", "protocol_negotiated", "cipher_negotiated",
               "TLS_extensions", "cert_chain_of_trust",
               "heartbleed", "CCS", "ROBOT", "secure_renego",
               "secure_client_renego", "CRIME_TLS", "POODLE_SSL", "fallback_SCSV",
               "SWEET32", "FREAK", "DROWN", "LOGJAM", "BEAST", "LUCKY13", "RC4"],
    # Ticketbleed and BREACH are HTTP-only checks in testssl; HSTS_time is there only when the
    # backend's Strict-Transport-Security header came through mailsnid.
    "http": ["ticketbleed", "BREACH", "HTTP_status_code", "HSTS_time"],
    "imap": [],
    # --full only: the GREASE / ClientHello-size / implementation-bug probes.
    "full": ["GREASE"],
}

# Sanity of the scan itself, whatever the TLS settings: it reached the TLS layer (a strong
# cipher was negotiated: a broken STARTTLS dialog makes testssl say "not offered"), and every
# certificate served for mail.alpha.test verifies (chain sent, --add-ca honoured) and matches the
# SNI name. Failing one of these is mailsnid's or the harness's fault, never the fixture's.
EXPECT = [
    ("cipherlist_STRONG", r"^offered"),
    ("cert_chain_of_trust", r"^passed"),
    ("cert_trust", r"^Ok via SAN"),
]

# ----------------------------------------------------------------------------------- backends


class ImapBackend:
    """Just enough IMAP for a STARTTLS dialog: a greeting on every connection, CAPABILITY,
    NOOP, LOGOUT, and BAD for the rest. mailsnid adds STARTTLS to the capabilities itself."""

    GREETING = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] audit backend ready\r\n"

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
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
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            c.sendall(self.GREETING)
            f = c.makefile("rb")
            for raw in f:
                parts = raw.decode("latin-1").strip().split(None, 2)
                if len(parts) < 2:
                    c.sendall(b"* BAD syntax\r\n")
                    continue
                tag, cmd = parts[0].encode(), parts[1].upper()
                if cmd == "CAPABILITY":
                    c.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
                elif cmd == "NOOP":
                    c.sendall(tag + b" OK done\r\n")
                elif cmd == "LOGOUT":
                    c.sendall(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                    break
                else:
                    c.sendall(tag + b" BAD not in this backend\r\n")
        except OSError:
            pass
        finally:
            c.close()

    def stop(self) -> None:
        self.closed = True
        self.sock.close()


class _WebmailHandler(http.server.BaseHTTPRequestHandler):
    # A configured webmail sends these itself; mailsnid never adds, drops or rewrites HTTP
    # headers. The audit checks they arrive unchanged (testssl -h reads them through mailsnid).
    protocol_version = "HTTP/1.1"
    server_version = "webmail"
    sys_version = ""
    HEADERS = [
        ("Strict-Transport-Security", "max-age=31536000"),
        ("X-Frame-Options", "SAMEORIGIN"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("Content-Security-Policy", "default-src 'self'"),
    ]

    def do_GET(self):
        body = b"<!doctype html><title>webmail</title><p>webmail\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        for k, v in self.HEADERS:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


class HttpBackend:
    def __init__(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WebmailHandler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------- mailsnid setup


def default_config(pki: dict[str, str], https_port: int, imap_port: int,
                   http_backend: str, imap_backend: str, tls_extra: str = "") -> str:
    """The configuration under audit: the tls group has only the server-wide certificate, so
    protocol versions, TLS 1.2 ciphers, TLS 1.3 suites and groups are mailsnid's defaults.
    TLS_EXTRA (e.g. `ciphers = "..."; min_version = "TLSv1.3";`) audits other settings."""
    return f"""
log = {{ level = "notice"; }};
drain_timeout = 2;
tls = {{ default_cert = "{pki['default_cert']}"; default_key = "{pki['default_key']}"; {tls_extra} }};
certificates = (
  {{ cert = "{pki['alpha_ec_cert']}"; key = "{pki['alpha_ec_key']}"; }},
  {{ cert = "{pki['alpha_rsa_cert']}"; key = "{pki['alpha_rsa_key']}"; }}
);
listeners = (
  {{ name = "https"; listen = "127.0.0.1:{https_port}"; protocol = "http"; tls = "implicit";
     backend = "{http_backend}"; }},
  {{ name = "imap"; listen = "127.0.0.1:{imap_port}"; protocol = "imap"; tls = "starttls";
     backend = "{imap_backend}"; }}
);
"""


class AuditEnv:
    """PKI, backends and mailsnid, started on enter and stopped on exit."""

    def __init__(self, workdir: str, tls_extra: str = ""):
        self.workdir = workdir
        self.tls_extra = tls_extra
        self.pki: dict[str, str] = {}
        self.https_port = self.imap_port = 0
        self._stack: list = []

    def __enter__(self) -> "AuditEnv":
        try:
            self.pki = certs.standard_pki(os.path.join(self.workdir, "pki"))
            http_b, imap_b = HttpBackend(), ImapBackend()
            self._stack += [http_b.stop, imap_b.stop]
            self.https_port, self.imap_port = free_port(), free_port()
            cfg = default_config(self.pki, self.https_port, self.imap_port, http_b.addr,
                                 imap_b.addr, self.tls_extra)
            self.proc = MailsnidProcess(cfg, self.workdir).start([self.https_port, self.imap_port])
            self._stack.append(self.proc.stop)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        while self._stack:
            self._stack.pop()()


# ------------------------------------------------------------------------------------ testssl


def testssl_version() -> str:
    out = subprocess.run([TESTSSL, "--version"], capture_output=True, text=True, timeout=60).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    m = re.search(r"testssl(?:\.sh)?\s+([0-9][\w.+~-]*)", out)
    return m.group(1) if m else "unknown"


def testssl_supports(option: str) -> bool:
    out = subprocess.run([TESTSSL, "--help"], capture_output=True, text=True, timeout=60).stdout
    return option in out


@dataclass
class Scan:
    name: str                       # "https" or "imap"
    kind: str                       # "http" or "imap"
    mode: str                       # "full" or "quick"
    argv: list[str]
    out_dir: str
    returncode: int | None = None
    seconds: float = 0.0
    findings: list[dict] = field(default_factory=list)

    @property
    def json_path(self) -> str:
        return os.path.join(self.out_dir, f"{self.name}.json")

    @property
    def log_path(self) -> str:
        return os.path.join(self.out_dir, f"{self.name}.log")

    @property
    def screen_path(self) -> str:
        return os.path.join(self.out_dir, f"{self.name}.out")


def build_scans(env: AuditEnv, out_dir: str, quick: bool) -> list[Scan]:
    mode = "quick" if quick else "full"
    checks = QUICK_CHECKS if quick else FULL_CHECKS
    common = ["--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
              "--ip=127.0.0.1", "--connect-timeout", "10", "--openssl-timeout", "10"]
    if testssl_supports("--add-ca"):
        common += ["--add-ca", env.pki["ca"]]
    scans = []
    for name, kind, extra, target in [
        ("https", "http", HTTP_EXTRA_CHECKS[mode], f"https://{SNI_NAME}:{env.https_port}/"),
        ("imap", "imap", ["--starttls", "imap"], f"{SNI_NAME}:{env.imap_port}"),
    ]:
        scan = Scan(name, kind, mode, [], out_dir)
        for p in (scan.json_path, scan.log_path):
            if os.path.exists(p):
                os.unlink(p)       # testssl refuses to overwrite without --append
        scan.argv = [TESTSSL, *common, *checks, *extra, "--jsonfile", scan.json_path,
                     "--logfile", scan.log_path, target]
        scans.append(scan)
    return scans


def run_scans(scans: list[Scan], timeout: float = 900) -> None:
    """Runs every scan at once: each testssl spends most of its time waiting on handshakes
    and on its own shell, so two in parallel take little longer than one."""
    def one(s: Scan) -> None:
        t0 = time.monotonic()
        with open(s.screen_path, "wb") as screen:
            p = subprocess.Popen(s.argv, stdin=subprocess.DEVNULL, stdout=screen,
                                 stderr=subprocess.STDOUT, env={**os.environ, "TERM": "dumb"},
                                 start_new_session=True)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)    # testssl's own children (openssl s_client) too
                p.wait()
        s.returncode = p.returncode
        s.seconds = time.monotonic() - t0
        try:
            with open(s.json_path) as f:
                s.findings = json.load(f)
        except (OSError, ValueError):
            s.findings = []

    threads = [threading.Thread(target=one, args=(s,)) for s in scans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ------------------------------------------------------------------------------------ verdict


def base_id(finding_id: str) -> str:
    return re.sub(r"\s*<cert#\d+>$", "", finding_id)


@dataclass
class Verdict:
    counts: dict[str, collections.Counter]          # per scan: severity -> n (all findings)
    failing: list[tuple[str, dict]]                 # (scan, finding) HIGH/CRITICAL, mailsnid's
    above_low: list[tuple[str, dict]]               # (scan, finding) MEDIUM+, mailsnid's
    low: list[tuple[str, dict]]                     # (scan, finding) LOW, mailsnid's
    artefacts: list[tuple[str, dict]]               # (scan, finding) fixture artefacts > INFO
    tool_notes: list[tuple[str, dict]]              # (scan, finding) WARN explained in TOOL_NOTES
    problems: list[str]                             # why the audit is incomplete
    reasons: dict[str, str] = field(default_factory=dict)   # id -> why it is excused

    @property
    def status(self) -> int:
        if self.problems:
            return 2
        return 1 if self.failing else 0


def judge(scans: list[Scan], artefacts: dict[str, str] | None = None,
          tool_notes: dict[str, str] | None = None) -> Verdict:
    """Sorts the findings. ARTEFACTS and TOOL_NOTES (id -> reason) default to this module's
    lists; the unit test passes its own, explicit ones."""
    artefacts = FIXTURE_ARTEFACTS if artefacts is None else artefacts
    tool_notes = TOOL_NOTES if tool_notes is None else tool_notes
    v = Verdict({}, [], [], [], [], [], [], {**tool_notes, **artefacts})
    for s in scans:
        v.counts[s.name] = collections.Counter(f.get("severity", "?") for f in s.findings)
        if s.returncode is None or not s.findings:
            v.problems.append(f"{s.name}: testssl produced no findings (exit {s.returncode}); "
                              f"see {s.screen_path}")
            continue
        by_id = {}
        for f in s.findings:
            by_id.setdefault(base_id(f["id"]), f)
        for rid in REQUIRED_IDS["common"] + REQUIRED_IDS[s.kind] + \
                (REQUIRED_IDS["full"] if s.mode == "full" else []):
            if rid not in by_id:
                v.problems.append(f"{s.name}: check {rid!r} missing from testssl's output")
        for rid, rx in EXPECT:
            for f in s.findings:
                if base_id(f["id"]) == rid and not re.search(rx, f.get("finding", "")):
                    v.problems.append(f"{s.name}: {f['id']} is {f.get('finding')!r}, "
                                      f"expected /{rx}/")
        # Both of mail.alpha.test's certificates must have been seen, or the RSA (or ECDSA)
        # path went unaudited.
        sizes = " ".join(f.get("finding", "") for f in s.findings
                         if base_id(f["id"]) == "cert_keySize")
        for kt in ("RSA", "EC"):
            if not re.search(rf"\b{kt}\b", sizes):
                v.problems.append(f"{s.name}: no {kt} certificate among those testssl saw ({sizes!r})")
        for f in s.findings:
            sev, fid = f.get("severity", "?"), base_id(f["id"])
            if fid in ("scanProblem", "optimal_proto") or sev == "FATAL" or (
                    sev == "WARN" and fid not in tool_notes):
                v.problems.append(f"{s.name}: testssl {sev} {f['id']}: {f.get('finding')}")
            elif sev == "WARN":
                v.tool_notes.append((s.name, f))
            elif fid in artefacts:
                if sev not in ("OK", "INFO"):
                    v.artefacts.append((s.name, f))
            elif sev in FAIL_SEVERITIES:
                v.failing.append((s.name, f))
                v.above_low.append((s.name, f))
            elif sev == "MEDIUM":
                v.above_low.append((s.name, f))
            elif sev == "LOW":
                v.low.append((s.name, f))
    return v


# ------------------------------------------------------------------------------------ summary


def _get(scan: Scan, fid: str) -> dict | None:
    for f in scan.findings:
        if base_id(f["id"]) == fid:
            return f
    return None


def _fmt(scan: Scan, fid: str) -> str:
    f = _get(scan, fid)
    if not f:
        return "—"
    text = f.get("finding", "").replace("|", "\\|")
    return f"{text} ({f.get('severity')})"


PROTOCOL_IDS = [("SSLv2", "SSLv2"), ("SSLv3", "SSLv3"), ("TLS 1.0", "TLS1"), ("TLS 1.1", "TLS1_1"),
                ("TLS 1.2", "TLS1_2"), ("TLS 1.3", "TLS1_3")]
VULN_IDS = [("Heartbleed", "heartbleed"), ("CCS injection", "CCS"), ("Ticketbleed", "ticketbleed"),
            ("ROBOT", "ROBOT"), ("Secure renegotiation", "secure_renego"),
            ("Client-initiated renegotiation", "secure_client_renego"), ("CRIME (TLS)", "CRIME_TLS"),
            ("BREACH", "BREACH"), ("POODLE (SSL)", "POODLE_SSL"), ("TLS_FALLBACK_SCSV", "fallback_SCSV"),
            ("SWEET32", "SWEET32"), ("FREAK", "FREAK"), ("DROWN", "DROWN"), ("LOGJAM", "LOGJAM"),
            ("BEAST", "BEAST"), ("LUCKY13", "LUCKY13"), ("RC4", "RC4")]


def markdown(scans: list[Scan], v: Verdict, quick: bool, version: str, total_s: float) -> str:
    names = [s.name for s in scans]
    label = {"https": "HTTPS (implicit TLS)", "imap": "IMAP STARTTLS"}
    out = [f"testssl {version}, {'reduced' if quick else 'full'} run, "
           f"{time.strftime('%Y-%m-%d')}, wall time {total_s:.0f} s "
           f"({', '.join(f'{s.name} {s.seconds:.0f} s' for s in scans)}).", ""]
    head = "| | " + " | ".join(label.get(n, n) for n in names) + " |"
    sep = "|---|" + "---|" * len(names)
    out += ["**Protocols**", "", head, sep]
    for title, fid in PROTOCOL_IDS:
        out.append(f"| {title} | " + " | ".join(_fmt(s, fid) for s in scans) + " |")
    for title, fid in [("ALPN", "ALPN"), ("Negotiated", "protocol_negotiated"),
                       ("Negotiated cipher", "cipher_negotiated"),
                       ("Key exchange groups", "PFS_ECDHE_curves")]:
        out.append(f"| {title} | " + " | ".join(_fmt(s, fid) for s in scans) + " |")
    out += ["", "**Cipher categories and order**", "", head, sep]
    for title, fid in [("NULL / aNULL / EXPORT / LOW", None), ("3DES / IDEA", "cipherlist_3DES_IDEA"),
                       ("Obsolete CBC", "cipherlist_AVERAGE"), ("AEAD (strong)", "cipherlist_STRONG"),
                       ("Forward secrecy", "PFS"), ("Server cipher order", "cipher_order")]:
        if fid is None:
            cells = []
            for s in scans:
                vals = {(_get(s, i) or {}).get("finding", "—") for i in
                        ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW")}
                cells.append(" / ".join(sorted(vals)))
            out.append(f"| {title} | " + " | ".join(cells) + " |")
        else:
            out.append(f"| {title} | " + " | ".join(_fmt(s, fid) for s in scans) + " |")
    for proto in ("TLSv1_2", "TLSv1_3"):
        out.append(f"| Server's order, {proto.replace('v1_', ' 1.')} | " + " | ".join(
            ", ".join((_get(s, f"cipherorder_{proto}") or {}).get("finding", "—").split())
            for s in scans) + " |")
    out += ["", "**Server defaults**", "", head, sep]
    for title, fid in [("TLS extensions", "TLS_extensions"), ("Session ticket", "TLS_session_ticket"),
                       ("Resumption by ticket", "sessionresumption_ticket"),
                       ("Resumption by session ID", "sessionresumption_ID"),
                       ("GREASE / ClientHello bugs", "GREASE"), ("128-cipher limit bug", "pre_128cipher")]:
        out.append(f"| {title} | " + " | ".join(_fmt(s, fid) for s in scans) + " |")
    keys = []
    for s in scans:
        keys.append(", ".join(f"{f['finding']} ({f['severity']})" for f in s.findings
                              if base_id(f["id"]) == "cert_keySize") or "—")
    out.append("| Certificates served for " + SNI_NAME + " | " + " | ".join(keys) + " |")
    sims = []
    for s in scans:
        rows = [f for f in s.findings if f["id"].startswith("clientsimulation-")]
        failed = [f["id"][len("clientsimulation-"):] for f in rows if f.get("finding") == "No connection"]
        sims.append("—" if not rows else f"{len(rows) - len(failed)}/{len(rows)} connect" +
                    (f"; no connection: {', '.join(failed)}" if failed else ""))
    out.append("| Client simulations | " + " | ".join(sims) + " |")
    out += ["", "**Vulnerabilities**", "", head, sep]
    for title, fid in VULN_IDS:
        out.append(f"| {title} | " + " | ".join(_fmt(s, fid) for s in scans) + " |")
    out += ["", "**Severity counts** (every testssl JSON entry, artefacts and tool notes included)", "",
            "| severity | " + " | ".join(label.get(n, n) for n in names) + " |", sep]
    for sev in SEVERITIES:
        out.append(f"| {sev} | " + " | ".join(str(v.counts.get(n, {}).get(sev, 0)) for n in names) + " |")
    out.append("| **CRITICAL+HIGH+MEDIUM+LOW attributed to mailsnid** | " + " | ".join(
        str(sum(1 for m, _ in v.above_low + v.low if m == n)) for n in names) + " |")
    out += ["", "**Findings LOW or above attributed to mailsnid**: " +
            ("none" if not (v.above_low or v.low) else "")]
    for n, f in v.above_low + v.low:
        out.append(f"- {n}: `{f['id']}` {f['severity']}: {f.get('finding')}")
    out += ["", "**Fixture artefacts** (the test certificates, not mailsnid):"]
    seen = set()
    for n, f in v.artefacts:
        key = (base_id(f["id"]), f["severity"], f.get("finding"))
        if key in seen:
            continue
        seen.add(key)
        where = sorted({m for m, g in v.artefacts if (base_id(g["id"]), g["severity"],
                                                       g.get("finding")) == key})
        out.append(f"- `{base_id(f['id'])}` {f['severity']} \"{f.get('finding')}\" "
                   f"({', '.join(where)}, every certificate): {v.reasons[base_id(f['id'])]}")
    if not v.artefacts:
        out.append("- none")
    out += ["", "**Tool notes** (testssl WARN about itself):"]
    for n, f in v.tool_notes:
        out.append(f"- {n}: `{f['id']}` \"{f.get('finding')}\": {v.reasons[base_id(f['id'])]}")
    if not v.tool_notes:
        out.append("- none")
    if v.problems:
        out += ["", "**Audit incomplete:**"] + [f"- {p}" for p in v.problems]
    return "\n".join(out) + "\n"


def text_summary(scans: list[Scan], v: Verdict) -> str:
    lines = []
    for s in scans:
        c = v.counts.get(s.name, {})
        lines.append(f"{s.name:6} {s.seconds:5.0f} s  exit {s.returncode}  " +
                     "  ".join(f"{sev} {c.get(sev, 0)}" for sev in SEVERITIES))
    for n, f in v.above_low + v.low:
        lines.append(f"  mailsnid {f['severity']:8} {n}: {f['id']}: {f.get('finding')}")
    for n, f in v.artefacts:
        lines.append(f"  fixture  {f['severity']:8} {n}: {f['id']}: {f.get('finding')}")
    for n, f in v.tool_notes:
        lines.append(f"  tool     {f['severity']:8} {n}: {f['id']}: {f.get('finding')}")
    for p in v.problems:
        lines.append(f"  INCOMPLETE {p}")
    verdict = {0: "PASS: no HIGH/CRITICAL finding", 1: "FAIL: HIGH/CRITICAL finding",
               2: "INCOMPLETE"}[v.status]
    lines.append(verdict)
    return "\n".join(lines)


def audit(out_dir: str, quick: bool, env: AuditEnv | None = None, tls_extra: str = "",
          **judge_args) -> tuple[list[Scan], Verdict, float]:
    """Runs both scans against ENV (or a fresh one with TLS_EXTRA, started and stopped here);
    returns the scans, the verdict and the wall time of the scans."""
    os.makedirs(out_dir, exist_ok=True)
    if env is None:
        work = tempfile.mkdtemp(prefix="mailsnid-audit-")
        try:
            with AuditEnv(work, tls_extra) as env:
                return audit(out_dir, quick, env, **judge_args)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    scans = build_scans(env, out_dir, quick)
    t0 = time.monotonic()
    run_scans(scans)
    total = time.monotonic() - t0
    with open(env.proc.config) as src, open(os.path.join(out_dir, "mailsnid.cfg"), "w") as f:
        f.write(src.read().replace(env.workdir, "$WORK"))
    shutil.copy(env.proc.log_path, os.path.join(out_dir, "mailsnid.log"))
    return scans, judge(scans, **judge_args), total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the reduced set (what the unit test runs)")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "audit"),
                    help="where testssl's JSON/log go (default build/audit)")
    ap.add_argument("--markdown", help="also write the summary tables to this file")
    ap.add_argument("--tls-extra", default="", metavar="SETTINGS",
                    help='extra keys for the tls group instead of the defaults, e.g. '
                         '\'min_version = "TLSv1.3";\' (to audit your own settings)')
    args = ap.parse_args()
    if not shutil.which(TESTSSL):
        print(f"{TESTSSL} not found: run scripts/deps.sh audit", file=sys.stderr)
        return 2
    if not os.access(MAILSNID, os.X_OK):
        print(f"{MAILSNID} not built: run make", file=sys.stderr)
        return 2
    version = testssl_version()
    print(f"testssl {version}, mailsnid {MAILSNID}, {'reduced' if args.quick else 'full'} run, "
          f"TLS settings: {args.tls_extra or 'defaults'}, output in {args.out}", flush=True)
    scans, v, total = audit(args.out, args.quick, tls_extra=args.tls_extra)
    md = markdown(scans, v, args.quick, version, total)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    print(text_summary(scans, v))
    print(f"wall time {total:.0f} s; summary in {os.path.join(args.out, 'summary.md')}")
    return v.status


if __name__ == "__main__":
    sys.exit(main())
