"""A freshly started gateway's first request builds nothing that start-up could have built.

Session 23 found a fresh ``kvgate serve``'s first 8 requests ~7.5 ms slower than the rest in front of real
vLLM (docs/benchmarks/realvllm.md §4.13); ``scripts/realvllm/first_requests.py`` (§4.14) measured inside
the serve process what the first request paid that later ones did not: the tokenizer's self-check thread
was started inside its pick (a thread start, and a wait for it). Start-up now starts it, with the upstream
connections, before the gateway says ready. The gateway here is ``kvgate serve --kv-events auto``'s shape:
simulated vLLM replicas that publish KV events, the precise profile with their (byte-level BPE, so
piecewise and self-checked) tokenizer, text prompts.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import aiohttp
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.gateway import kv_auto
from kvgate.scheduling import tokenize
from kvgate.sim.server import Replica, ReplicaConfig

PROMPT = "You are a careful assistant for tenant seven. " * 40 + "\nUser 1: what now?"


@pytest.fixture
def fresh_tokenizers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As in a new process: no tokenizer loaded yet (so its load-time self-checks are all ahead)."""
    monkeypatch.setattr(tokenize, "_BY_PATH", {})
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    yield


def _kvgate_threads() -> set[int | None]:
    return {t.ident for t in threading.enumerate() if t.name.startswith("kvgate-")}


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


async def test_the_first_request_starts_no_thread_and_opens_no_connection(fresh_tokenizers: None) -> None:
    """Failed before (main at a6977267): the first request started ``kvgate-tokenizer-check_0``. Since
    session 26 the load-time self-checks run at the tokenizer's load, before ready, and the live checks of
    the first prompts run on the check thread start-up started (review s26-rev-wkv26 F1): the request's
    own thread checks nothing and the request starts no thread."""
    rs = [Replica(ReplicaConfig(model="sim-model", time_scale=50.0, block_size=16, seed=i, kv_events_port=0),
                  index=i) for i in range(2)]  # fmt: skip
    for r in rs:
        await r.start()
    try:
        cfg = make_config([f"127.0.0.1:{r.port}" for r in rs], models=("sim-model",), policy="kvgate")
        notes = await asyncio.to_thread(kv_auto.apply, cfg)
        assert cfg.pools[0].picker_config is not None, notes  # the precise profile, with a tokenizer
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as http:
            assert gw.proxy is not None
            pool = gw.proxy.upstream
            (tok,) = tokenize._BY_PATH.values()
            assert tok.piecewise and tok.self_checks == tokenize.SELF_CHECKS  # checked before ready
            threads, native, conns = _kvgate_threads(), _native_threads(), set(pool._open)
            assert len(conns) == 2  # one kept-alive connection per endpoint before ready
            body = {"model": "sim-model", "prompt": PROMPT, "max_tokens": 2, "stream": True}
            async with http.post(base_url(gw) + "/v1/completions", json=body) as resp:
                assert resp.status == 200
                await resp.read()
            assert tok.self_checks == tokenize.SELF_CHECKS  # no load-time check on the request
            assert any(t.name.startswith("kvgate-tokenizer-check") for t in threading.enumerate())
            tok.wait_self_checks(30)  # (its prompt's live check, on that thread)
            assert tok.piecewise
            assert _kvgate_threads() == threads, "the first request started a thread"
            assert _native_threads() == native
            assert set(pool._open) <= conns, "the first request opened an upstream connection"
    finally:
        for r in rs:
            await r.stop()


def test_warm_starts_nothing_without_a_tokenizer(fresh_tokenizers: None) -> None:
    """A gateway without a tokenizer (the approximate index's character estimate) starts no thread."""
    before = _kvgate_threads()
    tokenize.warm()
    assert _kvgate_threads() == before
