"""A watchdog for what a test starts: a tiny `sh` blocked reading a pipe whose only write end
this Python process holds. Whatever ends the process (an exception never seen, SIGKILL, a CI
timeout) closes that end, `read` returns, and SCRIPT runs. Used by backends.py (the mail
daemons) and netns.py (the namespaces)."""

from __future__ import annotations

import os
import subprocess


class Watchdog:
    def __init__(self, script: str, name: str, args: list[str], env: dict | None = None):
        r, w = os.pipe()            # both non-inheritable: what the test started got neither end
        try:
            self.proc = subprocess.Popen(["/bin/sh", "-c", "read _; " + script, name, *args],
                                         stdin=r, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        finally:
            os.close(r)
        self.w = w

    def cancel(self) -> None:
        """Stops the watchdog without running its script (the test cleans up itself)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        if self.w is not None:
            os.close(self.w)
            self.w = None
