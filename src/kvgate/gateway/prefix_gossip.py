"""Prefix-index insertions shared between ``--workers`` processes: lossy gossip over unix datagrams.

With N workers each worker's approximate prefix index learns only the requests *it* routed, so a
prefix group is learned N times and spread over up to N replicas. Here every worker records its own
insertions (endpoint, block hashes in the order its LRU touched them, and the weight of the placeholder
the ``engineLru`` mode adds for the blocks a pick will generate) as they happen, and every
``PREFIX_GOSSIP_S`` sends them, batched and deduplicated, to the other workers, which apply them to their
own index (``PrefixIndex.apply_remote``, which does not echo them back). Carrying the placeholder weight
matters: without it each worker aged the others' picks more slowly than its own (their generated blocks
took no room in its index), so it kept believing in prefixes the server had already evicted.

Lossy on purpose: sends never block (a full peer socket, a peer restarting or not yet bound drops
the datagram, counted in ``dropped``), and a worker that records more than ``max_pending`` hashes
between two flushes drops the rest. A lost insertion only costs a cache hit the index would have
predicted; the next request of the same prefix re-publishes it. Bounded: the pending batch, and one
datagram of at most ``MAX_DATAGRAM`` bytes at a time.

Wire format (little-endian), one datagram: ``u8 version, u8 sender`` (version 3: then ``u32 layout``)
then records until the end. Versions 2 and 3: each record ``u8 index id, u8 address length, u16 hash
count, u32 placeholder blocks, address bytes, hash count x u64``, hashes oldest first; the placeholder
blocks are older than them. Version 1 (still read, placeholder 0): the same without the u32. An index id
is the position of a prefix scorer over the worker's pools; ``layout`` names that list of scorers (a hash
of each one's pool, name and settings: ``reload.layout_id``), so the same config gives the same ids in
every worker. A config reload can change the list (a prefix scorer added, removed or re-parametrised):
each worker then moves to the new layout as it reloads (``relayout``), and a datagram whose layout is not
the receiver's is dropped (counted), never applied to whichever index has that id there: workers
reloading a moment apart lose the few insertions of that moment, not their indexes' meaning. Versions 1
and 2 carry no layout: read as layout 0. A batch's placeholders for one endpoint are summed into one (the
index's capacity is what they are for) and ride on the record's first datagram.
"""

from __future__ import annotations

import contextlib
import operator
import os
import socket
import struct
from array import array
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from kvgate.scheduling.prefix import PrefixIndex

VERSION = 3
_READS = (1, 2, 3)  # versions ``decode`` accepts
PREFIX_GOSSIP_S = 0.005  # how long a worker's insertion may wait before the others hear of it
MAX_DATAGRAM = 60_000  # well under the default unix datagram limit (SO_SNDBUF ~208 KiB)
DEFAULT_MAX_PENDING = 200_000  # hashes between two flushes (~1.6 MB): past it, insertions are dropped
_HEAD = struct.Struct("<BB")
_LAYOUT = struct.Struct("<I")  # version 3, after the head
_REC = struct.Struct("<BBHI")  # versions 2 and 3
_REC_V1 = struct.Struct("<BBH")
_MAX_HASHES = (MAX_DATAGRAM - _HEAD.size - _LAYOUT.size - _REC.size - 255) // 8
_MAX_FILLER = 2**32 - 1

# (index id, address, block hashes oldest first, placeholder blocks older than them)
Record = tuple[int, str, Sequence[int], int]


def encode(sender: int, records: Sequence[Record], layout: int = 0) -> list[bytes]:
    """Datagrams of at most ``MAX_DATAGRAM`` bytes carrying ``records`` (long ones are split)."""
    out: list[bytes] = []
    head = _HEAD.pack(VERSION, sender) + _LAYOUT.pack(layout & 0xFFFFFFFF)
    parts: list[bytes] = [head]
    size = len(head)
    for idx, address, hashes, filler in records:
        addr = address.encode()
        if len(addr) > 255 or idx > 255:
            continue  # not representable: stays local
        filler = min(max(filler, 0), _MAX_FILLER)
        # Chunks in order (the receiver applies them in order); the placeholder on the first.
        for start in range(0, max(len(hashes), 1 if filler else 0), _MAX_HASHES):
            chunk = array("Q", hashes[start : start + _MAX_HASHES])
            rec = _REC.pack(idx, len(addr), len(chunk), filler if start == 0 else 0) + addr + chunk.tobytes()
            if size + len(rec) > MAX_DATAGRAM:
                out.append(b"".join(parts))
                parts, size = [head], len(head)
            parts.append(rec)
            size += len(rec)
    if len(parts) > 1:
        out.append(b"".join(parts))
    return out


