"""``tokenizer: auto`` loads a model's tokenizer off the event loop (issue #16, tok30).

The default ``kvgate`` policy's prefix scorer reads ``tokenizer: auto``: a model's tokenizer is looked up
and loaded at the model's first request. That ran inside the request's pick, on the event loop, so every
request of the process waited for the file's parse and the load-time checks (hundreds of ms for a real
model's). Now the look-up runs on a loader thread and requests are scored with the estimate until it is
done. The slow load is injected: ``tokenize.load`` waits on an event the test sets only after a request
was answered; before the change the request's own pick sat in that wait (the loop blocked), so the wait
ran out (60 s) before the answer came. Fails on main 6d96a979.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.scheduling import tokenize
from kvgate.sim.tokenizer import tokenizer_dir

PROMPT = "You are a careful assistant for tenant seven. " * 20 + "\nUser 1: what now?"


def _model_dir(d: Path) -> str:
    """A local model directory (vLLM ``--model /path``: ``auto`` finds its ``tokenizer.json``)."""
    d.mkdir(parents=True)
    shutil.copy(tokenizer_dir() / "tokenizer.json", d / "tokenizer.json")
    return str(d)


class _HeldLoad:
    """``tokenize.load`` held until ``release``: ``entered`` once called, ``ran_out`` if never released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.ran_out = False
        self._real = tokenize.load
        monkeypatch.setattr(tokenize, "load", self)

    def __call__(self, path: Any) -> tokenize.PromptTokenizer:
        self.entered.set()
        if not self.release.wait(60):  # (before: this ran on the event loop, inside the request's pick)
            self.ran_out = True
        return self._real(path)


async def _complete(http: aiohttp.ClientSession, url: str, model: str) -> None:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 2}
    async with http.post(url + "/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()


async def test_a_slow_auto_load_leaves_requests_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backends: Any
) -> None:
    model = _model_dir(tmp_path / "model")
    await asyncio.to_thread(tokenize.wait_loads, 60)  # (an earlier test's look-up: never into this dict)
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    held = _HeldLoad(monkeypatch)
    (b,) = await backends(1)
    cfg = make_config([b.address], models=(model,), policy="kvgate")
    try:
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as http:
            url = base_url(gw)
            await _complete(http, url, model)  # its look-up starts; it is scored with the estimate
            assert await asyncio.to_thread(held.entered.wait, 60), "the model's tokenizer was never looked up"
            for _ in range(3):
                await _complete(http, url, model)  # answered while the load is held
            assert not held.ran_out, "a request waited for the tokenizer's load"
            assert tokenize._BY_MODEL.get(model) is None
            held.release.set()
            await asyncio.to_thread(tokenize.wait_loads, 60)
            tok = tokenize._BY_MODEL[model]
            assert tok is not None
            await _complete(http, url, model)
            assert tok._cache, "the loaded tokenizer did not tokenize the next request"
    finally:
        held.release.set()


def test_auto_look_ups_waiting_for_the_thread_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenize.wait_loads(60)  # (an earlier test's look-up: never into this dict)
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    monkeypatch.setattr(tokenize, "LOADS_PENDING", 2)
    monkeypatch.setattr(tokenize, "_PENDING", set())
    models = [_model_dir(tmp_path / f"m{i}") for i in range(3)]
    held = _HeldLoad(monkeypatch)
    try:
        assert tokenize.for_model_soon(models[0]) is None
        assert held.entered.wait(60)  # the loader thread is held in models[0]'s load
        assert tokenize.for_model_soon(models[1]) is None
        assert tokenize.for_model_soon(models[2]) is None  # (two pending: not queued)
        assert {models[0], models[1]} == tokenize._PENDING
    finally:
        held.release.set()
    tokenize.wait_loads(60)
    assert models[0] in tokenize._BY_MODEL and models[1] in tokenize._BY_MODEL
    assert models[2] not in tokenize._BY_MODEL
    assert tokenize.for_model_soon(models[2]) is None  # queued now
    tokenize.wait_loads(60)
    assert all(tokenize.for_model_soon(m) is not None for m in models)


def test_models_looked_up_are_bounded_oldest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenize.wait_loads(60)  # (an earlier test's look-up: never into this dict)
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    monkeypatch.setattr(tokenize, "MODELS", 2)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("org/a", "org/b", "org/c"):
        assert tokenize.for_model(name) is None  # (none cached here)
    assert list(tokenize._BY_MODEL) == ["org/b", "org/c"]


def test_a_forked_child_looks_models_up_on_its_own_thread(tmp_path: Path) -> None:
    """A process forked after the loader thread started (an ``os.fork`` user's) has no such thread: the
    look-ups it queued on the parent's executor never ran. Fails on 6f204f9c (tok30's first commit)."""
    import os
    import time

    tokenize.for_model_soon(f"org/absent-{tmp_path.name}")  # the parent's loader thread starts
    tokenize.wait_loads(60)
    pid = os.fork()
    if pid == 0:  # (the child: exit status 0 once a look-up of its own ran)
        code = 1
        try:
            tokenize.for_model_soon(f"org/child-{tmp_path.name}")
            tokenize.wait_loads(20)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        assert time.monotonic() < deadline, "the forked child never exited"
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(done[1]) == 0, "the child's look-up never ran"
