"""The README's demo command works: `scripts/demo.sh --check` brings up real Dovecot and Postfix
behind mailsnid with the demo certificates, runs every command the demo prints (a real mail
round trip: swaks sends through SMTPS and submission, curl reads it back over IMAPS and IMAP with
STARTTLS, all verifying hostnames against the demo CA), and stops everything."""

import os
import subprocess
import unittest

from mailsnid_runner import MAILSNID, ROOT


class Demo(unittest.TestCase):
    def test_demo_check(self):
        env = dict(os.environ, MAILSNID=MAILSNID)
        r = subprocess.run([os.path.join(ROOT, "scripts", "demo.sh"), "--check"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env=env)
        self.assertEqual(r.returncode, 0, r.stdout[-6000:] + r.stderr[-3000:])
        self.assertNotIn("[ FAIL ]", r.stdout)


if __name__ == "__main__":
    unittest.main()
