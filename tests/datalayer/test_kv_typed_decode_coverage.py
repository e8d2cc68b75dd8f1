"""The typed KV decode (kvwire's msgspec structs) against the generic one on batches the typed decoder
takes (vLLM's map form with int hashes, BlockStored/BlockRemoved/AllBlocksCleared with the optional
fields): test_kvevents' hypothesis test reaches the typed path in few of its examples (review s19-met L1);
this one generates only typed-path batches (asserted), so a field the typed path drops (``lora_name``,
``medium``) fails it."""

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.datalayer.kvwire import _decode_generic, _typed, decode_batch

_u64 = st.integers(-(1 << 63), (1 << 64) - 1)
_opt = st.one_of(st.none(), st.integers(0, 7), st.text(max_size=4), st.just("GPU"), st.just("CPU"))
_stored = st.fixed_dictionaries(
    {"type": st.just("BlockStored"), "block_hashes": st.lists(_u64, max_size=4)},
    optional={
        "parent_block_hash": st.one_of(st.none(), _u64),
        "token_ids": st.lists(st.integers(0, (1 << 32) - 1), max_size=8),
        "block_size": st.one_of(st.none(), st.integers(0, 256)),
        "lora_id": _opt,
        "medium": _opt,
        "group_idx": _opt,
        "lora_name": _opt,
        "extra_keys": st.lists(st.one_of(st.none(), st.text(max_size=2)), max_size=2),
    },
)
_removed = st.fixed_dictionaries(
    {"type": st.just("BlockRemoved"), "block_hashes": st.lists(_u64, max_size=4)},
    optional={"medium": _opt, "group_idx": _opt},
)
_cleared = st.fixed_dictionaries({"type": st.just("AllBlocksCleared")}, optional={"medium": _opt})
_vllm_batch = st.tuples(
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.one_of(_stored, _removed, _cleared), min_size=1, max_size=4),
    st.one_of(st.none(), st.integers(0, 7)),
).map(list)
enc = msgspec.msgpack.Encoder()


@settings(max_examples=300, deadline=None, database=None)
@given(_vllm_batch)
def test_typed_decode_equals_generic_on_batches_it_takes(raw):
    payload = enc.encode(raw)
    _typed.decode(payload)  # (the typed path: else this test checks nothing)
    a, g = decode_batch(payload), _decode_generic(payload)
    assert (a.ts, a.data_parallel_rank, list(a.events)) == (g.ts, g.data_parallel_rank, list(g.events))
