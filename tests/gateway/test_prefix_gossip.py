"""Prefix gossip between ``--workers`` processes: wire format, real unix datagram sockets, and a prefix
routed by one worker of ``kvgate serve --workers 2`` honoured by the other."""

from __future__ import annotations

import asyncio
import shutil
import struct
import tempfile
import time
from collections import Counter

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.test_workers import serve_workers
from gateway.workers_kit import answers_per_worker
from kvgate.gateway.prefix_gossip import (
    MAX_DATAGRAM,
    DatagramChannel,
    GossipCollector,
    PrefixGossip,
    decode,
    encode,
)
from kvgate.scheduling.prefix import PrefixIndex


def test_encode_decode_round_trip_and_split() -> None:
    big = list(range(1, 20_001))  # 160 KB of hashes: several datagrams
    records = [(0, "10.0.0.1:8000", [2**64 - 1, 5], 0), (1, "10.0.0.2:8000", big, 70_000), (0, "c:1", [], 9)]
    datagrams = encode(3, records)
    assert len(datagrams) > 2 and all(len(d) <= MAX_DATAGRAM for d in datagrams)
    got: dict[tuple[int, str], list[int]] = {}
    fillers: list[tuple[str, int]] = []
    for d in datagrams:
        sender, recs = decode(d)
        assert sender == 3
        for idx, addr, hashes, filler in recs:
            got.setdefault((idx, addr), []).extend(hashes)
            fillers.append((addr, filler))
    assert got == {(0, "10.0.0.1:8000"): [2**64 - 1, 5], (1, "10.0.0.2:8000"): big, (0, "c:1"): []}
    # The placeholder rides once, on the first chunk of its record; a placeholder alone is still sent.
    assert [f for f in fillers if f[1]] == [("10.0.0.2:8000", 70_000), ("c:1", 9)]
    with pytest.raises(ValueError):
        decode(datagrams[0][:-3])
    with pytest.raises(ValueError):
        decode(b"\x09\x00")


def test_version_1_datagrams_still_decode_with_no_placeholder() -> None:
    v1 = struct.pack("<BB", 1, 2) + struct.pack("<BBH", 0, 3, 2) + b"a:1" + struct.pack("<QQ", 7, 8)
    sender, recs = decode(v1)
    assert sender == 2 and [(i, a, list(h), f) for i, a, h, f in recs] == [(0, "a:1", [7, 8], 0)]
    with pytest.raises(ValueError):
        decode(v1[:-1])


def _lru_dump(index: PrefixIndex, address: str) -> list[int | tuple[str, int]]:
    """The endpoint's LRU, oldest first: hashes, and placeholders by weight (their keys are local)."""
    return [h if h >= 0 else ("filler", index._weight[h]) for h in index._lru[address]]


def _pass(gossip: PrefixGossip, other: PrefixGossip) -> None:
    sent: list[bytes] = []
    gossip.send = sent.append
    gossip.flush()
    for d in sent:
        other.receive(d)


def test_engine_lru_placeholders_and_order_reach_the_other_worker() -> None:
    # engineLru picks: placeholders for generated blocks, the head recorded last. The other worker's index
    # must age them the same: same entries, same order, same weights, same evictions.
    idx = [PrefixIndex(default_capacity=10), PrefixIndex(default_capacity=10)]
    g = [PrefixGossip([idx[w]], w, lambda _d: None) for w in range(2)]
    steps = [([1, 2, 3], 0), ([4, 5], 6), ([7], 2), ([4, 5, 8], 3)]
    for hashes, filler in steps:
        idx[0].add("a:1", hashes, filler=filler, tail_first=True)
        _pass(g[0], g[1])
        assert _lru_dump(idx[1], "a:1") == _lru_dump(idx[0], "a:1")
        assert idx[1]._size == idx[0]._size
    # The first prefix was pushed out by generated blocks on both (without the placeholders worker 1
    # would still hold it: 9 hashes fit its capacity of 10).
    assert idx[0].match([1, 2, 3], ["a:1"]) == idx[1].match([1, 2, 3], ["a:1"]) == [0]
    assert g[1].applied == len(steps)


def test_a_batch_sums_placeholders_and_keeps_the_touch_order() -> None:
    idx = [PrefixIndex(default_capacity=100), PrefixIndex(default_capacity=100)]
    g = [PrefixGossip([idx[w]], w, lambda _d: None) for w in range(2)]
    idx[0].add("a:1", [1, 2, 3], filler=5, tail_first=True)
    idx[0].add("a:1", [1, 2, 9], filler=4, tail_first=True)  # same head again: most recent
    idx[0].add("b:1", [], filler=7, tail_first=True)  # a placeholder alone
    _pass(g[0], g[1])
    assert [h for h in _lru_dump(idx[1], "a:1")] == [("filler", 9), 3, 9, 2, 1]
    assert _lru_dump(idx[1], "b:1") == [("filler", 7)]
    assert idx[1]._size == {"a:1": 13, "b:1": 7} and idx[0]._size == idx[1]._size
    assert g[1].applied == 2


