"""rev-gw25 F4: gw25 moved the access log's writes off the loop, but every other log line still goes to the
same stderr from the loop (``logging.StreamHandler``): once the pipe nobody reads is full (the access lines
fill it first), the next such line blocks the loop and every request with it. One is the client's to
trigger: an over-long ``x-request-id`` is logged at INFO (proxy.py ``_entry``), others come with a failing
endpoint ("ejected ..."), a reload, a cut stream. CHANGELOG: "A stderr pipe nobody reads no longer stalls the
gateway". Fails on gw25 (and before): the request after the INFO line times out.

A real ``kvgate serve`` child (``accessLog: true``, its own ports read from its start line on stdout), stderr
a 4 KiB pipe nobody reads; killed after."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

import start_lines
from gateway.backend import Backend
from gateway.conftest import serve_ready


async def test_a_log_line_on_a_full_stderr_pipe_stalls_no_request(tmp_path: Path) -> None:
    b = await Backend("b").start()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "listen: {host: 127.0.0.1, port: 0, adminPort: 0}\n"
        f"pools: [{{name: p, endpoints: ['{b.address}'], models: [m], policy: round-robin}}]\n"
        "accessLog: true\n"
    )
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    out = tmp_path / "stdout.log"
    with out.open("wb") as stdout:
        proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "kvgate.cli", "serve", "--config", str(cfg)],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=w,
        )  # fmt: skip
    os.close(w)
    try:
        port, admin = await start_lines.ports_async(out, start_lines.SERVE, proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
            await serve_ready(s, admin, proc)
            url = f"http://127.0.0.1:{port}/v1/completions"
            body = {"model": "m", "prompt": "x", "max_tokens": 1}
            for i in range(300):  # (~80 KB of access lines: the 4 KiB pipe is full, the writer blocked)
                async with s.post(url, json=body, headers={"x-request-id": f"r{i:05d}-" + "x" * 249}) as resp:
                    assert resp.status == 200
                    await resp.read()
        # a client's over-long ids: an INFO line each to stderr, written on the loop (40: past what the pipe's
        # last page still takes, the writer thread's 4 KiB piece being blocked)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:  # (stalled: never)
            for _ in range(40):
                async with s.post(url, json=body, headers={"x-request-id": "y" * 2000}) as resp:
                    await resp.read()
            for _ in range(3):
                async with s.post(url, json=body) as resp:
                    assert resp.status == 200
                    await resp.read()
        # (the stop logs "draining" too: SIGTERM ends the process, however full the pipe; on main it waited
        # for the SIGKILL)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(r)
        await b.stop()


def test_the_off_loop_handler_is_bounded_and_counts_what_it_drops() -> None:
    """``OffLoopStderr`` alone, on a 4 KiB pipe nobody reads: logging 2,000 lines of 1 KB never blocks the
    caller (at most ``PENDING_MAX`` waits), the lines past it are counted, and once the pipe is read again
    the close writes what waited and one line with the count."""
    import logging
    import threading

    from kvgate import stderrlog
    from kvgate.stderrlog import OffLoopStderr

    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
    out = os.fdopen(w, "w")
    handler = OffLoopStderr(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("test-off-loop-stderr")
    log.propagate, old = False, log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    got = bytearray()

    def read() -> None:
        while chunk := os.read(r, 1 << 16):
            got.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    try:
        for i in range(2000):
            log.info("line %04d %s", i, "x" * 1000)  # (the caller never waits for the pipe)
        assert 0 < handler.dropped() < 2000 - stderrlog.PENDING_MAX // 1100, handler.dropped()
        reader.start()
        handler.close()
    finally:
        log.removeHandler(handler)
        log.propagate = True
        log.setLevel(old)
        out.close()
        reader.join(30)
        os.close(r)
    text = got.decode()
    lines = text.splitlines()
    assert lines[-1] == f"{handler.dropped()} log lines dropped: stderr did not take them", lines[-1][:80]
    assert len(lines) - 1 + handler.dropped() == 2000  # (every line written or counted, none cut)
    assert all(x.startswith("INFO test-off-loop-stderr: line ") for x in lines[:-1])
