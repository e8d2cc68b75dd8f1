"""The precise prefix scorer against the simulator's KV events, and vLLM-exact block hashing."""

from __future__ import annotations

import pytest

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.kvevents import BlockIndex, decode_batch
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling import registry
from kvgate.scheduling.blockhash import ChainedVLLMHasher, VLLMBlockHasher, cbor_dumps
from kvgate.scheduling.framework import ConfigError, CycleState, Params, PluginHandle
from kvgate.scheduling.plugins.precise_prefix import PrecisePrefixCacheScorer, shared_index
from kvgate.scheduling.types import InferenceRequest
from kvgate.sim.engine import Engine, EngineConfig
from kvgate.sim.kvcache import AllBlocksCleared, BlockRemoved, BlockStored
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
    """The simulator's events in vLLM 0.32's msgpack map form (what its HTTP front publishes)."""
    import msgspec

    out = []
    for ev in events:
        if isinstance(ev, BlockStored):
            out.append(
                {
                    "type": "BlockStored",
                    "block_hashes": ev.block_hashes,
                    "parent_block_hash": ev.parent_block_hash,
                    "token_ids": ev.token_ids,
                    "block_size": ev.block_size,
                    "lora_id": ev.lora_id,
                    "medium": ev.medium,
                    "lora_name": ev.lora_name,
                }
            )
        elif isinstance(ev, BlockRemoved):
            out.append({"type": "BlockRemoved", "block_hashes": ev.block_hashes, "medium": ev.medium})
        elif isinstance(ev, AllBlocksCleared):
            out.append({"type": "AllBlocksCleared"})
    return msgspec.msgpack.encode([0.0, out, 0])


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


def test_text_prompts_use_the_tokenizer_and_chat_scores_zero(tmp_path):
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
    assert req.token_ids == ids
    chat = InferenceRequest("r", "m", prompt_text='[{"role":"user","content":"a b a b"}]')
    assert plugin.score(CycleState(chat, 0.0), [ep]) == [0.0]


def test_config_errors_and_store_removal_purges():
    with pytest.raises(ConfigError):
        _scorer("bad", mode="fuzzy")
    with pytest.raises(ConfigError):
        _scorer("bad2", nope=1)
    with pytest.raises(ConfigError, match="PYTHONHASHSEED"):
        _scorer("bad3", hashAlgo="xxhash")
    _scorer("clash", mode="tokens")
    with pytest.raises(ConfigError, match="already exists"):
        _scorer("clash", mode="engine")
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
