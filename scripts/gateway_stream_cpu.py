"""Streaming CPU per request of one ``kvgate serve`` process (kvgate policy): this tree against another.

    flock /work/team/live.lock env PYTHONPATH=src python scripts/gateway_stream_cpu.py \\
        --base-src <other checkout>/src [--requests 5000] [--events 16] [--repeats 5]

The parts of ``kvgate bench gateway-overhead`` (its backend and load generator: 64 keep-alive
connections, one request in flight each), with streamed completions: the backend answers each
``"stream": true`` request with a chunked SSE response written as ``--events`` separate events (one
write each, as a model server sends tokens), then ``[DONE]``. For each repeat, the base tree's gateway
then this tree's (each a fresh process, warmed with ``--requests`` requests first) serve ``--requests``
measured requests; the gateway's CPU (utime + stime from ``/proc``) over the measured window divided by
the requests is its CPU per request. Prints each repeat, the medians and the ratio (this / base). Runs
on 127.0.0.1 ports 28101, 28102 and 28180 (no network namespace: hold the live lock).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from kvgate import lifeline

PY = sys.executable
BACKEND_PORTS = [28101, 28102]
ROUTER_PORT = 28180


def _backend(events: int) -> None:
    import uvloop

    from kvgate.bench import gateway_overhead as go

    class Backend(go._BackendProtocol):
        def _respond(self, path: bytes, body: bytes) -> None:
            if b'"stream":true' not in body.replace(b" ", b""):
                super()._respond(path, body)
                return
            t = self.transport
            assert t is not None
            t.write(go._STREAM_HEAD)
            for _ in range(events):
                t.write(go._chunk(go._STREAM_EVENT))
            t.write(go._chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for p in BACKEND_PORTS:
            await loop.create_server(Backend, "127.0.0.1", p, backlog=4096, reuse_address=True)
        print("ready", flush=True)
        await asyncio.Event().wait()

    uvloop.run(serve())


def _loadgen(requests: int) -> None:
    import uvloop

    from kvgate.bench import gateway_overhead as go

    go.BODY = go.STREAM_BODY  # (the load generator sends BODY)
    print(json.dumps(uvloop.run(go._loadgen(ROUTER_PORT, requests, 64))))


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_loadgen(requests: int, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        lifeline.die_with_parent_argv([PY, __file__, "--_loadgen", str(requests)]),
        env=env,
        capture_output=True,
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--_backend":
        _backend(int(sys.argv[2]))
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "--_loadgen":
        _loadgen(int(sys.argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-src", required=True, type=Path)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--events", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    this = str(Path(__file__).resolve().parent.parent / "src")
    srcs = {"base": str(args.base_src.resolve()), "this": this}
    env = {**os.environ, "PYTHONPATH": this}
    backend = subprocess.Popen(
        lifeline.die_with_parent_argv([PY, __file__, "--_backend", str(args.events)]),
        env=env,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert backend.stdout is not None
    backend.stdout.readline()
    results: dict[str, list[tuple[float, float]]] = {"base": [], "this": []}
    try:
        for rep in range(args.repeats):
            for tag, src in srcs.items():
                gw = subprocess.Popen(
                    lifeline.die_with_parent_argv([PY, "-m", "kvgate.cli", "serve", "--endpoints",
                     ",".join(f"http://127.0.0.1:{p}" for p in BACKEND_PORTS), "--model", "m",
                     "--policy", "kvgate", "--port", str(ROUTER_PORT), "--log-level", "WARNING"]),
                    env={**os.environ, "PYTHONPATH": src},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
                assert gw.stdout is not None
                while b"listening" not in gw.stdout.readline():
                    pass
                try:
                    _run_loadgen(args.requests, env)  # warm-up
                    c0 = _cpu_s(gw.pid)
                    r = _run_loadgen(args.requests, env)
                    us = (_cpu_s(gw.pid) - c0) / r["requests"] * 1e6
                finally:
                    gw.terminate()
                    gw.wait(20)
                results[tag].append((r["rps"], us))
                print(
                    f"rep {rep + 1} {tag:4} {r['rps']:8.0f} req/s {us:7.1f} us/req errors {r['errors']}",
                    flush=True,
                )
    finally:
        backend.kill()
    med = {
        k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
        for k, v in results.items()
    }
    for k, (rps, us) in med.items():
        print(f"{k:4} median {rps:8.0f} req/s {us:7.1f} us/req")
    cpu, rps = med["this"][1] / med["base"][1], med["this"][0] / med["base"][0]
    print(f"this/base: CPU per request {cpu:.2f}, req/s {rps:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
