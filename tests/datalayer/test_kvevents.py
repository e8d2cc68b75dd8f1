"""KV-event decoding (both vLLM encodings), the bounded block index, gap healing, and real ZMQ sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import xxhash
import zmq
import zmq.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.bench.ports import free_port
from kvgate.datalayer.kvevents import (
    TOKENS_SEED,
    AllBlocksCleared,
    BlockIndex,
    BlockRemoved,
    BlockStored,
    DecodeError,
    KVEventsManager,
    KVEventSubscriber,
    decode_batch,
    token_block_key,
    token_keys,
)

enc = msgspec.msgpack.Encoder()


def stored_map(hashes, parent, tokens, bs=4, **extra):
    """A BlockStored exactly as vLLM 0.32 encodes it (map form, with its newer fields)."""
    ev = {
        "type": "BlockStored",
        "block_hashes": hashes,
        "parent_block_hash": parent,
        "token_ids": tokens,
        "block_size": bs,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
        "extra_keys": [None] * len(hashes),
        "group_idx": 0,
        "kv_cache_spec_kind": "full_attention",
    }
    ev.update(extra)
    return ev


def batch(*events, ts=1.0, dp=0) -> bytes:
    return enc.encode([ts, list(events), dp])


# --- decoding ---------------------------------------------------------------------------------------


def test_decode_map_form_as_vllm_032_sends_it():
    payload = batch(
        stored_map([11, 12], None, list(range(8))),
        {"type": "BlockRemoved", "block_hashes": [11], "medium": "GPU", "group_idx": 0},
        {"type": "AllBlocksCleared"},
    )
    b = decode_batch(payload)
    assert b.ts == 1.0 and b.data_parallel_rank == 0
    st_, rm, cl = b.events
    assert isinstance(st_, BlockStored) and st_.block_hashes == (11, 12) and st_.parent_block_hash is None
    assert st_.token_ids == tuple(range(8)) and st_.block_size == 4 and st_.medium == "GPU"
    assert isinstance(rm, BlockRemoved) and rm.block_hashes == (11,)
    assert isinstance(cl, AllBlocksCleared)


def test_decode_tagged_array_form_of_older_vllm():
    payload = batch(
        ["BlockStored", [21], 20, [1, 2, 3, 4], 4, None, "GPU"],
        ["BlockStored", [22], 21, [5, 6, 7, 8], 4, None],  # pre-medium versions: 6 fields
        ["BlockRemoved", [21], "GPU"],
        ["AllBlocksCleared"],
    )
    a, b, c, d = decode_batch(payload).events
    assert isinstance(a, BlockStored) and a.parent_block_hash == 20 and a.medium == "GPU"
    assert isinstance(b, BlockStored) and b.medium is None
    assert isinstance(c, BlockRemoved) and c.block_hashes == (21,)
    assert isinstance(d, AllBlocksCleared)


def test_decode_bytes_hashes_become_vllm_external_ints():
    digest = bytes(range(32))
    b = decode_batch(batch(stored_map([digest], digest, [1, 2, 3, 4])))
    ev = b.events[0]
    assert isinstance(ev, BlockStored)
    want = int.from_bytes(digest, "big") & ((1 << 64) - 1)  # vLLM's maybe_convert_block_hash
    assert ev.block_hashes == (want,) and ev.parent_block_hash == want


def test_decode_skips_unknown_event_types_and_rejects_garbage():
    b = decode_batch(batch({"type": "SomethingNew", "x": 1}, stored_map([1], None, [0, 0, 0, 0])))
    assert len(b.events) == 1
    with pytest.raises(DecodeError):
        decode_batch(b"\xc1not msgpack")
    with pytest.raises(DecodeError):
        decode_batch(enc.encode("not a batch"))
    with pytest.raises(DecodeError):
        decode_batch(batch({"type": "BlockStored", "block_hashes": "nope"}))


def test_token_ids_are_checked_without_a_python_call_per_token():
    """A miss's batch carries every token of its blocks (1,920 for 15 blocks of 128): checking them one
    by one in a generator cost ~60 us of a ~120 us decode, on the event loop during the next request's
    prefill (issue #16). Same verdicts, checked in C."""
    tokens = list(range(15 * 128))
    payload = batch(stored_map(list(range(1, 16)), None, tokens, bs=128))
    b, calls = _calls_to(decode_batch, payload)  # (below)
    assert b.events[0].token_ids == tuple(tokens)
    assert calls < 100, f"{calls} Python calls to decode one batch of {len(tokens)} token ids"
    for bad in ([1, "2"], [1, 2.0], [1, None], [1, [2]], "12", [(1 << 64) - 1, "2"], ["2", (1 << 64) - 1]):
        with pytest.raises(DecodeError):
            decode_batch(batch(stored_map([1], None, bad)))
    # Every int msgpack carries is accepted, uint64 included (a wire int of 2**63 or more is no reason to
    # refuse the batch: review s11-rv L1).
    good = [0, True, -1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, -(1 << 63)]
    assert decode_batch(batch(stored_map([1], None, good))).events[0].token_ids == tuple(good)


def _calls_to(fn: Any, *args: Any) -> tuple[Any, int]:
    import sys

    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        out = fn(*args)
    finally:
        sys.setprofile(None)
    return out, calls


def test_a_vllm_batch_is_decoded_into_typed_events_in_one_pass():
    """A miss's batch as vLLM 0.32 sends it (15 blocks of 128 tokens, map form): msgspec decodes it into
    typed structs, types checked in C, instead of generic maps checked field by field in Python (a call
    per block hash and per field: 39 Python calls before; issue #16, the KV-event intake on the event loop
    during the next request's prefill)."""
    hashes = [(1 << 62) + i for i in range(15)]
    payload = batch(stored_map(hashes, 99, list(range(15 * 128)), bs=128))
    b, calls = _calls_to(decode_batch, payload)
    ev = b.events[0]
    assert isinstance(ev, BlockStored) and ev.block_hashes == tuple(hashes) and ev.parent_block_hash == 99
    assert ev.token_ids == tuple(range(15 * 128)) and ev.block_size == 128 and ev.group_idx == 0
    assert calls <= 8, f"{calls} Python calls to decode one vLLM batch of 15 blocks"


_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.binary(min_size=0, max_size=9),
)
_ints_or_not = st.one_of(
    st.lists(st.integers(-(1 << 63), (1 << 64) - 1), max_size=6), st.lists(_scalar, max_size=3)
)
_map_event = st.fixed_dictionaries(
    {"type": st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "Other"])},
    optional={
        "block_hashes": _ints_or_not,
        "parent_block_hash": _scalar,
        "token_ids": _ints_or_not,
        "block_size": _scalar,
        "lora_id": _scalar,
        "medium": st.one_of(_scalar, st.just("GPU")),
        "group_idx": _scalar,
        "lora_name": _scalar,
        "extra_keys": st.lists(st.none(), max_size=2),
    },
)
_array_event = st.one_of(
    st.tuples(st.just("BlockStored"), _ints_or_not, _scalar, _ints_or_not, _scalar).map(list),
    st.tuples(st.just("BlockRemoved"), _ints_or_not).map(list),
    st.just(["AllBlocksCleared"]),
)
_batch = st.one_of(
    st.tuples(_scalar, st.lists(st.one_of(_map_event, _array_event, _scalar), max_size=4), _scalar).map(list),
    st.lists(st.one_of(_scalar, st.lists(_map_event, max_size=2)), max_size=4),
    st.fixed_dictionaries({"ts": _scalar, "events": st.lists(_map_event, max_size=2)}),
)


