"""A line printed to stderr goes out in one ``write`` when kvgate runs unbuffered (``PYTHONUNBUFFERED``,
``python -u``): ``print`` wrote the text and its newline apart, and a log line from the off-loop writer
thread to the same pipe could land between them, splicing a refusal (``kvgate epp: cannot start: ...``) a
test or supervisor reads as one line (flake27's finding, session 27). Fails before ``entry.whole_lines``:
two writes a line."""

from __future__ import annotations

import subprocess
import sys

_CHILD = """import io, sys
from kvgate.entry import whole_lines

class Raw(io.RawIOBase):
    writes = []
    def writable(self):
        return True
    def write(self, b):
        Raw.writes.append(bytes(b))
        return len(b)

sys.stderr = io.TextIOWrapper(Raw(), encoding="utf-8", write_through=True)  # (as -u makes it)
whole_lines()
print("kvgate epp: cannot start: --port: a refusal", file=sys.stderr)
print("two", "parts", file=sys.stderr)
sys.__stdout__.write(repr(Raw.writes) + "\\n")
"""


def test_a_line_to_stderr_is_one_write_when_unbuffered() -> None:
    out = subprocess.run([sys.executable, "-u", "-c", _CHILD], capture_output=True, text=True, timeout=60,
                         check=True).stdout  # fmt: skip
    assert out.strip() == repr([b"kvgate epp: cannot start: --port: a refusal\n", b"two parts\n"]), out


def test_kvgate_main_makes_stderr_whole_lines_when_unbuffered() -> None:
    """The ``kvgate`` entry point (``kvgate.cli.main`` from the command line) applies it."""
    code = (
        "import sys; from kvgate import cli; sys.argv = ['kvgate', '--version']; cli.main(); "
        "print(sys.stderr.write_through, sys.stderr.line_buffering)"
    )
    out = subprocess.run([sys.executable, "-u", "-c", code], capture_output=True, text=True, timeout=60,
                         check=True).stdout  # fmt: skip
    assert out.splitlines()[-1] == "False True", out
