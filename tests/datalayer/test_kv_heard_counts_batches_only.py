"""closing-s16 "Noticed and left undone" (KV): ``_heard`` counted every frame read off the SUB socket,
malformed ones too (a peer sending garbage looked alive), while the stash gets batches only.

A lost-tail check lets an answer go further than the one it checks by the live batches heard since that
request (``_heard_in``: the stash's newest entries, one per batch heard). Each malformed frame counted
there reached one entry further back, to batches heard *before* the request: here the live batches
300..499, read off the socket before the catch-up's first request. The first answer loses 300..999 (its
end marker comes), the check from 299 loses 500..999 too; 200 garbage frames arrive in between, and the
check's 200 more batches were "explained" by the 200 live batches of that range heard before: the end
confirmed at 499, the catch-up missing 500..999 (a reset among them unseen: blocks it dropped applied).

Failed before (kvhub17): the fetch returned 0..499. Now only a batch counts as heard: the check's growth
is a lost tail again, asked on, and the whole buffer 0..999 comes. Real ZMQ on loopback (a PUB for the
garbage, vLLM's replay shape for the answers).
"""

from __future__ import annotations

import asyncio
import threading

import zmq

from datalayer.test_kv_replay_loss import VLLMShapedReplay, engine_life
from kvgate.datalayer.kvevents import BlockIndex, KVEventSubscriber

GARBAGE = 200


async def _until(cond: object, what: str) -> None:
    for _ in range(1000):  # (a generous bound on a loaded machine; not a timing assertion)
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def _pub_sub() -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    """(XPUB, SUB): a PUB on a loopback port and a SUB of everything connected to it, subscribed (what the
    PUB sends now is delivered). Closed by the caller."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub_sock = ctx.socket(zmq.SUB)
    sub_sock.setsockopt(zmq.LINGER, 0)
    sub_sock.setsockopt(zmq.SUBSCRIBE, b"")
    sub_sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        assert pub.poll(5000) and pub.recv() == b"\x01"  # (the subscription arrived)
    except BaseException:
        sub_sock.close(0)
        pub.close(0)
        raise
    return pub, sub_sock


async def test_malformed_frames_do_not_explain_a_checks_growth() -> None:
    life = engine_life(3_000_000, 1000)
    answer_1 = threading.Event()  # the first request's answer may go (the garbage is on the socket)
    server: VLLMShapedReplay

    def lose(n: int, seq: int | None) -> bool:
        if n == 1 and seq == 0:
            answer_1.wait(30)
        start = server.requests[n - 1]
        if seq is None:
            return False
        return (start == 0 and seq >= 300) or (start == 299 and seq >= 500)

    pub, sub_sock = _pub_sub()
    server = VLLMShapedReplay(life, lose=lose)
    try:
        sub = KVEventSubscriber(BlockIndex(default_capacity=1 << 20), "a", "tcp://127.0.0.1:1",
                                replay_endpoint=server.endpoint, replay_timeout=5.0)  # fmt: skip
        sub._joining = sub_sock  # (the catch-up's socket: read by its pulls)
        # live batches 300..499, read off the socket before the first request (a pull leaves them there)
        sub._stash.extend((s, life[s]) for s in range(300, 500))
        sub._heard = 200
        fetch = asyncio.create_task(sub._fetch(0))
        await _until(lambda: server.requests, "the first request")
        for _ in range(GARBAGE):
            pub.send(b"not a batch")  # (one frame: no sequence number, no payload)
        await _until(lambda: sub_sock.getsockopt(zmq.EVENTS) & zmq.POLLIN, "the garbage")
        await asyncio.sleep(0.2)  # (the rest of the burst: loopback, one connection)
        answer_1.set()
        got = await fetch
        assert sub.stats.decode_errors == GARBAGE
        assert got is not None
        seqs = [s for s, _ in got]
        assert seqs == list(range(1000)), (
            f"the end was confirmed at {seqs[-1]}: garbage counted as heard (requests {server.requests})"
        )
    finally:
        answer_1.set()
        sub_sock.close(0)
        pub.close(0)
        server.close()


async def test_the_live_drain_counts_batches_only() -> None:
    """Review s17-kvhub L2: the steady-state drain (``_drain``, on the SUB socket's readable callback) has
    the same rule as the catch-up's pull: a malformed frame is a decode error, not a batch heard. Counted
    before the framing check (the code before kvhub17), the 6 malformed frames here made ``_heard`` 9.
    Real ZMQ on loopback: a PUB sends garbage between three well-formed batches."""
    life = engine_life(4_000_000, 3)
    pub, sub_sock = _pub_sub()
    sub = KVEventSubscriber(BlockIndex(default_capacity=1 << 20), "a", "tcp://127.0.0.1:1")
    try:
        sub._sock = sub_sock
        sub._drain()  # (nothing queued yet: arms the socket's reader, as the subscriber's task does)
        for seq, payload in enumerate(life):
            pub.send(b"not a batch")  # (one frame: no sequence number, no payload)
            pub.send(b"x" * 9)
            pub.send_multipart([b"topic", seq.to_bytes(8, "big", signed=True), payload])
        await _until(lambda: sub.stats.last_seq == 2 and sub.stats.decode_errors == 6, "the burst drained")
        assert sub._heard == 3, f"{sub._heard} batches heard of 3 sent (and 6 malformed frames)"
    finally:
        sub._disarm_reader()
        sub._sock = None
        sub_sock.close(0)
        pub.close(0)