@settings(max_examples=400, deadline=None)
@given(_batch)
def test_the_typed_decode_gives_the_generic_decodes_events_and_verdicts(raw):
    """Whatever the payload, ``decode_batch`` returns what the generic decode (the code before the typed
    one, kept for every payload the typed decoder refuses) returns, or refuses it alike."""
    from kvgate.datalayer.kvwire import _decode_generic

    payload = enc.encode(raw)

    def outcome(fn):
        try:
            b = fn(payload)
        except Exception as e:  # (the generic decode lets some garbage raise ValueError, TypeError)
            return type(e), str(e)
        # (repr: a NaN timestamp, which both decodes give for ts "NaN", equals itself only as text)
        return (repr(b.ts), b.data_parallel_rank, [(type(e), e) for e in b.events])

    assert outcome(decode_batch) == outcome(_decode_generic)


# --- index ------------------------------------------------------------------------------------------


def test_index_longest_prefix_follows_stores_and_removals():
    idx = BlockIndex()
    idx.apply("a", decode_batch(batch(stored_map([1, 2, 3], None, list(range(12))))))
    idx.apply("b", decode_batch(batch(stored_map([1, 2], None, list(range(8))))))
    assert idx.longest_prefix([1, 2, 3, 4], ["a", "b", "c"]) == {"a": 3, "b": 2, "c": 0}
    # A hole in the middle ends the usable prefix (vLLM only reuses an unbroken prefix).
    idx.apply("a", [BlockRemoved((2,))])
    assert idx.longest_prefix([1, 2, 3], ["a", "b"]) == {"a": 1, "b": 2}
    idx.apply("b", [AllBlocksCleared()])
    assert idx.longest_prefix([1, 2, 3], ["a", "b"]) == {"a": 1, "b": 0}
    assert idx.holders(1) == frozenset({"a"})


def test_index_ignores_offload_tiers_and_other_groups():
    idx = BlockIndex()
    idx.apply("a", decode_batch(batch(stored_map([1], None, [0] * 4, medium="CPU"))))
    idx.apply("a", decode_batch(batch(stored_map([2], None, [0] * 4, group_idx=1))))
    assert idx.num_blocks() == 0


