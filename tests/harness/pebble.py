"""Debian's pebble (an ACME CA for tests) with pebble-challtestsrv as its DNS, inside a network
namespace of tests/harness/netns.py: a CA "on the Internet" for a fleet behind a balancer.

    ca = Pebble(workdir, ns, host="198.18.10.1", cert=..., key=..., answer="198.18.1.1")
    ca.start()            # every name resolves to `answer`; the validator connects there on
    ca.directory          # 443 (TLS-ALPN-01) and 80 (HTTP-01): the balancer's ports
    ca.root               # pebble's root (new at every start), from its management port
    ca.new_orders()       # orders pebble has created, from its log
    ca.validations()      # connections its validator made, from its log

Both run inside `ns` on `host`, which `cert` (a leaf for that address) must cover; the ports
are fixed because the namespace is the test's own. The validator waits no 0-15 s
(PEBBLE_VA_NOSLEEP); pebble's default 15 % nonce rejection stays on.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.request

API, MGMT, DNS, CHALL_MGMT = 14000, 15000, 8053, 8055


class Pebble:
    def __init__(self, workdir: str, ns, *, host: str, cert: str, key: str, trust: str,
                 answer: str, tls_port: int = 443, http_port: int = 80):
        self.dir, self.ns, self.host, self.trust = workdir, ns, host, trust
        os.makedirs(workdir, exist_ok=True)
        self.config = os.path.join(workdir, "pebble.json")
        with open(self.config, "w") as f:
            json.dump({"pebble": {"listenAddress": f"{host}:{API}",
                                  "managementListenAddress": f"{host}:{MGMT}",
                                  "certificate": cert, "privateKey": key,
                                  "httpPort": http_port, "tlsPort": tls_port,
                                  "ocspResponderURL": "",
                                  "externalAccountBindingRequired": False}}, f)
        self.answer = answer
        self.log_path = os.path.join(workdir, "pebble.log")
        self.directory = f"https://{host}:{API}/dir"
        self.root = os.path.join(workdir, "pebble-root.pem")
        self.procs: list[subprocess.Popen] = []

    def start(self) -> "Pebble":
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1")
        env.pop("PEBBLE_WFE_NONCEREJECT", None)
        with self.ns.entered():
            # No AAAA answers: the validator would try an IPv6 address first.
            self.procs.append(subprocess.Popen(
                ["pebble-challtestsrv", "-defaultIPv6", "", "-defaultIPv4", self.answer,
                 "-dns01", f"{self.host}:{DNS}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                 "-management", f"{self.host}:{CHALL_MGMT}"],
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            self.procs.append(subprocess.Popen(
                ["pebble", "-config", self.config, "-dnsserver", f"{self.host}:{DNS}"],
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env))
            for port in (CHALL_MGMT, API, MGMT):
                self._wait_listening(port)
            ctx = ssl.create_default_context(cafile=self.trust)
            with urllib.request.urlopen(f"https://{self.host}:{MGMT}/roots/0", context=ctx,
                                        timeout=10) as r:
                root = r.read()
        with open(self.root, "wb") as f:
            f.write(root)
        return self

    def _wait_listening(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}:\n{self.log()}")
            try:
                with socket.create_connection((self.host, port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pebble: nothing listens on {self.host}:{port}")
                time.sleep(0.05)

    def add_a(self, name: str, addr: str) -> None:
        """From now on NAME resolves to ADDR (not to `answer`)."""
        body = json.dumps({"host": name + ".", "addresses": [addr]}).encode()
        with self.ns.entered():
            urllib.request.urlopen(urllib.request.Request(
                f"http://{self.host}:{CHALL_MGMT}/add-a", data=body, method="POST"),
                timeout=10).read()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def new_orders(self) -> int:
        """How many orders pebble has created since it started (one log line each)."""
        return self.log().count("Added order ")

    def validations(self, since: int = 0) -> int:
        """Connections its validator made (or makes) since log offset SINCE: pebble checks each
        challenge several times at once, as a CA validating from several places does."""
        return sum(int(n) for n in re.findall(r"Starting (\d+) validations", self.log()[since:]))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        if hasattr(self, "_log"):
            self._log.close()


def acme_config(directory: str, storage: str, ca_file: str, extra: str = "") -> str:
    """mailsnid's `acme` block against a pebble of the tests: TLS-ALPN-01, one certificate per
    domain for mail.D and webmail.D, a failed order retried after 1 s doubling up to 3 s."""
    return f"""acme = {{
  directory = "{directory}";
  storage = "{storage}";
  ca_file = "{ca_file}";
  challenges = [ "tls-alpn-01" ];
  names = [ "mail.%d", "webmail.%d" ];
  backoff_min = 1; backoff_max = 3;
  {extra}
}};
"""
