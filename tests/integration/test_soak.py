"""A short soak (issue 6, item 8): tests/soak/soak.py for 30 s.

Real Dovecot and Postfix plus an HTTP backend behind mailsnid, with every kind of listener
(IMAPS, IMAP STARTTLS, POP3S, POP3 STLS, SMTPS, submission with STARTTLS required, port-25
style STARTTLS optional, HTTPS), clients looping over real sessions on random SNI names with
hostname verification, a reload every second (SIGHUP and certbot renewals the file watcher
picks up, config edits that change routes and backends), a SIGUSR2 binary upgrade every 12 s,
and the backends stopped and restarted while it runs. Passes when soak.py exits 0:
no unexpected client failure (the protocols' "unavailable" replies and sessions cut while the
backends are down are expected and counted apart), every outage probe answered in the
protocol's words, reloads without failure, open fds back to the warm-up baseline, RSS growth
after warm-up under 5 %, and a clean exit on SIGTERM.

Under SANITIZE=1 (build-san/mailsnid) the soak runs fewer clients, and the RSS criterion is
skipped: ASan's quarantine and shadow memory make RSS meaningless. There the test checks the
failures, the fds and what the sanitizers report when mailsnid exits (LeakSanitizer's leak
report included), which soak.py reads through MailsnidProcess.stop().

`make soak SOAK_TIME=...` runs the same script for longer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import unittest

from mailsnid_runner import ROOT, SANITIZE, SLOW

SOAK = os.path.join(ROOT, "tests", "soak", "soak.py")
DURATION = 30


class ShortSoak(unittest.TestCase):
    def test_soak_30s(self):
        args = [sys.executable, SOAK, "--duration", str(DURATION), "--workers", "2", "--strict-unavailable",
                "--clients", "3" if SANITIZE else "6", "--upgrade-every", "12"]
        try:
            proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=DURATION + 120 * SLOW)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
            self.fail(f"soak did not finish in time:\n{(out or '')[-6000:]}")
        summary = proc.stdout[proc.stdout.find("===================="):]
        sys.stderr.write("\n" + summary)
        self.assertEqual(proc.returncode, 0, proc.stdout[-8000:])


if __name__ == "__main__":
    unittest.main()