def test_index_bound_evicts_oldest_and_keeps_reverse_map_consistent():
    idx = BlockIndex(default_capacity=3)
    for h in range(1, 6):
        idx.apply("a", [BlockStored((h,), None, (h,) * 4, 4)])
    assert idx.num_blocks("a") == 3 and idx.engine_hashes("a") == {3, 4, 5}
    assert idx.holders(1) == frozenset() and idx.stats.evicted == 2
    idx.set_capacity("a", 1)
    assert idx.engine_hashes("a") == {5} and idx.num_keys() == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(["store", "remove", "clear"]), st.integers(0, 30)),
        max_size=200,
    )
)
def test_index_invariants_under_random_events(ops):
    cap = 8
    idx = BlockIndex(default_capacity=cap)
    model: dict[str, deque[int]] = {e: deque() for e in "abc"}
    for ep, op, h in ops:
        if op == "store":
            idx.apply(ep, [BlockStored((h,), None, (h,) * 4, 4)])
            if h in model[ep]:
                model[ep].remove(h)
            model[ep].append(h)
            while len(model[ep]) > cap:
                model[ep].popleft()
        elif op == "remove":
            idx.apply(ep, [BlockRemoved((h,))])
            if h in model[ep]:
                model[ep].remove(h)
        else:
            idx.apply(ep, [AllBlocksCleared()])
            model[ep].clear()
    for ep in "abc":
        assert idx.engine_hashes(ep) == set(model[ep])
        assert idx.num_blocks(ep) <= cap
    for h in range(31):
        assert idx.holders(h) == frozenset(e for e in "abc" if h in model[e])


def test_tokens_mode_keys_follow_the_token_chain_not_the_engine_hash():
    idx = BlockIndex(mode="tokens")
    toks = list(range(12))
    # Engine hashes are arbitrary here (any algorithm, any seed): keys come from the token ids.
    idx.apply("a", [BlockStored((901, 902), None, tuple(toks[:8]), 4)])
    idx.apply("a", [BlockStored((903,), 902, tuple(toks[8:]), 4)])
    keys = token_keys(toks, 4)
    assert keys[0] == token_block_key(TOKENS_SEED, toks[:4])
    assert idx.longest_prefix(keys, ["a"]) == {"a": 3}
    # A block whose parent the index never saw cannot be placed in the chain.
    idx.apply("b", [BlockStored((999,), 12345, (1, 2, 3, 4), 4)])
    assert idx.stats.orphans == 1 and idx.num_blocks("b") == 0
    idx.apply("a", [BlockRemoved((902,))])
    assert idx.longest_prefix(keys, ["a"]) == {"a": 1}


def test_tokens_mode_hashes_a_batchs_blocks_from_one_packing_of_its_tokens(monkeypatch):
    """Tokens mode packs a BlockStored's token ids once and hashes each block's slice (the same bytes
    ``token_block_key`` hashes), not a call per block packing its own slice (issue #16); an id outside
    u32 is refused as ``token_block_key`` refuses it."""
    from kvgate.datalayer import kvindex

    toks = list(range(1000, 1000 + 15 * 8))
    calls = []
    real = kvindex.token_block_key
    monkeypatch.setattr(kvindex, "token_block_key", lambda p, t: calls.append(1) or real(p, t))
    idx = BlockIndex(mode="tokens")
    idx.apply("a", [BlockStored(tuple(range(1, 16)), None, tuple(toks), 8)])
    assert calls == []
    assert idx.longest_prefix(token_keys(toks, 8), ["a"]) == {"a": 15}
    for bad in (-1, 1 << 32):
        with pytest.raises(OverflowError):
            BlockIndex(mode="tokens").apply("b", [BlockStored((1, 2), None, (1, 2, 3, bad), 2)])


def test_retain_purges_vanished_endpoints():
    idx = BlockIndex()
    idx.apply("a", [BlockStored((1,), None, (0,) * 4, 4)])
    idx.apply("b", [BlockStored((1,), None, (0,) * 4, 4)])
    idx.retain(["b"])
    assert idx.endpoints() == ["b"] and idx.holders(1) == frozenset({"b"})


# --- pending (dispatch-time) entries ----------------------------------------------------------------


def test_pending_counts_until_it_expires_and_only_with_a_clock():
    idx = BlockIndex()
    assert idx.add_pending("a", [1, 2, 3], expires=5.0, now=0.0) == 3
    assert idx.longest_prefix([1, 2, 3, 4], ["a", "b"], now=1.0) == {"a": 3, "b": 0}
    # Without a clock a lookup sees only what the engines reported.
    assert idx.longest_prefix([1, 2, 3], ["a"]) == {"a": 0}
    assert idx.longest_prefix([1, 2, 3], ["a"], now=5.0) == {"a": 0}  # expired
    # Reported blocks and pending credit chain into one prefix.
    idx.apply("b", [BlockStored((1,), None, (0,) * 4, 4)])
    idx.add_pending("b", [1, 2], expires=9.0, now=6.0)
    assert idx.num_pending("b") == 1  # block 1 is already held by report: nothing to add
    assert idx.longest_prefix([1, 2, 3], ["a", "b"], now=6.0) == {"a": 0, "b": 2}
    assert idx.num_pending("a") == 3  # expired, kept until a's next add purges them
    idx.add_pending("a", [7], expires=20.0, now=6.0)
    assert idx.num_pending("a") == 1  # a's expired entries were purged on its next add


