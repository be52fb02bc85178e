"""Real Dovecot 2.3 and Postfix 3.7 as throwaway mail backends for mailsnid's tests.

    with MailBackends(workdir) as mb:                 # start() ... stop(), also on exceptions
        imaplib.IMAP4(mb.host, mb.imap_port).login("bob@beta.test", USERS["bob@beta.test"])
        mb.put_message("alice@alpha.test", b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
        smtplib.SMTP(mb.host, mb.smtp_port).sendmail(..., ["alice@alpha.test"], ...)
        mb.wait_for_mail("alice@alpha.test")
        mb.wait_for_log("dovecot", r"Login: user=<alice@alpha\\.test>.*rip=192\\.0\\.2\\.7")

Everything lives under `workdir` (configs, runtime sockets, queue, logs, mailboxes); nothing is
written to /etc, /run, /var/lib or /var/spool, and the system's Dovecot/Postfix are untouched.

Address: the daemons listen on 127.0.0.2 (not 127.0.0.1), and clients connect from the default
source 127.0.0.1. Why: Dovecot 2.3 treats a connection as "secured" (plaintext login allowed even
with ssl=required / disable_plaintext_auth=yes) when, without a PROXY header, its real remote IP
equals its real local IP, or the remote IP is in login_trusted_networks
(src/login-common/client-common.c, client_alloc():
    if (conn->proxied) secured = conn->proxy.ssl || trusted;
    else secured = trusted || net_ip_compare(&real_remote_ip, &real_local_ip);
). A loopback client talking to a daemon on 127.0.0.1 gets source 127.0.0.1 from the kernel, so
every local test connection would count as secured and `strict=True` would prove nothing. With
the daemon on 127.0.0.2 the kernel still picks source 127.0.0.1 (the local route's src), the
addresses differ, and a plain connection is NOT secured -- verified by selftest.py. Through a
`haproxy = yes` port the PROXY header decides instead: secured iff it carries the PP2_TYPE_SSL
TLV with the client-SSL bit (login_trusted_networks stays empty so nothing else can).

Log lines (Dovecot 2.3.19 / Postfix 3.7, as seen here):
    imap-login: Info: Login: user=<alice@alpha.test>, method=PLAIN, rip=192.0.2.7,
        lip=127.0.0.1, mpid=7067, secured, session=<NPPEYPVgsxXAAAIH>,
        local_name=mail.alpha.test             (PROXY v2 with SSL and AUTHORITY TLVs)
    imap-login: Info: Login: user=<alice@alpha.test>, method=PLAIN, rip=127.0.0.1,
        lip=127.0.0.2, mpid=5040, session=<...>                          (plain, not secured)
    imap-login: Info: Login failed: Plaintext authentication disabled: user=<>,
        rip=127.0.0.1, lip=127.0.0.2, session=<...>                      (strict, plain port)
    lmtp(alice@alpha.test)<14369><...>: Info: msgid=<...>: saved mail to INBOX
    postfix/smtp-haproxy/smtpd[2194]: connect from unknown[192.0.2.7]
    postfix/submission/smtpd[..]: 4Xb..: client=unknown[127.0.0.1], sasl_method=PLAIN,
        sasl_username=alice@alpha.test
    postfix/lmtp[..]: 4Xb..: to=<alice@alpha.test>, relay=127.0.0.2[127.0.0.2]:N, ..., status=sent
("secured" is what a PROXY session with the SSL TLV gets: "TLS" is logged only for Dovecot's
own TLS. `local_name=` is the harness's addition to login_log_format_elements, present only
when an AUTHORITY TLV came.) Postfix names each smtpd service by its syslog_name:
postfix/smtp, postfix/smtp-haproxy, postfix/submission, postfix/submission-haproxy.

Behaviours worth knowing:
  * strict=True does not stop submission AUTH PLAIN over plaintext: disable_plaintext_auth and
    ssl=required are enforced by Dovecot's login processes, not by its auth service for
    Postfix's SASL requests; Postfix's smtpd_tls_auth_only decides (off here, as a port
    behind a TLS proxy must have it).
  * Postfix accepts PROXY v1 and v2 but ignores v2 TLVs: it cannot learn that the client used
    TLS, nor the SNI.
  * fast_auth_failures (default) removes Dovecot's 2 s failure delay and its per-IP penalty
    that would delay later logins from the same IP (see _disable_auth_penalty).

Ports: one block of PORT_SPAN ports from `base_port` (attribute names in PORT_OFFSETS); by
default a free block is picked from 20000-31999, so parallel instances do not clash.

Processes: both masters run in the foreground as our children (dovecot -F; Postfix's
`master -s`, which is what `postfix start-fg` runs), each in its own session, so we know their
PIDs without pid files and skip `postfix start`'s integrity check. stop() waits until every
process of the instance is gone (zombies count as gone: PID 1 reaps late here), escalating to
SIGKILL; it finds stragglers after reparenting by MAILSNID_HARNESS_ID in Postfix's environment
(imported explicitly) and by Dovecot's process titles ("dovecot-mailsnid-<id>/<service>").
start() sweeps leftovers of a crashed earlier run in the same workdir. With die_with_parent
(default) a watchdog SIGTERMs the masters if this Python process dies in any way, so a killed
test run does not leave daemons behind.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Iterable

try:                                    # imported as part of a package (tests.harness.backends)
    from . import certs as _certs
    from .watchdog import Watchdog
except ImportError:                     # imported with tests/harness on sys.path
    import certs as _certs
    from watchdog import Watchdog

USERS = {
    "alice@alpha.test": "alice-pass-1",
    "bob@beta.test": "bob-pass-2",
    "carol@hoster.test": "carol-pass-3",
}
DOMAINS = ("alpha.test", "beta.test", "hoster.test")
HOSTNAME = "mail.hoster.test"
DEFAULT_HOST = "127.0.0.2"

PORT_OFFSETS = {
    # Dovecot
    "imap": 0, "imap_haproxy": 1, "pop3": 2, "pop3_haproxy": 3, "lmtp": 4, "auth": 5,
    # Postfix smtpd: MTA-facing ("port 25"), and submission with SASL AUTH via Dovecot
    "smtp": 10, "smtp_haproxy": 11, "submission": 12, "submission_haproxy": 13,
}
PORT_SPAN = 20
_AUTO_PORT_RANGE = (20000, 32000)      # below Linux's ephemeral range (32768+)
_SINGLE_PORT_RANGE = (10000, 20000)    # free_port()'s: apart from the blocks, also below it
_handed_out: dict[int, None] = {}       # free_port()'s answers in this process, oldest first

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
_SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_MARKER_VAR = "MAILSNID_HARNESS_ID"


class BackendError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------
# /proc helpers
# ----------------------------------------------------------------------------------------

def _proc_state(pid: int) -> str | None:
    """Process state letter, or None if the PID does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # comm may contain spaces/parens: the state follows the last ')'.
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _alive(pid: int) -> bool:
    # A zombie has exited; whether PID 1 reaps it promptly is not our concern (here it can
    # take seconds), so it counts as gone.
    st = _proc_state(pid)
    return st is not None and st not in ("Z", "X")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return kids

