"""The precise prefix scorer against the simulator's KV events, and vLLM-exact block hashing."""

from __future__ import annotations

import pytest

from kvgate.datalayer import kvevents
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.kvevents import BlockIndex, decode_batch, encode_batch
from kvgate.datalayer.kvwire import BlockStored
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.openai.request import render_chat
from kvgate.scheduling import registry
from kvgate.scheduling.blockhash import ChainedVLLMHasher, VLLMBlockHasher, cbor_dumps
from kvgate.scheduling.framework import ConfigError, CycleState, Params, PluginHandle
from kvgate.scheduling.plugins.precise_prefix import PrecisePrefixCacheScorer, shared_index
from kvgate.scheduling.types import InferenceRequest
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.types import SimRequest

# Golden vector from a real vLLM 0.32 (CPU, block 128, default sha256, no PYTHONHASHSEED): prompt
# token ids 10..309 produced BlockStored(block_hashes=[6170014945461972905, 17716802732342324079]).
REAL_VLLM_TOKENS = list(range(10, 310))
REAL_VLLM_HASHES = [6170014945461972905, 17716802732342324079]


def test_block_hashes_match_a_real_vllm_032():
    assert VLLMBlockHasher(128).external_hashes(REAL_VLLM_TOKENS) == REAL_VLLM_HASHES
    # A different seed (PYTHONHASHSEED on the server) or algorithm gives different hashes.
    assert VLLMBlockHasher(128, seed="0").external_hashes(REAL_VLLM_TOKENS) != REAL_VLLM_HASHES
    assert VLLMBlockHasher(128, "sha256_cbor").external_hashes(REAL_VLLM_TOKENS) != REAL_VLLM_HASHES
    with pytest.raises(ValueError):
        VLLMBlockHasher(128, "xxhash")  # random per-process seed in vLLM unless PYTHONHASHSEED is set


def test_cbor_encoder_known_answers():
    # RFC 8949 appendix A examples.
    assert cbor_dumps(0) == bytes.fromhex("00")
    assert cbor_dumps(23) == bytes.fromhex("17")
    assert cbor_dumps(24) == bytes.fromhex("1818")
    assert cbor_dumps(1000) == bytes.fromhex("1903e8")
    assert cbor_dumps(1000000) == bytes.fromhex("1a000f4240")
    assert cbor_dumps(1000000000000) == bytes.fromhex("1b000000e8d4a51000")
    assert cbor_dumps(-1) == bytes.fromhex("20")
    assert cbor_dumps(None) == bytes.fromhex("f6")
    assert cbor_dumps("a") == bytes.fromhex("6161")
    assert cbor_dumps(b"\x01\x02\x03\x04") == bytes.fromhex("4401020304")
    assert cbor_dumps((1, (2, 3), (4, 5))) == bytes.fromhex("8301820203820405")


def test_chained_hasher_reproduces_vllm_chain():
    h = ChainedVLLMHasher()
    parent = None
    got = []
    for i in range(2):
        parent = h(parent, REAL_VLLM_TOKENS[i * 128 : (i + 1) * 128], None)
        got.append(parent)
    assert got == REAL_VLLM_HASHES and h.misses == 0


# --- simulator in the loop --------------------------------------------------------------------------


def _wire(events) -> bytes:
    """Events in vLLM 0.32's msgpack map form (what the simulator's HTTP front publishes)."""
    return encode_batch(events, 0.0)


class SimServer:
    """One simulated engine whose KV events feed a BlockIndex under its address."""

    def __init__(self, address: str, index: BlockIndex, cfg: EngineConfig) -> None:
        self.address = address
        self.index = index
        self.engine = Engine(cfg, kv_event_sink=lambda evs: index.apply(address, decode_batch(_wire(evs))))
        self.now = 0.0

    def run(self, rid: str, tokens: list[int]) -> SimRequest:
        req = SimRequest(rid, tokens, max_tokens=2)
        self.engine.add_request(req, self.now)
        while self.engine.has_work():
            self.now += self.engine.step(self.now).duration
        return req


def _scorer(index_name: str, **params) -> tuple[PrecisePrefixCacheScorer, PluginHandle]:
    handle = PluginHandle(store=None)
    cls = registry.get("precise-prefix-cache-scorer")
    assert cls is PrecisePrefixCacheScorer
    raw = {"indexName": index_name, **params}
    plugin = cls.create("pp", Params(raw, "plugins[0].parameters"), handle)
    assert isinstance(plugin, PrecisePrefixCacheScorer)
    return plugin, handle