def test_block_stored_confirms_and_block_removed_drops_pending():
    idx = BlockIndex()
    idx.add_pending("a", [1, 2, 3], expires=100.0, now=0.0)
    idx.apply("a", [BlockStored((1, 2), None, (0,) * 8, 4)])
    assert idx.num_pending("a") == 1 and idx.stats.pending_confirmed == 2
    assert idx.longest_prefix([1, 2, 3], ["a"], now=1.0) == {"a": 3}
    # The engine's eviction wins over the credit, whether the block was confirmed or still pending.
    idx.apply("a", [BlockRemoved((3,))])
    assert idx.num_pending("a") == 0 and idx.stats.pending_dropped == 1
    assert idx.longest_prefix([1, 2, 3], ["a"], now=1.0) == {"a": 2}
    idx.add_pending("a", [4, 5], expires=100.0, now=1.0)
    idx.apply("a", [AllBlocksCleared()])
    assert idx.longest_prefix([1, 2, 4, 5], ["a"], now=1.0) == {"a": 0}
    assert idx.num_pending() == 0


def test_pending_is_bounded_per_endpoint_and_purged_with_the_endpoint():
    idx = BlockIndex(pending_capacity=4)
    idx.add_pending("a", range(10), expires=100.0, now=0.0)
    assert idx.num_pending("a") == 4
    assert idx.longest_prefix([6, 7, 8, 9], ["a"], now=0.0) == {"a": 4}  # the newest are kept
    idx.add_pending("b", [6], expires=100.0, now=0.0)
    idx.retain(["b"])
    assert idx.longest_prefix([6], ["a", "b"], now=0.0) == {"a": 0, "b": 1}
    idx.remove_endpoint("b")
    assert idx.num_pending() == 0 and idx.longest_prefix([6], ["b"], now=0.0) == {"b": 0}


def test_tokens_mode_pending_keys_are_confirmed_by_the_token_chain():
    idx = BlockIndex(mode="tokens")
    toks = list(range(8))
    keys = token_keys(toks, 4)
    idx.add_pending("a", keys, expires=100.0, now=0.0)
    idx.apply("a", [BlockStored((901, 902), None, tuple(toks), 4)])
    assert idx.num_pending("a") == 0
    idx.apply("a", [BlockRemoved((902,))])
    assert idx.longest_prefix(keys, ["a"], now=0.0) == {"a": 1}


def _streamed_key(parent: int, tokens) -> int:
    """The tokens-mode key as first defined: xxh3-64 streamed over parent (LE u64), then tokens (LE u32)."""
    from array import array

    h = xxhash.xxh3_64(parent.to_bytes(8, "little"))
    h.update(array("I", tokens).tobytes())
    return h.intdigest()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 2**32 - 1), max_size=70),
    st.integers(1, 9),
    st.one_of(st.none(), st.integers(0, 12)),
)
def test_token_keys_are_the_streamed_chain_hash(tokens, bs, max_blocks):
    # token_keys packs the prompt once (a per-pick cost); the keys must not change, or a gateway would
    # stop matching the blocks its index already holds.
    want, parent = [], TOKENS_SEED
    for i in range(len(tokens) // bs):
        if max_blocks is not None and i >= max_blocks:
            break
        parent = _streamed_key(parent, tokens[i * bs : (i + 1) * bs])
        want.append(parent)
    assert token_keys(tokens, bs, max_blocks) == want
    if len(tokens) >= bs:
        assert token_block_key(TOKENS_SEED, tokens[:bs]) == _streamed_key(TOKENS_SEED, tokens[:bs])


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abcd"),
            st.sampled_from(["store", "remove", "pend", "clear"]),
            st.integers(0, 11),  # first block
            st.integers(1, 6),  # run length
            st.integers(0, 4),  # pending expiry (the lookup runs at now=2)
        ),
        max_size=60,
    ),
    st.lists(st.integers(0, 13), max_size=14),
    st.booleans(),
)
def test_longest_prefix_is_each_endpoints_unbroken_run_of_held_or_pending_keys(ops, keys, clock):
    # The spec, endpoint by endpoint: leading keys held by its engine's report or, with a clock, by
    # unexpired pending credit. The index answers it in one walk for all endpoints.
    idx = BlockIndex(default_capacity=10, pending_capacity=7)
    t = 0.0
    for ep, op, first, n, exp in ops:
        run = list(range(first, first + n))
        if op == "store":
            idx.apply(ep, [BlockStored(tuple(run), None, (0,) * 4 * n, 4)])
        elif op == "remove":
            idx.apply(ep, [BlockRemoved(tuple(run))])
        elif op == "pend":
            idx.add_pending(ep, run, expires=t + exp, now=t)
            t += 0.25  # expiries stay in order per endpoint, as one scorer's TTL keeps them
        else:
            idx.apply(ep, [AllBlocksCleared()])
    now = 2.0 if clock else None

    def held(ep: str, key: int) -> bool:
        if ep in idx.holders(key):
            return True
        e = idx._eps.get(ep)
        return now is not None and e is not None and e.pending.get(key, now) > now

    want = {}
    for ep in "abcde":
        n = 0
        while n < len(keys) and held(ep, keys[n]):
            n += 1
        want[ep] = n
    assert idx.longest_prefix(keys, "abcde", now) == want


