"""gw25: ``access.Lines``' process CPU per line (the loop's ``add`` / ``flush`` and, since gw25, the writer
thread), 200k lines of ~130 characters to a file in a temporary folder, written as to stderr (its file
descriptor, in pieces); the fastest of 5.
Run: ``PYTHONPATH=<tree>/src python docs/benchmarks/access-log-s25/micro-gw25.py <name>``."""

import asyncio
import os
import sys
import tempfile
import time

from kvgate.gateway import access

LINE = (
    "2026-12-06 08:01:02,345 INFO kvgate.access: req-1 POST /v1/completions 200 model=m "
    "endpoint=10.0.0.7:8000 attempts=1 ms=41.2 bytes=512\n"
)


async def one(out: access.TextIO) -> float:
    lines = access.Lines(out)  # (not its own: written as stderr is, in pieces of PIPE_PIECE bytes)
    t0 = time.process_time()
    for i in range(200_000):
        lines.add(LINE)
        if i % 64 == 0:
            await asyncio.sleep(0)
    lines.close()
    return (time.process_time() - t0) / 200_000 * 1e6


with tempfile.TemporaryDirectory() as d:
    outs = [open(os.path.join(d, f"a{i}.log"), "a", buffering=1 << 17) for i in range(5)]  # noqa: SIM115
    best = min(asyncio.run(one(out)) for out in outs)
    for out in outs:
        out.close()
print(f"{sys.argv[1]}: {best:.2f} us/line (process CPU, fastest of 5)")
