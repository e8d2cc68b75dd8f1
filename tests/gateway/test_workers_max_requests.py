"""Flow control's queue limits under ``kvgate serve --workers N`` bound the whole gateway's queue, as one
process's (session 21; review s20-qa L3 had them per worker: the fleet queued up to N x ``maxRequests``).

Real worker processes, requests over real HTTP, each on a new connection (the kernel spreads them over the
workers): one model server held busy (``answer_delay``) behind a gate of one request in flight, so every
other request queues or is refused. What each worker queues is its ``queue_size`` gauge on the admin's
merged ``/metrics``; the places are given back on every way out of the queue (the client leaving, the TTL)
and when a worker dies with requests queued (the supervisor clears its row before the restart)."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from gateway import drain_kit, workers_kit

BODY = orjson.dumps({"model": "m", "prompt": "x" * 100, "max_tokens": 2})
SENT = 16
WAIT_S = 15.0  # (well within the first test's TTL: what is queued stays queued while it is watched)


async def queued(s: aiohttp.ClientSession, admin: int) -> dict[str, float]:
    """Each worker's requests queued (its ``queue_size`` series summed)."""
    async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        text = await r.text()
    per: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "inference_extension_flow_control_queue_size":
            for smp in fam.samples:
                per[smp.labels["worker"]] = per.get(smp.labels["worker"], 0.0) + smp.value
    return per


class Burst:
    """``SENT`` requests at once, each on its own connection; ``statuses``: those answered so far."""

    def __init__(self, s: aiohttp.ClientSession, port: int) -> None:
        self.tasks = [asyncio.create_task(self._one(s, port)) for _ in range(SENT)]

    @staticmethod
    async def _one(s: aiohttp.ClientSession, port: int) -> int:
        async with s.post(f"http://127.0.0.1:{port}/v1/completions", data=BODY) as r:
            await r.read()
            return r.status

    @property
    def statuses(self) -> list[int]:
        return [t.result() for t in self.tasks if t.done() and not t.cancelled()]

    async def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def fill(
    s: aiohttp.ClientSession, port: int, admin: int, limit: int
) -> tuple[Burst, dict[str, float], float]:
    """A burst, once the fleet's queue holds ``limit`` requests and the rest have been refused (all but
    ``limit`` queued and at most 2 running: one per worker when both took the free slot at once), or after
    ``WAIT_S``: the queue sizes then, and the most the fleet was seen to queue meanwhile (a fleet whose
    workers each queue ``limit`` never gets there: its queues hold up to 2 x ``limit``)."""
    burst = Burst(s, port)
    per: dict[str, float] = {}
    most = 0.0
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while loop.time() < end:
        per = await queued(s, admin)
        most = max(most, sum(per.values()))
        if sum(per.values()) == limit and len(burst.statuses) >= SENT - limit - 2:
            break
        await asyncio.sleep(0.05)
    return burst, per, most


async def until_empty(s: aiohttp.ClientSession, admin: int) -> None:
    per: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while loop.time() < end:
        per = await queued(s, admin)
        if sum(per.values()) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the queues never emptied: {per}")


def check(burst: Burst, per: dict[str, float], most: float, limit: int) -> None:
    assert most <= limit, f"the fleet queued up to {most} requests for a limit of {limit} (now {per})"
    assert sum(per.values()) == limit, f"the fleet queued {per} for a limit of {limit}"
    assert burst.statuses and set(burst.statuses) == {429}, burst.statuses


async def test_max_requests_bounds_the_whole_gateways_queue_and_a_cancel_gives_places_back(
    backends, tmp_path
):
    (b,) = await backends(1)
    b.answer_delay = 60.0  # the one running request holds the pool: every other one queues or is refused
    cfg = drain_kit.flow_controlled_config(tmp_path, b.address, "maxRequests: 2, defaultRequestTTL: 60s")
    async with (
        workers_kit.serve_workers("--config", str(cfg), n=2) as (_, port, admin),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
    ):
        burst, per, most = await fill(s, port, admin, 2)
        try:
            check(burst, per, most, 2)
        finally:
            await burst.cancel()  # every client leaves: the queued requests are cancelled, places back
        await until_empty(s, admin)
        burst, per, most = await fill(s, port, admin, 2)
        try:
            check(burst, per, most, 2)
        finally:
            await burst.cancel()


async def test_max_bytes_ttl_and_a_dead_workers_queue_give_places_back(backends, tmp_path):
    (b,) = await backends(1)
    b.answer_delay = 60.0
    # 100-byte prompts: 250 bytes hold two of them
    cfg = drain_kit.flow_controlled_config(tmp_path, b.address, "maxBytes: 250, defaultRequestTTL: 2s")
    async with (
        workers_kit.serve_workers("--config", str(cfg), n=2) as (proc, port, admin),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
    ):
        burst, per, most = await fill(s, port, admin, 2)
        try:
            check(burst, per, most, 2)
            await until_empty(s, admin)  # their TTL: 503, places back
            assert sorted(burst.statuses).count(503) == 2, burst.statuses
        finally:
            await burst.cancel()
        burst, per, most = await fill(s, port, admin, 2)
        try:
            check(burst, per, most, 2)
            for pid in workers_kit.children(proc.pid, b"spawn_main"):  # both die with the queue
                os.kill(pid, signal.SIGKILL)
            await workers_kit.until_ready(admin, "(2/2 workers)")
        finally:
            await burst.cancel()
        burst, per, most = await fill(s, port, admin, 2)  # the dead workers' places reclaimed
        try:
            check(burst, per, most, 2)
        finally:
            await burst.cancel()