# --- sequence numbers -------------------------------------------------------------------------------


def test_gap_without_replay_resyncs_by_clearing_that_endpoint():
    idx = BlockIndex()
    sub = KVEventSubscriber(idx, "a", "tcp://127.0.0.1:1")
    sub.handle(0, batch(stored_map([1], None, [0] * 4)))
    sub.handle(1, batch(stored_map([2], 1, [1] * 4)))
    assert idx.engine_hashes("a") == {1, 2}
    sub.handle(5, batch(stored_map([7], None, [2] * 4)))  # 2..4 lost: what they removed is unknown
    assert sub.stats.gaps == 1 and sub.stats.resyncs == 1
    assert idx.engine_hashes("a") == {7}


def test_sequence_restart_means_engine_restart_and_clears():
    idx = BlockIndex()
    sub = KVEventSubscriber(idx, "a", "tcp://127.0.0.1:1")
    sub.handle(0, batch(stored_map([1], None, [0] * 4)))
    sub.handle(1, batch(stored_map([2], 1, [1] * 4)))
    sub.handle(0, batch(stored_map([3], None, [2] * 4)))
    assert sub.stats.restarts == 1 and idx.engine_hashes("a") == {3}


def test_undecodable_batch_resyncs():
    idx = BlockIndex()
    sub = KVEventSubscriber(idx, "a", "tcp://127.0.0.1:1")
    sub.handle(0, batch(stored_map([1], None, [0] * 4)))
    sub.handle(1, b"\xc1")
    assert sub.stats.decode_errors == 1 and idx.num_blocks("a") == 0


def test_engine_mode_applies_a_batch_with_a_uint64_token_id():
    """Review s11-rv L1: engine mode keys blocks by the engine's hashes and never reads token ids; a token
    id in [2**63, 2**64) (a valid msgpack uint64) must not make the batch a decode error, which resyncs
    and drops every block of the endpoint."""
    idx = BlockIndex(mode="engine")
    sub = KVEventSubscriber(idx, "a", "tcp://127.0.0.1:1")
    sub.handle(0, batch(stored_map([7, 8, 9], None, list(range(12)))))
    sub.handle(1, batch(stored_map([10], 9, [1, 2, 3, 1 << 63])))
    assert sub.stats.decode_errors == 0 and sub.stats.resyncs == 0
    assert idx.engine_hashes("a") == {7, 8, 9, 10}


# --- real ZMQ ---------------------------------------------------------------------------------------


class FakeVLLMPublisher:
    """vLLM's ZmqEventPublisher wire behaviour: PUB [topic, seq, payload] + ROUTER replay buffer."""

    END_SEQ = (-1).to_bytes(8, "big", signed=True)

    def __init__(self, topic: bytes = b"kv", *, sndhwm: int | None = None) -> None:
        self.ctx = zmq.asyncio.Context.instance()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        if sndhwm is not None:
            # Before the bind: a bound socket's listener copies its options then, and the connections it
            # accepts take them from that copy (set after the bind, the SUB's pipe kept 1,000).
            self.pub.setsockopt(zmq.SNDHWM, sndhwm)
        port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.replay = self.ctx.socket(zmq.ROUTER)
        self.replay.setsockopt(zmq.LINGER, 0)
        rport = self.replay.bind_to_random_port("tcp://127.0.0.1")
        self.replay_endpoint = f"tcp://127.0.0.1:{rport}"
        self.topic = topic
        self.seq = 0
        self.buffer: list[tuple[int, bytes]] = []
        self._task = asyncio.get_running_loop().create_task(self._serve_replay())

    async def publish(self, payload: bytes, *, drop: bool = False) -> None:
        seq = self.seq
        self.seq += 1
        self.buffer.append((seq, payload))
        if not drop:
            await self.pub.send_multipart([self.topic, seq.to_bytes(8, "big"), payload])

    async def _serve_replay(self) -> None:
        while True:
            client, _, start = await self.replay.recv_multipart()
            s0 = int.from_bytes(start, "big")
            for seq, buf in self.buffer:
                if seq >= s0:
                    await self.replay.send_multipart([client, b"", self.topic, seq.to_bytes(8, "big"), buf])
            await self.replay.send_multipart([client, b"", b"", self.END_SEQ, b""])

    async def close(self) -> None:
        self._task.cancel()
        with __import__("contextlib").suppress(asyncio.CancelledError):
            await self._task
        self.pub.close(0)
        self.replay.close(0)


async def _until(cond, limit=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def _connected(pub: FakeVLLMPublisher, sub: KVEventSubscriber) -> None:
    """PUB drops messages until the SUB's subscription arrives: publish probes until one lands."""
    idx = sub.index
    for i in range(500):
        await pub.publish(batch(stored_map([10_000 + i], None, [0] * 4)))
        await asyncio.sleep(0.01)
        if idx.num_blocks(sub.endpoint):
            return
    raise AssertionError("subscriber never connected")


@contextlib.asynccontextmanager
async def _followed(
    *, replay: bool = True, connect: bool = True, unbounded: bool = False, **index_kw: Any
) -> AsyncIterator[tuple[FakeVLLMPublisher, BlockIndex, KVEventsManager, KVEventSubscriber]]:
    """A publisher and a manager's subscriber (endpoint ``"a"``) to it, with its replay socket unless not
    ``replay``, connected unless not ``connect``; the manager and the publisher closed after. ``unbounded``:
    no send high-water mark at the PUB (set before its bind), so no drop there."""
    pub = FakeVLLMPublisher(sndhwm=0 if unbounded else None)
    idx = BlockIndex(**index_kw)
    mgr = KVEventsManager(idx)
    try:
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint if replay else None)
        if connect:
            await _connected(pub, sub)
        yield pub, idx, mgr, sub
    finally:
        await mgr.close()
        await pub.close()


