"""Does a replay fetch get the whole answer of a server shaped like vLLM's replay socket?

vLLM's ``ZmqEventPublisher._service_replay`` answers on its publisher thread through a plain ROUTER with
ZMQ's default send high-water mark, every buffered batch in one loop, then the end marker; a ROUTER drops
what does not fit its peer's pipe silently. This serves ``--batches`` batches of ``--size`` bytes that way
and runs ``KVEventSubscriber._fetch(0)`` against it ``--runs`` times, the fetching loop busy ``--stall``
seconds just after the request (a loaded machine), and prints what each fetch got and how many requests
it took (a tool, not a test; the tests are tests/datalayer/test_kv_replay_loss.py). Run it with the
source tree to measure, e.g. ``PYTHONPATH=src python scripts/kv_replay_loss.py --batches 2000``.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time

import zmq

from kvgate.datalayer.kvindex import BlockIndex
from kvgate.datalayer.kvsubscriber import KVEventSubscriber
from kvgate.datalayer.kvwire import END_SEQ


def serve(router: zmq.Socket[bytes], buffer: list[tuple[int, bytes]], requests: list[int]) -> None:
    while True:
        client, _, start_b = router.recv_multipart()
        start = int.from_bytes(start_b, "big")
        requests.append(start)
        for seq, payload in buffer:
            if seq >= start:
                router.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
        router.send_multipart((client, b"", END_SEQ, b""))


async def fetch_once(endpoint: str, stall: float, replay_timeout: float) -> list[tuple[int, bytes]] | None:
    sub = KVEventSubscriber(
        BlockIndex(), "a", "tcp://127.0.0.1:1", replay_endpoint=endpoint, replay_timeout=replay_timeout
    )
    asyncio.get_running_loop().call_later(0.01, time.sleep, stall)
    return await sub._fetch(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=2_000)
    ap.add_argument("--size", type=int, default=2_000, help="payload bytes per batch")
    ap.add_argument("--stall", type=float, default=0.0, help="seconds the fetching loop is busy")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=10.0, help="the fetch's replay timeout")
    args = ap.parse_args()
    router = zmq.Context.instance().socket(zmq.ROUTER)
    endpoint = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
    buffer = [(i, b"y" * args.size) for i in range(args.batches)]
    requests: list[int] = []
    threading.Thread(target=serve, args=(router, buffer, requests), daemon=True).start()
    for run in range(args.runs):
        requests.clear()
        t = time.perf_counter()
        got = asyncio.run(fetch_once(endpoint, args.stall, args.timeout))
        seqs = [] if got is None else [s for s, _ in got]
        whole = seqs == list(range(args.batches))
        print(
            f"run {run}: {'no (whole) answer' if got is None else f'{len(seqs)} of {args.batches} batches'}"
            f"{' (whole)' if whole else ''}, {len(requests)} request(s), {time.perf_counter() - t:.2f} s"
        )


if __name__ == "__main__":
    main()
