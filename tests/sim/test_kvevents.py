"""KV events from a simulated replica, read by a real ZMQ SUB in vLLM's wire format; replay heals gaps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec
import zmq
import zmq.asyncio

from kvgate.datalayer.kvwire import END_SEQ, BlockStored, EventBatch, decode_batch, encode_batch
from kvgate.sim import kvcache
from kvgate.sim.fleet import SimFleet

FleetFactory = Callable[..., Awaitable[SimFleet]]
PROMPT = " ".join(["abc", "def", "ghi", "jkl"] * 20)  # 80 tokens


def test_wire_format_is_vllm_map_events() -> None:
    events: list[kvcache.KVEvent] = [
        kvcache.BlockStored([1, 2], None, list(range(32)), 16, None, "GPU"),
        kvcache.BlockRemoved([1], "GPU"),
        kvcache.AllBlocksCleared(),
    ]
    payload = encode_batch(events, ts=12.5, dp_rank=0)
    raw = msgspec.msgpack.decode(payload)  # untyped: what any msgpack reader sees
    assert raw[0] == 12.5 and raw[2] == 0
    stored, removed, cleared = raw[1]
    assert stored == {
        "type": "BlockStored",
        "block_hashes": [1, 2],
        "parent_block_hash": None,
        "token_ids": list(range(32)),
        "block_size": 16,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
    }
    assert removed == {"type": "BlockRemoved", "block_hashes": [1], "medium": "GPU"}
    assert cleared == {"type": "AllBlocksCleared"}
    # The gateway's decoder reads back the very events the simulator emitted (one set of types).
    assert decode_batch(payload).events == (
        BlockStored((1, 2), None, tuple(range(32)), 16, None, "GPU"),
        kvcache.BlockRemoved((1,), "GPU"),
        kvcache.AllBlocksCleared(),
    )


async def _completion(url: str, prompt: str) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "/v1/completions", json={"model": "sim-model", "prompt": prompt, "max_tokens": 2}) as r,
    ):
        assert r.status == 200


async def test_sub_receives_monotone_batches_and_replay(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, kv_events_port=0)
    url = fleet.urls[0]
    async with aiohttp.ClientSession() as s, s.get(url + "/kv_event_sources") as r:
        src = await r.json()
    assert src["enable_kv_cache_events"] is True and src["topic"] == "kv"
    ctx = zmq.asyncio.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(src["endpoint"])
    await asyncio.sleep(0.2)  # PUB/SUB join: messages sent before the subscription lands are lost
    try:
        await _completion(url, PROMPT)
        await _completion(url, PROMPT)  # repeat: its blocks are cached, so no new BlockStored
        await _completion(url, "xyz " * 40)
        got: list[tuple[int, EventBatch]] = []
        while await sub.poll(300):
            topic, seq_b, payload = await sub.recv_multipart()
            assert topic == b"kv" and len(seq_b) == 8
            got.append((int.from_bytes(seq_b, "big"), decode_batch(payload)))
        seqs = [seq for seq, _ in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] == 0
        stored = [e for _, b in got for e in b.events if isinstance(e, BlockStored)]
        # First prompt: 5 full blocks (80 tokens); second prompt 40 words -> 2 full blocks (+ output blocks).
        hashes = [h for e in stored for h in e.block_hashes]
        assert len(hashes) == len(set(hashes)) >= 7
        assert all(e.block_size == 16 and len(e.token_ids) == 16 * len(e.block_hashes) for e in stored)
    finally:
        sub.close(0)

    # Replay from sequence 1: every buffered batch with seq >= 1, then the end marker.
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(src["replay_endpoint"])
    try:
        await dealer.send_multipart([b"", (1).to_bytes(8, "big")])
        replayed: list[int] = []
        while True:
            assert await dealer.poll(2000)
            _, seq_b, payload = await dealer.recv_multipart()
            if seq_b == END_SEQ:
                assert payload == b""
                break
            replayed.append(int.from_bytes(seq_b, "big"))
            decode_batch(payload)
        assert replayed == seqs[1:]
    finally:
        dealer.close(0)


async def test_restart_publishes_all_blocks_cleared(sim_fleet: FleetFactory) -> None:
    fleet = await sim_fleet(1, kv_events_port=0)
    replica = fleet.replicas[0]
    assert replica.kv is not None
    sub = zmq.asyncio.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(replica.kv.endpoint)
    await asyncio.sleep(0.2)
    try:
        await replica.stop()
        await replica.start()
        assert await sub.poll(2000)
        _, _, payload = await sub.recv_multipart()
        assert [type(e).__name__ for e in decode_batch(payload).events] == ["AllBlocksCleared"]
    finally:
        sub.close(0)


def test_the_simulator_takes_only_the_wire_format_from_the_data_layer() -> None:
    # One set of KV-event types (issue 11): the simulator emits the data layer's, and may import nothing
    # else of it (docs/architecture.md), so it stays a stand-alone model server.
    import ast
    from pathlib import Path

    import kvgate.sim

    wire = "kvgate.datalayer.kvwire"
    found: set[str] = set()
    for path in Path(kvgate.sim.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found |= {n for n in names if n.startswith("kvgate.datalayer")}
    assert found == {wire}
    import kvgate.datalayer.kvwire

    leaf = ast.parse(Path(kvgate.datalayer.kvwire.__file__).read_text())
    assert not any(  # and the wire format is a leaf: it imports no kvgate module
        isinstance(n, ast.ImportFrom) and (n.module or "").startswith("kvgate") for n in ast.walk(leaf)
    )
