"""Responses API ids -> the endpoint that made them, fleet-wide under ``kvgate serve --workers N``.

vLLM keeps a stored response in the memory of the server that made it, so a follow-up
(``previous_response_id``), a retrieval (``GET /v1/responses/{id}``) and a cancel must go there
(``openai.responses``, ``gateway.lookups``). One process remembers each id's home in its own
``ResponseHomes``. With N workers the kernel spreads connections over them, so a client's next request
lands on another worker (N-1)/N of the time: a map per worker found only the ids its own worker made
(vLLM's 404 for a response that exists, or a follow-up picked anywhere). Here every worker also writes
the ids it makes into one shared-memory table that every worker reads.

Why a table and not an id form: the id is vLLM's (``resp_`` + random hex), the client's handle for the
response; a gateway that rewrote it to say its home (or its worker) would have to rewrite it back in
every follow-up, lookup path and stream event, and the id the client sees would no longer be the one in
the server's logs. Asking every endpoint (or every worker) on a miss costs a round trip per endpoint on
(N-1)/N of the lookups. A table costs one write per Responses answer and at most ``workers x 2 x WAYS``
entry reads per lookup.

Layout (its own ``multiprocessing.shared_memory`` segment, created and unlinked by the supervisor; named
after the in-flight segment, ``segment_name``, so a worker finds it from what it already gets): one
region per worker, written by that worker only (no lock: nothing a worker killed mid-write could hold):
- the region's pair hand (one word), then ``PAIRS`` model pairs: for an id made through a model rewrite,
  (the name sent, the client's name), so another worker's lookup puts the client's name back as the
  create's answer had it; each a sequence word and two NUL-padded UTF-8 names of ``MODEL_BYTES``; reused
  round robin (an entry naming a reused pair reads as no pair);
- ``slots`` entries in sets of ``WAYS``: a sequence word, the id's key (64 bits of BLAKE2b, the same in
  every process), when it expires (microseconds of the gateway's clock, ``time.monotonic``: one clock for
  every process on the host), the pair (slot and sequence, -1: none), the finished turn's tokens (0 until
  the answer ends: ``remember_tokens``, read by ``FleetTurns``: a follow-up another worker takes is
  estimated as its conversation, prev24) and the address (``ADDR_BYTES`` NUL-padded). An id may be in
  either of two sets (from its key's low and high bits; a reader looks in both): a new id takes an empty
  or expired entry of the emptier, else the one of the two that expires first (the oldest).
A writer makes a sequence word odd, writes, then makes it even again (a word left odd by a writer killed
mid-write stays odd through the next write, then even); a reader takes an entry only if its word was even
and unchanged across the read (else: not found, as for an id never seen).

Bounded: each worker's latest ``HOMES_MAX / N`` ids (its share; the fleet's latest ``HOMES_MAX`` when the
kernel spreads connections evenly, as one process keeps ``HOMES_MAX``), each for ``HOMES_TTL_S``: a
region has twice the share's entries (``slots``), so with two sets to choose from the latest share is
held whole (review s20-gw M1: one set per id in a region of the share's size displaced ~14% of it);
about 20.9 MB of ``/dev/shm`` (21.9 MB at 16 workers). A worker keeps its own
``ResponseHomes`` too, read first: an id it made is found as in one process, also one whose address
(> 64 bytes) or model names (> 128 bytes) do not fit the table. A restarted worker continues its region:
what its predecessor wrote is still true (the responses live in the model servers).
"""

from __future__ import annotations

import hashlib
import time
from array import array
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import TYPE_CHECKING

from kvgate.openai.responses import HOMES_MAX, HOMES_TTL_S, ResponseHomes, ResponseTurns, Turn

if TYPE_CHECKING:
    from kvgate.gateway.proxy import Proxy

ADDR_BYTES = 64
MODEL_BYTES = 128
PAIRS = 256
WAYS = 8
_ADDR_WORDS = ADDR_BYTES // 8
_E = 5 + _ADDR_WORDS  # words per entry: sequence, key, expires (us), pair, the turn's tokens, address
_SEQ, _KEY, _EXP, _PAIR, _TOK = range(5)
_P = 1 + 2 * MODEL_BYTES // 8  # words per pair: sequence, the name sent, the client's
_US = 1_000_000


