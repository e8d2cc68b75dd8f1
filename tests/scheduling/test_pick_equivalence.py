"""The picker's CPU cuts decide exactly as the code they replaced: the same endpoints for the same inputs.

Two Directors are built alike from the same policy and seed; one runs the current code, the other the
reference copy of the code before the cuts (``pick_reference.use_reference``). Each is driven through
the same seeded generated trace (``kvgate.bench.picktrace``: shared prefixes up to overflowing the
hashed window, short prompts, token ids, LoRA adapters, subset hints, the conformance header,
sheddable requests, first tokens, finishes with usage, scrapes that go stale, ejections, a moving
clock); every pick's chosen endpoints (or its error) and every 7th pick's explanation must be equal.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import yaml

from kvgate.bench import picktrace
from kvgate.config.policies import policy_yaml
from kvgate.scheduling import blockhash
from kvgate.scheduling.plugins.kvgate_cost import KVGateCostScorer
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer

from .pick_reference import use_reference

STEPS = 2500


def _both(
    policy: Any, n: int, seed: int, *, scraped: bool = True, judge: bool = False, teach: bool = False
) -> tuple[list[Any], list[Any], Any]:
    new, store, clock = picktrace.build(policy, n, seed, scraped=scraped)
    if teach:
        _teach(new)
    got = picktrace.run(new, store, clock, seed, STEPS, explain_every=7, judge=judge)
    ref, store, clock = picktrace.build(policy, n, seed, scraped=scraped)
    if teach:
        _teach(ref)
    want = picktrace.run(use_reference(ref), store, clock, seed, STEPS, explain_every=7, judge=judge)
    return got, want, new


def _teach(director: Any) -> None:
    """Train the SLO gate's latency model on every endpoint (TTFT = 0.5 s + 3 s per queued request, as
    ``tests/flowcontrol/test_slo_admission.teach``), so judged picks are held where a queue is."""
    from kvgate.flowcontrol.sloadmission import MIN_SAMPLES

    predictor = director.slo_admission.oracle.predictor
    for ep in director.store.all():
        for i in range(3 * MIN_SAMPLES):
            queued = i % 4
            x = [1.0, float(queued), 0.0, 0.0, 0.001 * (1 + i % 7), 0.0, 0.0]
            predictor.observe_ttft(ep.address, x, 0.5 + 3.0 * queued)


def _kvgate_doc() -> dict[str, Any]:
    from kvgate.config.policies import policy_yaml

    doc: dict[str, Any] = yaml.safe_load(policy_yaml("kvgate"))
    return doc


def _feedback_policy() -> dict[str, Any]:
    """The kvgate policy with ``cachedTokensFeedback`` on: usage reaches the prefix scorer's ``on_usage``."""
    doc = _kvgate_doc()
    for plugin in doc["plugins"]:
        if plugin["type"] == "prefix-cache-scorer":
            plugin["parameters"]["cachedTokensFeedback"] = True
    return doc


def _slo_policy() -> dict[str, Any]:
    """The kvgate policy behind flow control's ``sloAdmission`` (the Director's gate is set: picks run
    ``_run_profiles``, judged ones with the producers prepared), with the session-affinity scorer."""
    doc = _kvgate_doc()
    doc["featureGates"] = ["flowControl"]
    doc["flowControl"] = {"sloAdmission": True, "defaultRequestTTL": "30s"}
    doc["plugins"] += [{"type": "predicted-latency-scorer"}, {"type": "session-affinity-scorer"}]
    doc["schedulingProfiles"][0]["plugins"].insert(-1, {"pluginRef": "session-affinity-scorer", "weight": 3})
    return doc


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [2, 8])
def test_kvgate_policy_picks_as_before(seed: int, n: int) -> None:
    got, want, d = _both("kvgate", n, seed)
    assert got == want
    # The trace reached what it is there to reach: many endpoints, both typed errors, a learned index.
    chosen = Counter(o[1][0] for o in got if isinstance(o[1], list))
    errors = Counter(o[1] for o in got if isinstance(o[1], str))
    assert len(chosen) == n  # every endpoint chosen at least once
    assert errors["ShedError"] > 0 and sum(chosen.values()) > 500
    prefix = d.handle.find(PrefixCacheScorer)
    assert isinstance(prefix, PrefixCacheScorer) and prefix.index.total > 1000


