"""The README's demo command works: `scripts/demo.sh --check` brings up real Dovecot and Postfix
behind mailsnid with the demo certificates, runs every command the demo prints (a real mail
round trip: swaks sends through SMTPS and submission, curl reads it back over IMAPS and IMAP with
STARTTLS, all verifying hostnames against the demo CA), and stops everything.

And it works where people run it: from a clone in a 0700 home (Debian's /root), with its default
ports taken, and twice at once (two test suites on one host)."""

import os
import re
import shutil
import subprocess
import tempfile
import unittest
from concurrent.futures import ThreadPoolExecutor

from mailsnid_runner import HERE, MAILSNID, ROOT, hold_ports

DEMO_PORTS = [10993, 10143, 10995, 10110, 10465, 10587, 10025, 10443, 19180]


def run_check(root: str = ROOT, **env) -> subprocess.CompletedProcess:
    """demo.py --check from `root` (scripts/demo.sh adds only deps and make, done already)."""
    return subprocess.run(["python3", os.path.join(root, "scripts", "demo.py"), "--check"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MAILSNID=MAILSNID, **env))


def private_home(test: unittest.TestCase) -> str:
    """A 0700 directory outside the temp dir, like Debian's /root (and every home since 12)."""
    home = tempfile.mkdtemp(prefix="home-", dir=os.path.join(ROOT, "build"))
    test.addCleanup(shutil.rmtree, home, True)
    os.chmod(home, 0o700)
    return home


class Demo(unittest.TestCase):
    def assertPassed(self, r: subprocess.CompletedProcess) -> None:
        self.assertEqual(r.returncode, 0, r.stdout[-6000:] + r.stderr[-3000:])
        self.assertNotIn("[ FAIL ]", r.stdout)
        self.assertIn("demo --check: PASSED", r.stdout)

    def test_demo_check(self):
        env = dict(os.environ, MAILSNID=MAILSNID)
        r = subprocess.run([os.path.join(ROOT, "scripts", "demo.sh"), "--check"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300, env=env)
        self.assertPassed(r)
        # The clients connect from 127.0.0.5, and the backends say so: only the PROXY header
        # can have told them (mailsnid reaches them from 127.0.0.1).
        self.assertIn("--interface 127.0.0.5", r.stdout)
        self.assertRegex(r.stdout, r"OK  \] +\d+\. Dovecot saw the real client \(127\.0\.0\.5")
        # Its files went to a world-reachable temp dir, removed after a passing check.
        run = re.search(r"demo: files in (\S+)", r.stdout).group(1)
        self.assertFalse(run.startswith(ROOT + os.sep), run)
        self.assertFalse(os.path.exists(run), run)

    def test_check_from_a_clone_in_a_private_home(self):
        # A clone in /root (0700; every home since Debian 12 too): Dovecot's and Postfix's
        # users cannot enter it, so nothing they use may live there.
        # users cannot enter it, so nothing they use may live there; nor in a TMPDIR there.
        home = private_home(self)
        clone = os.path.join(home, "mailsnid")
        for sub in ("scripts", os.path.join("tests", "harness")):
            shutil.copytree(os.path.join(ROOT, sub), os.path.join(clone, sub),
                            ignore=shutil.ignore_patterns("__pycache__"))
        os.mkdir(os.path.join(home, "tmp"), 0o700)
        r = run_check(clone, TMPDIR=os.path.join(home, "tmp"))
        self.assertPassed(r)
        self.assertFalse(os.path.exists(os.path.join(clone, "demo")))
        self.assertEqual(os.stat(home).st_mode & 0o777, 0o700)

    def test_suite_files_reachable_with_a_private_tmpdir(self):
        # mailsnid re-reads its config and keys after dropping to nobody: the suite's temp
        # files must be where nobody can reach them even when TMPDIR is private
        # (pam_tmpdir's /tmp/user/0, a TMPDIR in /root).
        tmp = os.path.join(private_home(self), "tmp")
        os.mkdir(tmp, 0o700)
        r = subprocess.run(["python3", "-m", "unittest", "discover", "-s", HERE,
                            "-p", "test_privs.py"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, MAILSNID=MAILSNID, TMPDIR=tmp))
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-6000:])
        self.assertEqual(os.listdir(tmp), [])

    def test_check_passes_with_the_default_ports_taken(self):
        held = hold_ports(DEMO_PORTS)
        self.addCleanup(lambda: [s.close() for s in held])
        self.assertPassed(run_check())

    def test_two_checks_at_once(self):
        with ThreadPoolExecutor(2) as ex:
            results = list(ex.map(lambda _: run_check(), range(2)))
        for r in results:
            self.assertPassed(r)


if __name__ == "__main__":
    unittest.main()