def decode(data: bytes) -> tuple[int, list[Record]]:
    """(sender, records); raises ValueError on a datagram this version cannot read."""
    sender, _, records = decode_layout(data)
    return sender, records


def decode_layout(data: bytes) -> tuple[int, int, list[Record]]:
    """(sender, layout, records): ``decode`` with the sender's prefix layout (0 before version 3)."""
    if len(data) < _HEAD.size:
        raise ValueError("short datagram")
    version, sender = _HEAD.unpack_from(data)
    if version not in _READS:
        raise ValueError(f"gossip version {version}")
    rec = _REC if version >= 2 else _REC_V1
    pos = _HEAD.size
    layout = 0
    if version >= 3:
        if len(data) < pos + _LAYOUT.size:
            raise ValueError("short datagram")
        (layout,) = _LAYOUT.unpack_from(data, pos)
        pos += _LAYOUT.size
    out: list[Record] = []
    while pos < len(data):
        if pos + rec.size > len(data):
            raise ValueError("truncated record")
        fields = rec.unpack_from(data, pos)
        idx, alen, n = fields[:3]
        filler = fields[3] if len(fields) == 4 else 0  # version 1 records carry no placeholder
        pos += rec.size
        end = pos + alen + 8 * n
        if end > len(data):
            raise ValueError("truncated record")
        address = data[pos : pos + alen].decode()
        hashes = array("Q")
        hashes.frombytes(data[pos + alen : end])
        out.append((idx, address, hashes, filler))
        pos = end
    return sender, layout, out


class PrefixGossip:
    """One worker's side: records its indexes' insertions, flushes them through ``send``, applies others'."""

    def __init__(
        self,
        indexes: Sequence[PrefixIndex],
        worker: int,
        send: Callable[[bytes], None],
        max_pending: int = DEFAULT_MAX_PENDING,
        layout: int = 0,
    ) -> None:
        self.indexes = list(indexes)
        self.worker = worker
        self.send = send
        self.max_pending = max_pending
        self.layout = layout  # what ``indexes`` are (``reload.layout_id``): others' must match to apply
        # (index id, address) -> hashes in the order the index last touched them, deduplicated (a dict as
        # an ordered set), and the placeholder blocks recorded with them
        self._pending: dict[tuple[int, str], dict[int, None]] = {}
        self._filler: dict[tuple[int, str], int] = {}
        self._count = 0
        self.dropped = 0  # insertions dropped for the pending bound
        self.applied = 0  # remote records applied
        self.bad = 0  # datagrams that did not decode
        self.other_layout = 0  # datagrams from a worker on another prefix layout (a reload under way)
        for i, index in enumerate(self.indexes):
            index.listener = self._recorder(i)

    def relayout(self, indexes: Sequence[PrefixIndex], layout: int) -> None:
        """A config reload swapped pickers: gossip ``indexes`` (the new list of prefix indexes, kept ones
        the same objects) as ``layout`` from now on. What was recorded goes first, as the old layout (the
        workers still on it apply it; the others drop it)."""
        same = len(indexes) == len(self.indexes) and all(map(operator.is_, indexes, self.indexes))
        if layout == self.layout and same:
            return
        self.flush()
        for index in self.indexes:
            index.listener = None
        self.indexes = list(indexes)
        self.layout = layout
        for i, index in enumerate(self.indexes):
            index.listener = self._recorder(i)

    def _recorder(self, i: int) -> Callable[[str, Sequence[int], int], None]:
        def record(address: str, hashes: Sequence[int], filler: int) -> None:
            if self._count + len(hashes) > self.max_pending:
                self.dropped += 1  # the whole insertion, its placeholder too
                return
            key = (i, address)
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = {}
            before = len(pending)
            for h in hashes:  # a block touched again moves to the end, as in the index's LRU
                if h in pending:
                    del pending[h]
                pending[h] = None
            self._count += len(pending) - before
            if filler:
                self._filler[key] = self._filler.get(key, 0) + filler

        return record

    def flush(self) -> None:
        if not self._pending:
            return
        fill = self._filler
        records = [(i, a, list(h), fill.get((i, a), 0)) for (i, a), h in self._pending.items()]
        self._pending.clear()
        fill.clear()
        self._count = 0
        for datagram in encode(self.worker, records, self.layout):
            self.send(datagram)

    def receive(self, data: bytes) -> None:
        try:
            sender, layout, records = decode_layout(data)
        except (ValueError, UnicodeDecodeError):
            self.bad += 1
            return
        if sender == self.worker:
            return
        if layout != self.layout:  # its index ids name other indexes than ours: never applied
            self.other_layout += 1
            return
        for idx, address, hashes, filler in records:
            if idx < len(self.indexes):
                self.indexes[idx].apply_remote(address, hashes, filler)
                self.applied += 1

    def close(self) -> None:
        for index in self.indexes:
            index.listener = None