def _score(plugin: PrecisePrefixCacheScorer, tokens: list[int], eps: list[Endpoint]) -> list[float]:
    cycle = CycleState(InferenceRequest("r", "m", token_ids=tokens), now=0.0)
    return plugin.score(cycle, eps)


@pytest.mark.parametrize("mode", ["engine", "tokens"])
def test_scorer_tracks_sim_cache_including_evictions(mode):
    name = f"sim-{mode}"
    plugin, _ = _scorer(name, mode=mode, blockSize=16)
    index = plugin.index
    # engine mode needs vLLM's hashes: the simulator takes a block hasher in EngineConfig.block_hasher.
    hasher = ChainedVLLMHasher() if mode == "engine" else None
    extra = {"block_hasher": hasher} if hasher else {}
    cfg = dict(block_size=16, num_gpu_blocks=24, max_model_len=384, **extra)
    a = SimServer("10.0.0.1:8000", index, EngineConfig(**cfg))
    b = SimServer("10.0.0.2:8000", index, EngineConfig(**cfg))
    eps = [make_endpoint(a.address), make_endpoint(b.address)]

    doc1 = [7] * 100 + list(range(60))  # 10 full blocks
    a.run("r1", doc1)
    s = _score(plugin, doc1, eps)
    assert s[0] == pytest.approx(1.0) and s[1] == 0.0
    # A prompt sharing the first 100 tokens: 6 full blocks in common with doc1.
    doc2 = [7] * 100 + list(range(1000, 1060))
    s = _score(plugin, doc2, eps)
    assert s[0] == pytest.approx(6 / 10) and s[1] == 0.0

    # KV pressure: a 15-block prompt on a 24-block engine evicts most of doc1's (now free) blocks.
    a.run("r2", list(range(5000, 5240)))
    held = index.num_blocks(a.address)
    assert held <= 24
    # The index agrees with the engine's own cache on every block of doc1.
    got = _score(plugin, doc1, eps)[0]
    real = a.engine.pool.lookup(_sim_hashes(a.engine, doc1), 10)
    assert got == pytest.approx(len(real) / 10)
    assert got < 1.0

    b.run("r3", doc1)
    s = _score(plugin, doc1, eps)
    assert s[1] == pytest.approx(1.0)

    a.engine.reset_prefix_cache()
    assert index.num_blocks(a.address) == 0


