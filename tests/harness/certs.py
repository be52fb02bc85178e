"""Throwaway test PKI for mailsnid's tests, made with the `openssl` command line tool.

Layout (everything below the directory you pass; nothing is cached between runs):

    DIR/ca.pem                 the root certificate: what test clients trust (cafile)
    DIR/intermediate.pem       the intermediate that signs every leaf
    DIR/ca/root/, DIR/ca/intermediate/   keys and `openssl ca` databases
    DIR/<basename>.pem         leaf + intermediate ("fullchain"): what a server loads
    DIR/<basename>.key         the leaf's private key (PKCS#8 PEM)
    DIR/<basename>.cert.pem    the leaf alone
    DIR/<basename>.chain.pem   the intermediate alone

Why an intermediate: real certificates (Let's Encrypt, commercial CAs) are always served with
one, so a client that trusts only ca.pem can verify a leaf only if the proxy sends the whole
chain from the file. Tests therefore catch a proxy that serves the leaf alone.

Why `openssl ca` for every certificate: OpenSSL 3.0's `req -x509` / `x509 -req` cannot set
notBefore, and tests need expired and not-yet-valid certificates. `openssl ca -startdate
-enddate` can, so all certificates (root included, via -selfsign) go through it, which keeps
one code path and lets the root and intermediate be back-dated so that any leaf validity
window we pick lies inside theirs.

Keys: ECDSA P-256 by default (fast, ~5 ms); RSA-2048 on request (~0.1-0.5 s each).
Not thread-safe per CA directory: `openssl ca` appends to its index file.

Usage:
    ca = make_ca(tmpdir)
    leaf = make_leaf(ca, ["mail.alpha.test", "webmail.alpha.test"], key_type="rsa")
    leaf.fullchain, leaf.key, leaf.not_after
    paths = standard_pki(tmpdir)          # the fixture most tests want
    lineage = make_certbot_tree(le_dir, "alpha.test", ca, ["mail.alpha.test"])
    renew_certbot(le_dir, "alpha.test")   # certbot's renewal, step by step
"""

from __future__ import annotations

import configparser
import datetime as _dt
import ipaddress
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Iterable, Sequence

OPENSSL = os.environ.get("OPENSSL", "openssl")

VALID = "valid"
EXPIRED = "expired"
NOT_YET_VALID = "not_yet_valid"

_UTC = _dt.timezone.utc

_CA_CNF = """\
# Written by tests/harness/certs.py. Only what `openssl ca` / `openssl req` need.
[ca]
default_ca = CA_default

[CA_default]
dir             = {dir}
database        = $dir/index.txt
new_certs_dir   = $dir/newcerts
# Looked up even with -rand_serial (which we use so that serials never repeat across runs).
serial          = $dir/serial
certificate     = {cert}
private_key     = {key}
default_md      = sha256
default_days    = 90
policy          = policy_any
# Tests issue many certificates with one subject (ECDSA + RSA twins, renewals).
unique_subject  = no
email_in_dn     = no
copy_extensions = none
preserve        = no

[policy_any]
organizationName = optional
commonName       = supplied

[req]
distinguished_name = req_dn
prompt             = no

[req_dn]
CN = unused

[v3_root]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always

[v3_intermediate]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
"""


class OpensslError(RuntimeError):
    pass


