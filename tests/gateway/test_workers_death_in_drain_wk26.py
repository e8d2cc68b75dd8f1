"""A worker that dies during the drain gives its rows of the shared segment back, as at any other time
(wk26, issue #15's review of the order between workers under worker death).

While it runs, the supervisor zeroes a dead worker's rows when it sees the death (``Supervisor._ended``:
in flight, queue marks, queue places). Once SIGTERM started the drain it no longer watched: a worker
killed then (SIGKILL, the OOM killer, a crash) left its requests in flight in the other workers' view for
good. A worker that drains on serves its flow-control queue (review s18-qa M3), so its gate stayed
saturated on requests that no longer ran, and its queued requests waited out the drain and were answered
503 while the pool was idle.

Real processes: ``kvgate serve --workers 2``, one model server behind a gate of one request in flight.
The request in flight holds the server (answered only after a minute); the worker that sent it is found
from its connection (``/proc``); requests queue over both workers; SIGTERM, then that worker is killed.
Every queued request at the other worker must be answered 200 (those at the killed one end with their
connection)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway import drain_kit, workers_kit
from gateway.backend import Backend

HOLD = "hold"


class Holding(Backend):
    """Answers at once, except a prompt of ``HOLD``: answered after a minute; its peer's port kept."""

    def __init__(self) -> None:
        super().__init__("h")
        self.held_from: int | None = None
        self.held = asyncio.Event()

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if body.get("prompt") == HOLD:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            self.held_from = peer[1] if peer else None
            self.held.set()
            await asyncio.sleep(60.0)
        return await super()._generate(request)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app


def _owner(local_port: int, remote_port: int, pids: list[int]) -> int:
    """The process among ``pids`` holding the TCP connection from ``local_port`` to ``remote_port``."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                cols = line.split()
                local, remote = cols[1].rsplit(":", 1)[1], cols[2].rsplit(":", 1)[1]
                if int(local, 16) == local_port and int(remote, 16) == remote_port:
                    inode = cols[9]
    assert inode is not None, f"no connection from port {local_port} to {remote_port}"
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker among {pids} holds the connection (inode {inode})")


async def _queued(s: aiohttp.ClientSession, admin: int) -> dict[str, float]:
    """Each worker's requests queued (its ``queue_size`` series summed)."""
    async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        text = await r.text()
    per: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "inference_extension_flow_control_queue_size":
            for smp in fam.samples:
                per[smp.labels["worker"]] = per.get(smp.labels["worker"], 0.0) + smp.value
    return per


async def _until_queued(
    s: aiohttp.ClientSession, admin: int, n: int, within_s: float = 5.0
) -> dict[str, float]:
    """Each worker's queue once the fleet's holds ``n`` (or after ``within_s``)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    per = await _queued(s, admin)
    while sum(per.values()) < n and loop.time() < end:
        await asyncio.sleep(0.02)
        per = await _queued(s, admin)
    return per


async def _post(s: aiohttp.ClientSession, port: int, prompt: str) -> Any:
    """The status, or the client error's name (the connection ended with its worker)."""
    body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 2})
    try:
        async with s.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r:
            await r.read()
            return r.status
    except aiohttp.ClientError as e:
        return type(e).__name__


async def test_a_worker_killed_during_the_drain_frees_its_slots_for_the_other_workers_queue(
    tmp_path: Path,
) -> None:
    b = await Holding().start()
    cfg = drain_kit.flow_controlled_config(
        tmp_path, b.address, "defaultRequestTTL: 60s", "limits:\n  drainTimeoutSeconds: 8\n"
    )
    stderr = tmp_path / "stderr"
    proc, port, admin = await drain_kit.serve_workers(cfg, stderr)
    loop = asyncio.get_running_loop()
    sent: list[asyncio.Task[Any]] = []
    try:
        await drain_kit.ready(f"http://127.0.0.1:{admin}/readyz", within_s=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            held = asyncio.create_task(_post(s, port, HOLD))
            await asyncio.wait_for(b.held.wait(), 30)
            assert b.held_from is not None
            pids = workers_kit.children(proc.pid, b"spawn_main")
            holder = _owner(b.held_from, b.port, pids)
            per: dict[str, float] = {}
            end = loop.time() + 30.0
            while len([v for v in per.values() if v >= 1]) < 2:  # (a new connection each: both queue some)
                assert loop.time() < end and len(sent) < 40, f"the queue never spread over both: {per}"
                sent.append(asyncio.create_task(_post(s, port, f"q{len(sent)}")))
                per = await _until_queued(s, admin, len(sent))
            proc.send_signal(signal.SIGTERM)
            await drain_kit._refused(port, 15.0)  # (every worker draining: the supervisor is stopping)
            os.kill(holder, signal.SIGKILL)
            got = await asyncio.gather(*sent)
            await asyncio.gather(held, return_exceptions=True)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        for t in sent:
            t.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await b.stop()
    answered = [g for g in got if g == 200]
    assert answered and all(g == 200 or isinstance(g, str) for g in got), (
        f"the survivor's queue was not served after its peer died in the drain: {got} (queued {per})"
    )