def _sim_hashes(engine: Engine, tokens: list[int]) -> list[int]:
    bs = engine.config.block_size
    hasher = engine.config.block_hasher
    out: list[int] = []
    parent = None
    for i in range(len(tokens) // bs):
        parent = hasher(parent, tokens[i * bs : (i + 1) * bs], None)
        out.append(parent)
    return out


def test_block_size_comes_from_endpoint_metrics_then_events():
    plugin, _ = _scorer("bs", mode="tokens", blockSize=4)
    ep = make_endpoint("10.0.0.9:8000")
    assert plugin.endpoint_block_size(ep) == 4
    plugin.index.apply(ep.address, decode_batch(_wire([BlockStored([1], None, list(range(8)), 8, None)])))
    assert plugin.endpoint_block_size(ep) == 8
    ep.metrics.block_size = 128
    assert plugin.endpoint_block_size(ep) == 128
    # The server's num_gpu_blocks (scraped) bounds its entries in the index.
    ep.metrics.num_gpu_blocks = 3
    _score(plugin, list(range(16)), [ep])
    assert plugin.index.capacity(ep.address) == 3


def test_text_and_chat_prompts_use_the_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    plugin, _ = _scorer("tok", mode="tokens", blockSize=2, tokenizer=str(tmp_path))
    ep = make_endpoint("10.0.0.3:8000")
    ids = [1, 2, 1, 2]
    plugin.index.apply(ep.address, decode_batch(_wire([BlockStored([5, 6], None, ids, 2, None)])))
    req = InferenceRequest("r", "m", prompt_text="a b a b")
    assert plugin.score(CycleState(req, 0.0), [ep]) == [1.0]
    assert list(req.token_ids or ()) == ids
    # Chat prompts arrive rendered (render_chat) and are tokenized like any other text.
    chat = InferenceRequest("r", "m", prompt_text=render_chat([{"role": "user", "content": "a b a b"}]))
    plugin.score(CycleState(chat, 0.0), [ep])
    assert chat.token_ids is not None and list(chat.token_ids[-4:]) == ids


def test_config_errors_and_store_removal_purges():
    with pytest.raises(ConfigError):
        _scorer("bad", mode="fuzzy")
    with pytest.raises(ConfigError):
        _scorer("bad2", nope=1)
    with pytest.raises(ConfigError, match="PYTHONHASHSEED"):
        _scorer("bad3", hashAlgo="xxhash")
    running = _scorer("clash", mode="tokens")  # (a scorer nobody holds any more holds no name)
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.parameters\.indexName: 'clash' is the index of"):
        _scorer("clash", mode="engine")
    del running
    store = EndpointStore.from_addresses(["10.0.0.4:8000"])
    handle = PluginHandle(store=store)
    plugin = PrecisePrefixCacheScorer.create("pp", Params({"indexName": "purge"}, "p"), handle)
    assert isinstance(plugin, PrecisePrefixCacheScorer)
    plugin.index.apply("10.0.0.4:8000", decode_batch(_wire([BlockStored([1], None, [0] * 16, 16, None)])))
    store.remove("10.0.0.4:8000")
    assert plugin.index.num_blocks() == 0


def test_event_source_from_label_or_port_offset():
    plugin, _ = _scorer("src", eventsPortOffset=100, replayPortOffset=200)
    assert plugin.event_source(make_endpoint("127.0.0.1:8000")) == (
        "tcp://127.0.0.1:8100",
        "tcp://127.0.0.1:8200",
    )
    ep = make_endpoint("127.0.0.1:8000", labels={"kvgate.io/kv-events": "tcp://127.0.0.1:9999"})
    assert plugin.event_source(ep) == ("tcp://127.0.0.1:9999", None)  # a label is the whole config
    none, _ = _scorer("src2")
    assert none.event_source(make_endpoint("127.0.0.1:8000")) is None
    assert shared_index("src")[0] is plugin.index


# --- dispatch-time (speculative) credit --------------------------------------------------------------

_HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def _reference_precise(index_name: str, ttl: str, mode: str = "tokens") -> str:
    return f"""{_HEAD}plugins:
- type: queue-scorer
- type: precise-prefix-cache-scorer
  parameters: {{mode: {mode}, indexName: {index_name}, blockSize: 16, speculativeTTL: {ttl}}}
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: queue-scorer, weight: 2}}
  - {{pluginRef: precise-prefix-cache-scorer, weight: 3}}
"""


def _group_picks(config: str, now: list[float], n: int = 12) -> list[str]:
    from kvgate.config.director import build_director
    from kvgate.config.picker import load_config

    store = EndpointStore.from_addresses([f"10.1.0.{i}:8000" for i in range(4)])
    d = build_director(load_config(config), store, clock=lambda: now[0], seed=1)
    doc = [3] * 160  # one customer's 10-block context, then per-request questions
    return [
        d.pick(InferenceRequest(f"r{i}", "m", token_ids=doc + [i] * 16)).primary.address for i in range(n)
    ]


def test_speculative_credit_keeps_a_group_together_before_any_event():
    # No engine has reported anything: only the picks themselves can keep the group on one endpoint.
    together = _group_picks(_reference_precise("spec-on", "2s"), [0.0])
    assert len(set(together)) == 1
    scattered = _group_picks(_reference_precise("spec-off", "0"), [0.0])
    assert len(set(scattered)) > 1  # events alone: every pick sees no match and ties are broken at random


def test_speculative_credit_expires_and_yields_to_reported_evictions():
    plugin, _ = _scorer("spec-evict", mode="engine", blockSize=16, speculativeTTL="2s")
    a, b = make_endpoint("10.2.0.1:8000"), make_endpoint("10.2.0.2:8000")
    doc = list(range(100, 260))  # 10 full blocks
    cycle = CycleState(InferenceRequest("r0", "m", token_ids=doc), now=0.0)
    plugin.prepare(cycle, [a, b])
    plugin.on_picked(cycle, a)
    later = CycleState(InferenceRequest("r1", "m", token_ids=doc), now=1.0)
    assert plugin.score(later, [a, b]) == [1.0, 0.0]
    assert later.data["precise-prefix"] == {a.address: 160, b.address: 0}
    assert _score(plugin, doc, [a, b]) == [1.0, 0.0]  # _score runs at now=0.0, still credited
    assert plugin.score(CycleState(InferenceRequest("r2", "m", token_ids=doc), now=2.5), [a, b]) == [0.0, 0.0]
    # Credit again, then the engine reports evicting blocks 5.. of that prefix: the report wins.
    plugin.on_picked(CycleState(InferenceRequest("r3", "m", token_ids=doc), now=3.0), a)  # not prepared
    plugin.on_picked(later, a)  # prepared at now=1.0, so credited until 3.0
    hashes = VLLMBlockHasher(16).external_hashes(doc)
    plugin.index.apply(a.address, [kvevents.BlockRemoved(tuple(hashes[5:]))])
    assert plugin.score(CycleState(InferenceRequest("r4", "m", token_ids=doc), now=1.5), [a, b]) == [0.5, 0.0]


def test_kvgate_cost_scorer_reads_precise_matches():
    from kvgate.config.director import build_director
    from kvgate.config.picker import load_config

    def kvgate_precise(ref: str, index_name: str) -> str:
        return f"""{_HEAD}plugins:
- type: precise-prefix-cache-scorer
  parameters: {{mode: tokens, indexName: {index_name}, blockSize: 16, speculativeTTL: 0}}
- type: kvgate-cost-scorer
  parameters: {{prefixPluginRef: "{ref}"}}
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: kvgate-cost-scorer}}
  - {{pluginRef: max-score-picker}}
"""

    doc = [5] * 320  # 20 full blocks
    for ref, index_name in (("precise-prefix-cache-scorer", "cost-ref"), ("", "cost-auto")):
        store = EndpointStore.from_addresses([f"10.3.0.{i}:8000" for i in range(4)])
        d = build_director(load_config(kvgate_precise(ref, index_name)), store, clock=lambda: 0.0, seed=0)
        holder = "10.3.0.2:8000"
        # Only the engines' events say who holds the prompt: no pick has ever sent it anywhere.
        d.handle.plugins["precise-prefix-cache-scorer"].index.apply(
            holder, [kvevents.BlockStored(tuple(range(1, 21)), None, tuple(doc), 16)]
        )
        res = d.pick(InferenceRequest("r", "m", token_ids=doc + [9] * 8), explain=True)
        assert res.primary.address == holder, ref
        costs = res.explanation["costs"]
        assert costs[holder] < min(c for a, c in costs.items() if a != holder)


async def test_scorer_over_zmq_from_the_simulators_publisher():
    """The simulator's own ZMQ publisher (vLLM wire format) -> kvgate's subscriber -> the scorer."""
    import asyncio

    from kvgate.datalayer.kvevents import KVEventsManager
    from kvgate.sim.kvevents import KVEventPublisher

    pub = KVEventPublisher()
    pub.start()
    plugin, _ = _scorer("sim-zmq", mode="engine", blockSize=16)
    mgr: KVEventsManager = plugin.manager
    try:
        await mgr.add("10.0.0.7:8000", pub.endpoint, replay_endpoint=pub.replay_endpoint)
        cfg = EngineConfig(
            block_size=16, num_gpu_blocks=64, max_model_len=512, block_hasher=ChainedVLLMHasher()
        )
        eng = Engine(cfg, kv_event_sink=pub.publish)
        ep = make_endpoint("10.0.0.7:8000")
        prompts = [[i % 50 + 1] * 64 + [i] * 16 for i in range(40)]  # until the subscription is up
        doc: list[int] = []
        for i, doc in enumerate(prompts):
            req = SimRequest(f"z{i}", doc, max_tokens=1)
            eng.add_request(req, 0.0)
            while eng.has_work():
                eng.step(0.0)
            await asyncio.sleep(0.02)
            if _score(plugin, doc, [ep])[0] == 1.0:
                break
        assert _score(plugin, doc, [ep]) == [1.0]
        # Anything published before the subscription landed came back through the replay socket.
        assert mgr.subscribers[ep.address].stats.resyncs == 0
    finally:
        await mgr.close()
        await pub.close()


def test_default_match_covers_a_long_prompt_at_vllms_default_block_size():
    # vLLM's GPU default is 16-token blocks: a 6k-token shared context is 384 blocks. The match is exact,
    # and kvgate-cost-scorer counts its tokens as they are (no extrapolation as with the approximate
    # index), so a cap below the prompt's length would under-report a holder's hit: 256 blocks said
    # 4,096 of 6,144 cached, and holders lost to idle replicas under load (fleet shared-prefix scenario).
    plugin, _ = _scorer("long-prompt", mode="tokens", blockSize=16, speculativeTTL=0)
    context = list(range(10_000, 10_000 + 6144))
    keys = kvevents.token_keys(context, 16)
    assert len(keys) == 384
    holder, other = make_endpoint("10.4.0.1:8000"), make_endpoint("10.4.0.2:8000")
    plugin.index.apply(holder.address, [BlockStored(tuple(range(1, 385)), None, tuple(context), 16)])
    prompt = context + [3] * 1229
    cycle = CycleState(InferenceRequest("r", "m", token_ids=prompt), now=0.0)
    plugin.prepare(cycle, [holder, other])
    assert cycle.data["precise-prefix"] == {holder.address: 6144, other.address: 0}


def _credit(plugin: PrecisePrefixCacheScorer, ep: Endpoint, prompts: list[list[int]]) -> None:
    for i, tokens in enumerate(prompts):
        cycle = CycleState(InferenceRequest(f"c{i}", "m", token_ids=tokens), now=0.0)
        plugin.prepare(cycle, [ep])
        plugin.on_picked(cycle, ep)


def test_speculative_credit_holds_sixteen_cap_length_prompts_per_endpoint():
    # At the default 2,048-block cap (32k tokens at 16-token blocks), 16,384 pending keys per endpoint
    # held only 8 such prompts before any event confirmed them (64 at the old 256-block cap): the
    # oldest one's credit went, and its followers scattered while it was still queued.
    plugin, _ = _scorer("spec-capacity", mode="tokens", blockSize=16, speculativeTTL="10s")
    assert plugin.max_blocks == 2048
    a = make_endpoint("10.5.0.1:8000")
    prompts = [list(range(p * 40_000, p * 40_000 + 2048 * 16)) for p in range(16)]
    _credit(plugin, a, prompts)
    assert [_score(plugin, p, [a])[0] for p in prompts] == [1.0] * 16
    assert plugin.index.num_pending(a.address) == 16 * 2048


def test_speculative_capacity_follows_a_raised_match_cap_and_stays_bounded():
    # A cap above the fixed 16,384 pending keys made one long prompt evict its own leading blocks: no
    # credit at all. The capacity is derived from the cap (bounded by it), unless set explicitly.
    plugin, _ = _scorer("spec-raised", mode="tokens", blockSize=4, speculativeTTL="10s",
                        maxPrefixBlocksToMatch=20_000)  # fmt: skip
    a = make_endpoint("10.5.0.2:8000")
    prompts = [list(range(p * 100_000, p * 100_000 + 20_000 * 4)) for p in range(17)]
    _credit(plugin, a, prompts[:1])
    assert _score(plugin, prompts[0], [a]) == [1.0]
    _credit(plugin, a, prompts[1:])
    assert plugin.index.num_pending(a.address) == 16 * 20_000  # the oldest prompt's credit went first
    assert _score(plugin, prompts[0], [a]) == [0.0] and _score(plugin, prompts[1], [a]) == [1.0]
    fixed, _ = _scorer("spec-fixed", mode="tokens", speculativeCapacityPerEndpoint=100)
    assert fixed.index.pending_capacity == 100


@pytest.mark.parametrize("algo", ["sha256_cbor", "xxhash_cbor"])
def test_cbor_block_hashes_equal_the_generic_encoding_at_every_int_width(algo):
    # The block encoder looks token ids up in a table (below 2**16) and writes the rest by hand; the
    # digests must be those of cbor_dumps((parent, tuple(tokens), None)), which the RFC vectors pin.
    edges = [0, 1, 23, 24, 255, 256, 65_535, 65_536, 151_935, 2**32 - 1, 2**32, 2**40]
    tokens = edges + list(range(300, 320)) + [r * 7919 % 200_000 for r in range(200)]
    h = VLLMBlockHasher(8, algo, seed="0")
    want, parent = [], h.none_hash
    for i in range(len(tokens) // 8):
        parent = h._fn((parent, tuple(tokens[i * 8 : (i + 1) * 8]), None))
        want.append(parent)
    assert h.block_hashes(tokens) == want
    assert h.block_hashes(tokens, max_blocks=3) == want[:3]
