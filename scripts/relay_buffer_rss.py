"""What a relayed big answer (past ``WHOLE_BODY_MAX``, relayed as it arrives) costs the gateway in memory
while its client does not read: ``kvgate serve``'s resident memory with N such clients at once.

    PYTHONPATH=src python scripts/relay_buffer_rss.py [--clients 1 8 32 64] [--answer-mib 64]

A raw model server on loopback answers every completion with one ``--answer-mib`` MiB JSON body
(Content-Length, written in 1 MiB pieces, each once the gateway took the last); ``kvgate serve`` (its own
process, defaults, ``writeBufferBytes`` 256 KiB) relays it. For each N: N clients send the request,
read the response head and 64 KiB of the body, then stop reading; once the gateway's RSS has not grown
for 2 s, its VmRSS (minus its RSS before the N requests) is the figure (a fresh gateway for each N). Of
it, each answer's first pieces up to 4 MiB (``WHOLE_BODY_MAX``) are held in the 64 MiB budget until its
client takes them; the rest is outside it. The kernel's socket buffers (client and upstream side) are
not in the RSS. Prints one line per N: MiB in all and per client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from kvgate import lifeline

_BODY_HEAD = b'{"id":"x","object":"text_completion","model":"m","choices":[{"index":0,"text":"'
_BODY_TAIL = (
    b'","finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}'
)


async def _upstream(answer: int) -> tuple[asyncio.Server, int]:
    pad = answer - len(_BODY_HEAD) - len(_BODY_TAIL)
    piece = b"x" * (1 << 20)

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                line, *rest = head.decode("latin-1").split("\r\n")
                hdrs = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in rest if x)}
                n = int(hdrs.get("content-length", "0"))
                if n:
                    await r.readexactly(n)
                if line.split(" ")[1] in ("/health", "/metrics"):
                    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    continue
                w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                w.write(b"content-length: %d\r\n\r\n" % answer)
                w.write(_BODY_HEAD)
                left = pad
                while left > 0:
                    w.write(piece[: min(left, len(piece))])
                    left -= len(piece)
                    await w.drain()
                w.write(_BODY_TAIL)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def _gateway(upstream_port: int, tmp: Path) -> tuple[asyncio.subprocess.Process, int]:
    cfg = tmp / "gw.yaml"
    cfg.write_text(
        f"pools:\n  - name: p\n    policy: round-robin\n    endpoints: ['127.0.0.1:{upstream_port}']\n"
        "    models: [m]\nlimits:\n  maxBodyBytes: 8388608\n  requestTimeoutSeconds: 600\n"
    )
    argv = [
        sys.executable,
        "-m",
        "kvgate.cli",
        "serve",
        "--config",
        str(cfg),
        "--port",
        "0",
        "--log-level",
        "WARNING",
    ]
    proc = await asyncio.create_subprocess_exec(
        *lifeline.die_with_parent_argv(argv),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=dict(os.environ),
    )  # fmt: skip
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("kvgate serve exited")
        m = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m[1])


async def _slow_client(port: int, stop: asyncio.Event) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    body = b'{"model":"m","prompt":"x"}'
    w.write(
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%b" % (len(body), body)
    )
    await r.readuntil(b"\r\n\r\n")
    await r.readexactly(64 * 1024)
    w.transport.pause_reading()  # reads nothing more: the kernel's buffer fills, then the gateway's
    await stop.wait()
    w.transport.abort()


async def _steady(pid: int, quiet_s: float = 2.0, limit_s: float = 60.0) -> int:
    last, since, start = _rss_kib(pid), time.monotonic(), time.monotonic()
    while time.monotonic() - start < limit_s:
        await asyncio.sleep(0.25)
        now = _rss_kib(pid)
        if now > last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


async def main_async(clients: list[int], answer_mib: int) -> None:
    server, upstream_port = await _upstream(answer_mib << 20)
    try:
        for n in clients:  # a fresh gateway each time (freed memory stays in a process's RSS)
            with tempfile.TemporaryDirectory() as tmp:
                proc, port = await _gateway(upstream_port, Path(tmp))
                try:
                    await asyncio.sleep(1.0)
                    before = await _steady(proc.pid, quiet_s=1.0)
                    stop = asyncio.Event()
                    tasks = [asyncio.create_task(_slow_client(port, stop)) for _ in range(n)]
                    await asyncio.sleep(1.0)
                    peak = await _steady(proc.pid)
                    grew = (peak - before) / 1024
                    print(f"{n:4d} slow readers of {answer_mib} MiB answers: gateway RSS +{grew:7.1f} MiB "
                          f"({grew / n:5.2f} MiB per reader; of it at most {min(4 * n, 64)} MiB held in "
                          "the 64 MiB budget)", flush=True)  # fmt: skip
                    stop.set()
                    for t in tasks:
                        with contextlib.suppress(Exception):
                            await t
                finally:
                    proc.kill()
                    await proc.wait()
    finally:
        server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--answer-mib", type=int, default=64)
    args = p.parse_args()
    asyncio.run(main_async(args.clients, args.answer_mib))


if __name__ == "__main__":
    main()
