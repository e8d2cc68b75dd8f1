"""A deterministic pick trace: what a picker decides, step by step, on a seeded generated workload.

Used two ways: the pick-equivalence test (``tests/scheduling/test_pick_equivalence.py``: the picker's
fast paths against a reference copy of the code they replaced) and ``scripts/gateway_path_cost.py
--picks`` (this tree's picker against another tree's: the same decisions, and the CPU per request).
It imports only names every tree of the last sessions has (``build_director``, ``EndpointStore``,
``Endpoint``, ``EndpointMetrics``, ``InferenceRequest``, ``Usage``), so the script can load this file by
path into a process that runs another tree's ``kvgate``.

``run(director, store, clock, seed, steps)`` drives one Director through ``steps`` events drawn from
``random.Random(seed)``: a request arrives and is picked (and, unless it fails, dispatched), one in
flight gets its first token or finishes (with its usage, sometimes failed), an endpoint's scraped
metrics change (queue, running, KV use, LoRA adapters, block size, a scrape that goes stale), an
endpoint is ejected or comes back, the clock moves. Requests draw from shared prefixes (a few of them
long enough to overflow the hashed window) with unique tails, short prompts under one block (in
characters; some non-ASCII ones a block in bytes), token-id prompts, LoRA adapters, subset hints, the
conformance filter's header, sheddable priorities, session keys, and now and then ``explain``. It
returns one line per pick: the request, the endpoints chosen (or the error's class), and the explanation
when asked for, so two pickers that decide alike return equal lists. Nothing in it depends on what was
picked but through the picks themselves.
"""

from __future__ import annotations

import random
import time
from typing import Any

from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.types import InferenceRequest, Usage

ADAPTERS = ("sql-lora", "chat-lora", "code-lora")


