"""Real Dovecot 2.3 and Postfix 3.7 as throwaway mail backends for mailsnid's tests.

    with MailBackends(workdir) as mb:                 # start() ... stop(), also on exceptions
        imaplib.IMAP4(mb.host, mb.imap_port).login("alice@alpha.test", USERS["alice@alpha.test"])
        mb.put_message("alice@alpha.test", b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
        smtplib.SMTP(mb.host, mb.smtp_port).sendmail(..., ["alice@alpha.test"], ...)
        mb.wait_for_mail("alice@alpha.test")
        mb.wait_for_log("dovecot", r"imap-login: Login: user=<alice@alpha.test>.*rip=192\\.0\\.2\\.7")

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

Ports: one block of PORT_SPAN ports from `base_port` (attribute names in PORT_OFFSETS); by
default a free block is picked from 20000-31999, so parallel instances do not clash.

Processes: both masters run in the foreground as our children (dovecot -F; Postfix's
`master -s`, which is what `postfix start-fg` runs) so we know their PIDs without pid files and
skip `postfix start`'s slow integrity check. Every daemon inherits MAILSNID_HARNESS_ID (both are
told to import it), so stop() finds stragglers even after they were reparented, and start()
sweeps leftovers of a crashed earlier run in the same workdir. With die_with_parent (default)
the masters get SIGTERM if the Python thread that started them dies (setpriv --pdeathsig), so
a killed test run does not leave daemons behind; start them from a long-lived thread.
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
except ImportError:                     # imported with tests/harness on sys.path
    import certs as _certs

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

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
SETPRIV = shutil.which("setpriv")
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


def _pids_with_marker(marker: str) -> list[int]:
    needle = f"{_MARKER_VAR}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
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
    Port attributes: imap_port, imap_haproxy_port, pop3_port, pop3_haproxy_port, lmtp_port,
    auth_port, smtp_port, smtp_haproxy_port, submission_port, submission_haproxy_port.
    """

    def __init__(self, workdir: str, base_port: int | None = None, *,
                 host: str = DEFAULT_HOST, strict: bool = False,
                 users: dict[str, str] | None = None, dovecot: bool = True,
                 postfix: bool = True, die_with_parent: bool = True,
                 start_timeout: float = 15.0, stop_timeout: float = 10.0):
        self.workdir = os.path.abspath(workdir)
        self.host = host
        self.strict = strict
        self.users = dict(USERS if users is None else users)
        self.domains = sorted({u.split("@", 1)[1] for u in self.users} | set(DOMAINS))
        self.run_dovecot = dovecot
        self.run_postfix = postfix
        self.die_with_parent = die_with_parent and SETPRIV is not None
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
        self._dovecot: subprocess.Popen | None = None
        self._postfix: subprocess.Popen | None = None
        self._out_files: list = []
        self._msg_seq = 0
        self.started = False

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
        if self.started:
            return self
        t0 = time.monotonic()
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
            self._wait_ready(time.monotonic() + self.start_timeout)
        except BaseException:
            # Never leave half a setup running: the caller gets no object to stop().
            self.stop()
            raise
        self.started = True
        self.start_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop both daemons and wait until every process of this instance is gone.

        Idempotent, safe after a failed start. Raises BackendError only if something
        survives SIGKILL.
        """
        t0 = time.monotonic()
        masters = [p for p in (self._postfix, self._dovecot) if p is not None]
        for p in masters:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.stop_timeout
        left = self._wait_gone(masters, deadline)
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

    def _wait_gone(self, masters: list, deadline: float) -> list[int]:
        while True:
            for p in masters:
                p.poll()
            left = [p.pid for p in masters if p.returncode is None]
            left += [pid for pid in _pids_with_marker(self.marker)
                     if _alive(pid) and pid not in left]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.02)

    def remaining_processes(self) -> list[int]:
        """Live (non-zombie) processes of this instance; empty after stop()."""
        return [pid for pid in _pids_with_marker(self.marker) if _alive(pid)]

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
        d = self.dovecot_dir if name == "dovecot" else self.postfix_dir
        out = []
        for path in (os.path.join(d, f"{name}.stdout"),
                     self.dovecot_log_path if name == "dovecot" else self.postfix_log_path):
            try:
                with open(path, errors="replace") as f:
                    text = f.read()[-4000:]
            except FileNotFoundError:
                continue
            out.append(f"--- {path}\n{text}")
        return "\n".join(out)

    def _spawn(self, argv: list[str], name: str, env: dict) -> subprocess.Popen:
        if self.die_with_parent:
            argv = [SETPRIV, "--pdeathsig", "TERM", "--", *argv]
        # The daemons' own stdout/stderr must not be our pipes: a daemon holding a pipe's
        # write end open keeps a caller that reads it (subprocess.run, CI logs) waiting.
        out = open(os.path.join(self.workdir, name, f"{name}.stdout"), "ab")
        self._out_files.append(out)
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, close_fds=True,
                                cwd=self.workdir)

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
        d = os.path.dirname(self.workdir)
        while d != "/":
            if not os.stat(d).st_mode & 0o001:
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
        files = [os.path.join(md, sub, n) for sub in ("new", "cur")
                 for n in os.listdir(os.path.join(md, sub)) if not n.startswith(".")]
        return sorted(files, key=lambda p: (os.stat(p).st_mtime, p))

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
            pki = _certs.make_ca(os.path.join(self.dovecot_dir, "pki"))
            leaf = pki.issue([HOSTNAME], basename="dovecot")
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
# Children see only these variables; the marker lets the harness find every process.
import_environment = TZ CORE_OUTOFMEM CORE_ERROR {_MARKER_VAR}
hostname = {HOSTNAME}
protocols = imap pop3 lmtp
listen = {h}
{ssl}# Nothing is trusted by address: only a PROXY v2 SSL TLV can make a session secured.
login_trusted_networks =
haproxy_trusted_networks = 127.0.0.0/8
auth_mechanisms = plain login
auth_verbose = yes
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
"""
        with open(self.dovecot_conf, "w") as f:
            f.write(conf)

    def _start_dovecot(self) -> None:
        self._dovecot = self._spawn([DOVECOT, "-F", "-c", self.dovecot_conf], "dovecot",
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
# No syslog socket here: log to a file through postlogd (the `postlog` master.cf service).
maillog_file = {self.postfix_log_path}
maillog_file_prefixes = {self.workdir}
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
        with open(os.path.join(d, "main.cf"), "w") as f:
            f.write(main_cf)
        with open(os.path.join(d, "master.cf"), "w") as f:
            f.write(master_cf)

    def _start_postfix(self) -> None:
        # `master -s` is what `postfix start-fg` runs when not PID 1: foreground, stdout kept.
        env = dict(self._env(), MAIL_CONFIG=self.postfix_dir)
        self._postfix = self._spawn([POSTFIX_MASTER, "-s", "-c", self.postfix_dir],
                                    "postfix", env)
