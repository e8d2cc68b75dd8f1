"""Session-25 closing note ("``kvgate epp`` still logs on its event loop"): ``kvgate serve`` writes its log
lines off the loop (``kvgate.stderrlog.OffLoopStderr``), ``kvgate epp`` still wrote each on the loop
(``logging.StreamHandler``), so on a stderr pipe nobody reads (a stuck log shipper) the first line past
what the pipe holds blocked the loop, and every ext_proc stream with it. One such line is the client's to
trigger: an over-long ``x-request-id`` is replaced, and logged at INFO (``extproc/session.py``). Fails on
main 6c4d40fa: an exchange's 10 s read times out once the pipe is full.

A real ``kvgate epp`` child, its stderr a 4 KiB pipe nobody reads until the end; the exchanges over real
gRPC, as Envoy drives them; SIGTERM after (it exits 0 once the pipe is read again)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import sys
import threading

import aiohttp
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.extproc import keys
from kvgate.extproc.testing import Exchange, channel

from .test_cli import READY, upstreams  # noqa: F401 (the fixture)

N = 200  # exchanges, an INFO line each (~100 B): ~20 KB, five times what the pipe holds
BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 1})


async def test_a_stderr_pipe_nobody_reads_stalls_no_exchange(upstreams: list[str]) -> None:  # noqa: F811
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # (the smallest pipe: full sooner)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "epp", "--host", "127.0.0.1", "--port", "0",
        "--grpc-health-port", "0", "--metrics-port", "0", "--plaintext",
        "--endpoints", ",".join(upstreams), "--model", "m",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=w,
    )  # fmt: skip
    os.close(w)
    got = bytearray()
    reader = threading.Thread(target=_read_all, args=(r, got), daemon=True)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        ready = READY.search(line)
        assert ready is not None, line
        grpc_port, metrics_port = int(ready[1]), int(ready[3])
        ch = channel(f"127.0.0.1:{grpc_port}")
        try:
            for i in range(N):
                h = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json",
                     keys.REQUEST_ID: f"r{i:04d}-" + "y" * 2000}  # fmt: skip
                # FAILS on main 6c4d40fa: the EPP's loop blocked in a log write, this read times out
                async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
                    out = await ex.send_request(h, BODY)
                assert out.destination in upstreams
        finally:
            await ch.close()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp,
        ):
            text = await resp.text()
        # (the lines wait for the writer, none dropped yet: ~20 KB of 1 MiB)
        assert re.search(r"^kvgate_epp_log_lines_dropped_total 0\.0$", text, re.M), text[-2000:]
        reader.start()  # (the reader comes back: what waited is written, then the stop)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        reader.join(30)
        assert not reader.is_alive()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if reader.ident is None:  # (never started: its end is still ours)
            os.close(r)
    said = re.findall(r"INFO kvgate\.\S+: x-request-id 'r(\d{4})-y+'\.\.\. \(2006 characters\) replaced",
                      got.decode())  # fmt: skip
    assert [int(x) for x in said] == list(range(N)), got.decode()[-2000:]  # (every line, in order)


def _read_all(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 1 << 16):
        into += chunk
    os.close(fd)