async def test_zmq_subscriber_follows_a_publisher_and_heals_gaps_by_replay():
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx)
    try:
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
        await _connected(pub, sub)
        # Probes published before the subscription reached the PUB were lost on the wire; joining late,
        # the subscriber fetched them from the replay socket before applying its first live batch.
        await _until(lambda: idx.num_blocks("a") == pub.seq)
        assert sub.stats.resyncs == 0
        await pub.publish(batch(stored_map([1, 2], None, list(range(8)))))
        await pub.publish(batch(stored_map([3], 2, list(range(4)))), drop=True)  # lost on the wire
        await pub.publish(batch(stored_map([4], 3, list(range(4)))))
        await _until(lambda: 4 in idx.engine_hashes("a"))
        assert {1, 2, 3, 4} <= idx.engine_hashes("a")  # the lost batch came back through the replay socket
        # (the replay may also return probes published before the subscription landed)
        assert sub.stats.gaps == 1 and sub.stats.replayed >= 1 and sub.stats.resyncs == 0
        await mgr.sync([])
        assert idx.endpoints() == [] and mgr.subscribers == {}
    finally:
        await mgr.close()
        await pub.close()


async def test_zmq_subscriber_without_replay_resyncs_on_gap():
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx)
    try:
        sub = await mgr.add("a", pub.endpoint)
        await _connected(pub, sub)
        await pub.publish(batch(stored_map([1], None, [1] * 4)))
        await pub.publish(batch(stored_map([2], 1, [2] * 4)), drop=True)
        await pub.publish(batch(stored_map([3], None, [3] * 4)))
        await _until(lambda: 3 in idx.engine_hashes("a"))
        assert idx.engine_hashes("a") == {3} and sub.stats.resyncs == 1
    finally:
        await mgr.close()
        await pub.close()


async def test_bind_mode_receives_from_a_connecting_publisher():
    """vLLM with a concrete ``tcp://host:port`` endpoint connects its PUB; the subscriber binds."""
    ctx = zmq.asyncio.Context.instance()
    # A port for the subscriber to bind by number: a spare one, claimed (kvgate.bench.ports), so no other
    # process's port-0 bind or free_port gets it before the bind below (a port-0 probe closed left it free).
    port = free_port()
    idx = BlockIndex()
    mgr = KVEventsManager(idx)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    try:
        await mgr.add("a", f"tcp://127.0.0.1:{port}", bind=True)
        pub.connect(f"tcp://127.0.0.1:{port}")
        for i in range(500):
            await pub.send_multipart([b"", i.to_bytes(8, "big"), batch(stored_map([i + 1], None, [0] * 4))])
            await asyncio.sleep(0.01)
            if idx.num_blocks("a"):
                break
        assert idx.num_blocks("a") >= 1
    finally:
        pub.close(0)
        await mgr.close()


async def test_joining_catches_up_from_the_replay_buffer_before_any_live_batch_since_the_last_reset():
    """The catch-up runs at join, not at the first live batch (which a first request's prefill publishes),
    and applies only what the engine holds since its last ``AllBlocksCleared``."""
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx)
    try:
        for i in range(100):  # history before a reset: blocks the engine no longer holds
            await pub.publish(batch(stored_map([1_000 + i], None, [0] * 4)), drop=True)
        await pub.publish(batch({"type": "AllBlocksCleared", "medium": "GPU"}), drop=True)
        await pub.publish(batch(stored_map([7], None, [0] * 4)), drop=True)
        await pub.publish(batch(stored_map([8], 7, [0] * 4)), drop=True)
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
        async with asyncio.timeout(5):
            await sub.wait_caught_up()
        # Nothing was published live: the index learned it from the replay buffer, since the reset only.
        assert idx.engine_hashes("a") == {7, 8}
        assert sub.stats.last_seq == 102 and sub.stats.replayed == 3 and sub.stats.caught_up == 100
        # Live batches go on from there (probes lost before the subscription landed come by replay).
        await _connected(pub, sub)
        await _until(lambda: idx.num_blocks("a") == 2 + pub.seq - 103)
        assert sub.stats.resyncs == 0 and {7, 8} <= idx.engine_hashes("a")
    finally:
        await mgr.close()
        await pub.close()


