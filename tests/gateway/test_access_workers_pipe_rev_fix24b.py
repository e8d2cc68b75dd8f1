"""Review s24-rev-fix24b F2 (its test): ``--workers`` share one stderr; each worker's ``access.Lines``
wrote its buffer (up to 64 KiB) in one write. A pipe write over PIPE_BUF (4096) is not atomic
(pipe(7)): when the reader lags (a container runtime's log pipe under a burst), two workers' buffers
interleave mid-line. Before (``logging``), each line was its own write (< PIPE_BUF): whole lines,
whatever the reader did.
Two real processes, each a worker's ``Lines`` on the inherited stderr pipe, a reader that lags."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

_CHILD = r"""
import asyncio, sys
from kvgate.gateway import access

async def main(tag: str) -> None:
    if tag == "logging":  # (f1394a8b's way: one logging call per line)
        import logging
        h = logging.StreamHandler(sys.stderr)
        log = logging.getLogger("x")
        log.addHandler(h)
        log.setLevel(logging.INFO)
        for i in range(3000):
            log.info("%s-%05d %s", sys.argv[2], i, "q" * 150)
        return
    lines = access.Lines(sys.stderr)
    for i in range(3000):
        lines.add("%s-%05d %s\n" % (sys.argv[2], i, "q" * 150))
        if i % 50 == 0:
            await asyncio.sleep(0)
    lines.close()

asyncio.run(main(sys.argv[1]))
"""
_LINE = re.compile(r"^[AB]-\d{5} q{150}$")


@pytest.mark.parametrize("how", ["lines", "logging"])
def test_two_workers_lines_on_one_stderr_pipe_stay_whole(how: str) -> None:
    r, w = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, how, name], stderr=w, env=env) for name in "AB"]
    os.close(w)
    data = bytearray()
    try:
        while True:  # (a reader that lags: 4 KiB at a time, the pipe full between reads)
            chunk = os.read(r, 4096)
            if not chunk:
                break
            data += chunk
            time.sleep(0.0005)
    finally:
        os.close(r)
        for p in procs:
            p.wait(timeout=60)
    text = data.decode()
    bad = [x for x in text.splitlines() if not _LINE.match(x)]
    assert len(text.splitlines()) >= 6000 - len(bad)
    assert not bad, (len(bad), bad[:3])


def test_a_buffer_goes_in_pieces_cut_at_line_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """F2: pieces of at most ``PIPE_PIECE`` bytes, each ending at a line's end; a line longer than a piece
    is a write of its own. (A real pipe: what each ``write`` carried is read back one piece at a time.)"""
    from kvgate import stderrlog
    from kvgate.stderrlog import PIPE_PIECE

    lines = [b"%05d %s\n" % (i, b"x" * (i * 37 % 700)) for i in range(400)]
    lines.insert(200, b"L" * (3 * PIPE_PIECE) + b"\n")
    data = b"".join(lines)
    r, w = os.pipe()
    os.set_blocking(r, False)
    pieces: list[bytes] = []
    real = os.write

    def spy(fd: int, b: memoryview) -> int:
        n = real(fd, b)
        pieces.append(os.read(r, 1 << 20))  # (each write read back before the next one)
        return n

    monkeypatch.setattr(os, "write", spy)
    try:
        stderrlog.write_pieces(w, data)
    finally:
        monkeypatch.undo()
        os.close(r)
        os.close(w)
    assert b"".join(pieces) == data
    assert all(p.endswith(b"\n") for p in pieces)
    long = [p for p in pieces if len(p) > PIPE_PIECE]
    assert long == [b"L" * (3 * PIPE_PIECE) + b"\n"]
    assert len(pieces) < len(lines) // 10  # (not one write per line)
