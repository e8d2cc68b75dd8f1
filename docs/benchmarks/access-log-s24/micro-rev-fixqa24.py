"""One access line's cost: Python ``logging`` to a file (the line as first landed) against ``access.Lines``
(the buffered line). Run: ``PYTHONPATH=src python docs/benchmarks/access-log-s24/micro-rev-fixqa24.py``."""

import asyncio
import logging
import os
import tempfile
import timeit

from kvgate.gateway import access

N = 50000
F = "%s %s %s %d model=%s endpoint=%s attempts=%d ms=%.1f bytes=%d"
ARGS = ("6e1f758a-1", "POST", "/v1/completions", 200, "m", "127.0.0.1:18001", 1, 2.2, 215)


def per_line_us(fn: object) -> float:
    return min(timeit.repeat(fn, number=N, repeat=3)) / N * 1e6  # type: ignore[arg-type]


async def main(out: str) -> None:
    lg = logging.getLogger("x")
    lg.propagate = False
    lg.setLevel(logging.INFO)
    handler = logging.FileHandler(os.path.join(out, "m-a.log"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    lg.addHandler(handler)
    took = per_line_us(lambda: lg.info(F, *ARGS))
    print(f"logging.info to a FileHandler (f29693d1's line)   {took:.2f} us/line")
    sink = open(os.path.join(out, "m-b.log"), "a", buffering=1 << 17)  # noqa: SIM115, ASYNC230 (Lines owns it)
    lines = access.Lines(sink, own=True)

    def one() -> None:
        lines.add(access._FORMAT % (lines.stamp(), *ARGS))

    print(f"access.Lines: stamp + %-format + add (this)      {per_line_us(one):.2f} us/line")
    lines.close()


with tempfile.TemporaryDirectory() as tmp:
    asyncio.run(main(tmp))
