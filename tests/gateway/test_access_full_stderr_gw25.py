"""Session-24 closing note (review s24-rev-fix24b F5): the access log's ``flush`` wrote to stderr on the event
loop, so a stderr pipe whose reader stopped reading (a stuck log shipper) blocked the loop: every request
stalled once the pipe and the buffer were full. Now the writes run on a thread of their own, at most
``PENDING_MAX`` bytes wait for it, and a buffer that does not fit is dropped whole, its lines counted
(``kvgate_gateway_access_log_lines_dropped_total``, and one line at the stop).

A real ``kvgate serve`` child (``--access-log``) whose stderr is a real pipe nobody reads until the end, in
front of a ``gateway.backend.Backend``; killed after."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp

from gateway.backend import Backend, free_port
from gateway.conftest import serve_ready

N = 4000  # requests: ~1.5 MB of lines (256-character ids), past the pipe, the buffer and PENDING_MAX
CLIENTS = 8
_LINE = re.compile(r"^\S+ \S+ INFO kvgate\.access: (r\d{5}-x+) POST /v1/completions 200 model=m \S+ "
                   r"attempts=1 ms=[\d.]+ bytes=\d+$")  # fmt: skip
_DROPPED = re.compile(r"INFO kvgate\.access: (\d+) access lines dropped")


async def _dropped_metric(s: aiohttp.ClientSession, admin: int) -> float:
    async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        text = await r.text()
    m = re.search(r"^kvgate_gateway_access_log_lines_dropped_total (\S+)$", text, re.M)
    assert m is not None, text[:2000]
    return float(m.group(1))


async def test_a_stderr_pipe_nobody_reads_stalls_no_request(tmp_path: Path) -> None:
    b = await Backend("b").start()
    port, admin = free_port(), free_port()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}, adminPort: {admin}}}\n"
        f"pools: [{{name: p, endpoints: ['{b.address}'], models: [m], policy: round-robin}}]\n"
        "accessLog: true\n"
    )
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # (the smallest pipe: full sooner)
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before the loop has work)
        [sys.executable, "-m", "kvgate.cli", "serve", "--config", str(cfg)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=w,
    )  # fmt: skip
    os.close(w)
    data = bytearray()
    reader = threading.Thread(target=lambda: _read_all(r, data), daemon=True)
    try:
        timeout = aiohttp.ClientTimeout(total=15)  # (a stalled loop answers none: the test fails here)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            await serve_ready(s, admin, proc)
            url = f"http://127.0.0.1:{port}/v1/completions"
            body = {"model": "m", "prompt": "x", "max_tokens": 1}

            async def client(k: int) -> list[int]:
                statuses = []
                for i in range(k, N, CLIENTS):
                    rid = f"r{i:05d}-" + "x" * 249
                    async with s.post(url, json=body, headers={"x-request-id": rid}) as resp:
                        await resp.read()
                        statuses.append(resp.status)
                return statuses

            results = await asyncio.gather(*(client(k) for k in range(CLIENTS)))
            assert all(st == 200 for sts in results for st in sts)
            assert sum(map(len, results)) == N
            dropped_live = await _dropped_metric(s, admin)
        assert dropped_live > 0  # (nobody read: the writer's room ran out, counted)
        # The reader comes back (and the pipe grows: what waits is written well within the stop's 2 s, however
        # loaded the machine), then the stop's lines.
        fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, 1 << 20)
        reader.start()
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        reader.join(timeout=30)
        assert not reader.is_alive()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if reader.ident is None:  # (never started: its end is still ours)
            os.close(r)
        await b.stop()
    text = data.decode()
    access = [x for x in text.splitlines() if "kvgate.access: r" in x]
    bad = [x for x in access if not _LINE.match(x)]
    assert not bad, bad[:3]  # (whole lines: none cut or spliced)
    ids = [m.group(1) for x in access if (m := _LINE.match(x))]
    assert len(set(ids)) == len(ids)
    said = [int(m.group(1)) for m in _DROPPED.finditer(text)]
    assert len(said) == 1, text[-2000:]
    assert said[0] >= dropped_live
    assert len(ids) + said[0] == N  # (every line written or counted)


def _read_all(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 1 << 16):
        into += chunk
    os.close(fd)
