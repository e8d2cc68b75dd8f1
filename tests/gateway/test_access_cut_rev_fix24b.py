"""Review s24-rev-fix24b F1 (its tests, as written): a request cut at the drain deadline keeps its access line
(gateway/access.py ``Lines``, gateway/server.py ``_stop``).

Real in-process ``GatewayServer`` and aiohttp backend on ephemeral loopback ports (all stopped)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

import start_lines
from gateway.backend import Backend
from gateway.conftest import AccessSink, base_url, make_config, make_pools, serve_ready, until
from kvgate.gateway import access
from kvgate.gateway.server import GatewayServer

pytestmark = pytest.mark.asyncio


async def _cut_at_drain(path: str | None = None) -> None:
    """A request still in flight at the drain deadline (a generation that never ends) is cut by the
    stop: its line must be written like every other one."""
    b = await Backend("b").start()
    b.mode = "hang"
    cfg = make_config([b.address], extra={"accessLog": True})
    cfg.access_log_file = path  # (``--access-log-file``)
    gw = GatewayServer(cfg, make_pools(cfg))
    await gw.start()
    s = aiohttp.ClientSession()
    try:

        async def send() -> None:
            body = {"model": "m", "prompt": "x", "max_tokens": 2}
            headers = {"x-request-id": "cut-1"}
            try:
                async with s.post(base_url(gw) + "/v1/completions", json=body, headers=headers) as r:
                    await r.read()
            except aiohttp.ClientError:
                pass

        task = asyncio.create_task(send())
        await until(lambda: b.arrived.is_set(), what="the request at the backend")
        await gw.stop(drain_timeout=0.2)
        await asyncio.wait_for(task, 30)
        # (the stop has returned: docs/gateway.md says every line is written by then)
    finally:
        await s.close()
        await b.stop()


async def test_a_request_cut_at_the_drain_deadline_keeps_its_line(access_sink: AccessSink) -> None:
    await _cut_at_drain()
    assert "cut-1" in access_sink.text, repr(access_sink.text)


async def test_a_request_cut_at_the_drain_deadline_keeps_its_line_in_the_file(
    access_sink: AccessSink, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    await _cut_at_drain(str(path))
    assert "cut-1" in path.read_text(), repr(path.read_text())


def _popen(argv: list[str], err: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=err.open("wb"), stderr=subprocess.STDOUT, env=os.environ.copy())


@pytest.mark.parametrize("to_file", [True, False], ids=["file", "stderr"])
async def test_kvgate_serve_sigterm_keeps_the_line_of_a_request_cut_at_the_drain(
    tmp_path: Path, to_file: bool
) -> None:
    """The same through a real ``kvgate serve --access-log --access-log-file`` stopped by SIGTERM with a
    generation still running past ``drainTimeoutSeconds``: the request's 499 line is never written (the
    file is closed before the cut request's handler ends; on stderr its timer dies with the process)."""
    b = await Backend("b").start()
    b.mode = "hang"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "listen: {host: 127.0.0.1, port: 0, adminPort: 0}\n"  # (its own ports, read from its start line)
        "limits: {drainTimeoutSeconds: 0.3}\n"
        f"pools: [{{name: p, endpoints: ['{b.address}'], models: [m], policy: round-robin}}]\n"
    )
    out, err = tmp_path / "access.log", tmp_path / "serve.log"
    out.touch()
    argv = [sys.executable, "-m", "kvgate.cli", "serve", "--config", str(cfg)]
    argv += ["--access-log"] + (["--access-log-file", str(out)] if to_file else [])
    proc = _popen(argv, err)
    try:
        port, admin = await start_lines.ports_async(err, start_lines.SERVE, proc)
        async with aiohttp.ClientSession() as s:
            await serve_ready(s, admin, proc, err)

            async def send() -> None:
                body = {"model": "m", "prompt": "x", "max_tokens": 2}
                try:
                    async with s.post(f"http://127.0.0.1:{port}/v1/completions", json=body,
                                      headers={"x-request-id": "cut-2"}) as r:  # fmt: skip
                        await r.read()
                except aiohttp.ClientError:
                    pass

            task = asyncio.create_task(send())
            await until(lambda: b.arrived.is_set(), what="the request at the backend")
            proc.terminate()
            await asyncio.to_thread(proc.wait, 60)
            assert proc.returncode == 0, err.read_text()[-800:]
            await asyncio.wait_for(task, 30)
        text = out.read_text() if to_file else err.read_text()
        assert "kvgate.access: cut-2 POST /v1/completions 499" in text, (
            text[-800:],
            err.read_text()[-800:],
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await b.stop()


# F1's rule in ``Lines`` itself: once closed, a line is written at once (no timer past the process's end,
# no write to a closed file).


async def test_a_line_after_close_is_written_at_once(access_sink: AccessSink, tmp_path: Path) -> None:
    lines = access.Lines.open(None)
    lines.close()
    lines.add("late-1\n")
    assert access_sink.text == "late-1\n"
    path = tmp_path / "a.log"
    lines = access.Lines.open(str(path))
    lines.add("early\n")
    lines.close()
    lines.add("late-2\n")
    assert path.read_text() == "early\nlate-2\n"
