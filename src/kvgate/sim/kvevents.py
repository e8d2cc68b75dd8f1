"""KV-cache events on the wire, as vLLM's ZMQ publisher sends them (``--kv-events-config``).

Per replica:
- a PUB socket: multipart ``[topic, seq, payload]``; ``seq`` an 8-byte big-endian counter from 0;
  ``payload`` msgpack ``EventBatch = [ts, events, data_parallel_rank]``, each event a map tagged by
  ``"type"`` (``{"type": "BlockStored", "block_hashes": [...], "parent_block_hash": ..., "token_ids": [...],
  "block_size": ..., "lora_id": ..., "medium": "GPU", "lora_name": ...}``), as vLLM 0.32 sends them;
- a ROUTER replay socket with vLLM's ``replay_endpoint`` semantics: a DEALER sends ``[b"", start_seq]``
  (8-byte big-endian); the reply is one ``[b"", seq, payload]`` message per buffered batch with
  ``seq >= start_seq``, then ``[b"", END_SEQ, b""]`` with ``END_SEQ`` = -1 as a signed 8-byte integer. The
  buffer keeps the last ``buffer_steps`` batches (vLLM's default 10,000), so memory stays bounded.

The events and their encoding are the data layer's (``kvgate.datalayer.kvwire``, kvgate's one set of KV-event
types): the simulator publishes exactly what the gateway's subscriber decodes.
The engine hands over events once per step (``Engine(kv_event_sink=...)``); one step = one batch, as in vLLM.
PUB sends never block: ZMQ drops at the high-water mark and a subscriber heals the gap via replay.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import zmq
import zmq.asyncio

from kvgate.aio import cancel_and_wait, stop_to_the_end
from kvgate.datalayer.kvwire import END_SEQ, KVEvent, encode_batch

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "kv"
DEFAULT_BUFFER_STEPS = 10_000


class KVEventPublisher:
    """A replica's PUB + replay sockets. ``endpoint``/``replay_endpoint`` are what subscribers connect to."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        replay_port: int | None = 0,
        topic: str = DEFAULT_TOPIC,
        buffer_steps: int = DEFAULT_BUFFER_STEPS,
        hwm: int = 100_000,
    ) -> None:
        self._ctx = zmq.asyncio.Context.instance()
        self.topic = topic.encode()
        # A plain (sync) PUB: a NOBLOCK send completes at once, no future to await.
        self._pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.setsockopt(zmq.SNDHWM, hwm)
        self.endpoint = _bind(self._pub, host, port)
        self._router: zmq.asyncio.Socket | None = None
        self.replay_endpoint: str | None = None
        if replay_port is not None:
            self._router = self._ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.LINGER, 0)
            self.replay_endpoint = _bind(self._router, host, replay_port)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self.batches_sent = 0
        self.send_drops = 0

    def start(self) -> None:
        if self._router is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve_replay())

    def publish(self, events: list[KVEvent]) -> None:
        """Send one batch (one engine step's events); never blocks."""
        if not events:
            return
        payload = encode_batch(events, time.time())
        seq = self._seq
        self._seq += 1
        seq_b = seq.to_bytes(8, "big")
        self._buffer.append((seq, payload))
        try:
            self._pub.send_multipart((self.topic, seq_b, payload), flags=zmq.NOBLOCK)
            self.batches_sent += 1
        except zmq.Again:
            self.send_drops += 1

    async def _serve_replay(self) -> None:
        router = self._router
        assert router is not None
        while True:
            frames = await router.recv_multipart()
            if len(frames) != 3:
                log.warning("invalid replay request (%d frames)", len(frames))
                continue
            client, _, start_b = frames
            start = int.from_bytes(start_b, "big")
            for seq, payload in list(self._buffer):
                if seq >= start:
                    await router.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
            await router.send_multipart((client, b"", END_SEQ, b""))

    def sources(self) -> dict[str, object]:
        """What ``GET /kv_event_sources`` answers: vLLM's events config with the concrete endpoints."""
        return {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": self.endpoint,
            "replay_endpoint": self.replay_endpoint,
            "topic": self.topic.decode(),
            "buffer_steps": self._buffer.maxlen,
            "next_seq": self._seq,
        }

    async def close(self) -> None:
        """End the replay server's task and close both sockets: to its end also when cancelled meanwhile,
        the cancellation raised after (``stop_to_the_end``: it had raised while the task still ran)."""
        await stop_to_the_end(self._close(), f"KV-event publisher {self.endpoint}: closing", log)

    async def _close(self) -> None:
        try:
            if self._task is not None:
                await cancel_and_wait(self._task, "KV-event publisher's replay server", log)
                self._task = None
        finally:  # (the sockets closed even when this close's task is cancelled: asyncio.run's end)
            self._pub.close(0)
            if self._router is not None:
                self._router.close(0)


def _bind(sock: zmq.Socket[bytes] | zmq.asyncio.Socket, host: str, port: int) -> str:
    if port:
        addr = f"tcp://{host}:{port}"
        sock.bind(addr)
        return addr
    sock.bind(f"tcp://{host}:*")
    last: bytes = sock.getsockopt(zmq.LAST_ENDPOINT)  # type: ignore[assignment]
    return last.decode()