@pytest.mark.parametrize("policy", ["reference", "round-robin", "least-request", "sglang-cache-aware"])
def test_other_policies_pick_as_before(policy: str) -> None:
    got, want, _ = _both(policy, 5, 11)
    assert got == want


@pytest.mark.parametrize("seed", [1, 6])
def test_cached_tokens_feedback_picks_as_before(seed: int) -> None:
    """Usage reaches the prefix scorer (the only ``on_usage`` observer) and acts: the index forgets what
    the engine said it no longer held, and later picks see the index without it."""
    got, want, d = _both(_feedback_policy(), 4, seed)
    assert got == want
    prefix = d.handle.find(PrefixCacheScorer)
    assert isinstance(prefix, PrefixCacheScorer) and prefix.cached_feedback
    assert prefix in d._usage_observers
    assert prefix.forgotten > 0  # the feedback acted (with no observer told of usage it stays 0)


def _overrides_on_usage(cls: type) -> bool:
    from kvgate.scheduling.framework import ResponseObserver

    return any("on_usage" in vars(c) for c in cls.__mro__[: cls.__mro__.index(ResponseObserver)])


def test_usage_observers_are_every_plugin_that_overrides_on_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Director tells usage only to the observers that read it (``_usage_observers``): every plugin
    whose class overrides ``ResponseObserver.on_usage`` (itself, through a mixin, or decorated) is one,
    so a filter that drops one fails here; those that do not override it are left out."""
    import functools

    from kvgate.scheduling import registry
    from kvgate.scheduling.framework import ResponseObserver

    class Plain(ResponseObserver):
        def on_first_token(self, request: Any, endpoint: Any, now: float) -> None:
            pass

        def on_finished(self, request: Any, endpoint: Any, output_tokens: int, ok: bool, now: float) -> None:
            pass

    class Own(Plain):
        def on_usage(self, request: Any, endpoint: Any, usage: Any, now: float) -> None:
            pass

    def logged(f: Any) -> Any:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return f(*args, **kwargs)

        return wrapper

    class Decorated(Plain):
        @logged
        def on_usage(self, request: Any, endpoint: Any, usage: Any, now: float) -> None:
            pass

    class UsageMixin:
        def on_usage(self, request: Any, endpoint: Any, usage: Any, now: float) -> None:
            pass

    class Mixed(UsageMixin, Plain):
        pass

    class Inherited(Own):
        pass

    made = {"plain": Plain, "own": Own, "decorated": Decorated, "mixed": Mixed, "inherited": Inherited}
    for name, cls in made.items():
        monkeypatch.setitem(registry._REGISTRY, f"test-usage-{name}", cls)
    doc = _feedback_policy()
    doc["plugins"] += [{"type": f"test-usage-{name}"} for name in made]
    # every registered plugin type that observes responses, besides (those that build with defaults)
    for type_name in registry.types():
        cls = registry.get(type_name)
        if (
            cls is not None
            and issubclass(cls, ResponseObserver)
            and type_name not in {p["type"] for p in doc["plugins"]}
        ):
            doc["plugins"].append({"type": type_name})
    d, _store, _clock = picktrace.build(doc, 2, 0)
    observers = d._observers
    assert {type(o) for o in observers} >= set(made.values()) | {PrefixCacheScorer}
    want = [o for o in observers if _overrides_on_usage(type(o))]
    assert d._usage_observers == want
    assert {type(o) for o in want} >= {Own, Decorated, Mixed, Inherited, PrefixCacheScorer}
    assert Plain not in {type(o) for o in want}


def test_slo_admission_and_sessions_pick_as_before() -> None:
    """A Director with an SLO gate (no single-profile fast path), judged picks (the producers prepared
    before the profile's run), and requests with session keys."""
    from kvgate.scheduling.plugins.session import SessionAffinityScorer

    got, want, d = _both(_slo_policy(), 4, 9, judge=True, teach=True)
    assert got == want
    assert d.slo_admission is not None
    assert Counter(o[1] for o in got if isinstance(o[1], str))["PredictedSLOMissError"] > 5
    session = d.handle.find(SessionAffinityScorer)
    assert isinstance(session, SessionAffinityScorer) and len(session.sessions) > 5
    assert sum(1 for o in got if isinstance(o[1], list)) > 500


def _precise(index_name: str) -> dict[str, Any]:
    """The kvgate policy with its prefix signal from KV events (``serve --kv-events auto``), no tokenizer
    (text prompts are then keyed as text), on its own named index (the registry is process-wide)."""
    from kvgate.config.policies import precise_policy

    doc = precise_policy("", bind=False)
    for plugin in doc["plugins"]:
        if plugin["type"] == "precise-prefix-cache-scorer":
            plugin["parameters"]["indexName"] = index_name
    return doc


@pytest.mark.parametrize("seed", [3, 4])
def test_precise_policy_picks_as_before(seed: int) -> None:
    """The cost scorer's other prefix source: its keys come from ``_prompt_keys`` (the precise scorer's)."""
    from kvgate.scheduling.plugins import precise_prefix

    names = (f"equiv-new-{seed}", f"equiv-ref-{seed}")
    try:
        new, store, clock = picktrace.build(_precise(names[0]), 4, seed)
        got = picktrace.run(new, store, clock, seed, STEPS, explain_every=7)
        ref, store, clock = picktrace.build(_precise(names[1]), 4, seed)
        want = picktrace.run(use_reference(ref), store, clock, seed, STEPS, explain_every=7)
    finally:
        for name in names:
            precise_prefix._INDEXES.pop(name, None)
    assert got == want
    cost = new.handle.find(KVGateCostScorer)
    assert isinstance(cost, KVGateCostScorer) and cost.precise is not None


@pytest.mark.parametrize(
    ("keys", "seed"),
    [("tokens", 3), ("tokens", 4), ("engine", 3), ("engine_cbor", 4), ("approximate", 3)],
)
def test_a_tokenizer_policy_picks_as_with_list_ids(
    keys: str, seed: int, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Token ids as packed ``array('I')`` (``scheduling.tokenize``) pick exactly as the lists they
    replaced: a policy with a byte-level BPE tokenizer (the simulator's, piecewise) through the same trace
    twice, once with ``encode`` giving a list of the same ids. ``tokens``: the precise policy as ``serve
    --kv-events auto`` runs it; ``engine`` / ``engine_cbor``: its scorer in the default mode, vLLM's
    block hashes (sha256, sha256_cbor) through ``VLLMBlockHasher``'s span memo; ``approximate``: the
    default policy's ``prefix-cache-scorer`` with ``tokenizer:`` set (review s15-rv L3; the engine case
    is the reviewer's trace)."""
    from array import array

    from kvgate.scheduling import tokenize
    from kvgate.scheduling.plugins import precise_prefix
    from kvgate.sim.tokenizer import write_tokenizer_dir

    write_tokenizer_dir(tmp_path / "t")

    def doc(name: str) -> dict[str, Any]:
        if keys == "approximate":
            d: dict[str, Any] = yaml.safe_load(policy_yaml("kvgate"))
            scorer = "prefix-cache-scorer"
        else:
            d = _precise(name)
            scorer = "precise-prefix-cache-scorer"
        found = [p for p in d["plugins"] if p["type"] == scorer]
        assert len(found) == 1
        params = found[0].setdefault("parameters", {})
        params["tokenizer"] = str(tmp_path / "t")
        if keys.startswith("engine"):
            params["mode"] = "engine"
            params["hashAlgo"] = "sha256_cbor" if keys == "engine_cbor" else "sha256"
        return d

    seen: list[type] = []
    orig = tokenize.PromptTokenizer.encode

    def spy(self: tokenize.PromptTokenizer, text: str) -> Any:
        got = orig(self, text)
        seen.append(type(got))
        return got

    hashed: list[type] = []
    if keys.startswith("engine"):
        chain = blockhash.VLLMBlockHasher._chain

        def spy_chain(self: blockhash.VLLMBlockHasher, token_ids: Any, max_blocks: Any) -> Any:
            hashed.append(type(token_ids))
            return chain(self, token_ids, max_blocks)

        monkeypatch.setattr(blockhash.VLLMBlockHasher, "_chain", spy_chain)
    names = (f"equiv-tok-new-{keys}-{seed}", f"equiv-tok-list-{keys}-{seed}")
    try:
        monkeypatch.setattr(tokenize.PromptTokenizer, "encode", spy)
        new, store, clock = picktrace.build(doc(names[0]), 4, seed)
        got = picktrace.run(new, store, clock, seed, STEPS, explain_every=7)
        tokenize._BY_PATH.pop(str(tmp_path / "t" / "tokenizer.json"), None)  # fresh: nothing cached
        monkeypatch.setattr(tokenize.PromptTokenizer, "encode", lambda self, text: list(orig(self, text)))
        ref, store, clock = picktrace.build(doc(names[1]), 4, seed)
        want = picktrace.run(ref, store, clock, seed, STEPS, explain_every=7)
    finally:
        for name in names:
            precise_prefix._INDEXES.pop(name, None)
        tokenize._BY_PATH.pop(str(tmp_path / "t" / "tokenizer.json"), None)
    assert got == want
    assert len(seen) > 500 and set(seen) == {array}  # the tokenizer ran on the trace's text prompts
    if keys.startswith("engine"):  # vLLM's hashes ran on the arrays (and on the lists in the second run)
        assert hashed.count(array) > 500 and hashed.count(list) > 500
    assert len({o[1][0] for o in got if isinstance(o[1], list)}) > 1


def test_never_scraped_endpoints_pick_as_before() -> None:
    """The health gate's fail-open path (what ``gateway_path_cost.py`` runs): nothing is ever scraped."""
    got, want, _ = _both("kvgate", 3, 5, scraped=False)
    assert got == want
    assert len({o[1][0] for o in got if isinstance(o[1], list)}) == 3


def test_the_reference_is_a_different_code_path() -> None:
    """The comparison is not vacuous: the patched Director runs the reference functions."""
    from . import pick_reference

    ref, _store, _clock = picktrace.build("kvgate", 2, 0)
    use_reference(ref)
    assert ref._pick.__func__ is pick_reference._pick
    assert type(ref.profiles["default"]) is pick_reference.RefProfile
    prefix = ref.handle.find(PrefixCacheScorer)
    assert isinstance(prefix, PrefixCacheScorer)
    assert prefix.prepare.__func__ is pick_reference.prepare  # type: ignore[attr-defined]
    assert prefix.index.add.__func__ is pick_reference.index_add  # type: ignore[attr-defined]
    cost = ref.handle.find(KVGateCostScorer)
    assert isinstance(cost, KVGateCostScorer)
    assert cost.on_picked.__func__ is pick_reference.cost_on_picked  # type: ignore[attr-defined]


def test_waiting_on_prefix_is_zero_where_costs_skips_it() -> None:
    """``costs`` calls ``_waiting_on_prefix`` only with a match and a waiting request: without either it
    returns 0 (what ``costs`` then uses), whatever else holds."""
    from kvgate.scheduling.framework import CycleState
    from kvgate.scheduling.types import InferenceRequest

    d, store, clock = picktrace.build("kvgate", 3, 2)
    picktrace.run(d, store, clock, 2, 400)  # a learned index, requests waiting for their first token
    cost = d.handle.find(KVGateCostScorer)
    assert isinstance(cost, KVGateCostScorer) and cost._waiting
    eps = list(store.all())
    cycle = CycleState(InferenceRequest("z", "m", prompt_text="System 3: " * 400), clock.now)
    d.profiles["default"].producers[0].prepare(cycle, eps)
    held = {ep.address: 5 for ep in eps}
    assert cost._waiting_on_prefix(cycle, eps, {}, []) == 0  # no match
    waiting, cost._waiting = cost._waiting, type(cost._waiting)()
    try:
        assert cost._waiting_on_prefix(cycle, eps, held, []) == 0  # no request waiting
    finally:
        cost._waiting = waiting


def test_pick_metrics_count_as_before() -> None:
    """The inlined histogram and counter updates: one observation and one count per successful pick, on
    the same series, as ``FastHistogram.observe`` and ``FastCounter.inc`` did."""
    from kvgate.scheduling import metrics

    def run(reference: bool) -> tuple[int, dict[str, float]]:
        d, store, clock = picktrace.build("kvgate", 3, 7)
        if reference:
            use_reference(d)
        hist, picks = metrics.SCHEDULER_E2E, metrics.PICKS.counts
        n0, p0, s0 = sum(hist.counts), dict(picks), hist.sum
        out = picktrace.run(d, store, clock, 7, 600)
        ok = sum(1 for o in out if isinstance(o[1], list))
        assert sum(hist.counts) - n0 == ok and hist.sum > s0
        return ok, {a: n - p0.get(a, 0.0) for a, n in picks.items() if n != p0.get(a, 0.0)}

    assert run(False) == run(True)