def socket_path(directory: str, worker: int) -> str:
    return os.path.join(directory, f"w{worker}.sock")


class DatagramChannel:
    """Worker ``worker``'s end of a unix-datagram mesh in ``directory``: one bound socket per worker;
    ``send`` goes to every other worker's path, never blocking (a failed send is dropped and counted)."""

    def __init__(self, directory: str, worker: int, workers: int) -> None:
        self.path = socket_path(directory, worker)
        self.peers = [socket_path(directory, w) for w in range(workers) if w != worker]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a restarted worker's predecessor's socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(self.path)
        self.dropped = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes) -> None:
        for peer in self.peers:
            try:
                self.sock.sendto(data, peer)
            except OSError:  # full (EAGAIN), peer not bound yet / restarting (ENOENT, ECONNREFUSED)
                self.dropped += 1

    def drain(self, limit: int = 256) -> Iterator[bytes]:
        """Datagrams waiting, at most ``limit`` (the event loop calls again while more are queued)."""
        for _ in range(limit):
            try:
                yield self.sock.recv(MAX_DATAGRAM + 1024)
            except (BlockingIOError, InterruptedError):
                return

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class GossipCollector(Collector):
    """The gossip's counters on the worker's ``/metrics`` (merged with a ``worker`` label): a rising
    drop count means workers' prefix indexes diverge and hit rates fall toward N separate pickers."""

    def __init__(self, gossip: PrefixGossip, channel: DatagramChannel) -> None:
        self.gossip = gossip
        self.channel = channel

    def collect(self) -> Iterator[CounterMetricFamily]:
        dropped = CounterMetricFamily(
            "kvgate_prefix_gossip_dropped",
            "Prefix-index insertions or datagrams this worker failed to share, by reason",
            labels=["reason"],
        )
        dropped.add_metric(["pending_bound"], self.gossip.dropped)
        dropped.add_metric(["send_failed"], self.channel.dropped)
        dropped.add_metric(["undecodable"], self.gossip.bad)
        dropped.add_metric(["other_layout"], self.gossip.other_layout)
        yield dropped
        yield CounterMetricFamily(
            "kvgate_prefix_gossip_applied",
            "Insertion records received from other workers and applied to this worker's prefix index",
            value=self.gossip.applied,
        )


def pool_indexes(pools: Sequence[object]) -> list[PrefixIndex]:
    """Every prefix scorer's index in ``pools`` (objects with ``director.handle``), in config order."""
    return director_indexes([pool.director for pool in pools])  # type: ignore[attr-defined]


def director_indexes(directors: Sequence[object]) -> list[PrefixIndex]:
    """Every prefix scorer's index of ``directors`` (objects with ``handle``), in order: index ids are
    positions in this list (a config reload keeps it: ``gateway.reload``)."""
    from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer

    out: list[PrefixIndex] = []
    for director in directors:
        handle = getattr(director, "handle", None)
        if handle is not None:
            out.extend(p.index for p in handle.plugins.values() if isinstance(p, PrefixCacheScorer))
    return out
