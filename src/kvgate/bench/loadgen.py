"""Async OpenAI-API load generator: streaming SSE, open loop (Poisson) or closed loop (concurrency).

Per request it records TTFT, the gaps between streamed chunks (ITL), TPOT, end-to-end latency, token
counts from ``usage`` and status/errors. Every run is bounded: a request count, a wall-clock
deadline, a cap on requests in flight, and a per-request timeout. Times are ``perf_counter`` seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from kvgate.bench.workloads import RequestSpec, poisson_offsets

# Keep at most this many inter-token gaps per request: enough for percentiles, bounded memory.
MAX_ITL_SAMPLES = 512


@dataclass(slots=True)
class RequestResult:
    group: str
    start: float  # offset from the run's start, seconds
    ok: bool = False
    status: int = 0
    error: str | None = None
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens when reported
    # Stopped at the run's cut-off (``RunConfig.cut_after``) after its first token: e2e and
    # completion_tokens (content chunks seen) are lower bounds, prompt and cached tokens unknown.
    cut: bool = False
    response_id: str | None = None  # the first chunk's ``id`` (the simulator's names its replica)
    timing: str | None = None  # kvgate's ``x-kvgate-timing`` answer, when the request asked for it

    @property
    def tpot(self) -> float | None:
        """(last token - first token) / (output tokens - 1), as inference-perf defines it."""
        if self.ttft is None or self.e2e is None or self.completion_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.completion_tokens - 1)


def build_body(spec: RequestSpec, stream: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": spec.target_model,
        "max_tokens": spec.max_tokens,
        "stream": stream,
        "ignore_eos": True,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if spec.messages is not None:
        body["messages"] = spec.messages
    else:
        body["prompt"] = spec.prompt_text
    return body


async def sse_data(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The payload of each ``data:`` line of a server-sent-event stream (``b"[DONE]"`` included)."""
    async for raw in content:
        line = raw.strip()
        if line.startswith(b"data:"):
            yield line[5:].strip()


async def send_one(
    session: aiohttp.ClientSession,
    base_url: str,
    spec: RequestSpec,
    t0: float,
    request_timeout: float = 120.0,
    cut_at: float | None = None,
) -> RequestResult:
    """Send one streaming request and time it; never raises (errors land in the result).

    ``cut_at`` (a ``perf_counter`` time): stop reading there; a request that has streamed its first
    token by then is recorded as ok and ``cut``, one that has not as an error."""
    path = "/v1/chat/completions" if spec.messages is not None else "/v1/completions"
    start = time.perf_counter()
    res = RequestResult(group=spec.group, start=start - t0)
    last: float | None = None
    chunks = 0
    timeout = request_timeout
    by_cut = cut_at is not None and cut_at - start <= request_timeout
    if cut_at is not None and by_cut:
        timeout = cut_at - start
        if timeout <= 0:
            res.error = "cut: not sent before the run's end"
            return res
    try:
        async with session.post(
            base_url + path,
            data=orjson.dumps(build_body(spec)),
            headers={"content-type": "application/json", **spec.headers},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            res.status = resp.status
            if "x-kvgate-timing" in spec.headers:
                res.timing = resp.headers.get("x-kvgate-timing")
            if resp.status != 200:
                res.error = f"http {resp.status}: {(await resp.text())[:200]}"
                return res
            async for data in sse_data(resp.content):
                if data == b"[DONE]":
                    break
                chunk = orjson.loads(data)
                if "error" in chunk:
                    res.error = str(chunk["error"])[:200]
                    return res
                if res.response_id is None and isinstance(chunk.get("id"), str):
                    res.response_id = chunk["id"]
                usage = chunk.get("usage")
                if usage:
                    _read_usage(res, usage)
                if _has_content(chunk):
                    chunks += 1
                    now = time.perf_counter()
                    if last is None:
                        res.ttft = now - start
                    elif len(res.itl) < MAX_ITL_SAMPLES:
                        res.itl.append(now - last)
                    last = now
        res.e2e = (last or time.perf_counter()) - start
        res.ok = res.ttft is not None
        if not res.ok:
            res.error = "no tokens streamed"
    except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError, ValueError) as e:
        if by_cut and isinstance(e, TimeoutError):
            if res.ttft is None:
                res.error = "cut: no first token by the run's end"
            else:
                res.ok, res.cut = True, True
                res.e2e = time.perf_counter() - start
                res.completion_tokens = res.completion_tokens or chunks
            return res
        res.error = f"{type(e).__name__}: {e}"[:200]
    return res


def _has_content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


def _read_usage(res: RequestResult, usage: dict[str, Any]) -> None:
    res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    res.completion_tokens = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        res.cached_tokens = int(details["cached_tokens"])


@dataclass(slots=True)
class RunConfig:
    base_url: str
    # Open loop when qps is set (Poisson arrivals, or each spec's own ``at``); closed loop otherwise.
    qps: float | None = None
    concurrency: int = 8  # closed loop: workers; open loop: cap on requests in flight
    max_requests: int = 1000
    duration: float = 60.0  # stop sending after this many seconds
    request_timeout: float = 120.0
    seed: int = 0
    # Seconds from the start after which requests still streaming are cut (``send_one``'s ``cut_at``):
    # bounds a run whose last requests decode for long; None = wait for every request.
    cut_after: float | None = None


async def run(
    specs: Iterable[RequestSpec],
    cfg: RunConfig,
    on_done: Callable[[RequestResult], None] | None = None,
) -> list[RequestResult]:
    """Drive ``specs`` against ``cfg.base_url``; returns results in completion order."""
    results: list[RequestResult] = []
    it = iter(specs)
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as session:
        t0 = time.perf_counter()

        def done(r: RequestResult) -> None:
            results.append(r)
            if on_done is not None:
                on_done(r)

        if cfg.qps is None:
            await _closed_loop(session, it, cfg, t0, done)
        else:
            await _open_loop(session, it, cfg, t0, done)
    return results


def _cut_at(cfg: RunConfig, t0: float) -> float | None:
    return None if cfg.cut_after is None else t0 + cfg.cut_after


async def _closed_loop(
    session: aiohttp.ClientSession,
    it: Iterator[RequestSpec],
    cfg: RunConfig,
    t0: float,
    done: Callable[[RequestResult], None],
) -> None:
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < cfg.max_requests and time.perf_counter() - t0 < cfg.duration:
            spec = next(it, None)
            if spec is None:
                return
            sent += 1
            done(await send_one(session, cfg.base_url, spec, t0, cfg.request_timeout, _cut_at(cfg, t0)))

    await asyncio.gather(*(worker() for _ in range(max(1, cfg.concurrency))))


async def _open_loop(
    session: aiohttp.ClientSession,
    it: Iterator[RequestSpec],
    cfg: RunConfig,
    t0: float,
    done: Callable[[RequestResult], None],
) -> None:
    assert cfg.qps is not None
    offsets = poisson_offsets(random.Random(cfg.seed), cfg.qps, cfg.max_requests)
    gate = asyncio.Semaphore(max(1, cfg.concurrency))
    tasks: set[asyncio.Task[None]] = set()

    async def one(spec: RequestSpec) -> None:
        try:
            done(await send_one(session, cfg.base_url, spec, t0, cfg.request_timeout, _cut_at(cfg, t0)))
        finally:
            gate.release()

    for spec, poisson_at in zip(it, offsets, strict=False):
        at = spec.at if spec.at is not None else poisson_at
        if at > cfg.duration:
            break
        delay = at - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        # Open loop, but bounded: past the in-flight cap the arrival waits (and is recorded late).
        await gate.acquire()
        task = asyncio.create_task(one(spec))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
