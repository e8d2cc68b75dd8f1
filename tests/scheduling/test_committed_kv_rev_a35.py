"""committedKv, review rev-a35: the prompt blocks in-flight requests hold counted once by their chained
keys (F2: not grouped by the first block; F3: a burst's head written by its first request and found cached
by the rest), a running bound that spares the scan (F1), the cap keeping the long decodes (F1), a resend
without a new pick counted again (F6)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kvgate.config.director import build_director
from kvgate.config.policies import policy_config
from kvgate.datalayer.store import EndpointStore
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.plugins import kv_commit
from kvgate.scheduling.plugins.kv_commit import KVCommitLedger
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
from kvgate.scheduling.types import InferenceRequest, prompt_tokens

from .helpers import fleet

# A chat template's opening, the same in every prompt and longer than one 16-token block.
PREAMBLE = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
            "December 2023\nToday Date: 26 Jul 2024\n\n")  # fmt: skip
TENANT = {t: "".join(f"Tenant {t}'s own instructions, rule number {i}. " for i in range(90)) for t in "AB"}
HEAD = "".join(f"The tenant's shared instructions, rule number {i}. " for i in range(90))


def _director(n: int = 1, **metrics: Any) -> tuple[Director, KVCommitLedger, EndpointStore]:
    cfg = policy_config("kvgate")
    for spec in cfg.plugins:
        if spec.type == "kvgate-cost-scorer":
            spec.parameters = {**(spec.parameters or {}), "committedKv": True}
    store = fleet(n)
    for e in store.all():
        for k, v in metrics.items():
            setattr(e.metrics, k, v)
    d = build_director(cfg, store, clock=lambda: 0.0, seed=0)
    scorer = d.handle.find(KVGateCostScorer)
    assert scorer is not None and scorer.commit is not None
    return d, scorer.commit, store


def _tokens(text: str) -> int:
    return prompt_tokens(0, text, None)


def test_tenants_behind_one_template_opening_pin_their_own_heads() -> None:
    d, led, store = _director()
    (ep,) = store.all()
    for t in "AB":  # each tenant's head cached at the endpoint
        r = InferenceRequest(f"warm{t}", "m", prompt_text=PREAMBLE + TENANT[t] + " first?", max_tokens=1)
        d.on_dispatched(r, d.pick(r).primary)
        d.on_first_token(r, ep)
        d.on_finished(r, ep, None, True)
    peaks = []
    for t in "AB":  # one request per tenant in flight
        r = InferenceRequest(f"run{t}", "m", prompt_text=PREAMBLE + TENANT[t] + " second?", max_tokens=1)
        d.on_dispatched(r, d.pick(r).primary)
        peaks.append(led.peak(ep.address, 0.0))
    b_prompt = _tokens(PREAMBLE + TENANT["B"] + " second?")
    # B's prompt shares only the opening (under 40 tokens) with A's: nearly all of it is held besides A's.
    assert peaks[1] - peaks[0] >= b_prompt - 40, (peaks, b_prompt)


def test_a_burst_head_is_held_once_at_its_holder() -> None:
    d, led, store = _director()
    (ep,) = store.all()
    prompts = [HEAD + f"question {i}?" for i in range(4)]
    for i, text in enumerate(prompts):  # the first cold, three more with its head while it runs
        r = InferenceRequest(f"b{i}", "m", prompt_text=text, max_tokens=1)
        d.on_dispatched(r, d.pick(r).primary)
    head = _tokens(HEAD)
    # The head once, each prompt's own last block(s) and one output token.
    assert led.peak(ep.address, 0.0) <= head + 4 * (32 + 1), (led.peak(ep.address, 0.0), head)


def test_a_roomy_endpoint_is_priced_without_a_scan(monkeypatch: Any) -> None:
    d, led, _store = _director(2, num_gpu_blocks=100_000, block_size=16)
    for i in range(200):  # in flight at both, far under their caches
        r = InferenceRequest(f"r{i}", "m", prompt_text=HEAD + f"q{i}", max_tokens=100)
        d.on_dispatched(r, d.pick(r).primary)
    assert len(led) == 200
    scans = []
    real = KVCommitLedger.peak
    monkeypatch.setattr(KVCommitLedger, "peak", lambda self, *a: scans.append(a) or real(self, *a))
    d.pick(InferenceRequest("new", "m", prompt_text=HEAD + "new", max_tokens=100))
    assert scans == []


def test_the_bound_bounds_the_peak_and_a_full_endpoint_is_still_priced() -> None:
    led = KVCommitLedger()
    head = list(range(1, 65))
    for i in range(10):
        led.picked(f"r{i}", "a", [*head, 1000 + i], 16.0, 5.0, 100.0 * (i + 1))
        assert led.peak("a", 0.0) <= led.bound("a")
    new = ([*head, 2000], 16.0, 5.0, 500.0)
    assert led.peak("a", 0.0, *new) <= led.bound("a", *new)
    led.first_token("r9", 0.0)
    for i in range(10):
        led.finished(f"r{i}", math.nan)
    assert led.bound("a") == 0.0 and led.peak("a", 0.0) == 0.0


def test_the_cap_keeps_the_long_decodes(monkeypatch: Any) -> None:
    monkeypatch.setattr(kv_commit, "MAX_TRACKED", 64)
    led = KVCommitLedger()
    led.picked("long", "a", (), 0.0, 10.0, 100_000.0)  # the oldest, and the one that sets the peak
    for i in range(64):
        led.picked(f"short{i}", "a", (), 0.0, 10.0, 10.0)
    assert len(led) == 64 and led.peak("a", 0.0) >= 100_000.0


def test_a_resent_request_is_committed_again_where_it_runs() -> None:
    d, led, _store = _director(2)
    r = InferenceRequest("r", "m", prompt_text="a long story please " * 50, max_tokens=4000)
    ep = d.pick(r).primary
    d.on_dispatched(r, ep)
    assert led.peak(ep.address, 0.0) > 4000
    d.on_finished(r, ep, None, False)  # StaleConnection (gateway/proxy.py): nothing ran there
    d.on_dispatched(r, ep)  # the resend, same endpoint, no new pick
    d.on_first_token(r, ep)
    assert led.peak(ep.address, 0.0) > 4000, "the resent request holds no KV in the ledger"
    d.on_finished(r, ep, None, True)
    assert len(led) == 0 and led.peak(ep.address, 0.0) == 0.0
    # One that fails for good (no resend) leaves nothing counted.
    r = InferenceRequest("s", "m", prompt_text="a long story please " * 50, max_tokens=4000)
    ep = d.pick(r).primary
    d.on_dispatched(r, ep)
    d.on_finished(r, ep, None, False)
    assert len(led) == 0 and led.peak(ep.address, 0.0) == 0.0


def test_n_choices_write_n_tokens_a_step() -> None:
    """rev-a35 N2: ``n`` choices decode ``n`` tokens per engine step, and the pace is learned per step."""
    led = KVCommitLedger()
    led.picked("x", "a", (), 0.0, 0.0, 4000.0, 4)
    led.picked("y", "a", (), 0.0, 0.0, 1000.0)
    # 1,000 steps each: they end together, x at 4,000 tokens, y at 1,000.
    assert led.peak("a", 0.0) == 5000.0
    led.finished("x", math.nan)
    led.finished("y", math.nan)
    led.picked("t", "a", (), 0.0, 0.0, 404.0, 4)  # 101 steps in 10 s from its first token: 0.1 s a step
    led.first_token("t", 0.0)
    led.finished("t", 10.0, 404)
    led.picked("x", "a", (), 0.0, 0.0, 4000.0, 4)
    led.first_token("x", 0.0)
    # At 90 s x has written 3,600 (900 steps), 100 steps left; a new 1,000-token request grows 100 beside it.
    assert led.peak("a", 90.0, (), 0.0, 0.0, 1000.0) == pytest.approx(3600.0 + 5 * 100.0)
