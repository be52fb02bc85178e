"""The benchmark still works: `bench/run --quick` runs every scenario on mailsnid, haproxy, hitch
and stunnel and writes a results table. Only that it ran is checked — never a figure: timing is
measured in bench/, not asserted in tests."""

import os
import re
import subprocess
import tempfile
import unittest

from mailsnid_runner import MAILSNID, ROOT


class BenchQuick(unittest.TestCase):
    def test_quick_run_produces_the_table_for_every_proxy(self):
        out = os.path.join(tempfile.mkdtemp(prefix="mailsnid-bench-"), "RESULTS.md")
        r = subprocess.run([os.path.join(ROOT, "bench", "run"), "--quick", "--out", out,
                            "--port-base", "27000"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        with open(out) as f:
            table = f.read()
        row = next(l for l in table.splitlines() if l.startswith("| Full TLS 1.3 handshakes"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        # figure, better, then one column per proxy: each a number, none "failed".
        self.assertEqual(len(cells), 6, row)
        for cell in cells[2:]:
            self.assertRegex(cell, r"^[0-9,]+", row)


    def test_scale_quick_run_produces_its_report(self):
        r = subprocess.run([os.path.join(ROOT, "bench", "scale"), "--quick"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, MAILSNID=MAILSNID))
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        report = os.path.join(ROOT, "bench", "out", "scale-quick", "SCALE-quick.md")
        with open(report) as f:
            text = f.read()
        self.assertRegex(text, r"start → serving.*\| 1,000 \|")


if __name__ == "__main__":
    unittest.main()
