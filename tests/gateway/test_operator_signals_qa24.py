"""qa24 F4/F5: what an operator of ``kvgate serve`` reads, from a real ``kvgate serve`` process (ports 0:
the ones it bound read from its start line) in front of a ``gateway.backend.Backend``; killed after.

F5: ``kvgate_gateway_config_reloads_total{result}`` had no series until a reload of that result happened,
so the first refused reload appeared as a new series at 1 and ``increase(...{result="invalid"}[5m]) > 0``
missed it (``client_timeouts_total{kind}`` is initialised at 0 per kind). Each result is a series at 0
from the start now."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp

import start_lines
from gateway.backend import Backend
from gateway.conftest import serve_ready


def _start(tmp_path: Path, address: str, level: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "listen: {host: 127.0.0.1, port: 0, adminPort: 0}\n"  # (fixed ports: another process may hold them)
        f"pools: [{{name: p, endpoints: ['{address}'], models: [m], policy: round-robin}}]\n"
        "accessLog: true\n"  # (off by default since review s24-rev-fixqa24 R4)
    )
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvgate.cli", "serve", "--config", str(cfg), "--log-level", level, *extra],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, log


async def test_reload_results_are_series_from_the_start(tmp_path: Path) -> None:
    b = await Backend("b").start()
    proc, log = _start(tmp_path, b.address, "WARNING")
    try:
        _port, admin = await start_lines.ports_async(log, start_lines.SERVE, proc)
        async with aiohttp.ClientSession() as s:
            await serve_ready(s, admin, proc, log)
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                text = await r.text()
        for result in ("applied", "invalid", "failed"):
            line = f'kvgate_gateway_config_reloads_total{{result="{result}"}} 0.0'
            assert line in text, f"missing before any reload: {line}"
    finally:
        proc.kill()
        proc.wait()
        await b.stop()


# F4: no request left a line in the log at any level (``--log-level DEBUG`` included: only the picker's
# ``pick`` debug line, not for a 404 or a 400), so a request id a client reports could not be found, nor a
# status, latency or endpoint per request. Now one INFO line per finished request on ``kvgate.access``
# (off with ``--no-access-log``), never a header other than the id, nor a body.
async def _requests(s: aiohttp.ClientSession, port: int) -> None:
    for rid, model in (("qa24-ok-1", "m"), ("qa24-404-1", "nobody")):
        body = {"model": model, "prompt": "secret-prompt", "max_tokens": 1}
        headers = {"x-request-id": rid, "Authorization": "Bearer sk-secret-key"}
        async with s.post(f"http://127.0.0.1:{port}/v1/completions", json=body, headers=headers) as r:
            await r.read()


async def test_each_request_leaves_one_log_line_with_its_id(tmp_path: Path) -> None:
    b = await Backend("b").start()
    proc, log = _start(tmp_path, b.address, "INFO")
    try:
        port, admin = await start_lines.ports_async(log, start_lines.SERVE, proc)
        async with aiohttp.ClientSession() as s:
            await serve_ready(s, admin, proc, log)
            await _requests(s, port)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30  # a line is written as the answer ends (buffered ~1 s): poll for it
            for _ in range(1000):
                text = log.read_text()
                if loop.time() >= deadline or ("qa24-ok-1" in text and "qa24-404-1" in text):
                    break
                await asyncio.sleep(0.05)
        lines = [x for x in log.read_text().splitlines() if "kvgate.access" in x]
        ok = [x for x in lines if "qa24-ok-1" in x]
        missing = [x for x in lines if "qa24-404-1" in x]
        assert len(ok) == 1 and len(missing) == 1, log.read_text()[-800:]
        assert " 200 model=m endpoint=" + b.address + " attempts=1 " in ok[0], ok[0]
        assert " 404 model=- " in missing[0], missing[0]
        assert "secret" not in log.read_text()
    finally:
        proc.kill()
        proc.wait()
        await b.stop()


async def test_no_access_log_turns_it_off(tmp_path: Path) -> None:
    b = await Backend("b").start()
    proc, log = _start(tmp_path, b.address, "INFO", "--no-access-log")
    try:
        port, admin = await start_lines.ports_async(log, start_lines.SERVE, proc)
        async with aiohttp.ClientSession() as s:
            await serve_ready(s, admin, proc, log)
            await _requests(s, port)
        assert len(b.received) == 1  # (the 200 went through: its line would have been written by now)
        assert "kvgate.access" not in log.read_text()
    finally:
        proc.kill()
        proc.wait()
        await b.stop()