async def test_an_engine_restart_after_the_catch_up_clears_the_index_rather_than_being_skipped():
    """Caught up to seq 49, then the engine restarts (idle before it: nothing live in between) and counts
    from 0 again: its batches are not the caught-up ones (other payloads), so the restart is detected and
    the dead engine's blocks leave the index (it may under-report, never over-report)."""
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx)
    try:
        for i in range(50):
            await pub.publish(batch(stored_map([1_000 + i], None, [0] * 4)), drop=True)
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
        async with asyncio.timeout(5):
            await sub.wait_caught_up()
        assert sub.stats.last_seq == 49 and idx.num_blocks("a") == 50
        await asyncio.sleep(0.3)  # let the subscription reach the PUB
        pub.seq, pub.buffer = 0, []  # the pod restarted: an empty cache, sequence numbers from 0
        for i in range(20):
            await pub.publish(batch(stored_map([5_000 + i], None, [0] * 4)))
            await asyncio.sleep(0.01)
        await _until(lambda: 5_019 in idx.engine_hashes("a"))
        assert sub.stats.restarts == 1
        assert not idx.engine_hashes("a") & set(range(1_000, 1_050))
        assert idx.engine_hashes("a") <= set(range(5_000, 5_020))
    finally:
        await mgr.close()
        await pub.close()


def test_only_true_duplicates_of_the_catch_up_are_skipped():
    sub = KVEventSubscriber(BlockIndex(), "a", "tcp://127.0.0.1:1")
    sub._caught_upto = 5
    sub._caught_digests = {4: xxhash.xxh3_64_intdigest(b"x"), 5: 0}
    assert sub._already_caught_up(4, b"x")  # queued on the SUB while the catch-up fetched it
    assert not sub._already_caught_up(5, b"other")  # same seq, another payload: the engine restarted
    assert sub._caught_upto is None and not sub._already_caught_up(4, b"x")  # the window is over


async def test_a_failed_catch_up_is_logged_and_live_events_go_on(monkeypatch, caplog):
    """A catch-up that raises (here: the replay fetch) or a replay address ZMQ refuses must not end the
    subscriber: live events are still applied, and the skipped catch-up is logged."""
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx)

    async def broken(self: KVEventSubscriber, want: int) -> None:
        raise zmq.ZMQError(zmq.EINVAL)

    try:
        with monkeypatch.context() as m:
            m.setattr(KVEventSubscriber, "_fetch", broken)
            sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
            async with asyncio.timeout(5):
                await sub.wait_caught_up()
        assert "catch-up from" in caplog.text
        await _connected(pub, sub)  # live batches still reach the index
        bad = await mgr.add("b", pub.endpoint, replay_endpoint="not-an-address")
        async with asyncio.timeout(5):
            await bad.wait_caught_up()
        assert "catch-up skipped" in caplog.text
        await _connected(pub, bad)
    finally:
        await mgr.close()
        await pub.close()