def slots_per_worker(workers: int) -> int:
    """Twice each worker's share of ``HOMES_MAX``, whole sets: with two sets to choose from (``_sets_of``),
    the latest share is all held (review s20-gw M1: one set of a region the share's size displaced ~14% of
    it, sets overflowing long before the region was full)."""
    sets = -(-2 * HOMES_MAX // (max(1, workers) * WAYS))
    return sets * WAYS


def _region_words(slots: int) -> int:
    return 1 + PAIRS * _P + slots * _E


# The segment's last word: this layout's mark (``_E``, ``_P`` and a version), written by the supervisor and
# checked by each worker's ``attach``: a worker spawned from code of another layout (an upgrade in place
# under a running supervisor) refuses to start instead of writing over the others' entries (rev-prev24 F7).
_LAYOUT = (0x6B76_7273 << 32) | (2 << 16) | (_E << 8) | _P


def segment_size(workers: int) -> int:
    return workers * _region_words(slots_per_worker(workers)) * 8 + 8


def segment_name(inflight_segment: str) -> str:
    """The table's segment name, from the in-flight segment's (``gateway.shared_inflight``)."""
    return inflight_segment + "_rsp"


def response_key(response_id: str) -> int:
    """64 bits of BLAKE2b of the id as a signed int64, never 0 (an empty entry's key)."""
    digest = hashlib.blake2b(response_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


class SharedResponses:
    """One worker's view of the table (``worker`` = -1: the supervisor's, which owns it, writes nothing)."""

    def __init__(
        self, shm: shared_memory.SharedMemory, workers: int, worker: int, owner: bool = False
    ) -> None:
        self.shm, self.workers, self.worker, self.owner = shm, workers, worker, owner
        self.slots = slots_per_worker(workers)
        self._sets = self.slots // WAYS
        self._region = _region_words(self.slots)
        buf = shm.buf
        assert buf is not None
        self._bytes: memoryview = buf[: segment_size(workers)]
        self._words = self._bytes.cast("q")
        self.ttl_s = HOMES_TTL_S
        # This worker's pairs: (sent, client) -> its reference in the entries (from its region: a restart).
        self._pairs: dict[tuple[str, str], int] = {}
        if worker >= 0:
            for slot in range(PAIRS):
                got = self._read_pair(worker, slot)
                if got is not None:
                    self._pairs[got[0]] = got[1]

    @classmethod
    def create(cls, workers: int, name: str) -> SharedResponses:
        # (a new segment is zeros: ftruncate)
        shm = shared_memory.SharedMemory(name=name, create=True, size=segment_size(workers))
        table = cls(shm, workers, -1, owner=True)
        table._words[-1] = _LAYOUT
        return table

    @classmethod
    def attach(cls, name: str, workers: int, worker: int) -> SharedResponses:
        """A worker's view; ValueError for a segment of another size or layout (another kvgate's)."""
        shm = shared_memory.SharedMemory(name=name)
        want = segment_size(workers)
        buf = shm.buf
        mark = (
            int.from_bytes(buf[want - 8 : want], "little", signed=True)
            if buf is not None and shm.size >= want
            else 0
        )
        if mark != _LAYOUT:
            shm.close()
            raise ValueError(
                f"the Responses table {name!r} ({shm.size} bytes) is not this kvgate's layout ({want} bytes,"
                f" mark {_LAYOUT:#x}, found {mark:#x}): restart the supervisor with the same version"
            )
        return cls(shm, workers, worker)

    def close(self) -> None:
        self._words.release()
        self._bytes.release()
        self.shm.close()
        if self.owner:
            self.shm.unlink()

    # -- entries --------------------------------------------------------------------------------

    def _set_base(self, worker: int, key: int) -> int:
        return worker * self._region + 1 + PAIRS * _P + (key % self._sets) * WAYS * _E

    def _sets_of(self, worker: int, key: int) -> tuple[int, int]:
        """The two sets (their first words) ``key`` may be in: from its low bits and from its high bits."""
        return self._set_base(worker, key), self._set_base(worker, key >> 32)

    def _own(self, key: int) -> int | None:
        """This worker's entry holding ``key``, if any (its own region: no torn read)."""
        c = self._words
        for base in self._sets_of(self.worker, key):
            for b in range(base, base + WAYS * _E, _E):
                if c[b + _KEY] == key:
                    return b
        return None

    def _free(self, key: int, now_us: int) -> int:
        """The entry a new ``key`` takes: an empty or expired one of the emptier of its two sets, else the
        one of either set that expires first (the oldest: ids are written with the same time to live)."""
        c = self._words
        pick, empties, oldest, oldest_exp = -1, 0, -1, 0
        for base in self._sets_of(self.worker, key):
            n, at = 0, -1
            for e in range(base, base + WAYS * _E, _E):
                exp = c[e + _EXP]
                if c[e + _KEY] == 0 or exp <= now_us:
                    n += 1
                    if at < 0:
                        at = e
                elif oldest < 0 or exp < oldest_exp:
                    oldest, oldest_exp = e, exp
            if n > empties:
                pick, empties = at, n
        return pick if pick >= 0 else oldest

    def remember(self, response_id: str, address: str, now: float) -> bool:
        """Write ``response_id``'s home (this worker's region); False: it does not fit (kept locally)."""
        addr = address.encode("utf-8", "surrogateescape")
        if self.worker < 0 or not addr or len(addr) > ADDR_BYTES:
            return False
        key = response_key(response_id)
        c = self._words
        now_us = int(now * _US)
        b = self._own(key)
        if b is None:
            b = self._free(key, now_us)
        # Odd while written (``| 1``: already odd if a predecessor was killed mid-write here), even after.
        seq = c[b + _SEQ] | 1
        c[b + _SEQ] = seq
        c[b + _KEY] = key
        c[b + _EXP] = int((now + self.ttl_s) * _US)
        c[b + _PAIR] = -1
        c[b + _TOK] = 0
        at = (b + 5) * 8
        self._bytes[at : at + ADDR_BYTES] = addr.ljust(ADDR_BYTES, b"\0")
        c[b + _SEQ] = seq + 1
        return True

    def remember_models(self, response_id: str, models: tuple[str, str]) -> bool:
        """The pair of names of an id this worker just remembered (``remember``); False: not kept."""
        if self.worker < 0:
            return False
        b = self._own(response_key(response_id))
        ref = self._pair_ref(models) if b is not None else -1
        if b is None or ref < 0:
            return False
        c = self._words
        seq = c[b + _SEQ] | 1  # (as ``remember``)
        c[b + _SEQ] = seq
        c[b + _PAIR] = ref
        c[b + _SEQ] = seq + 1
        return True

    def entry(self, response_id: str, now: float) -> tuple[str, tuple[str, str] | None, int] | None:
        """``response_id``'s home, its pair of names if it was made through a rewrite, and its finished
        turn's tokens (``remember_tokens``; 0: not yet), in one scan (a follow-up reads its home and its
        turn: ``FleetTurns.get``, prev25); None: not known (never written, expired, displaced, or being
        written this instant)."""
        key = response_key(response_id)
        c = self._words
        now_us = int(now * _US)
        for w in range(self.workers):
            for base in self._sets_of(w, key):
                for b in range(base, base + WAYS * _E, _E):
                    seq = c[b + _SEQ]
                    if seq & 1 or c[b + _KEY] != key:
                        continue
                    exp, ref, tokens = c[b + _EXP], c[b + _PAIR], c[b + _TOK]
                    at = (b + 5) * 8
                    addr = bytes(self._bytes[at : at + ADDR_BYTES]).rstrip(b"\0")
                    if c[b + _SEQ] != seq or exp <= now_us or not addr:
                        continue
                    pair = self._pair_at(w, ref) if ref >= 0 else None
                    return addr.decode("utf-8", "surrogateescape"), pair, tokens
        return None

    def find(self, response_id: str, now: float) -> tuple[str, tuple[str, str] | None] | None:
        """``response_id``'s home and pair of names (``entry``)."""
        got = self.entry(response_id, now)
        return None if got is None else (got[0], got[1])

    def remember_tokens(self, response_id: str, tokens: int) -> bool:
        """The finished turn's tokens of an id this worker remembered (``remember``: at the answer's start;
        these at its end); False: not in this worker's region (displaced, or it did not fit)."""
        b = self._own(response_key(response_id)) if self.worker >= 0 else None
        if b is None or tokens <= 0:
            return False
        c = self._words
        seq = c[b + _SEQ] | 1  # (as ``remember``)
        c[b + _SEQ] = seq
        c[b + _TOK] = tokens
        c[b + _SEQ] = seq + 1
        return True

    def find_tokens(self, response_id: str, now: float) -> int:
        """``response_id``'s finished turn's tokens (``entry``); 0: not known."""
        got = self.entry(response_id, now)
        return 0 if got is None else got[2]

    # -- model pairs ----------------------------------------------------------------------------

    def _pair_base(self, worker: int, slot: int) -> int:
        return worker * self._region + 1 + slot * _P

    def _read_pair(self, worker: int, slot: int) -> tuple[tuple[str, str], int] | None:
        c = self._words
        b = self._pair_base(worker, slot)
        seq = c[b]
        if seq == 0 or seq & 1:
            return None
        at = (b + 1) * 8
        raw = bytes(self._bytes[at : at + 2 * MODEL_BYTES])
        if c[b] != seq:
            return None
        sent, client = raw[:MODEL_BYTES].rstrip(b"\0"), raw[MODEL_BYTES:].rstrip(b"\0")
        names = (sent.decode("utf-8", "surrogateescape"), client.decode("utf-8", "surrogateescape"))
        return names, seq * PAIRS + slot

    def _pair_at(self, worker: int, ref: int) -> tuple[str, str] | None:
        got = self._read_pair(worker, ref % PAIRS)
        return got[0] if got is not None and got[1] == ref else None

    def _pair_ref(self, models: tuple[str, str]) -> int:
        """This worker's reference for ``models`` (written into its next pair if new); -1: too long."""
        ref = self._pairs.get(models)
        if ref is not None:
            return ref
        sent, client = (m.encode("utf-8", "surrogateescape") for m in models)
        if len(sent) > MODEL_BYTES or len(client) > MODEL_BYTES:
            return -1
        c = self._words
        hand_at = self.worker * self._region
        slot = c[hand_at] % PAIRS
        c[hand_at] = slot + 1
        old = self._read_pair(self.worker, slot)
        if old is not None:
            self._pairs.pop(old[0], None)
        b = self._pair_base(self.worker, slot)
        seq = c[b] | 1  # (odd: being written)
        c[b] = seq
        at = (b + 1) * 8
        names = sent.ljust(MODEL_BYTES, b"\0") + client.ljust(MODEL_BYTES, b"\0")
        self._bytes[at : at + 2 * MODEL_BYTES] = names
        c[b] = seq + 1
        ref = (seq + 1) * PAIRS + slot
        self._pairs[models] = ref
        return ref

    # -- the proxy's maps -----------------------------------------------------------------------

    def install(self, proxy: Proxy, clock: Callable[[], float] = time.monotonic) -> None:
        """``proxy.responses`` and ``proxy.response_models`` read and write this table too."""
        proxy.responses = FleetHomes(self, clock)
        proxy.response_models = FleetModels(self, clock)
        proxy.turns = FleetTurns(self, proxy.turns.max_entries, clock)


class FleetHomes(ResponseHomes[str]):
    """``Proxy.responses`` under ``--workers``: this worker's own map, then the fleet's table."""

    __slots__ = ("table",)

    def __init__(self, table: SharedResponses, clock: Callable[[], float]) -> None:
        super().__init__(clock=clock)
        self.table = table

    def remember(self, response_id: str, home: str) -> None:
        super().remember(response_id, home)
        self.table.remember(response_id, home, self.clock())

    def home(self, response_id: str) -> str | None:
        got = super().home(response_id)
        if got is None and (found := self.table.find(response_id, self.clock())) is not None:
            got = found[0]
        return got


class FleetModels(ResponseHomes[tuple[str, str]]):
    """``Proxy.response_models`` under ``--workers``: this worker's own map, then the fleet's table (its
    entries' pairs: ``FleetHomes`` writes the entry first, as the proxy remembers the home first)."""

    __slots__ = ("table",)

    def __init__(self, table: SharedResponses, clock: Callable[[], float]) -> None:
        super().__init__(clock=clock)
        self.table = table

    def remember(self, response_id: str, home: tuple[str, str]) -> None:
        super().remember(response_id, home)
        self.table.remember_models(response_id, home)

    def home(self, response_id: str) -> tuple[str, str] | None:
        got = super().home(response_id)
        if got is None and (found := self.table.find(response_id, self.clock())) is not None:
            got = found[1]
        return got


class FleetTurns(ResponseTurns):
    """``Proxy.turns`` under ``--workers``: this worker's own turns (tokens and prefix chain), then the
    fleet's table for the tokens and the home (a turn another worker finished: the follow-up's estimate
    counts it; its chain stays in that worker, the home pin places the follow-up)."""

    __slots__ = ("table",)

    def __init__(self, table: SharedResponses, max_entries: int, clock: Callable[[], float]) -> None:
        super().__init__(max_entries, clock=clock)
        self.table = table

    def remember(self, response_id: str, turn: Turn) -> None:
        super().remember(response_id, turn)
        if self.max_entries:
            self.table.remember_tokens(response_id, turn.tokens)

    def get(self, response_id: str) -> Turn | None:
        got = super().get(response_id)
        if got is None and self.max_entries:
            # (one scan for the tokens and the home: the proxy pins the follow-up to ``Turn.home`` without
            # asking ``FleetHomes`` to scan the table again; rev-fix24's final read, prev25)
            found = self.table.entry(response_id, self.clock())
            if found is not None and found[2]:
                got = Turn(found[2], _NO_CHAIN, 0, False, "", 0, found[0])
        return got


_NO_CHAIN: array[int] = array("Q")
