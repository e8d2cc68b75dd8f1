"""vLLM KV-cache events on the wire: ZMQ multipart frames ``[topic, seq, payload]``, msgpack payloads.

The payload is ``EventBatch = [ts, events, data_parallel_rank]``. Events come in two encodings: the map
form ``{"type": "BlockStored", ...}`` (vLLM 0.32 here) and the older msgspec tagged-array form
``["BlockStored", block_hashes, parent, token_ids, block_size, lora_id, medium, lora_name, ...]``. Both
decode to the dataclasses below, and ``encode_batch`` writes the map form as vLLM 0.32 does.

These are kvgate's only KV-event types: the data layer decodes them off an engine's wire into its block
index, and the simulator (``kvgate.sim``, which may import this module and nothing else of the data layer)
emits them from its block pool and publishes them with ``encode_batch``. One definition, so the simulator
cannot drift from what the gateway reads.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

log = logging.getLogger(__name__)

KeyMode = Literal["engine", "tokens"]

# vLLM's replay socket ends a replay with sequence number -1.
END_SEQ = (-1).to_bytes(8, "big", signed=True)
_MASK64 = (1 << 64) - 1

# --------------------------------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------------------------------


# Sequences: the decoder makes tuples, the simulator hands over the lists it built (no copy per step).


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: Sequence[int]
    parent_block_hash: int | None
    token_ids: Sequence[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    group_idx: int | None = None  # KV-cache group (hybrid models have several; Llama has group 0)
    lora_name: str | None = None  # vLLM >= 0.11 keys blocks by adapter name (lora_id is deprecated)


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: Sequence[int]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    medium: str | None = None


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: Sequence[KVEvent]
    data_parallel_rank: int | None = None


class DecodeError(ValueError):
    """A payload that is not a vLLM KV event batch."""


_decoder = msgspec.msgpack.Decoder()


def external_hash(h: Any) -> int:
    """An engine block hash as a 64-bit int.

    vLLM sends ints (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``, the default) made from the last 8 bytes of the
    digest, big-endian; with that switched off it sends the raw digest bytes, reduced here the same way.
    """
    if isinstance(h, bool):
        raise DecodeError("bool is not a block hash")
    if isinstance(h, int):
        return h & _MASK64
    if isinstance(h, bytes | bytearray | memoryview):
        return int.from_bytes(bytes(h)[-8:], "big")
    raise DecodeError(f"bad block hash {h!r}")


def _opt_hash(h: Any) -> int | None:
    return None if h is None else external_hash(h)


def _hashes(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list | tuple):
        raise DecodeError("block_hashes must be a list")
    return tuple(external_hash(h) for h in v)


def _ints(v: Any) -> tuple[int, ...]:
    """Token ids: a list of ints, each checked in C (``array`` refuses a non-int) rather than by a
    generator per token: a miss's batch carries every token of its blocks (issue #16).

    ``array("q")`` also refuses an int outside int64, which msgpack can carry (a uint64 in [2**63,
    2**64)): that rare case falls back to the per-token check, so the verdicts are exactly those of the
    plain ``isinstance`` check. Refusing it would make the subscriber resync and clear the endpoint's
    whole index, even in engine mode, which never reads token ids (review s11-rv L1)."""
    if not isinstance(v, list | tuple):
        raise DecodeError("token_ids must be a list of ints")
    try:
        array("q", v)
    except TypeError:
        raise DecodeError("token_ids must be a list of ints") from None
    except OverflowError:
        if not all(isinstance(t, int) for t in v):
            raise DecodeError("token_ids must be a list of ints") from None
    return tuple(v)


def _opt(seq: Sequence[Any], i: int) -> Any:
    return seq[i] if len(seq) > i else None


def _event_from_map(m: dict[str, Any]) -> KVEvent | None:
    kind = m.get("type")
    if kind == "BlockStored":
        return BlockStored(
            block_hashes=_hashes(m.get("block_hashes")),
            parent_block_hash=_opt_hash(m.get("parent_block_hash")),
            token_ids=_ints(m.get("token_ids", [])),
            block_size=int(m.get("block_size") or 0),
            lora_id=m.get("lora_id"),
            medium=m.get("medium"),
            group_idx=m.get("group_idx"),
            lora_name=m.get("lora_name"),
        )
    if kind == "BlockRemoved":
        return BlockRemoved(
            block_hashes=_hashes(m.get("block_hashes")), medium=m.get("medium"), group_idx=m.get("group_idx")
        )
    if kind == "AllBlocksCleared":
        return AllBlocksCleared(medium=m.get("medium"))
    return None  # an event type this version does not know: skip it, keep the rest of the batch


def _event_from_array(a: list[Any]) -> KVEvent | None:
    if not a or not isinstance(a[0], str):
        raise DecodeError("tagged event without a tag")
    kind = a[0]
    if kind == "BlockStored":
        if len(a) < 5:
            raise DecodeError("short BlockStored")
        return BlockStored(
            block_hashes=_hashes(a[1]),
            parent_block_hash=_opt_hash(a[2]),
            token_ids=_ints(a[3]),
            block_size=int(a[4] or 0),
            lora_id=_opt(a, 5),
            medium=_opt(a, 6),
            lora_name=_opt(a, 7),
        )
    if kind == "BlockRemoved":
        if len(a) < 2:
            raise DecodeError("short BlockRemoved")
        return BlockRemoved(block_hashes=_hashes(a[1]), medium=_opt(a, 2))
    if kind == "AllBlocksCleared":
        return AllBlocksCleared(medium=_opt(a, 1))
    return None


# The usual batch, decoded by msgspec into typed structs in one pass (types checked in C, no generic
# lists and maps first): vLLM 0.32's ``[ts, [events in the map form], data_parallel_rank]`` whose hashes
# and token ids are ints and whose event types are known. Anything else (the tagged-array form, bytes
# hashes, an unknown event type, a short batch, a bool where an int goes, malformed bytes) fails this
# decoder and is decoded generically, as before, by ``_decode_generic``: the verdicts and the events are
# the same either way (tests/datalayer/test_kvevents.py compares the two on generated batches).


class _Stored(msgspec.Struct, tag_field="type", tag="BlockStored"):
    block_hashes: list[int]
    parent_block_hash: int | None = None
    token_ids: tuple[int, ...] = ()
    block_size: int | None = None
    lora_id: Any = None
    medium: Any = None
    group_idx: Any = None
    lora_name: Any = None


class _Removed(msgspec.Struct, tag_field="type", tag="BlockRemoved"):
    block_hashes: list[int]
    medium: Any = None
    group_idx: Any = None


class _Cleared(msgspec.Struct, tag_field="type", tag="AllBlocksCleared"):
    medium: Any = None


_typed = msgspec.msgpack.Decoder(tuple[float, list[_Stored | _Removed | _Cleared], Any])


def _typed_event(e: _Stored | _Removed | _Cleared) -> KVEvent:
    if type(e) is _Stored:
        parent = e.parent_block_hash
        return BlockStored(
            block_hashes=tuple([h & _MASK64 for h in e.block_hashes]),
            parent_block_hash=None if parent is None else parent & _MASK64,
            token_ids=e.token_ids,
            block_size=e.block_size or 0,
            lora_id=e.lora_id,
            medium=e.medium,
            group_idx=e.group_idx,
            lora_name=e.lora_name,
        )
    if type(e) is _Removed:
        return BlockRemoved(
            block_hashes=tuple([h & _MASK64 for h in e.block_hashes]), medium=e.medium, group_idx=e.group_idx
        )
    return AllBlocksCleared(medium=e.medium)


def decode_batch(payload: bytes) -> EventBatch:
    """Decode one msgpack ``EventBatch`` payload (either event encoding)."""
    try:
        ts, evs, dp = _typed.decode(payload)
    except msgspec.DecodeError:  # (ValidationError included: not the usual shape)
        return _decode_generic(payload)
    return EventBatch(ts=ts, events=tuple([_typed_event(e) for e in evs]), data_parallel_rank=dp)


def _decode_generic(payload: bytes) -> EventBatch:
    try:
        raw = _decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise DecodeError(str(e)) from e
    if isinstance(raw, dict):  # a batch encoded as a map (not seen from vLLM, accepted anyway)
        raw = [raw.get("ts", 0.0), raw.get("events", []), raw.get("data_parallel_rank")]
    if not isinstance(raw, list) or len(raw) < 2 or not isinstance(raw[1], list):
        raise DecodeError("not an EventBatch [ts, events, dp_rank]")
    events: list[KVEvent] = []
    for ev in raw[1]:
        if isinstance(ev, dict):
            parsed = _event_from_map(ev)
        elif isinstance(ev, list):
            parsed = _event_from_array(ev)
        else:
            raise DecodeError(f"bad event {ev!r}")
        if parsed is not None:
            events.append(parsed)
    ts = raw[0]
    dp = raw[2] if len(raw) > 2 else None
    return EventBatch(ts=float(ts or 0.0), events=tuple(events), data_parallel_rank=dp)


# --------------------------------------------------------------------------------------------------
# Encoding (what the simulator publishes)
# --------------------------------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()


def event_to_wire(ev: KVEvent) -> dict[str, Any]:
    """One event in vLLM 0.32's map form: its required fields always, ``group_idx`` only when set (vLLM's
    structs omit fields left at their defaults)."""
    if isinstance(ev, BlockStored):
        m: dict[str, Any] = {
            "type": "BlockStored",
            "block_hashes": ev.block_hashes,
            "parent_block_hash": ev.parent_block_hash,
            "token_ids": ev.token_ids,
            "block_size": ev.block_size,
            "lora_id": ev.lora_id,
            "medium": ev.medium,
            "lora_name": ev.lora_name,
        }
    elif isinstance(ev, BlockRemoved):
        m = {"type": "BlockRemoved", "block_hashes": ev.block_hashes, "medium": ev.medium}
    else:
        return {"type": "AllBlocksCleared"}
    if ev.group_idx is not None:
        m["group_idx"] = ev.group_idx
    return m


def encode_batch(events: Sequence[KVEvent], ts: float, dp_rank: int | None = 0) -> bytes:
    """One msgpack ``EventBatch`` payload ``[ts, events, data_parallel_rank]``, as vLLM publishes it."""
    return _encoder.encode([ts, [event_to_wire(e) for e in events], dp_rank])