class Clock:
    """A settable clock for the Director (seconds)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fleet(n: int, seed: int, clock: Clock, *, scraped: bool = True) -> EndpointStore:
    """``n`` endpoints; ``scraped``: with fresh metrics (else never scraped, as ``serve`` without scrapes)."""
    rng = random.Random(seed)
    store = EndpointStore()
    for i in range(n):
        m = EndpointMetrics()
        if scraped:
            _scrape(m, rng, clock.now)
        store.add(Endpoint(address=f"10.0.{i}.1:8000", metrics=m))
    return store


def _scrape(m: EndpointMetrics, rng: random.Random, now: float) -> None:
    m.waiting_queue_size = rng.choice((0, 0, 0, 1, 2, 5, 12))
    m.running_requests = rng.randint(0, 24)
    kv = (0.0, 0.1, 0.5, 0.85, 0.93, 0.99, 1.0)
    m.kv_cache_usage = rng.choice(kv) if rng.random() < 0.7 else rng.random()
    m.block_size = rng.choice((16, 16, 16, None))
    m.num_gpu_blocks = rng.choice((None, 2000, 27_000))
    m.max_lora = rng.choice((None, 1, 2, 4))
    m.running_loras = frozenset(a for a in ADAPTERS if rng.random() < 0.3)
    m.waiting_loras = frozenset(a for a in ADAPTERS if rng.random() < 0.15)
    # mostly fresh; sometimes older than the picker's staleness (2 s) or the health gate's (5 s)
    m.updated_at = now - rng.choice((0.0, 0.0, 0.0, 0.1, 1.0, 3.0, 7.0))


def _prompts(rng: random.Random) -> list[str]:
    words = ["the", "of", "prefix", "cache", "block", "token", "model", "route", "engine", "queue"]
    heads = []
    for g, size in enumerate((40, 300, 1200, 3000, 6000, 24_000)):
        text = f"System {g}: "
        while len(text) < size:
            text += rng.choice(words) + " "
        heads.append(text)
    heads.append("Résumé — naïve café ✓ " * 30)  # non-ASCII text: bytes differ from characters
    return heads


def _request(
    i: int, rng: random.Random, heads: list[str], addresses: list[str], extra: random.Random
) -> InferenceRequest:
    """``extra``: the draws added in session 10 (review s10-pick), from their own stream, so ``rng``'s
    sequence, and so the rest of the trace, is what it was before them."""
    kind = rng.random()
    req = InferenceRequest(f"r{i}", "m", max_tokens=rng.choice((None, 8, 128, 1024)))
    if kind < 0.15:
        req.prompt_text = rng.choice(("hi", "Say hello to the benchmark", "é" * 20))
        if req.prompt_text[0] == "é":  # under one block in characters; the last two are one in bytes
            req.prompt_text = extra.choice(("é" * 20, "é" * 40, "é" * 32 + "x"))
    elif kind < 0.25:
        ids = [rng.randrange(1000) for _ in range(rng.choice((16, 100, 300)))]
        req.token_ids = ids + [rng.randrange(1000) for _ in range(rng.randrange(40))]
    else:
        head = rng.choice(heads)
        cut = rng.choice((len(head), len(head), len(head) // 2))
        req.prompt_text = head[:cut] + f" question {rng.randrange(50)}: " + "x" * rng.randrange(200)
    if req.prompt_text and rng.random() < 0.5:
        req.prompt_tokens = max(1, len(req.prompt_text) // 4)
    if rng.random() < 0.2:
        req.lora_adapter = req.model = rng.choice(ADAPTERS)
    if rng.random() < 0.05:
        req.subset = frozenset(rng.sample(addresses, rng.randint(1, len(addresses))))
    if rng.random() < 0.03:
        req.headers = {"test-epp-endpoint-selection": rng.choice(addresses)}
    if rng.random() < 0.1:
        req.priority = -1
    if rng.random() < 0.1:
        req.stream = True
    if extra.random() < 0.1:
        req.session_key = f"session-{extra.randrange(12)}"
    return req


def run(
    director: Any,
    store: EndpointStore,
    clock: Clock,
    seed: int,
    steps: int,
    *,
    explain_every: int = 0,
    spent: list[float] | None = None,
    judge: bool = False,
) -> list[tuple[Any, ...]]:
    """Drive ``director`` (over ``store``, on ``clock``) through ``steps`` seeded events; the picks.
    ``judge``: pick as flow control does when a request leaves its queue (``pick(..., judge=True)``:
    ``sloAdmission`` judges sheddable requests first).
    ``spent``: its first item is increased by the CPU time (``process_time``) of the Director's own calls
    (picks, dispatches, first tokens, finishes), the generator's work left out."""
    cpu = time.process_time if spent is not None else _zero
    used = 0.0
    rng = random.Random(seed)
    heads = _prompts(rng)
    extra = random.Random(seed + 7_000_003)
    eps = list(store.all())
    addresses = [ep.address for ep in eps]
    open_: list[tuple[InferenceRequest, Endpoint, bool]] = []  # (request, endpoint, first token seen)
    out: list[tuple[Any, ...]] = []
    picks = 0
    for step in range(steps):
        ev = rng.random()
        if ev < 0.45 or not open_:
            req = _request(step, rng, heads, addresses, extra)
            explain = bool(explain_every) and picks % explain_every == 0
            picks += 1
            t0 = cpu()
            try:
                res = director.pick(req, explain, judge=True) if judge else director.pick(req, explain)
            except Exception as e:  # the typed errors (no capacity, shed) are decisions too
                used += cpu() - t0
                out.append((req.request_id, type(e).__name__))
                continue
            used += cpu() - t0
            chosen = [ep.address for ep in res.endpoints]
            out.append((req.request_id, chosen, res.profile, res.explanation if explain else None))
            if rng.random() < 0.97:
                t0 = cpu()
                director.on_dispatched(req, res.endpoints[0])
                used += cpu() - t0
                open_.append((req, res.endpoints[0], False))
        elif ev < 0.62:
            k = rng.randrange(len(open_))
            req, ep, started = open_[k]
            if not started:
                t0 = cpu()
                director.on_first_token(req, ep, learn=req.stream)
                used += cpu() - t0
                open_[k] = (req, ep, True)
        elif ev < 0.85:
            req, ep, _started = open_.pop(rng.randrange(len(open_)))
            ok = rng.random() < 0.95
            out_tokens = rng.randint(1, 300)
            cached = rng.choice((0, 0, 64, 512))
            usage = Usage(max(1, len(req.prompt_text) // 4), out_tokens, cached, rng.random() < 0.5)
            t0 = cpu()
            director.on_finished(req, ep, usage if ok else None, ok)
            used += cpu() - t0
        elif ev < 0.95:
            _scrape(rng.choice(eps).metrics, rng, clock.now)
        elif ev < 0.97:
            target = rng.choice(eps)
            target.healthy = not target.healthy or rng.random() < 0.5
        else:
            clock.now += rng.choice((0.001, 0.05, 0.5, 2.5))
    if spent is not None:
        spent[0] += used
    return out


def _zero() -> float:
    return 0.0


def build(
    policy: Any, n_endpoints: int, seed: int, *, scraped: bool = True
) -> tuple[Any, EndpointStore, Clock]:
    """A Director for ``policy`` over ``n_endpoints`` generated endpoints, on its own clock, seeded."""
    from kvgate.config.director import build_director

    clock = Clock()
    store = fleet(n_endpoints, seed, clock, scraped=scraped)
    return build_director(policy, store, clock=clock, seed=seed), store, clock
