"""The benchmark still works: `bench/run --quick` runs every scenario on mailsnid, haproxy, hitch
and stunnel and writes a results table. Only that it ran is checked — never a figure: timing is
measured in bench/, not asserted in tests.

Both pick free ports: the fixed ones they once used (and the test passed) are held open here
while they run, as another suite on the same host might."""

import os
import re
import subprocess
import tempfile
import unittest

from mailsnid_runner import MAILSNID, ROOT, hold_ports


class BenchQuick(unittest.TestCase):
    def hold(self, ports):
        held = hold_ports(ports)
        self.addCleanup(lambda: [s.close() for s in held])

    def test_quick_run_produces_the_table_for_every_proxy(self):
        # The ports of the old defaults (29000) and of the old test's --port-base 27000.
        self.hold([b + off for b in (27000, 29000) for off in (443, 143, 80, 81, 82, 83)])
        out = os.path.join(tempfile.mkdtemp(prefix="mailsnid-bench-"), "RESULTS.md")
        r = subprocess.run([os.path.join(ROOT, "bench", "run"), "--quick", "--out", out],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])
        with open(out) as f:
            table = f.read()
        lines = table.splitlines()
        header = next(l for l in lines if l.startswith("| figure | better |"))
        proxies = [c.strip() for c in header.strip("|").split("|")][2:]
        self.assertEqual(proxies, ["mailsnid", "mailsnid (offload off)", "haproxy", "hitch",
                                   "stunnel"], header)
        row = next(l for l in lines if l.startswith("| Full TLS 1.3 handshakes"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        # figure, better, then one column per proxy: each a number, none "failed".
        self.assertEqual(len(cells), 2 + len(proxies), row)
        for cell in cells[2:]:
            self.assertRegex(cell, r"^[0-9,]+", row)


    def test_scale_quick_run_produces_its_report(self):
        self.hold([28100 + 993, 28100 + 143])         # the old --quick ports
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