def test_insertions_cross_real_sockets_and_do_not_echo() -> None:
    d = tempfile.mkdtemp(prefix="kvg-")
    chans = [DatagramChannel(d, w, 2) for w in range(2)]
    idx = [PrefixIndex(), PrefixIndex()]
    gossips = [PrefixGossip([idx[w]], w, chans[w].send) for w in range(2)]
    try:
        idx[0].add("a:1", [11, 12, 13])
        idx[0].add("a:1", [11, 12])  # deduplicated within a batch
        gossips[0].flush()
        got = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = list(chans[1].drain())
            time.sleep(0.01)
        assert len(got) == 1
        gossips[1].receive(got[0])
        assert idx[1].match([11, 12, 13, 14], ["a:1", "b:1"]) == [3, 0]
        # Applied remote insertions are not re-published (no echo between workers).
        gossips[1].flush()
        time.sleep(0.05)
        assert list(chans[0].drain()) == []
        # A peer that is gone: the send is dropped and counted, never raised or blocked on.
        chans[1].close()
        idx[0].add("a:1", [99])
        gossips[0].flush()
        assert chans[0].dropped == 1
    finally:
        for c in chans:
            c.close()
        shutil.rmtree(d, ignore_errors=True)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for smp in fam.samples:
            out[(smp.name, smp.labels.get("reason", ""))] = smp.value
    return out


def test_collector_exposes_drops_by_reason_and_applied_records() -> None:
    d = tempfile.mkdtemp(prefix="kvg-")
    chans = [DatagramChannel(d, w, 2) for w in range(2)]
    idx = [PrefixIndex(), PrefixIndex()]
    gossips = [PrefixGossip([idx[w]], w, chans[w].send, max_pending=4) for w in range(2)]
    registries = [CollectorRegistry(), CollectorRegistry()]
    for w in range(2):
        registries[w].register(GossipCollector(gossips[w], chans[w]))
    try:
        idx[0].add("a:1", [1, 2, 3])
        idx[0].add("a:1", [4, 5, 6])  # past the pending bound of 4
        gossips[0].flush()
        deadline = time.monotonic() + 30
        got: list[bytes] = []
        while not got and time.monotonic() < deadline:
            got = list(chans[1].drain())
            time.sleep(0.01)
        for data in got:
            gossips[1].receive(data)
        gossips[1].receive(b"\x09")  # too short to decode
        chans[1].close()
        idx[0].add("b:1", [7])
        gossips[0].flush()  # the peer is gone: a failed send
        m0, m1 = _samples(registries[0]), _samples(registries[1])
        assert m0[("kvgate_prefix_gossip_dropped_total", "pending_bound")] == 1
        assert m0[("kvgate_prefix_gossip_dropped_total", "send_failed")] == 1
        assert m1[("kvgate_prefix_gossip_dropped_total", "undecodable")] == 1
        assert m1[("kvgate_prefix_gossip_applied_total", "")] == 1
        assert m0[("kvgate_prefix_gossip_applied_total", "")] == 0
    finally:
        for c in chans:
            c.close()
        shutil.rmtree(d, ignore_errors=True)


async def _gossip_applied_per_worker(admin: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/metrics") as r:
        text = await r.text()
    return {
        smp.labels["worker"]: smp.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "kvgate_prefix_gossip_applied"
        for smp in fam.samples
        if smp.name.endswith("_total")
    }


def test_pending_batch_is_bounded() -> None:
    index = PrefixIndex()
    sent: list[bytes] = []
    g = PrefixGossip([index], 0, sent.append, max_pending=10)
    index.add("a:1", list(range(1, 9)))
    index.add("b:1", list(range(100, 108)), filler=3)  # would pass the bound: dropped, placeholder too
    g.flush()
    assert g.dropped == 1
    (d,) = sent
    assert [(a, list(h), f) for _, a, h, f in decode(d)[1]] == [("a:1", list(range(1, 9)), 0)]


async def test_a_prefix_routed_by_one_worker_is_honoured_by_the_other(backends):
    bs = await backends(2)
    addresses = ",".join(b.address for b in bs)
    async with serve_workers(addresses, 2, policy="reference") as (_, port, admin):
        url = f"http://127.0.0.1:{port}/v1/completions"
        prefixes = [f"tenant {t} " + f"shared system prompt {t} " * 120 for t in range(6)]
        # A new connection per request: the kernel spreads connections over both workers.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
            for i, p in enumerate(prefixes):
                body = orjson.dumps({"model": "m", "prompt": p + f"first {i}", "max_tokens": 2})
                async with s.post(url, data=body) as r:
                    assert r.status == 200
            # The gossip interval is 5 ms: 400x that for the other worker, a process on a loaded machine, to
            # hear (0.5 s before).
            await asyncio.sleep(2.0)
            for rep in range(6):
                for i, p in enumerate(prefixes):
                    body = orjson.dumps({"model": "m", "prompt": p + f"turn {rep} {i}", "max_tokens": 2})
                    async with s.post(url, data=body) as r:
                        assert r.status == 200
        per = await answers_per_worker(admin, "inference_objective_request")
        applied = await _gossip_applied_per_worker(admin)
    assert set(per) == {"0", "1"} and min(per.values()) > 0  # both workers routed some
    # Both workers heard the other's insertions, and say so on the merged /metrics.
    assert set(applied) == {"0", "1"} and min(applied.values()) > 0, applied
    placed: dict[int, Counter[str]] = {i: Counter() for i in range(len(prefixes))}
    for b in bs:
        for _, _, body in b.received:
            tenant = int(body["prompt"].split()[1])
            placed[tenant][b.name] += 1
    # Every follow-up of a prefix lands where its first request went, whichever worker routed it.
    # Without gossip the worker that did not see the first request ties the two replicas (about half
    # of its requests elsewhere: ~9 of 36 strays expected); allow 2 for margin.
    strays = sum(sum(c.values()) - max(c.values()) for c in placed.values())
    assert strays <= 2, placed
