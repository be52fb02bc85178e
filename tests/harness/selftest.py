#!/usr/bin/env python3
"""Self-test of the mail backends harness: real Dovecot + Postfix, checked directly (no proxy).

    python3 tests/harness/selftest.py [--rounds N] [--keep] [-v]

Each round starts the backends twice -- default (ssl = no) and strict (ssl = required,
disable_plaintext_auth = yes) -- checks IMAP, POP3, SMTP, submission with AUTH, LMTP delivery
and the PROXY v1/v2 ports with imaplib/poplib/smtplib, curl and hand-built PROXY headers,
then stops them and verifies that no process of theirs is left. Exit status 0 only if every
check of every round passed. Prints start/stop timings. Needs root (as the daemons do).
"""

from __future__ import annotations

import argparse
import imaplib
import os
import poplib
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backends as B  # noqa: E402

ALICE, BOB = "alice@alpha.test", "bob@beta.test"
PW = B.USERS
CLIENT_IP, CLIENT_PORT = "192.0.2.7", 5555      # TEST-NET-1: what the PROXY headers claim

VERBOSE = False


class Checks:
    """Collects named pass/fail results so that one failure does not hide the others."""

    def __init__(self):
        self.passed: list[str] = []
        self.failed: list[tuple[str, str]] = []

    def run(self, name: str, fn, *args) -> None:
        t0 = time.monotonic()
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 -- report every kind of failure, keep going
            detail = traceback.format_exc() if VERBOSE else f"{type(e).__name__}: {e}"
            self.failed.append((name, detail))
            print(f"  FAIL {name}: {detail}")
        else:
            self.passed.append(name)
            print(f"  ok   {name} ({(time.monotonic() - t0) * 1000:.0f} ms)")


