"""``rateLimits`` and ``maxConcurrentRequests`` hold for the fleet under ``kvgate serve --workers 2``
(review s18-qa M1: each worker kept its own buckets and count, so a tenant got 2x its limit).

Real processes: a 2-worker ``kvgate serve`` in front of the test backend, every request on a new
connection (the kernel spreads connections over the workers; both are checked to have taken some).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from gateway import workers_kit

BODY = orjson.dumps({"model": "m", "prompt": "hi", "max_tokens": 1})  # usage: 7 + 1 tokens


@asynccontextmanager
async def serve_workers(
    tmp_path: Path, address: str, extra: dict[str, Any]
) -> AsyncIterator[tuple[int, int]]:
    cfg = {"pools": [{"name": "p", "endpoints": [address], "models": ["m"]}], **extra}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    async with workers_kit.serve_workers("--config", str(path)) as (_, port, admin):
        yield port, admin


async def _answers_per_worker(admin: int) -> dict[str, float]:
    """Requests each worker answered: routed (``inference_objective_request_total``) or refused (errors)."""
    return await workers_kit.answers_per_worker(
        admin, "inference_objective_request", "inference_objective_request_error"
    )


async def _post(s: aiohttp.ClientSession, port: int) -> tuple[int, str]:
    async with s.post(f"http://127.0.0.1:{port}/v1/completions", data=BODY) as r:
        body = await r.json()
        return r.status, "" if r.status == 200 else body["error"]["code"]


async def _answered(posts: list[asyncio.Task[tuple[int, str]]], n: int) -> None:
    """Until ``n`` of ``posts`` have their answer (30 s at most: the caller's assertion says what came)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 30.0
    while sum(t.done() for t in posts) < n and loop.time() < end:
        pending = [t for t in posts if not t.done()]
        await asyncio.wait(pending, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)


@pytest.mark.parametrize(
    ("limits", "most"),
    [
        # 10 requests a minute: 10, +1 for a refill while the 40 run
        ({"requestsPerMinute": 10}, 11),
        # 40 tokens a minute, 8 per answer: 5 answers empty the bucket (the 6th is refused in debt), +1
        ({"tokensPerMinute": 40}, 6),
    ],
    ids=["requestsPerMinute", "tokensPerMinute"],
)
async def test_a_tenant_is_held_to_its_rate_limit_across_workers(backends, tmp_path, limits, most):
    (b,) = await backends(1)
    async with serve_workers(tmp_path, b.address, {"rateLimits": limits}) as (port, admin):
        # A new connection per request: the kernel spreads connections over both workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            answers = [await _post(s, port) for _ in range(40)]
        per = await _answers_per_worker(admin)
    admitted = sum(1 for status, _ in answers if status == 200)
    refused = {code for status, code in answers if status != 200}
    assert set(per) == {"0", "1"} and min(per.values()) > 0, per  # both workers took requests
    assert most - 1 <= admitted <= most, f"{admitted} of 40 admitted with {limits}: {answers}"
    assert refused == {"rate_limit_exceeded"}


async def test_max_concurrent_requests_holds_across_workers(backends, tmp_path):
    (b,) = await backends(1)
    # Every admitted request stays in flight until the others have been answered (held by the model server
    # until the test releases it; a fixed 5 s before, 1.5 s before that: 12 connections opened by a loaded
    # test process could take longer, and a third would then be admitted).
    b.answer_gate = asyncio.Event()
    limits = {"limits": {"maxConcurrentRequests": 2}}
    async with (
        serve_workers(tmp_path, b.address, limits) as (port, admin),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
    ):
        # The kernel puts all 12 connections on one worker 1 round in 2^11: the round is repeated (at most
        # 4: 1 in 2^44) until both workers took some, each round held to the limit.
        for _ in range(4):
            b.answer_gate.clear()
            posts = [asyncio.create_task(_post(s, port)) for _ in range(12)]
            await _answered(posts, 10)  # (all but the limit's two: refused while the two are held)
            b.answer_gate.set()
            answers = await asyncio.gather(*posts)
            assert sorted(answers) == [(200, "")] * 2 + [(429, "too_many_requests")] * 10, answers
            per = await _answers_per_worker(admin)
            if set(per) == {"0", "1"} and min(per.values()) > 0:
                break
        # Once they ended, the fleet's count is back to 0: two more go through at once.
        again = await asyncio.gather(*(_post(s, port) for _ in range(2)))
    assert set(per) == {"0", "1"} and min(per.values()) > 0, per  # both workers took requests
    assert again == [(200, "")] * 2
