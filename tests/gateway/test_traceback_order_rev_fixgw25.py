"""rev-fixgw25 F2: with ``OffLoopStderr`` a line logged just before an uncaught exception is written after
(or inside) the traceback, which ``sys.excepthook`` writes to stderr at once on the crashing thread, while
the logged line waits for the writer thread (it gets the GIL only once the main thread blocks in the
traceback's first write). Same for ``threading.excepthook``, ``multiprocessing``'s worker traceback and the
``print(..., file=sys.stderr)`` lines in cli.py/workers.py. Passes with logging's StreamHandler (a7dbe3b2);
fails with f2e12c1f's handler."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging
logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
try:
    from kvgate.stderrlog import off_loop_stderr
except ImportError:  # (a7dbe3b2: logging's StreamHandler)
    pass
else:
    off_loop_stderr()
logging.getLogger("kvgate.x").error("the cause")
raise RuntimeError("crash")
"""


def test_a_line_logged_before_a_crash_precedes_its_traceback() -> None:
    for _ in range(3):
        p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=30)
        lines = p.stderr.decode().splitlines()
        assert lines[0] == "ERROR kvgate.x: the cause", lines[:6]
        assert lines[1] == "Traceback (most recent call last):", lines[:6]