def expect(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def token() -> str:
    return uuid.uuid4().hex[:12]


def message(frm: str, to: str, tok: str) -> bytes:
    return (f"From: <{frm}>\r\nTo: <{to}>\r\nSubject: selftest {tok}\r\n"
            f"Message-ID: <{tok}@selftest.invalid>\r\n\r\nbody {tok}\r\n").encode()


# ---- clients that speak PROXY first --------------------------------------------------------

class ProxyIMAP(imaplib.IMAP4):
    """imaplib client that sends a PROXY header before the IMAP session starts."""

    def __init__(self, host, port, header: bytes):
        self._proxy_header = header
        super().__init__(host, port)

    def _create_socket(self, timeout):
        s = super()._create_socket(timeout)
        s.sendall(self._proxy_header)
        return s


class ProxyPOP3(poplib.POP3):
    def __init__(self, host, port, header: bytes):
        self._proxy_header = header
        super().__init__(host, port, timeout=10)

    def _create_socket(self, timeout):
        s = super()._create_socket(timeout)
        s.sendall(self._proxy_header)
        return s


class ProxySMTP(smtplib.SMTP):
    def __init__(self, host, port, header: bytes):
        self._proxy_header = header
        super().__init__(host, port, timeout=10)

    def _get_socket(self, host, port, timeout):
        s = super()._get_socket(host, port, timeout)
        s.sendall(self._proxy_header)
        return s


def v2_header(ssl: bool, dport: int = 993) -> bytes:
    return B.proxy_v2(CLIENT_IP, "127.0.0.1", CLIENT_PORT, dport, authority="mail.alpha.test",
                      ssl=ssl, ssl_version="TLSv1.3", ssl_verify=0)


def curl(*args: str) -> str:
    p = subprocess.run(["curl", "--silent", "--show-error", "--max-time", "10", *args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"curl {' '.join(args)} -> {p.returncode}: {p.stderr.strip()}")
    return p.stdout


# ---- checks against the default instance ----------------------------------------------------

def check_imap_fetch(mb: B.MailBackends) -> None:
    tok = token()
    mb.put_message(ALICE, message("sender@example.invalid", ALICE, tok))
    c = imaplib.IMAP4(mb.host, mb.imap_port, timeout=10)
    try:
        c.login(ALICE, PW[ALICE])
        typ, boxes = c.list()
        expect(typ == "OK" and any(b'INBOX' in b for b in boxes), f"LIST: {typ} {boxes}")
        typ, data = c.select("INBOX")
        n = int(data[0])
        expect(n >= 1, f"INBOX has {n} messages")
        typ, data = c.search(None, "SUBJECT", f'"selftest {tok}"')
        num = data[0].split()[-1]
        typ, data = c.fetch(num, "(RFC822)")
        expect(f"body {tok}".encode() in data[0][1], "fetched body lacks the token")
    finally:
        c.logout()


def check_curl_imap(mb: B.MailBackends) -> None:
    tok = token()
    mb.put_message(ALICE, message("sender@example.invalid", ALICE, tok))
    url = f"imap://{mb.host}:{mb.imap_port}/INBOX"
    found = curl("-u", f"{ALICE}:{PW[ALICE]}", url, "-X", f"SEARCH SUBJECT {tok}")
    num = found.split()[-1]             # "* SEARCH 3": a sequence number, as MAILINDEX wants
    body = curl("-u", f"{ALICE}:{PW[ALICE]}", f"{url};MAILINDEX={num}")
    expect(f"body {tok}" in body, f"curl IMAP fetch: {body[:200]!r}")


def check_pop3(mb: B.MailBackends) -> None:
    tok = token()
    mb.put_message(BOB, message("sender@example.invalid", BOB, tok))
    c = poplib.POP3(mb.host, mb.pop3_port, timeout=10)
    try:
        c.user(BOB)
        c.pass_(PW[BOB])
        count, _ = c.stat()
        expect(count >= 1, f"STAT says {count}")
        bodies = [b"\r\n".join(c.retr(i)[1]) for i in range(1, count + 1)]
        expect(any(f"body {tok}".encode() in b for b in bodies), "RETR lacks the token")
    finally:
        c.quit()


def check_curl_pop3(mb: B.MailBackends) -> None:
    out = curl("-u", f"{BOB}:{PW[BOB]}", f"pop3://{mb.host}:{mb.pop3_port}/")
    expect(re.match(r"^1 \d+", out) is not None, f"curl POP3 LIST: {out[:200]!r}")


def check_smtp_plain(mb: B.MailBackends) -> None:
    tok = token()
    before = mb.mail_files(ALICE)
    with smtplib.SMTP(mb.host, mb.smtp_port, timeout=10) as s:
        s.ehlo("client.example.invalid")
        s.sendmail("sender@example.invalid", [ALICE], message("sender@example.invalid",
                                                              ALICE, tok))
    data = mb.wait_for_mail(ALICE, exclude=before, contains=tok.encode())
    expect(b"Received:" in data, "delivered message lacks a Received header")
    mb.wait_for_log("postfix", rf"postfix/lmtp\[\d+\]: .*to=<{re.escape(ALICE)}>.*"
                               r"status=sent")


def check_smtp_unknown_user(mb: B.MailBackends) -> None:
    with smtplib.SMTP(mb.host, mb.smtp_port, timeout=10) as s:
        s.ehlo("client.example.invalid")
        s.mail("sender@example.invalid")
        code, msg = s.rcpt("nobody@alpha.test")
        expect(code == 550, f"unknown user got {code} {msg!r}")


def check_submission_auth(mb: B.MailBackends) -> None:
    tok = token()
    before = mb.mail_files(BOB)
    with smtplib.SMTP(mb.host, mb.submission_port, timeout=10) as s:
        s.ehlo("client.example.invalid")
        expect("PLAIN" in s.esmtp_features.get("auth", ""), f"AUTH: {s.esmtp_features}")
        # Without AUTH the submission port refuses even local recipients.
        s.mail(ALICE)
        code, _ = s.rcpt(BOB)
        expect(code >= 500, f"unauthenticated RCPT got {code}")
        s.rset()
        s.user, s.password = ALICE, PW[ALICE]       # what smtplib's auth_plain() sends
        code, resp = s.auth("PLAIN", s.auth_plain)
        expect(code == 235, f"AUTH PLAIN: {code} {resp!r}")
        s.sendmail(ALICE, [BOB], message(ALICE, BOB, tok))
    mb.wait_for_mail(BOB, exclude=before, contains=tok.encode())
    mb.wait_for_log("postfix", rf"postfix/submission/smtpd\[\d+\]: \w+: "
                               rf"client=unknown\[127\.0\.0\.1\], sasl_method=PLAIN, "
                               rf"sasl_username={re.escape(ALICE)}")


def check_submission_bad_password(mb: B.MailBackends) -> None:
    with smtplib.SMTP(mb.host, mb.submission_port, timeout=10) as s:
        s.ehlo("client.example.invalid")
        try:
            s.login(ALICE, "wrong-password")
        except smtplib.SMTPAuthenticationError as e:
            expect(e.smtp_code == 535, f"bad password got {e.smtp_code}")
        else:
            raise AssertionError("login with a wrong password succeeded")


def check_curl_submission(mb: B.MailBackends) -> None:
    tok = token()
    before = mb.mail_files(ALICE)
    with tempfile.NamedTemporaryFile("wb", suffix=".eml") as f:
        f.write(message(BOB, ALICE, tok))
        f.flush()
        curl(f"smtp://{mb.host}:{mb.submission_port}", "--login-options", "AUTH=PLAIN",
             "-u", f"{BOB}:{PW[BOB]}", "--mail-from", BOB, "--mail-rcpt", ALICE,
             "-T", f.name)
    mb.wait_for_mail(ALICE, exclude=before, contains=tok.encode())


def check_imap_proxy_v2(mb: B.MailBackends) -> None:
    pos = mb.log_positions()["dovecot"]
    c = ProxyIMAP(mb.host, mb.imap_haproxy_port, v2_header(ssl=True))
    try:
        c.login(ALICE, PW[ALICE])
    finally:
        c.logout()
    # rip from the header's source, "secured" from its SSL TLV, local_name from AUTHORITY.
    m = mb.wait_for_log("dovecot", r"imap-login: Info: Login: user=<alice@alpha\.test>, "
                                   r"method=PLAIN, rip=192\.0\.2\.7, lip=127\.0\.0\.1, "
                                   r"mpid=\d+, secured, session=<[^>]+>, "
                                   r"local_name=mail\.alpha\.test$", since=pos)
    if VERBOSE:
        print("     ", m.group(0))


def check_pop3_proxy_v2(mb: B.MailBackends) -> None:
    pos = mb.log_positions()["dovecot"]
    c = ProxyPOP3(mb.host, mb.pop3_haproxy_port, v2_header(ssl=True, dport=995))
    try:
        c.user(BOB)
        c.pass_(PW[BOB])
    finally:
        c.quit()
    mb.wait_for_log("dovecot", r"pop3-login: Info: Login: user=<bob@beta\.test>, "
                               r"method=PLAIN, rip=192\.0\.2\.7, lip=127\.0\.0\.1, "
                               r"mpid=\d+, secured", since=pos)


def check_smtp_proxy_v1(mb: B.MailBackends) -> None:
    tok = token()
    pos = mb.log_positions()["postfix"]
    before = mb.mail_files(ALICE)
    hdr = B.proxy_v1(CLIENT_IP, "127.0.0.1", CLIENT_PORT, 25)
    expect(hdr == b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\n", f"v1 header {hdr!r}")
    with ProxySMTP(mb.host, mb.smtp_haproxy_port, hdr) as s:
        s.ehlo("mx.example.invalid")
        s.sendmail("sender@example.invalid", [ALICE], message("sender@example.invalid",
                                                              ALICE, tok))
    mb.wait_for_mail(ALICE, exclude=before, contains=tok.encode())
    mb.wait_for_log("postfix", r"postfix/smtp-haproxy/smtpd\[\d+\]: connect from "
                               r"unknown\[192\.0\.2\.7\]", since=pos)
    mb.wait_for_log("postfix", r"postfix/smtp-haproxy/smtpd\[\d+\]: \w+: "
                               r"client=unknown\[192\.0\.2\.7\]", since=pos)


def check_submission_proxy_v2(mb: B.MailBackends) -> None:
    tok = token()
    pos = mb.log_positions()["postfix"]
    before = mb.mail_files(BOB)
    with ProxySMTP(mb.host, mb.submission_haproxy_port, v2_header(ssl=True, dport=465)) as s:
        s.ehlo("client.example.invalid")
        s.login(ALICE, PW[ALICE])
        s.sendmail(ALICE, [BOB], message(ALICE, BOB, tok))
    mb.wait_for_mail(BOB, exclude=before, contains=tok.encode())
    mb.wait_for_log("postfix", r"postfix/submission-haproxy/smtpd\[\d+\]: \w+: "
                               r"client=unknown\[192\.0\.2\.7\], sasl_method=PLAIN, "
                               r"sasl_username=alice@alpha\.test", since=pos)


def check_plain_not_secured(mb: B.MailBackends) -> None:
    # Default instance: plain login works but Dovecot must not call it secured (the daemon
    # listens on 127.0.0.2, the client comes from 127.0.0.1).
    pos = mb.log_positions()["dovecot"]
    c = imaplib.IMAP4(mb.host, mb.imap_port, timeout=10)
    c.login(ALICE, PW[ALICE])
    c.logout()
    m = mb.wait_for_log("dovecot", r"imap-login: Info: Login: user=<alice@alpha\.test>.*",
                        since=pos)
    expect("secured" not in m.group(0), f"plain local login counted as secured: {m.group(0)}")
    expect("rip=127.0.0.1, lip=127.0.0.2" in m.group(0), m.group(0))


# ---- checks against the strict instance -----------------------------------------------------

def check_strict_plain_refused(mb: B.MailBackends) -> None:
    pos = mb.log_positions()["dovecot"]
    c = imaplib.IMAP4(mb.host, mb.imap_port, timeout=10)
    try:
        expect("LOGINDISABLED" in c.capabilities, f"capabilities {c.capabilities}")
        try:
            c.login(ALICE, PW[ALICE])
        except imaplib.IMAP4.error as e:
            expect("PRIVACYREQUIRED" in str(e) or "Plaintext" in str(e), str(e))
        else:
            raise AssertionError("plain LOGIN accepted with ssl=required")
    finally:
        try:
            c.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    mb.wait_for_log("dovecot", r"imap-login: Info: Login failed: Plaintext authentication "
                               r"disabled: user=<>, rip=127\.0\.0\.1, lip=127\.0\.0\.2",
                    since=pos)
    # POP3 likewise.
    p = poplib.POP3(mb.host, mb.pop3_port, timeout=10)
    try:
        p.user(ALICE)
        p.pass_(PW[ALICE])
    except poplib.error_proto as e:
        expect(b"Plaintext authentication disallowed" in e.args[0], repr(e.args[0]))
    else:
        raise AssertionError("plain POP3 login accepted with ssl=required")
    finally:
        p.close()


def check_strict_proxy_ssl_tlv(mb: B.MailBackends) -> None:
    pos = mb.log_positions()["dovecot"]
    tok = token()
    mb.put_message(ALICE, message("sender@example.invalid", ALICE, tok))
    c = ProxyIMAP(mb.host, mb.imap_haproxy_port, v2_header(ssl=True))
    try:
        expect("LOGINDISABLED" not in c.capabilities, f"capabilities {c.capabilities}")
        c.login(ALICE, PW[ALICE])
        c.select("INBOX")
        typ, data = c.search(None, "SUBJECT", f'"selftest {tok}"')
        expect(typ == "OK" and data[0].strip(), f"SEARCH: {typ} {data}")
    finally:
        c.logout()
    mb.wait_for_log("dovecot", r"imap-login: Info: Login: user=<alice@alpha\.test>, "
                               r"method=PLAIN, rip=192\.0\.2\.7, lip=127\.0\.0\.1, "
                               r"mpid=\d+, secured, session=<[^>]+>", since=pos)


def check_strict_proxy_without_ssl_tlv(mb: B.MailBackends) -> None:
    # Same port, same header minus the SSL TLV: refused. So the TLV is what secures it.
    c = ProxyIMAP(mb.host, mb.imap_haproxy_port, v2_header(ssl=False))
    try:
        expect("LOGINDISABLED" in c.capabilities, f"capabilities {c.capabilities}")
        try:
            c.login(ALICE, PW[ALICE])
        except imaplib.IMAP4.error:
            pass
        else:
            raise AssertionError("login accepted through PROXY v2 without the SSL TLV")
    finally:
        try:
            c.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def check_strict_pop3_proxy_ssl_tlv(mb: B.MailBackends) -> None:
    c = ProxyPOP3(mb.host, mb.pop3_haproxy_port, v2_header(ssl=True, dport=995))
    try:
        c.user(BOB)
        c.pass_(PW[BOB])
    finally:
        c.quit()


def check_strict_submission(mb: B.MailBackends) -> None:
    # disable_plaintext_auth / ssl=required are enforced by Dovecot's login processes, not
    # by its auth service for outside SASL clients: Postfix's smtpd_tls_auth_only (off here)
    # decides. So submission AUTH PLAIN over plaintext still works in strict mode.
    with smtplib.SMTP(mb.host, mb.submission_port, timeout=10) as s:
        s.ehlo("client.example.invalid")
        code, _ = s.login(ALICE, PW[ALICE])
        expect(code == 235, f"AUTH got {code}")


# ---- driver ---------------------------------------------------------------------------------

def no_leftovers(mb: B.MailBackends) -> None:
    left = mb.remaining_processes()
    expect(not left, f"processes left after stop: {left}")
    # And nothing listening on our ports any more.
    busy = [p for p in mb._expected_ports() if not B._port_free(mb.host, p)]
    expect(not busy, f"ports still bound after stop: {busy}")


def run_instance(root: str, strict: bool, checks: Checks, timings: list) -> None:
    label = "strict" if strict else "default"
    workdir = os.path.join(root, label)
    mb = B.MailBackends(workdir, strict=strict)
    print(f"[{label}] starting in {workdir}")
    try:
        mb.start()
        print(f"[{label}] started in {mb.start_seconds:.3f} s, ports {mb.base_port}+")
        if strict:
            tests = [check_strict_plain_refused, check_strict_proxy_ssl_tlv,
                     check_strict_proxy_without_ssl_tlv, check_strict_pop3_proxy_ssl_tlv,
                     check_strict_submission]
        else:
            tests = [check_imap_fetch, check_curl_imap, check_pop3, check_curl_pop3,
                     check_smtp_plain, check_smtp_unknown_user, check_submission_auth,
                     check_submission_bad_password, check_curl_submission,
                     check_imap_proxy_v2, check_pop3_proxy_v2, check_smtp_proxy_v1,
                     check_submission_proxy_v2, check_plain_not_secured]
        for t in tests:
            checks.run(f"{label}: {t.__name__}", t, mb)
        errors = [ln for ln in mb.dovecot_log().splitlines()
                  if re.search(r": (Error|Fatal|Panic):", ln)]
        checks.run(f"{label}: dovecot log has no errors",
                   lambda: expect(not errors, "\n".join(errors)))
        perrs = [ln for ln in mb.postfix_log().splitlines()
                 if re.search(r"\b(fatal|panic|error):", ln)]
        checks.run(f"{label}: postfix log has no errors",
                   lambda: expect(not perrs, "\n".join(perrs)))
    finally:
        mb.stop()
        print(f"[{label}] stopped in {mb.stop_seconds:.3f} s")
        timings.append((label, getattr(mb, "start_seconds", float("nan")),
                        mb.stop_seconds))
    checks.run(f"{label}: no processes or ports left after stop", no_leftovers, mb)
    # Shutting down must not make either daemon complain either.
    tail = [ln for ln in mb.dovecot_log().splitlines()
            if re.search(r": (Error|Fatal|Panic):", ln)]
    checks.run(f"{label}: dovecot log clean after stop",
               lambda: expect(not tail, "\n".join(tail)))


def main() -> int:
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    VERBOSE = args.verbose
    if os.geteuid() != 0:
        print("selftest: must run as root (Dovecot and Postfix drop privileges themselves)")
        return 2

    checks, timings = Checks(), []
    t0 = time.monotonic()
    root = tempfile.mkdtemp(prefix="mailsnid-harness-")
    try:
        for r in range(args.rounds):
            print(f"== round {r + 1}/{args.rounds}")
            for strict in (False, True):
                run_instance(os.path.join(root, f"r{r}"), strict, checks, timings)
    finally:
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    for label, start, stop in timings:
        print(f"timing {label:8} start {start:.3f} s  stop {stop:.3f} s")
    print(f"total {time.monotonic() - t0:.1f} s")
    for name, detail in checks.failed:
        print(f"FAILED: {name}\n  {detail}")
    print(f"selftest: {len(checks.passed)} passed, {len(checks.failed)} failed")
    return 0 if not checks.failed and checks.passed else 1


if __name__ == "__main__":
    sys.exit(main())
