"""The ports a child ``kvgate`` process bound itself (``--port 0`` and the like) read back from its start
line in a file it writes its stdout to: no port picked free in the test and bound later by the child (another
process may take it in between, or hold it already: a fixed port another run of the same test, or any
other program, listens on).

A file, not a pipe: nothing fills while nobody reads, and the whole text is searched each time. A log line
on the same file never splices these start lines, each written in one write (``kvgate.stderrlog.say``); a
line from ``print`` (``kvgate sim``'s) is two writes under PYTHONUNBUFFERED: read such from stdout alone.
The deadline is generous (60 s): a start at load ~10 takes seconds, and the wait ends as soon as the line
is there."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from pathlib import Path

LIMIT_S = 60.0
# (each port followed by a character: a line read while its write is half on disk must not match a cut port,
# review s27-rev-a27 F4)
# ``kvgate serve``: its data port and admin port (one process or ``--workers``)
SERVE = re.compile(
    r"listening on http://127\.0\.0\.1:(\d+)[^\n]*, admin on https?://127\.0\.0\.1:(\d+)(?=\D)"
)
# ``kvgate serve --clusters``: the global gateway's data port and admin port
HUB = re.compile(r"global gateway on http://127\.0\.0\.1:(\d+), admin on https?://127\.0\.0\.1:(\d+)(?=\D)")
# ``kvgate epp``: gRPC, health and metrics ports
EPP = re.compile(r"kvgate epp ready grpc=(\d+) health=(\d+) metrics=(\d+)(?=\D)")


Popen = subprocess.Popen[bytes]


def _seen(out: Path, line: re.Pattern[str], proc: Popen, end: float) -> tuple[int, ...] | None:
    text = out.read_text(errors="replace") if out.exists() else ""
    if m := line.search(text):
        return tuple(int(g) for g in m.groups())
    assert proc.poll() is None, f"exited ({proc.returncode}) before its start line: {text[-1500:]}"
    assert time.monotonic() < end, f"no start line in {LIMIT_S:.0f} s: {text[-1500:]}"
    return None


def ports(out: Path, line: re.Pattern[str], proc: Popen) -> tuple[int, ...]:
    """The ports ``line``'s groups name once ``proc`` wrote it to ``out`` (at most ``LIMIT_S``)."""
    end = time.monotonic() + LIMIT_S
    while (got := _seen(out, line, proc, end)) is None:
        time.sleep(0.05)
    return got


async def ports_async(out: Path, line: re.Pattern[str], proc: Popen) -> tuple[int, ...]:
    """``ports`` without blocking the loop (an in-process backend the child may call keeps answering)."""
    end = time.monotonic() + LIMIT_S
    while (got := _seen(out, line, proc, end)) is None:  # noqa: ASYNC110 (a file another process writes)
        await asyncio.sleep(0.05)
    return got