@pytest.mark.parametrize("bound", ["batches", "bytes"])
async def test_the_catch_up_keeps_a_bounded_newest_part_of_the_replay_buffer(monkeypatch, bound):
    """The replay protocol takes only a start sequence: the engine sends its whole buffer. The fetch keeps
    at most ``FETCH_MAX_BATCHES`` / ``FETCH_MAX_BYTES`` of it, the newest, dropping older batches as they
    arrive (bounded memory); the index learns those only (it may under-report, never over-report)."""
    from kvgate.datalayer import kvsubscriber

    payloads = [batch(stored_map([1_000 + i], None, [0] * 4)) for i in range(300)]
    size = len(payloads[-1])
    assert all(len(p) == size for p in payloads)
    if bound == "batches":
        monkeypatch.setattr(kvsubscriber, "FETCH_MAX_BATCHES", 100)
    else:
        monkeypatch.setattr(kvsubscriber, "FETCH_MAX_BYTES", 100 * size)
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    mgr = KVEventsManager(idx)
    try:
        for p in payloads:
            await pub.publish(p, drop=True)
        sub = await mgr.add("a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
        async with asyncio.timeout(5):
            await sub.wait_caught_up()
        assert idx.engine_hashes("a") == set(range(1_200, 1_300))
        assert sub.stats.fetch_dropped == 200 and sub.stats.replayed == 100 and sub.stats.last_seq == 299
    finally:
        await mgr.close()
        await pub.close()


async def test_a_gap_replay_keeps_only_the_missing_range(monkeypatch):
    """Healing a gap [want, upto) fetches from ``want``; what the engine sends past ``upto`` is dropped on
    arrival, not held (here: 50 missing of 1,000 buffered, with a bound of 60 batches)."""
    from kvgate.datalayer import kvsubscriber

    monkeypatch.setattr(kvsubscriber, "FETCH_MAX_BATCHES", 60)
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    sub = KVEventSubscriber(idx, "a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
    try:
        for i in range(1_000):
            await pub.publish(batch(stored_map([1_000 + i], None, [0] * 4)), drop=True)
        sub.stats.last_seq = 99
        assert await sub._replay(100, 150) == "applied"
        assert idx.engine_hashes("a") == set(range(1_100, 1_150)) and sub.stats.fetch_dropped == 0
    finally:
        await pub.close()


def _big_batches(n: int, tokens: int) -> list[bytes]:
    """``n`` batches of one block each with ``tokens`` token ids: decoded, a token id takes several times
    its wire size (an int object and a tuple slot against 3-5 msgpack bytes)."""
    rng = __import__("random").Random(0)
    return [batch(stored_map([1_000 + i], None, [rng.randrange(1_000, 150_000) for _ in range(tokens)]))
            for i in range(n)]  # fmt: skip


async def test_the_catch_up_holds_one_decoded_batch_at_a_time():
    """The fetch keeps a bounded part of the replay buffer as bytes; the catch-up used to decode every kept
    batch before applying any (decoded, several times the bytes: ~0.5 GiB for the 64 MiB bound). Now it
    finds the newest reset first and decodes and applies one batch at a time: its peak (Python
    allocations, measured) stays near the fetched bytes, and the outcome is the same."""
    import tracemalloc

    payloads = _big_batches(60, 8_192)
    raw = sum(len(p) for p in payloads)
    pub = FakeVLLMPublisher()
    idx = BlockIndex()
    sub = KVEventSubscriber(idx, "a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
    try:
        for p in payloads[:20]:
            await pub.publish(p, drop=True)
        await pub.publish(batch({"type": "AllBlocksCleared", "medium": "GPU"}), drop=True)
        for p in payloads[20:]:
            await pub.publish(p, drop=True)
        tracemalloc.start()
        try:
            await asyncio.wait_for(sub._catch_up(), 30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert idx.engine_hashes("a") == set(range(1_020, 1_060))
        assert sub.stats.caught_up == 20 and sub.stats.replayed == 41 and sub.stats.last_seq == 60
        # The fetched bytes (held) plus one decoded batch and the index; all decoded at once was ~9x.
        assert peak < 2.5 * raw, (peak, raw)
    finally:
        await pub.close()


async def test_a_replay_fetch_logs_what_its_bound_dropped_once(monkeypatch, caplog):
    from kvgate.datalayer import kvsubscriber

    monkeypatch.setattr(kvsubscriber, "FETCH_MAX_BATCHES", 10)
    pub = FakeVLLMPublisher()
    sub = KVEventSubscriber(BlockIndex(), "a", pub.endpoint, replay_endpoint=pub.replay_endpoint)
    try:
        for i in range(50):
            await pub.publish(batch(stored_map([1_000 + i], None, [0] * 4)), drop=True)
        with caplog.at_level("WARNING", logger=kvsubscriber.__name__):
            got = await sub._fetch(0)
        assert got is not None and [s for s, _ in got] == list(range(40, 50))
        logged = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(logged) == 1 and "40 older batches dropped, the newest 10 kept" in logged[0], logged
        assert sub.stats.fetch_dropped == 40
    finally:
        await pub.close()


async def test_the_replay_timeout_comes_from_the_environment(monkeypatch, caplog):
    from kvgate.datalayer.kvsubscriber import REPLAY_TIMEOUT_ENV, REPLAY_TIMEOUT_S, replay_timeout_from_env

    assert replay_timeout_from_env({}) == REPLAY_TIMEOUT_S == 1.0
    assert replay_timeout_from_env({REPLAY_TIMEOUT_ENV: "30"}) == 30.0
    for bad in ("0", "-1", "inf", "nan", "soon"):
        assert replay_timeout_from_env({REPLAY_TIMEOUT_ENV: bad}) == REPLAY_TIMEOUT_S
    assert REPLAY_TIMEOUT_ENV in caplog.text
    monkeypatch.setenv(REPLAY_TIMEOUT_ENV, "12.5")
    mgr = KVEventsManager(BlockIndex())
    sub = mgr.ensure("a", "tcp://127.0.0.1:1", replay_endpoint="tcp://127.0.0.1:2")
    try:
        assert mgr.replay_timeout == sub.replay_timeout == 12.5
    finally:
        await mgr.close()


async def test_a_source_waits_for_a_catch_up_as_long_as_the_replay_timeout_allows(monkeypatch):
    """A replay socket that answers after 2 s, with the timeout raised to 4 s: the source's start waits for
    that catch-up (its wait is the fetch's timeout plus the time to apply, not a fixed bound)."""
    from kvgate.datalayer import kvsubscriber
    from kvgate.datalayer.endpoint import Endpoint
    from kvgate.datalayer.kvsubscriber import KVEventSources
    from kvgate.datalayer.store import EndpointStore

    monkeypatch.setattr(kvsubscriber, "CATCH_UP_APPLY_S", 0.5)

    pub = FakeVLLMPublisher()
    await pub.publish(batch(stored_map([7], None, [0] * 4)), drop=True)
    serve = pub._serve_replay

    async def late() -> None:
        await asyncio.sleep(2.0)
        await serve()

    pub._task.cancel()
    pub._task = asyncio.get_running_loop().create_task(late())
    store = EndpointStore()
    store.add(Endpoint(address="a"))
    mgr = KVEventsManager(BlockIndex(), replay_timeout=4.0)
    src = KVEventSources(store, mgr, lambda ep: (pub.endpoint, pub.replay_endpoint))
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await src.start()
        assert mgr.index.engine_hashes("a") == {7}, loop.time() - t0
    finally:
        await src.stop()
        await mgr.close()
        await pub.close()