def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""

def _pids_matching(env_needle: bytes, cmd_needles: tuple[bytes, ...]) -> list[int]:
    """PIDs whose environment holds `env_needle` or whose command line contains any of
    `cmd_needles`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if env_needle in env.split(b"\0") or any(n in cmd for n in cmd_needles):
            found.append(int(entry))
    return found


def _listening_ports(host: str) -> set[int]:
    """TCP ports in LISTEN state on `host` (or on 0.0.0.0).

    Asks the socket table instead of connecting, so readiness probes stay out of the daemons'
    logs (a probe would log a 'Disconnected' line that tests might trip on). `ss` asks the
    kernel over netlink with a state filter; reading /proc/net/tcp instead takes ~50 ms
    per look on a machine that benchmarks have left with tens of thousands of TIME_WAITs.
    """
    out = subprocess.run(["ss", "-Hltn"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, check=True).stdout
    ports = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            addr, _, port = fields[3].rpartition(":")
            if addr in (host, "0.0.0.0", "*") and port.isdigit():
                ports.add(int(port))
    return ports


def _port_free(host: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(host: str = "127.0.0.1", avoid=(), udp_too: bool = False) -> int:
    """A port nobody has bound on HOST now, not one of AVOID (those a config already names);
    with UDP_TOO free for UDP as well (a DNS server listens on both).

    Not the kernel's pick (bind to port 0): that comes from the ephemeral range, where any
    outgoing connection of the host (pebble's validations, a client's connect) may take it as
    its local port before the program under test binds it -- a test then fails with 'address
    already in use' once in a few hundred runs. Below that range only listeners live. The
    start is random so that parallel suites do not probe the same ports first. A port handed
    out before is not handed out again (until the range runs dry): two calls before the first
    port is bound would otherwise give the same port once in 10,000 (CI saw an admin port and a
    listener clash). Only the oldest half of the range is forgotten when it runs short.
    """
    lo, hi = _SINGLE_PORT_RANGE
    while len(_handed_out) >= (hi - lo) // 2:
        del _handed_out[next(iter(_handed_out))]
    start = int.from_bytes(os.urandom(4), "big")
    for i in range(hi - lo):
        port = lo + (start + i) % (hi - lo)
        if port in avoid or port in _handed_out:
            continue
        kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp_too else (socket.SOCK_STREAM,)
        try:
            for kind in kinds:
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind((host, port))    # no SO_REUSEADDR: a TIME_WAIT counts as taken
        except OSError:
            continue
        _handed_out[port] = None
        return port
    raise BackendError(f"no free port on {host} in {lo}-{hi}")


def searchable_by_all(path: str) -> bool:
    """Whether users other than the owner can reach `path`: every directory from / down to it
    has the search bit for others. Not so under a 0700 home (Debian's /root, and every home
    since Debian 12), where a checkout or a TMPDIR often is."""
    d = os.path.realpath(path)
    while True:
        if not os.stat(d).st_mode & 0o001:
            return False
        if d == "/":
            return True
        d = os.path.dirname(d)


def shared_tmp_root() -> str:
    """The temp dir if others can reach it, else /tmp: a TMPDIR in a private place (a 0700
    home, pam_tmpdir's /tmp/user/0) would hide test files from the daemons' users."""
    base = tempfile.gettempdir()
    return base if searchable_by_all(base) else "/tmp"


def shared_tempdir(prefix: str) -> str:
    """A new directory (0755) that unprivileged daemons can reach -- Dovecot's and Postfix's
    users, a proxy after its privilege drop. Never under the checkout."""
    d = tempfile.mkdtemp(prefix=prefix, dir=shared_tmp_root())
    os.chmod(d, 0o755)
    return d


def find_free_base(host: str = DEFAULT_HOST, span: int = PORT_SPAN, seed: str = "") -> int:
    """A base port whose whole block [base, base+span) is free on `host`.

    The start point is derived from the PID and `seed` so that parallel test processes
    probe different blocks first instead of racing for the same one.
    """
    lo, hi = _AUTO_PORT_RANGE
    blocks = (hi - lo) // span
    h = int(hashlib.sha1(f"{os.getpid()}:{seed}".encode()).hexdigest(), 16)
    for i in range(blocks):
        base = lo + ((h + i) % blocks) * span
        if all(_port_free(host, base + off) for off in range(span)):
            return base
    raise BackendError(f"no free block of {span} ports on {host} in {lo}-{hi}")


# ----------------------------------------------------------------------------------------
# The backends
# ----------------------------------------------------------------------------------------

class MailBackends:
    """Dovecot (IMAP, POP3, LMTP, SASL auth) + Postfix (smtpd x4) under one directory.

    strict=False: ssl = no, disable_plaintext_auth = no (plain logins work everywhere).
    strict=True:  ssl = required, disable_plaintext_auth = yes, with a throwaway server cert.
        Plain LOGIN on the plain ports is then refused; through the haproxy ports it works
        only when the PROXY v2 header carries the SSL TLV with the client-SSL flag.
    All listen on `host` (127.0.0.2 by default; see the module docstring for why).
    dovecot_extra: settings appended to dovecot.conf (e.g. shorter IMAP IDLE intervals).
    """

    # Set from base_port + PORT_OFFSETS; listed here for readers and editors.
    imap_port: int                  # Dovecot IMAP, plain
    imap_haproxy_port: int          # Dovecot IMAP, `haproxy = yes` (PROXY v1/v2 required)
    pop3_port: int
    pop3_haproxy_port: int
    lmtp_port: int                  # Dovecot LMTP: Postfix delivers here
    auth_port: int                  # Dovecot auth-client protocol: Postfix's SASL
    smtp_port: int                  # Postfix smtpd, MTA-facing ("port 25"), no AUTH
    smtp_haproxy_port: int          # the same with smtpd_upstream_proxy_protocol=haproxy
    submission_port: int            # Postfix smtpd requiring SASL AUTH (via Dovecot)
    submission_haproxy_port: int    # the same behind PROXY v1/v2

    def __init__(self, workdir: str, base_port: int | None = None, *,
                 host: str = DEFAULT_HOST, strict: bool = False,
                 users: dict[str, str] | None = None, dovecot: bool = True,
                 postfix: bool = True, die_with_parent: bool = True,
                 fast_auth_failures: bool = True, dovecot_extra: str = "",
                 start_timeout: float = 15.0, stop_timeout: float = 10.0):
        self.workdir = os.path.abspath(workdir)
        self.host = host
        self.strict = strict
        self.users = dict(USERS if users is None else users)
        self.domains = sorted({u.split("@", 1)[1] for u in self.users} | set(DOMAINS))
        self.run_dovecot = dovecot
        self.run_postfix = postfix
        self.die_with_parent = die_with_parent
        self.fast_auth_failures = fast_auth_failures
        # Lines appended to dovecot.conf: a test's own settings (IDLE intervals, say).
        self.dovecot_extra = dovecot_extra
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._auto_port = base_port is None
        self.base_port = base_port if base_port is not None else 0
        self._set_ports()
        # Identifies this instance's processes; derived from the workdir so that a later
        # instance in the same directory can sweep leftovers of a crashed one.
        self.marker = hashlib.sha1(self.workdir.encode()).hexdigest()[:16]

        self.dovecot_dir = os.path.join(self.workdir, "dovecot")
        self.postfix_dir = os.path.join(self.workdir, "postfix")
        self.mail_dir = os.path.join(self.workdir, "mail")
        self.dovecot_conf = os.path.join(self.dovecot_dir, "dovecot.conf")
        self.dovecot_log_path = os.path.join(self.dovecot_dir, "dovecot.log")
        self.postfix_log_path = os.path.join(self.postfix_dir, "maillog")
        self._dovecot_base_dir = os.path.join(self.dovecot_dir, "run")
        self._short_base_dir: str | None = None   # /tmp fallback when the path is too long
        self._dovecot_run_dir = self._dovecot_base_dir
        self._dovecot: subprocess.Popen | None = None
        self._postfix: subprocess.Popen | None = None
        self._out_files: list = []
        self._watchdog: Watchdog | None = None
        self._msg_seq = 0
        self.started = False
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self.tls_ca: str | None = None      # strict mode: CA of Dovecot's own STARTTLS cert

    def _set_ports(self) -> None:
        for name, off in PORT_OFFSETS.items():
            setattr(self, f"{name}_port", self.base_port + off)

    def port(self, name: str) -> int:
        return getattr(self, f"{name}_port")

    def addr(self, name: str) -> str:
        """'host:port' of a service, as a mailsnid `backend` setting wants it."""
        return f"{self.host}:{self.port(name)}"

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> "MailBackends":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "MailBackends":
        """Start Dovecot and Postfix; return once every port listens (typically 0.1-0.4 s)."""
        if self.started:
            return self
        t0 = time.monotonic()
        for attempt in range(3):
            try:
                self._start_once()
                break
            except BackendError as e:
                # An auto-picked block can be taken between our check and the daemons'
                # bind() by a parallel test: pick another one. Anything else is real.
                if not (self._auto_port and "Address already in use" in str(e)
                        and attempt < 2):
                    raise
        self.started = True
        self.start_seconds = time.monotonic() - t0
        return self

    def _start_once(self) -> None:
        try:
            self._prepare_workdir()
            self._kill_leftovers()
            if self._auto_port:
                self.base_port = find_free_base(self.host, seed=self.workdir)
                self._set_ports()
            else:
                busy = [p for p in self._expected_ports() if not _port_free(self.host, p)]
                if busy:
                    raise BackendError(f"ports already in use on {self.host}: {busy}")
            self._setup_mailboxes()
            if self.run_dovecot:
                self._write_dovecot_config()
                self._start_dovecot()
            if self.run_postfix:
                self._write_postfix_config()
                self._start_postfix()
            if self.die_with_parent:
                self._start_watchdog()
            self._wait_ready(time.monotonic() + self.start_timeout)
            if self.run_dovecot and self.fast_auth_failures:
                self._disable_auth_penalty()
        except BaseException:
            # Never leave half a setup running: when start() raises inside `with`,
            # __exit__ is not called, so nobody else would stop it.
            self.stop()
            raise

    def stop(self, graceful: bool = False) -> None:
        """Stop both daemons and wait until every process of this instance is gone.

        Idempotent, safe after a failed start; raises BackendError only if something
        survives SIGKILL. graceful=True leaves Dovecot's shutdown to its master, which takes
        1 s at best and 6 s when a child was still starting (see _stop_dovecot_fast).
        """
        t0 = time.monotonic()
        self._stop_watchdog()
        masters = [p for p in (self._postfix, self._dovecot) if p is not None]
        # Postfix's master stops its whole process group promptly on SIGTERM.
        if self._postfix is not None and self._postfix.poll() is None:
            self._postfix.send_signal(signal.SIGTERM)
        if self._dovecot is not None and self._dovecot.poll() is None:
            if graceful:
                self._dovecot.send_signal(signal.SIGTERM)
            else:
                self._stop_dovecot_fast(self._dovecot)
        left = self._wait_gone(masters, time.monotonic() + self.stop_timeout)
        if left:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            left = self._wait_gone(masters, time.monotonic() + 5.0)
        for p in masters:
            try:
                p.wait(timeout=1.0)     # reap our own children so they leave no zombie
            except subprocess.TimeoutExpired:
                pass
        self._dovecot = self._postfix = None
        for f in self._out_files:
            f.close()
        self._out_files = []
        if self._short_base_dir:
            shutil.rmtree(self._short_base_dir, ignore_errors=True)
            self._short_base_dir = None
        self.started = False
        self.stop_seconds = time.monotonic() - t0
        if left:
            raise BackendError(f"processes survived SIGKILL: {left}")

    def _stop_dovecot_fast(self, master: subprocess.Popen) -> None:
        """Stop Dovecot in tens of milliseconds instead of Dovecot's own 1-6 s.

        On SIGTERM Dovecot's master waits up to 5 s for its children to report that they
        stopped listening (one still starting never does), then SIGQUITs every child left --
        log, config and anvil always are -- and sleeps a fixed second
        (src/master/service-monitor.c, services_monitor_wait_and_kill). Killing children
        while it shuts down does not help reliably: its wait often ends first. So: SIGKILL
        the master (it holds no mail data, and dead it can respawn nothing), then SIGTERM
        the children, which exit cleanly -- anvil and log last, since the others talk to
        them while exiting and would log errors if they went first.
        """
        kids = _children(master.pid)        # before the kill: afterwards init adopts them
        master.kill()
        master.wait()
        last = [p for p in kids if _comm(p) in ("anvil", "log")]
        for group in ([p for p in kids if p not in last], last):
            for pid in group:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            until = time.monotonic() + 1.0
            while any(_alive(p) for p in group) and time.monotonic() < until:
                time.sleep(0.005)
            if group is not last:
                time.sleep(0.03)    # let the log process drain the dead writers' pipes

    def _wait_gone(self, masters: list, deadline: float) -> list[int]:
        while True:
            for p in masters:
                p.poll()
            left = [p.pid for p in masters if p.returncode is None]
            left += [pid for pid in self._instance_pids()
                     if _alive(pid) and pid not in left]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.02)

    def _instance_pids(self) -> list[int]:
        # Postfix's daemons keep MAILSNID_HARNESS_ID in /proc/PID/environ. Dovecot's do
        # not -- they reuse that memory for their process titles -- but every title is
        # "dovecot-<instance_name>/<service>", and the master's command line names our
        # config file.
        return _pids_matching(f"{_MARKER_VAR}={self.marker}".encode(),
                              (f"dovecot-mailsnid-{self.marker}/".encode(),
                               self.dovecot_conf.encode() + b"\0"))

    def remaining_processes(self) -> list[int]:
        """Live (non-zombie) processes of this instance; empty after stop()."""
        return [pid for pid in self._instance_pids() if _alive(pid)]

    def _kill_leftovers(self) -> None:
        stale = self.remaining_processes()
        for pid in stale:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        while any(_alive(p) for p in stale) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _expected_ports(self) -> list[int]:
        names = []
        if self.run_dovecot:
            names += ["imap", "imap_haproxy", "pop3", "pop3_haproxy", "lmtp", "auth"]
        if self.run_postfix:
            names += ["smtp", "smtp_haproxy", "submission", "submission_haproxy"]
        return [self.port(n) for n in names]

    def _wait_ready(self, deadline: float) -> None:
        want = set(self._expected_ports())
        while True:
            for name, p in (("dovecot", self._dovecot), ("postfix", self._postfix)):
                if p is not None and p.poll() is not None:
                    raise BackendError(f"{name} exited with {p.returncode} during start:\n"
                                       + self._startup_diagnostics(name))
            missing = want - _listening_ports(self.host)
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise BackendError(f"ports not listening after start: {sorted(missing)}\n"
                                   + self._startup_diagnostics("dovecot")
                                   + self._startup_diagnostics("postfix"))
            time.sleep(0.005)

    def _startup_diagnostics(self, name: str) -> str:
        out = []
        if name == "dovecot":
            paths = (os.path.join(self.dovecot_dir, "dovecot.stdout"), self.dovecot_log_path)
        else:
            paths = (self.postfix_log_path,)
            # Postfix's master dies silently on errors it meets before postlogd runs (its
            # log goes through postlogd); a port taken meanwhile is the usual one.
            taken = [p for p in (self.smtp_port, self.smtp_haproxy_port,
                                 self.submission_port, self.submission_haproxy_port)
                     if not _port_free(self.host, p)]
            if taken:
                out.append(f"postfix ports now taken by another process: {taken}: "
                           "Address already in use")
            out.append(f"(for other errors: postfix -c {self.postfix_dir} check)")
        for path in paths:
            try:
                with open(path, errors="replace") as f:
                    text = f.read()[-4000:]
            except FileNotFoundError:
                continue
            out.append(f"--- {path}\n{text}")
        return "\n".join(out)

    def _start_watchdog(self) -> None:
        """A tiny `sh` that SIGTERMs the masters when this Python process dies.

        It blocks reading a pipe whose only write end we hold; whatever ends us (an
        exception we never see, SIGKILL, a CI timeout) closes it, `read` returns, and the
        masters go. PR_SET_PDEATHSIG would be simpler but does not survive Postfix's master
        (the kernel clears it when a process changes credentials, which master does).
        stop() kills the watchdog before stopping the daemons itself.
        """
        pids = [str(p.pid) for p in (self._postfix, self._dovecot) if p is not None]
        if not pids:
            return
        self._watchdog = Watchdog('kill -TERM "$@" 2>/dev/null', "watchdog", pids, self._env())

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _spawn(self, argv: list[str], out_path: str, env: dict) -> subprocess.Popen:
        # The daemons' own stdout/stderr must not be our pipes: a daemon holding a pipe's
        # write end open keeps a caller that reads it (subprocess.run, CI logs) waiting.
        out = open(out_path, "ab")
        self._out_files.append(out)
        # A session of their own: a Ctrl-C meant for the test runner reaches only Python,
        # whose stop() then shuts the daemons down in order.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, close_fds=True,
                                cwd=self.workdir, start_new_session=True)

    def _env(self) -> dict:
        # A minimal environment: nothing from the test runner's (CI's MAIL_CONFIG, a user's
        # TZ...) leaks into the daemons, and the marker goes to every child.
        return {"PATH": _SAFE_PATH, "LANG": "C", "TZ": "UTC", _MARKER_VAR: self.marker}

    # -- files and mailboxes ---------------------------------------------------------------

    def _prepare_workdir(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        # Dovecot's dovenull/dovecot users and the mail user (nobody), and Postfix's postfix
        # user, must traverse every directory down to their files.
        os.chmod(self.workdir, 0o755)
        # tempfile.mkdtemp() makes 0700 directories: open those up (search bit only) when
        # they lie under the temp dir; anywhere else, say so rather than chmod a stranger's.
        tmp_root = os.path.realpath(tempfile.gettempdir())
        d = os.path.dirname(self.workdir)
        while d != "/":
            st = os.stat(d)
            if not st.st_mode & 0o001:
                if os.path.realpath(d).startswith(tmp_root + os.sep):
                    os.chmod(d, (st.st_mode & 0o7777) | 0o011)
                else:
                    raise BackendError(f"{d} is not searchable by other users; the daemons' "
                                       f"unprivileged users cannot reach {self.workdir}")
            d = os.path.dirname(d)
        for d in (self.dovecot_dir, self.postfix_dir, self.mail_dir):
            os.makedirs(d, exist_ok=True)
            os.chmod(d, 0o755)

    def _setup_mailboxes(self) -> None:
        nobody = pwd.getpwnam("nobody").pw_uid
        nogroup = grp.getgrnam("nogroup").gr_gid
        for user in self.users:
            home = self.home(user)
            os.makedirs(os.path.dirname(home), exist_ok=True)
            for sub in ("", "Maildir", "Maildir/cur", "Maildir/new", "Maildir/tmp"):
                p = os.path.join(home, sub)
                os.makedirs(p, exist_ok=True)
                os.chown(p, nobody, nogroup)
                os.chmod(p, 0o700)

    def home(self, user: str) -> str:
        local, domain = user.split("@", 1)
        return os.path.join(self.mail_dir, domain, local)

    def maildir(self, user: str) -> str:
        return os.path.join(self.home(user), "Maildir")

    def mail_files(self, user: str) -> list[str]:
        """Paths of the messages in the user's INBOX (new/ and cur/), oldest first."""
        md = self.maildir(user)
        found = []
        for sub in ("new", "cur"):
            for n in os.listdir(os.path.join(md, sub)):
                p = os.path.join(md, sub, n)
                try:
                    found.append((os.stat(p).st_mtime, p))
                except FileNotFoundError:   # Dovecot moved it new/ -> cur/ meanwhile
                    continue
        return [p for _, p in sorted(found)]

    def put_message(self, user: str, data: bytes) -> str:
        """Drop a message into the user's INBOX as a maildir writer would (tmp/, then rename
        into new/), owned by the mail user; Dovecot sees it at its next sync."""
        if user not in self.users:
            raise KeyError(user)
        if isinstance(data, str):
            data = data.encode()
        self._msg_seq += 1
        now = time.time()
        name = (f"{int(now)}.M{int((now % 1) * 1e6)}P{os.getpid()}Q{self._msg_seq}"
                f".{HOSTNAME}")
        md = self.maildir(user)
        tmp, new = os.path.join(md, "tmp", name), os.path.join(md, "new", name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.chown(tmp, pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
        os.chmod(tmp, 0o600)
        os.rename(tmp, new)
        return new

    def clear_mail(self, user: str) -> None:
        for p in self.mail_files(user):
            os.unlink(p)

    def wait_for_mail(self, user: str, timeout: float = 10.0, *,
                      exclude: Iterable[str] = (), contains: bytes | None = None) -> bytes:
        """Wait until a message (not in `exclude`, containing `contains` if given) is in the
        user's INBOX, and return its bytes. Pass exclude=mb.mail_files(user) taken before
        sending to wait for a NEW message."""
        exclude = set(exclude)
        deadline = time.monotonic() + timeout
        while True:
            for p in self.mail_files(user):
                if p in exclude:
                    continue
                try:
                    with open(p, "rb") as f:
                        data = f.read()
                except FileNotFoundError:       # moved new/ -> cur/ by a client meanwhile
                    continue
                if contains is None or contains in data:
                    return data
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no mail for {user} within {timeout}s; postfix log tail:\n"
                                   + self.postfix_log()[-2000:])
            time.sleep(0.05)

    # -- logs ------------------------------------------------------------------------------

    @staticmethod
    def _read_log(path: str, since: int) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def dovecot_log(self, since: int = 0) -> str:
        """Dovecot's log (errors, info and debug all go to one file), from byte `since`."""
        return self._read_log(self.dovecot_log_path, since)

    def postfix_log(self, since: int = 0) -> str:
        return self._read_log(self.postfix_log_path, since)

    def log_positions(self) -> dict[str, int]:
        """Current sizes of the logs; pass one as `since` to look only at newer lines."""
        def size(p):
            try:
                return os.path.getsize(p)
            except FileNotFoundError:
                return 0
        return {"dovecot": size(self.dovecot_log_path),
                "postfix": size(self.postfix_log_path)}

    def wait_for_log(self, which: str, pattern: str, timeout: float = 5.0,
                     since: int = 0) -> re.Match:
        """Wait for a line matching regex `pattern` in "dovecot" or "postfix"'s log. Both
        write asynchronously (Dovecot via its log process, Postfix via postlogd), so a line
        can appear a little after the client saw the reply."""
        read = self.dovecot_log if which == "dovecot" else self.postfix_log
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(read(since))
            if m:
                return m
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no line matching {pattern!r} in the {which} log within "
                                   f"{timeout}s; tail:\n{read(since)[-3000:]}")
            time.sleep(0.05)

    # -- Dovecot ---------------------------------------------------------------------------

    def _write_dovecot_config(self) -> None:
        base_dir = self._dovecot_base_dir
        # Unix socket paths are limited to 107 bytes; Dovecot's longest under base_dir is
        # about 30. A deep workdir gets its runtime dir in /tmp instead (removed by stop()).
        if len(base_dir) > 70:
            self._short_base_dir = tempfile.mkdtemp(prefix="msd-dc-")
            os.chmod(self._short_base_dir, 0o755)
            base_dir = self._short_base_dir
        self._dovecot_run_dir = base_dir
        state_dir = os.path.join(self.dovecot_dir, "state")
        os.makedirs(state_dir, exist_ok=True)
        passwd = os.path.join(self.dovecot_dir, "passwd")
        # The auth process runs as the `dovecot` user and must read this; test passwords only.
        with open(passwd, "w") as f:
            for user, pw in self.users.items():
                f.write(f"{user}:{{PLAIN}}{pw}::::::\n")
        os.chmod(passwd, 0o644)

        if self.strict:
            # ssl = required needs a certificate even though the tests never use Dovecot's
            # own TLS (it would serve STARTTLS with it; tls_ca verifies that).
            pki = _certs.make_ca(os.path.join(self.dovecot_dir, "pki"))
            leaf = pki.issue([HOSTNAME], basename="dovecot")
            self.tls_ca = pki.ca_pem
            ssl = (f"ssl = required\nssl_cert = <{leaf.fullchain}\nssl_key = <{leaf.key}\n"
                   "disable_plaintext_auth = yes\n")
        else:
            ssl = "ssl = no\ndisable_plaintext_auth = no\n"

        h = self.host
        conf = f"""\
# Written by tests/harness/backends.py -- a throwaway Dovecot for mailsnid's tests.
# Every block opener ends its line: Dovecot's parser rejects `name {{ key = v }}` on one line.
instance_name = mailsnid-{self.marker}
base_dir = {base_dir}
state_dir = {state_dir}
log_path = {self.dovecot_log_path}
info_log_path = {self.dovecot_log_path}
debug_log_path = {self.dovecot_log_path}
log_timestamp = "%Y-%m-%d %H:%M:%S "
# Children see only these variables, nothing else from the test runner's environment.
import_environment = TZ CORE_OUTOFMEM CORE_ERROR {_MARKER_VAR}
hostname = {HOSTNAME}
protocols = imap pop3 lmtp
listen = {h}
{ssl}# Nothing is trusted by address, and we listen on {h} while clients come from 127.0.0.1:
# only a PROXY v2 header with the SSL TLV can make a session "secured" (module docstring).
login_trusted_networks =
haproxy_trusted_networks = 127.0.0.0/8
# Dovecot's default elements plus the name the PROXY v2 AUTHORITY TLV carried (the client's
# SNI); an empty element is left out, so plain sessions log exactly the default line.
login_log_format_elements = user=<%u> method=%m rip=%r lip=%l mpid=%e %c session=<%{{session}}> local_name=%{{local_name}}
auth_mechanisms = plain login
auth_verbose = yes
auth_failure_delay = {"0" if self.fast_auth_failures else "2 secs"}
first_valid_uid = 1
mail_location = maildir:~/Maildir

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={self.mail_dir}/%d/%n
}}

service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imap_haproxy {{
    port = {self.imap_haproxy_port}
    haproxy = yes
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3_haproxy {{
    port = {self.pop3_haproxy_port}
    haproxy = yes
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    port = {self.lmtp_port}
  }}
}}
# Postfix's smtpd asks this listener (Dovecot's auth client protocol) for SASL AUTH.
service auth {{
  inet_listener sasl {{
    port = {self.auth_port}
  }}
}}
{self.dovecot_extra}
"""
        with open(self.dovecot_conf, "w") as f:
            f.write(conf)

    def _disable_auth_penalty(self) -> None:
        """Switch off Dovecot's per-IP auth penalty for this instance.

        After a failed login Dovecot delays the NEXT logins from that IP -- good ones too --
        by 2-15 s for up to ~30 s (src/auth/auth-penalty.c). Every test connection comes
        from 127.0.0.1 or from the one address a PROXY header claims, so a single
        wrong-password test would stall the tests after it. 2.3 has no setting for this;
        but the auth process, which starts on the first login, silently disables the
        penalty when the anvil-auth-penalty socket does not exist (ENOENT is the one
        connect error it does not log). The master keeps its listening fd, so removing the
        file before any auth process runs is enough; we check that none runs yet.
        """
        sock = os.path.join(self._dovecot_run_dir, "anvil-auth-penalty")
        if any(_comm(p) == "auth" for p in _children(self._dovecot.pid)):
            raise BackendError("Dovecot's auth process started before the harness could "
                               "disable the auth penalty")
        try:
            os.unlink(sock)
        except FileNotFoundError:
            pass

    def _start_dovecot(self) -> None:
        # A master.pid left by a killed master (stop() kills it; a crashed run may have) makes
        # Dovecot refuse to start while that PID exists -- even as a zombie, or reused.
        pidfile = os.path.join(self._dovecot_run_dir, "master.pid")
        try:
            os.unlink(pidfile)
        except FileNotFoundError:
            pass
        self._dovecot = self._spawn([DOVECOT, "-F", "-c", self.dovecot_conf],
                                    os.path.join(self.dovecot_dir, "dovecot.stdout"),
                                    self._env())

    # -- Postfix ---------------------------------------------------------------------------

    def _write_postfix_config(self) -> None:
        d = self.postfix_dir
        queue, data = os.path.join(d, "queue"), os.path.join(d, "data")
        pf = pwd.getpwnam("postfix")
        postdrop = grp.getgrnam("postdrop").gr_gid
        # The queue layout `postfix start` would create (from /etc/postfix/postfix-files);
        # we run the master directly, so we make it ourselves.
        os.makedirs(queue, exist_ok=True)
        os.chmod(queue, 0o755)
        for sub in ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold",
                    "incoming", "private", "saved", "trace"):
            p = os.path.join(queue, sub)
            os.makedirs(p, exist_ok=True)
            os.chown(p, pf.pw_uid, -1)
            os.chmod(p, 0o700)
        for sub, mode in (("maildrop", 0o730), ("public", 0o710)):
            p = os.path.join(queue, sub)
            os.makedirs(p, exist_ok=True)
            os.chown(p, pf.pw_uid, postdrop)
            os.chmod(p, mode)
        os.makedirs(os.path.join(queue, "pid"), exist_ok=True)
        os.makedirs(data, exist_ok=True)
        os.chown(data, pf.pw_uid, pf.pw_gid)
        os.chmod(data, 0o700)

        vmailbox = os.path.join(d, "vmailbox")
        with open(vmailbox, "w") as f:
            for user in self.users:
                f.write(f"{user} OK\n")

        h = self.host
        no_out = "error:5.7.1 the test harness delivers only to its own domains"
        main_cf = f"""\
# Written by tests/harness/backends.py -- a throwaway Postfix for mailsnid's tests.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
# Only the marker and basics reach Postfix's daemons from our environment.
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C {_MARKER_VAR}
syslog_name = postfix
# No syslog socket here: log through postlogd (the `postlog` master.cf service) to the
# master's stdout (`master -s` keeps it), which the harness points at the log file.
maillog_file = /dev/stdout
maillog_file_prefixes = /dev/stdout
myhostname = {HOSTNAME}
mydomain = hoster.test
myorigin = $mydomain
mydestination =
# Listening addresses come from master.cf; this only has to name a real interface
# address (127.0.0.2 is not one, only covered by lo's 127.0.0.0/8), or master exits.
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = {' '.join(self.domains)}
# Unknown users are refused at RCPT time, as on a real host (texthash needs no postmap).
virtual_mailbox_maps = texthash:{vmailbox}
virtual_transport = lmtp:inet:{h}:{self.lmtp_port}
# Nothing ever leaves this machine: the network is off-limits to tests.
default_transport = {no_out}
relay_transport = {no_out}
local_transport = {no_out}
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
# No reverse DNS for clients: there is no resolver to ask, and the wait would slow tests.
smtpd_peername_lookup = no
alias_maps =
alias_database =
biff = no
smtpd_banner = $myhostname ESMTP
smtpd_tls_security_level = none
smtp_tls_security_level = none
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination
smtpd_upstream_proxy_timeout = 5s
"""
        sub_opts = (
            "  -o smtpd_sasl_auth_enable=yes\n"
            "  -o smtpd_sasl_type=dovecot\n"
            f"  -o smtpd_sasl_path=inet:{h}:{self.auth_port}\n"
            "  -o smtpd_sasl_security_options=noanonymous\n"
            # The proxy terminated TLS; Postfix cannot know, so it must not insist on it.
            "  -o smtpd_tls_security_level=none\n"
            "  -o smtpd_tls_auth_only=no\n"
            "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n")
        haproxy = "  -o smtpd_upstream_proxy_protocol=haproxy\n"
        master_cf = f"""\
# Written by tests/harness/backends.py. chroot is off everywhere (column 5 = n): a chroot
# would need copies of /etc files inside the queue directory.
{h}:{self.smtp_port} inet n - n - - smtpd
  -o syslog_name=postfix/smtp
{h}:{self.smtp_haproxy_port} inet n - n - - smtpd
  -o syslog_name=postfix/smtp-haproxy
{haproxy}{h}:{self.submission_port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
{sub_opts}{h}:{self.submission_haproxy_port} inet n - n - - smtpd
  -o syslog_name=postfix/submission-haproxy
{sub_opts}{haproxy}pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""
        # Postfix re-reads a table or main.cf until its mtime lies before the moment it began
        # reading (guarding against a concurrent writer), sleeping 0.3 s each round: a file
        # written this very second costs ~2 s of startup. Back-date ours.
        past = time.time() - 10
        for name, text in (("main.cf", main_cf), ("master.cf", master_cf)):
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        for name in ("main.cf", "master.cf", "vmailbox"):
            os.utime(os.path.join(d, name), (past, past))

    def _start_postfix(self) -> None:
        # `master -s` is what `postfix start-fg` runs when not PID 1: foreground, stdout kept.
        env = dict(self._env(), MAIL_CONFIG=self.postfix_dir)
        self._postfix = self._spawn([POSTFIX_MASTER, "-s", "-c", self.postfix_dir],
                                    self.postfix_log_path, env)


# ----------------------------------------------------------------------------------------
# PROXY protocol headers, for talking to the *_haproxy ports by hand
# ----------------------------------------------------------------------------------------

PP2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_CLIENT_SSL = 0x01


def _tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def proxy_v1(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A PROXY protocol v1 line, e.g. b'PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\\r\\n'."""
    fam = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def proxy_v2(src: str, dst: str, sport: int, dport: int, *, authority: str | None = None,
             ssl: bool = False, ssl_version: str | None = "TLSv1.3",
             ssl_cipher: str | None = None, ssl_verify: int = 0,
             alpn: bytes | None = None, extra_tlvs: bytes = b"") -> bytes:
    """A PROXY protocol v2 PROXY-command header for a TCP/IPv4 or IPv6 stream.

    ssl=True adds PP2_TYPE_SSL with the PP2_CLIENT_SSL flag, `ssl_verify` as its verify
    field and VERSION/CIPHER sub-TLVs: what a TLS-terminating proxy sends, and what makes
    Dovecot treat the session as secured. `authority` is the SNI name (PP2_TYPE_AUTHORITY).
    """
    v6 = ":" in src
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    addrs = (socket.inet_pton(fam, src) + socket.inet_pton(fam, dst)
             + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))
    tlvs = b""
    if alpn is not None:
        tlvs += _tlv(PP2_TYPE_ALPN, alpn)
    if authority is not None:
        tlvs += _tlv(PP2_TYPE_AUTHORITY, authority.encode())
    if ssl:
        sub = b""
        if ssl_version:
            sub += _tlv(PP2_SUBTYPE_SSL_VERSION, ssl_version.encode())
        if ssl_cipher:
            sub += _tlv(PP2_SUBTYPE_SSL_CIPHER, ssl_cipher.encode())
        tlvs += _tlv(PP2_TYPE_SSL, bytes([PP2_CLIENT_SSL]) + ssl_verify.to_bytes(4, "big")
                     + sub)
    tlvs += extra_tlvs
    body = addrs + tlvs
    # 0x21: version 2, PROXY command. 0x11 / 0x21: AF_INET / AF_INET6 over STREAM.
    return (PP2_SIGNATURE + bytes([0x21, 0x21 if v6 else 0x11])
            + len(body).to_bytes(2, "big") + body)