def _run(args: Sequence[str]) -> str:
    # Capture output so a failure explains itself; openssl's progress dots for RSA go to
    # stderr and would otherwise clutter test output.
    proc = subprocess.run([OPENSSL, *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise OpensslError(f"openssl {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stderr.strip()}")
    return proc.stdout


def _asn1_time(t: _dt.datetime) -> str:
    # `openssl ca` takes UTCTime (YYMMDDHHMMSSZ) up to 2049 and GeneralizedTime after.
    t = t.astimezone(_UTC)
    return t.strftime("%y%m%d%H%M%SZ") if t.year < 2050 else t.strftime("%Y%m%d%H%M%SZ")


def _now() -> _dt.datetime:
    # Whole seconds: certificates carry no fractions, and equal values compare cleanly.
    return _dt.datetime.now(_UTC).replace(microsecond=0)


def _keygen_args(key_type: str) -> list[str]:
    if key_type == "ec":
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    if key_type == "rsa":
        return ["-newkey", "rsa:2048"]
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


def _san_entry(name: str) -> str:
    """An address is an IP entry (a server reached by address, such as a CA for tests inside
    network namespaces); anything else a DNS name."""
    try:
        ipaddress.ip_address(name)
        return f"IP:{name}"
    except ValueError:
        return f"DNS:{name}"


def _write(path: str, data: str | bytes, mode: int = 0o644) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)  # O_CREAT's mode is filtered by umask; keys must end up as asked


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@dataclass
class Leaf:
    """One issued server certificate and its key. `fullchain` is what a server should load."""
    names: list[str]
    key_type: str              # "ec" | "rsa"
    san: bool                  # False: CN only, no subjectAltName extension
    cert: str                  # leaf only
    chain: str                 # intermediate only
    fullchain: str             # leaf + intermediate
    key: str
    not_before: _dt.datetime
    not_after: _dt.datetime

    @property
    def pem(self) -> str:
        return self.fullchain


class _Signer:
    """One `openssl ca` instance: a key, its certificate, and a database directory."""

    def __init__(self, directory: str):
        self.dir = directory
        self.key = os.path.join(directory, "key.pem")
        self.cert = os.path.join(directory, "cert.pem")
        self.cnf = os.path.join(directory, "ca.cnf")

    def init_dirs(self) -> None:
        os.makedirs(os.path.join(self.dir, "newcerts"), exist_ok=True)
        _write(os.path.join(self.dir, "index.txt"), "")
        _write(os.path.join(self.dir, "serial"), "01\n")
        _write(self.cnf, _CA_CNF.format(dir=self.dir, cert=self.cert, key=self.key))

    def sign(self, csr: str, out: str, *, not_before: _dt.datetime, not_after: _dt.datetime,
             extensions: str, extfile: str | None = None, selfsign: bool = False) -> None:
        args = ["ca", "-batch", "-notext", "-config", self.cnf, "-in", csr, "-out", out,
                "-rand_serial", "-startdate", _asn1_time(not_before),
                "-enddate", _asn1_time(not_after), "-extensions", extensions]
        if extfile:
            args += ["-extfile", extfile]
        if selfsign:
            args += ["-selfsign", "-keyfile", self.key]
        _run(args)


class CA:
    """A root CA and (by default) an intermediate CA that issues the leaves.

    `ca_pem` is the trust anchor for clients. With intermediate=False the root signs leaves
    directly and the `chain` part of every leaf is empty.
    """

    def __init__(self, directory: str, intermediate: bool = True,
                 name: str = "mailsnid test", _load: bool = False):
        self.dir = os.path.abspath(directory)
        self.ca_dir = os.path.join(self.dir, "ca")
        self.ca_pem = os.path.join(self.dir, "ca.pem")
        self.intermediate_pem = os.path.join(self.dir, "intermediate.pem")
        self._root = _Signer(os.path.join(self.ca_dir, "root"))
        self._inter = _Signer(os.path.join(self.ca_dir, "intermediate"))
        if _load:
            self.has_intermediate = os.path.exists(self._inter.cert)
        else:
            self.has_intermediate = intermediate
            self._create(name)
        self._issuer = self._inter if self.has_intermediate else self._root
        self._counter = 0

    @classmethod
    def load(cls, directory: str) -> "CA":
        """Reopen a CA made earlier in this run (e.g. by standard_pki) to issue more leaves."""
        ca = cls(directory, _load=True)
        if not os.path.exists(ca._root.cert):
            raise FileNotFoundError(f"no test CA in {directory}")
        return ca

    def _create(self, name: str) -> None:
        os.makedirs(self.dir, exist_ok=True)
        now = _now()
        # Back-date the CAs a year so that back-dated ("expired") leaves still fall inside
        # their issuers' validity: the test then fails for the leaf's reason only.
        nb, na = now - _dt.timedelta(days=365), now + _dt.timedelta(days=3650)

        root = self._root
        root.init_dirs()
        csr = os.path.join(root.dir, "req.csr")
        _run(["req", "-new", *_keygen_args("ec"), "-nodes", "-keyout", root.key, "-out", csr,
              "-config", root.cnf, "-subj", f"/O={name}/CN={name} root CA"])
        os.chmod(root.key, 0o600)
        root.sign(csr, root.cert, not_before=nb, not_after=na, extensions="v3_root",
                  selfsign=True)
        _write(self.ca_pem, _read(root.cert))

        if self.has_intermediate:
            inter = self._inter
            inter.init_dirs()
            csr = os.path.join(inter.dir, "req.csr")
            _run(["req", "-new", *_keygen_args("ec"), "-nodes", "-keyout", inter.key,
                  "-out", csr, "-config", inter.cnf,
                  "-subj", f"/O={name}/CN={name} intermediate CA"])
            os.chmod(inter.key, 0o600)
            root.sign(csr, inter.cert, not_before=nb, not_after=na,
                      extensions="v3_intermediate")
            _write(self.intermediate_pem, _read(inter.cert))

    @property
    def chain_text(self) -> str:
        return _read(self._inter.cert) if self.has_intermediate else ""

    def issue(self, names: str | Iterable[str], *, key_type: str = "ec",
              validity: str = VALID, san: bool = True, days: int = 90,
              not_before: _dt.datetime | None = None, not_after: _dt.datetime | None = None,
              basename: str | None = None, out_dir: str | None = None,
              key_file: str | None = None) -> Leaf:
        """Issue a server certificate for `names` (first name is the CN; an IP address becomes
        an IP entry of the subjectAltName).

        validity: "valid" (now-1h .. now+days), "expired" (ended yesterday), or
        "not_yet_valid" (starts tomorrow); explicit not_before/not_after override it.
        san=False makes a CN-only certificate (no subjectAltName), the legacy form a proxy
        must still be able to index by CN. key_file reuses an existing key (certbot
        --reuse-key style) instead of generating one.
        """
        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ValueError("at least one name is needed")
        now = _now()
        if validity == VALID:
            nb, na = now - _dt.timedelta(hours=1), now + _dt.timedelta(days=days)
        elif validity == EXPIRED:
            nb, na = now - _dt.timedelta(days=days + 1), now - _dt.timedelta(days=1)
        elif validity == NOT_YET_VALID:
            nb, na = now + _dt.timedelta(days=1), now + _dt.timedelta(days=days + 1)
        else:
            raise ValueError(f"validity must be valid/expired/not_yet_valid, not {validity!r}")
        nb = not_before or nb
        na = not_after or na

        self._counter += 1
        if basename is None:
            stem = re.sub(r"[^A-Za-z0-9.-]+", "_", names[0].replace("*", "wildcard"))
            basename = f"{stem}.{key_type}"
            if validity != VALID:
                basename += f".{validity}"
            if not san:
                basename += ".cn"
        out_dir = os.path.abspath(out_dir or self.dir)
        os.makedirs(out_dir, exist_ok=True)
        base = os.path.join(out_dir, basename)
        key, cert = base + ".key", base + ".cert.pem"
        chain, fullchain = base + ".chain.pem", base + ".pem"
        # The CSR and extension file are scratch: keep them beside the CA, not the outputs.
        work = os.path.join(self._issuer.dir, f"leaf{self._counter}")

        keyusage = "digitalSignature" + (", keyEncipherment" if key_type == "rsa" else "")
        ext = ["[leaf]", "basicConstraints = critical, CA:FALSE",
               f"keyUsage = critical, {keyusage}", "extendedKeyUsage = serverAuth",
               "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid"]
        if san:
            ext.append("subjectAltName = " + ", ".join(_san_entry(n) for n in names))
        _write(work + ".ext", "\n".join(ext) + "\n")

        # ca.cnf is reused only for its [req] section; -subj gives the real subject.
        subj = f"/CN={names[0]}"
        if key_file:
            _run(["req", "-new", "-key", key_file, "-out", work + ".csr",
                  "-config", self._issuer.cnf, "-subj", subj])
            if os.path.abspath(key_file) != key:
                _write(key, _read(key_file), 0o600)
        else:
            _run(["req", "-new", *_keygen_args(key_type), "-nodes", "-keyout", key,
                  "-out", work + ".csr", "-config", self._issuer.cnf, "-subj", subj])
            os.chmod(key, 0o600)
        self._issuer.sign(work + ".csr", cert, not_before=nb, not_after=na,
                          extensions="leaf", extfile=work + ".ext")
        leaf_text = _read(cert)
        _write(chain, self.chain_text)
        _write(fullchain, leaf_text + self.chain_text)
        return Leaf(names=names, key_type=key_type, san=san, cert=cert, chain=chain,
                    fullchain=fullchain, key=key, not_before=nb, not_after=na)


def make_ca(directory: str, intermediate: bool = True) -> CA:
    """Create a fresh root (+ intermediate) CA in `directory`; DIR/ca.pem is the root."""
    return CA(directory, intermediate=intermediate)


def make_leaf(ca: CA, names: str | Iterable[str], **kwargs) -> Leaf:
    """Issue a leaf; see CA.issue for the keyword arguments."""
    return ca.issue(names, **kwargs)


def cert_text(path: str) -> str:
    """`openssl x509 -text` of the first certificate in a PEM file (for assertions/debugging)."""
    return _run(["x509", "-in", path, "-noout", "-text"])


def cert_fingerprint(path_or_pem: str) -> str:
    """SHA-256 fingerprint (hex, no colons, upper case) of the first certificate in a file or
    PEM string; compare with what a client saw to tell which certificate was served."""
    if "-----BEGIN" in path_or_pem:
        proc = subprocess.run([OPENSSL, "x509", "-noout", "-fingerprint", "-sha256"],
                              input=path_or_pem, capture_output=True, text=True, check=True)
        out = proc.stdout
    else:
        out = _run(["x509", "-in", path_or_pem, "-noout", "-fingerprint", "-sha256"])
    return out.strip().split("=", 1)[1].replace(":", "").upper()


# ---------------------------------------------------------------------------------------
# certbot's on-disk layout (certbot 1.x/2.x, certbot/_internal/storage.py)
#
#   BASE/archive/NAME/{cert,chain,fullchain,privkey}N.pem    real files, privkey mode 0600
#   BASE/live/NAME/{cert,chain,fullchain,privkey}.pem        relative symlinks into archive
#   BASE/live/NAME/README, BASE/live/README
#   BASE/renewal/NAME.conf
# BASE/archive, BASE/live and BASE/renewal are mode 0700.
#
# How certbot deploys a renewal (RenewableCert.save_successor + update_all_links_to): it writes
# archive/NAME/privkeyN, certN, chainN, fullchainN; creates live/NAME/previous_KIND.pem links
# (absolute targets) as crash-recovery markers; then for KIND in cert, privkey, chain,
# fullchain, in that order: os.unlink(live link), os.symlink(new target) -- NOT atomic: each
# link is briefly missing, and between the privkey and fullchain steps live/NAME holds the
# new key beside the old fullchain (a key/cert mismatch); finally it removes the previous_*
# links. renew_certbot(mode="certbot") repeats exactly that; mode="atomic" instead makes
# each new link under a temporary name and renames it over the old one, which is what a
# careful deploy tool (or a future certbot) does.
# ---------------------------------------------------------------------------------------

ALL_FOUR = ("cert", "privkey", "chain", "fullchain")

_LIVE_README = ("This directory contains your keys and certificates.\n\n"
                "`{p}privkey.pem`  : the private key for your certificate.\n"
                "`{p}fullchain.pem`: the certificate file used in most server software.\n"
                "`{p}chain.pem`    : used for OCSP stapling in Nginx >=1.3.7.\n"
                "`{p}cert.pem`     : will break many server configurations, and should "
                "not be used\n                 without reading further documentation.\n")


@dataclass
class CertbotLineage:
    base: str
    name: str
    version: int
    names: list[str]
    key_type: str
    live_dir: str
    archive_dir: str
    leaf: Leaf                       # the certificate that the live links now point to
    live: dict = field(default_factory=dict)      # kind -> live symlink path

    @property
    def fullchain(self) -> str:
        return self.live["fullchain"]

    @property
    def privkey(self) -> str:
        return self.live["privkey"]


def _lineage_paths(base: str, name: str) -> tuple[str, str, str]:
    base = os.path.abspath(base)
    return (os.path.join(base, "live", name), os.path.join(base, "archive", name),
            os.path.join(base, "renewal", name + ".conf"))


def _write_archive_version(ca: CA, archive: str, n: int, names: list[str], key_type: str,
                           validity: str, days: int, reuse_key: str | None,
                           key_link: str | None = None) -> Leaf:
    # Issue into a scratch dir under the CA, then copy into archive/ in certbot's order
    # (privkey, cert, chain, fullchain) so the archive never holds a half-written version
    # file under its final name longer than certbot would.
    leaf = ca.issue(names, key_type=key_type, validity=validity, days=days,
                    basename=f"certbot-{os.path.basename(archive)}-{n}",
                    out_dir=os.path.join(ca.ca_dir, "certbot"), key_file=reuse_key)
    files = {"privkey": leaf.key, "cert": leaf.cert, "chain": leaf.chain,
             "fullchain": leaf.fullchain}
    for kind in ALL_FOUR:
        dest = os.path.join(archive, f"{kind}{n}.pem")
        if kind == "privkey" and key_link:
            os.symlink(key_link, dest)      # certbot --reuse-key links, never copies
        else:
            _write(dest, _read(files[kind]), 0o600 if kind == "privkey" else 0o644)
    return Leaf(names=names, key_type=key_type, san=True,
                cert=os.path.join(archive, f"cert{n}.pem"),
                chain=os.path.join(archive, f"chain{n}.pem"),
                fullchain=os.path.join(archive, f"fullchain{n}.pem"),
                key=os.path.join(archive, f"privkey{n}.pem"),
                not_before=leaf.not_before, not_after=leaf.not_after)


def _write_renewal_conf(path: str, base: str, name: str, version: int, names: list[str],
                        key_type: str, ca: CA) -> None:
    live, archive, _ = _lineage_paths(base, name)
    # certbot's own keys (a configobj file; these lines parse the same way) ...
    lines = ["# renew_before_expiry = 30 days", "version = 2.1.0",
             f"archive_dir = {archive}"]
    lines += [f"{k} = {os.path.join(live, k + '.pem')}" for k in ALL_FOUR]
    lines += ["", "# Options used in the renewal process", "[renewalparams]",
              "authenticator = standalone", "server = https://acme.invalid/directory",
              f"key_type = {'ecdsa' if key_type == 'ec' else 'rsa'}", "",
              # ... and what renew_certbot() needs to issue the next version.
              "[mailsnid_harness]", f"ca_dir = {ca.dir}", f"names = {','.join(names)}",
              f"key_type = {key_type}", f"version = {version}"]
    _write(path, "\n".join(lines) + "\n")


def _read_renewal_conf(path: str) -> dict:
    cp = configparser.ConfigParser(interpolation=None)
    with open(path) as f:
        cp.read_string("[top]\n" + f.read())
    return dict(cp["mailsnid_harness"])


def make_certbot_tree(base: str, name: str, ca: CA, names: Iterable[str] | None = None,
                      key_type: str = "ec", validity: str = VALID,
                      days: int = 90) -> CertbotLineage:
    """Create certbot's layout for lineage NAME (version 1) under BASE, as `certbot
    certonly` leaves it; `names` defaults to [NAME]. Point a cert_dirs entry at BASE/live."""
    names = [name] if names is None else list(names)
    live, archive, renewal = _lineage_paths(base, name)
    for d in ("archive", "live", "renewal"):
        os.makedirs(os.path.join(base, d), mode=0o700, exist_ok=True)
        os.chmod(os.path.join(base, d), 0o700)
    if os.path.exists(archive) or os.path.exists(live):
        raise FileExistsError(f"lineage {name} already exists under {base}")
    os.makedirs(archive)
    os.makedirs(live)
    leaf = _write_archive_version(ca, archive, 1, names, key_type, validity, days, None)
    links = {}
    for kind in ALL_FOUR:
        link = os.path.join(live, kind + ".pem")
        os.symlink(os.path.relpath(os.path.join(archive, f"{kind}1.pem"), live), link)
        links[kind] = link
    top_readme = os.path.join(base, "live", "README")
    if not os.path.exists(top_readme):
        _write(top_readme, _LIVE_README.format(p="[cert name]/"))
    _write(os.path.join(live, "README"), _LIVE_README.format(p=""))
    _write_renewal_conf(renewal, base, name, 1, names, key_type, ca)
    return CertbotLineage(base=os.path.abspath(base), name=name, version=1, names=names,
                          key_type=key_type, live_dir=live, archive_dir=archive, leaf=leaf,
                          live=links)


def renew_certbot(base: str, name: str, *, names: Iterable[str] | None = None,
                  key_type: str | None = None, validity: str = VALID, days: int = 90,
                  reuse_key: bool = False, mode: str = "certbot",
                  step_delay: float = 0.0) -> CertbotLineage:
    """Deploy the next version of lineage NAME the way `certbot renew` does.

    Writes archive/NAME/*N+1.pem, then swaps the live links. mode="certbot": unlink then
    symlink each link in certbot's order (cert, privkey, chain, fullchain) with transient
    previous_*.pem links, exactly as certbot does, gaps and key/cert mismatch windows
    included; mode="atomic": symlink to a temporary name, then rename over the old link.
    step_delay sleeps between link steps so a test can widen the windows a watcher may hit.
    names/key_type default to the lineage's; reuse_key keeps the old private key
    (certbot --reuse-key: privkeyN+1 is a symlink to the old key file, as certbot does).
    """
    if mode not in ("certbot", "atomic"):
        raise ValueError("mode must be 'certbot' or 'atomic'")
    live, archive, renewal = _lineage_paths(base, name)
    meta = _read_renewal_conf(renewal)
    ca = CA.load(meta["ca_dir"])
    names = list(names) if names is not None else meta["names"].split(",")
    key_type = key_type or meta["key_type"]

    versions = [int(m.group(1)) for f in os.listdir(archive)
                if (m := re.fullmatch(r"cert(\d+)\.pem", f))]
    prior = int(re.search(r"(\d+)\.pem$", os.readlink(os.path.join(live, "cert.pem")))[1])
    n = max(versions) + 1
    old_key = os.path.join(archive, f"privkey{prior}.pem")
    key_link = None
    if reuse_key:
        key_link = os.readlink(old_key) if os.path.islink(old_key) else f"privkey{prior}.pem"
    leaf = _write_archive_version(ca, archive, n, names, key_type, validity, days,
                                  old_key if reuse_key else None, key_link)

    links = {kind: os.path.join(live, kind + ".pem") for kind in ALL_FOUR}
    if mode == "certbot":
        previous = {kind: os.path.join(live, f"previous_{kind}.pem") for kind in ALL_FOUR}
        for kind in ALL_FOUR:
            cur = os.path.realpath(links[kind])
            os.symlink(cur, previous[kind])
        for kind in ALL_FOUR:
            target_dir = os.path.dirname(os.readlink(links[kind]))
            os.unlink(links[kind])
            if step_delay:
                time.sleep(step_delay)
            os.symlink(os.path.join(target_dir, f"{kind}{n}.pem"), links[kind])
            if step_delay:
                time.sleep(step_delay)
        for kind in ALL_FOUR:
            os.unlink(previous[kind])
    else:
        for kind in ALL_FOUR:
            target_dir = os.path.dirname(os.readlink(links[kind]))
            tmp = os.path.join(live, f".{kind}.pem.tmp")
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(os.path.join(target_dir, f"{kind}{n}.pem"), tmp)
            os.rename(tmp, links[kind])
            if step_delay:
                time.sleep(step_delay)

    _write_renewal_conf(renewal, base, name, n, names, key_type, ca)
    return CertbotLineage(base=os.path.abspath(base), name=name, version=n, names=names,
                          key_type=key_type, live_dir=live, archive_dir=archive, leaf=leaf,
                          live=links)


# ---------------------------------------------------------------------------------------
# The fixture most tests use
# ---------------------------------------------------------------------------------------

def standard_pki(directory: str) -> dict[str, str]:
    """Make the standard test certificates in `directory`; returns paths:

      ca, intermediate, ca_dir (CA.load(ca_dir) issues more)
      default_cert/_key          mail.hoster.test, ECDSA: the server-wide default
      alpha_ec_cert/_key         mail.alpha.test + webmail.alpha.test, ECDSA (exact names)
      alpha_rsa_cert/_key        the same names, RSA-2048
      beta_wild_cert/_key        *.beta.test, ECDSA
      gamma_expired_cert/_key    mail.gamma.test, ECDSA, expired yesterday
    Every *_cert is leaf + intermediate; clients verify against `ca`.
    """
    ca = make_ca(directory)
    out: dict[str, str] = {"ca": ca.ca_pem, "intermediate": ca.intermediate_pem,
                           "ca_dir": ca.dir}
    specs = [
        ("default", ["mail.hoster.test"], "ec", VALID),
        ("alpha_ec", ["mail.alpha.test", "webmail.alpha.test"], "ec", VALID),
        ("alpha_rsa", ["mail.alpha.test", "webmail.alpha.test"], "rsa", VALID),
        ("beta_wild", ["*.beta.test"], "ec", VALID),
        ("gamma_expired", ["mail.gamma.test"], "ec", EXPIRED),
    ]
    for label, names, kt, validity in specs:
        leaf = ca.issue(names, key_type=kt, validity=validity)
        out[f"{label}_cert"] = leaf.fullchain
        out[f"{label}_key"] = leaf.key
    return out


if __name__ == "__main__":
    # Manual check: python3 certs.py DIR  -> makes the standard PKI and prints the paths.
    import sys
    import tempfile
    d = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="mailsnid-pki-")
    t0 = time.monotonic()
    paths = standard_pki(d)
    for k, v in paths.items():
        print(f"{k:22} {v}")
    print(f"standard_pki took {time.monotonic() - t0:.2f} s")
