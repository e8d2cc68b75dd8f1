"""qa24 F4/F5: what an operator of ``kvgate serve`` reads, from a real ``kvgate serve`` process (ports
29951-29952) in front of a ``gateway.backend.Backend``; killed after.

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

from gateway.backend import Backend

PORT, ADMIN = 29951, 29952


async def _ready(s: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        try:
            async with s.get(f"http://127.0.0.1:{ADMIN}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("kvgate serve never became ready")


def _start(tmp_path: Path, address: str, level: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"listen: {{host: 127.0.0.1, port: {PORT}, adminPort: {ADMIN}}}\n"
        f"pools: [{{name: p, endpoints: ['{address}'], models: [m], policy: round-robin}}]\n"
    )
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvgate.cli", "serve", "--config", str(cfg), "--log-level", level, *extra],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, log


async def test_reload_results_are_series_from_the_start(tmp_path: Path) -> None:
    b = await Backend("b").start()
    proc, _ = _start(tmp_path, b.address, "WARNING")
    try:
        async with aiohttp.ClientSession() as s:
            await _ready(s)
            async with s.get(f"http://127.0.0.1:{ADMIN}/metrics") as r:
                text = await r.text()
        for result in ("applied", "invalid", "failed"):
            line = f'kvgate_gateway_config_reloads_total{{result="{result}"}} 0.0'
            assert line in text, f"missing before any reload: {line}"
    finally:
        proc.kill()
        proc.wait()
        await b.stop()
