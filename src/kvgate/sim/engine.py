"""One simulated model-server replica, after vLLM V1's scheduler.

Each ``step(now)`` builds a batch the way vLLM V1 does: running requests first (a decode takes one token,
an unfinished prefill its next chunk), preempting the newest running request (recompute) while KV blocks
run out; then, if nothing was preempted, new requests from the FCFS waiting queue while the token budget
(``max_num_batched_tokens``) and ``max_num_seqs`` allow, each first matched against the prefix cache. The
step's duration comes from the profile's step-time model (:mod:`kvgate.sim.profiles`) plus LoRA loads; its
tokens exist at ``now + duration``. The engine never sleeps and never reads a clock.

Costs: a step is O(scheduled requests + blocks it allocates); admission is O(prompt blocks) (hashes are
computed once per block and kept); per-request state is a few ints and lists, no per-token objects beyond
the contract's ``(request, token)`` pairs. The per-request loop in ``step`` is the simulator's hot path:
output tokens are computed ahead in chunks (numpy, same formula), block allocation and prefix-cache
registration have one-block fast paths, and the step-time model's ``linear`` term is memoised.
``tests/sim/test_engine_equivalence.py`` holds the result to the plain pre-optimisation engine.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

from kvgate.sim.kvcache import BlockHasher, BlockPool, KVEvent, xxhash64_block, xxhash64_chain
from kvgate.sim.profiles import StepProfile, causal_pairs, get_profile
from kvgate.sim.types import EngineStats, SimRequest, StepResult

KVEventSink = Callable[[list[KVEvent]], None]
_M64 = (1 << 64) - 1
_K1, _K2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9
_NK1, _NK2, _N29 = np.uint64(_K1), np.uint64(_K2), np.uint64(29)
_TOKEN_CHUNK = 64  # output tokens computed ahead per running request (bounds the extra memory)


def output_token(seed: int, pos: int, vocab: int) -> int:
    """The token a request emits at output position ``pos``: a cheap deterministic mix of (request seed,
    position), so the same request id gives the same tokens on every run, replica and driver."""
    return ((((seed ^ (pos * _K1)) * _K2) & _M64) >> 29) % vocab


def output_tokens(seed: int, start: int, count: int, vocab: int) -> list[int]:
    """``output_token`` for positions ``start .. start+count-1``; in numpy (uint64 arithmetic wraps mod
    2**64 exactly like the masked Python ints) when the chunk is long enough to pay for the call."""
    if count < 32:
        return [output_token(seed, p, vocab) for p in range(start, start + count)]
    pos = np.arange(start, start + count, dtype=np.uint64)
    toks: list[int] = (((((pos * _NK1) ^ np.uint64(seed)) * _NK2) >> _N29) % np.uint64(vocab)).tolist()
    return toks


@dataclass(slots=True)
class EngineConfig:
    """Engine limits. Zero means "the profile's default" (vLLM's defaults for that GPU, KV from memory)."""

    profile: StepProfile | str = "llama3-8b-h100"
    max_num_seqs: int = 0
    max_num_batched_tokens: int = 0
    num_gpu_blocks: int = 0
    block_size: int = 0
    max_model_len: int = 0
    max_loras: int = 1  # vLLM's default
    # Moving one adapter's weights onto the GPU: a rank-16 8B adapter is tens of MB, a few ms over PCIe
    # from vLLM's CPU cache; 10 ms leaves room for the slower first load.
    lora_load_time_s: float = 0.010
    enable_prefix_caching: bool = True
    # vLLM's --scheduling-policy: "fcfs" (default) or "priority": the waiting queue in (request priority,
    # arrival) order, lower first. (vLLM also picks the lowest-priority running request as the victim
    # when KV blocks run out; not modelled: the newest is still preempted.)
    scheduling_policy: str = "fcfs"
    vocab_size: int = 0
    block_hasher: BlockHasher = xxhash64_block

    def __post_init__(self) -> None:
        p = get_profile(self.profile) if isinstance(self.profile, str) else self.profile
        self.profile = p
        self.max_num_seqs = self.max_num_seqs or p.max_num_seqs
        self.max_num_batched_tokens = self.max_num_batched_tokens or p.max_num_batched_tokens
        self.block_size = self.block_size or p.block_size
        if not self.num_gpu_blocks:
            # The profile's KV bytes, re-cut into blocks of this size.
            self.num_gpu_blocks = p.num_gpu_blocks * p.block_size // self.block_size
        self.vocab_size = self.vocab_size or p.vocab_size
        capacity = self.num_gpu_blocks * self.block_size
        if not self.max_model_len:
            self.max_model_len = min(p.max_model_len, capacity)
        if self.max_model_len > capacity:
            # vLLM refuses to start when one max-length sequence does not fit the KV cache.
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the KV cache ({capacity} tokens)")
        if self.scheduling_policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling_policy must be fcfs or priority, got {self.scheduling_policy!r}")
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.num_gpu_blocks, self.max_loras) < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens, num_gpu_blocks, max_loras must be >= 1")

    @property
    def step_profile(self) -> StepProfile:
        assert isinstance(self.profile, StepProfile)
        return self.profile


_WAITING, _RUNNING, _DONE = 0, 1, 2


class _Seq:
    """The engine's per-request state beside the caller's ``SimRequest``."""

    __slots__ = (
        "blocks",
        "hashes",
        "lora",
        "max_out",
        "n_cached_blocks",
        "next_full",
        "num_computed",
        "out",
        "plen",
        "prompt",
        "req",
        "seed",
        "slots",
        "state",
        "tbase",
        "tbuf",
    )

    def __init__(self, req: SimRequest, max_model_len: int) -> None:
        self.req = req
        self.prompt = req.prompt_token_ids
        self.out = req.output_token_ids
        self.plen = len(req.prompt_token_ids)
        # Output length at which it finishes: max_tokens, or where the sequence reaches max_model_len.
        self.max_out = min(req.max_tokens, max_model_len - self.plen)
        self.lora = req.lora or None
        self.num_computed = 0
        self.blocks: list[int] = []
        self.hashes: list[int] = []  # hashes of full blocks, computed once, kept across preemption
        self.n_cached_blocks = 0  # leading blocks already registered in the prefix cache
        self.next_full = 0  # token count that fills the next block to register: (n_cached_blocks+1) * bs
        self.slots = 0  # tokens the allocated blocks hold: len(blocks) * bs
        self.seed = xxhash.xxh64_intdigest(req.request_id.encode())
        self.state = _WAITING
        self.tbuf: list[int] = []  # output tokens for positions tbase.., computed ahead in chunks
        self.tbase = 0

    @property
    def num_tokens(self) -> int:
        return self.plen + len(self.out)

    def tokens(self, start: int, end: int) -> list[int]:
        p = self.prompt
        n = len(p)
        if end <= n:
            return p[start:end]
        if start >= n:
            return self.out[start - n : end - n]
        return p[start:] + self.out[: end - n]


class Engine:
    def __init__(self, config: EngineConfig | None = None, kv_event_sink: KVEventSink | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        self.profile = cfg.step_profile
        self._model = self.profile.model
        self._sink = kv_event_sink
        self.pool = BlockPool(
            cfg.num_gpu_blocks,
            cfg.block_size,
            cfg.enable_prefix_caching,
            emit_events=kv_event_sink is not None,
        )
        # Config values the hot loop reads, as plain attributes.
        self._bs = cfg.block_size
        self._budget = cfg.max_num_batched_tokens
        self._caching = cfg.enable_prefix_caching
        self._vocab = cfg.vocab_size
        self._linear: dict[int, float] = {}  # tokens -> linear(tokens); keys <= max_num_batched_tokens
        # The default hash's token packing for one block (None: a custom hasher, no inline fast path).
        default_hash = cfg.block_hasher is xxhash64_block
        self._pack_block = struct.Struct(f"<{cfg.block_size}q").pack if default_hash else None
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._by_id: dict[str, _Seq] = {}
        self._loaded_loras: OrderedDict[str, None] = OrderedDict()  # LRU of adapters on the GPU
        self._running_loras: dict[str, int] = {}  # adapter -> running requests
        self._waiting_loras: dict[str, int] = {}
        # Counters (vLLM's, in tokens for the prefix cache).
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.num_preemptions = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.requests_finished = 0
        self.lora_loads = 0

    # ---------------------------------------------------------------------------------------------------
    # The contract

    def add_request(self, req: SimRequest, now: float) -> None:
        cfg = self.config
        if req.request_id in self._by_id:
            raise ValueError(f"duplicate request id {req.request_id!r}")
        n = len(req.prompt_token_ids)
        if n < 1:
            raise ValueError("empty prompt")
        if n >= cfg.max_model_len:
            raise ValueError(f"prompt of {n} tokens does not fit max_model_len {cfg.max_model_len}")
        if req.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if not req.arrival_time:
            req.arrival_time = now
        s = _Seq(req, cfg.max_model_len)
        self._by_id[req.request_id] = s
        self._enqueue(s)
        _inc(self._waiting_loras, s.lora)

    def _enqueue(self, s: _Seq) -> None:
        """Into the waiting queue: at the back (fcfs), or after every request that goes before it by
        (priority, arrival) (priority; O(waiting), and the waiting queue is short when a gateway gates)."""
        waiting = self._waiting
        if self.config.scheduling_policy != "priority" or not waiting:
            waiting.append(s)
            return
        key = (s.req.priority, s.req.arrival_time)
        i = len(waiting)
        while i > 0 and (waiting[i - 1].req.priority, waiting[i - 1].req.arrival_time) > key:
            i -= 1
        waiting.insert(i, s)

    def abort(self, request_id: str) -> bool:
        s = self._by_id.pop(request_id, None)
        if s is None:
            return False
        if s.state == _RUNNING:
            self._running.remove(s)
            self.pool.free_blocks(s.blocks)
            s.blocks = []
            s.slots = 0
            _dec(self._running_loras, s.lora)
        else:
            self._waiting.remove(s)
            _dec(self._waiting_loras, s.lora)
        s.state = _DONE
        s.req.finish_reason = "abort"
        self._flush_events()
        return True

    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def step(self, now: float) -> StepResult:
        bs = self._bs
        pool = self.pool
        budget = self._budget
        running = self._running
        result = StepResult(0.0)
        emitted = result.tokens
        emit = emitted.append
        finished = result.finished
        firsts: list[SimRequest] = []  # first tokens: their time is the step's end, known after costing

        # 1. Running requests, oldest first; make room by preempting the newest (victims come from the
        # unscheduled tail, so what is already in the batch stays). Cost terms accumulate on the way, and a
        # request whose tokens are now all computed samples its next token (it is visible at the step's end).
        # This loop is the simulator's hot path (one pass per running request per step): locals only,
        # block and prefix-cache work only at block boundaries, tokens precomputed per request in chunks.
        caching = self._caching
        pf_tokens = pf_pairs = dsum = dmax = ndec = 0
        batch_loras: dict[str, None] = {}  # ordered, so LRU updates are deterministic
        i = 0
        nrun = len(running)
        while i < nrun and budget > 0:
            s = running[i]
            out = s.out
            nout = len(out)
            nc = s.num_computed
            total = s.plen + nout
            n = total - nc
            if n > budget:
                n = budget
            end = nc + n
            if end > s.slots:
                need = -(-end // bs) - len(s.blocks)
                while need > pool.num_free:
                    victim = running.pop()
                    self._preempt(victim)
                    result.num_preempted += 1
                    if victim is s:
                        break
                nrun = len(running)
                if s.state != _RUNNING:
                    break
                if need == 1:
                    s.blocks.append(pool.allocate_one())
                else:
                    s.blocks += pool.allocate(need)
                s.slots = len(s.blocks) * bs
            if caching and end >= s.next_full:
                self._cache_full_blocks(s, end)
            budget -= n
            i += 1
            if n == 1 and nout:  # a decode: reads nc + 1 tokens of KV
                dsum += end
                if end > dmax:
                    dmax = end
                ndec += 1
            else:
                pf_tokens += n
                pf_pairs += n * nc + n * (n + 1) // 2  # causal_pairs(nc, n)
            lora = s.lora
            if lora:
                batch_loras[lora] = None
            s.num_computed = end
            if end < total:
                continue  # a prefill chunk that is not the last
            req = s.req
            k = nout - s.tbase
            buf = s.tbuf
            tok = buf[k] if k < len(buf) else self._refill_tokens(s, nout)
            out.append(tok)
            emit((req, tok))
            if not nout and req.first_token_time is None:  # outputs are kept across preemption
                firsts.append(req)
            if nout + 1 >= s.max_out:
                finished.append(req)

        # 2. New requests, FCFS, unless this step had to preempt (as vLLM). They all start a prefill.
        if self._waiting and not result.num_preempted:
            admitted: list[tuple[_Seq, int]] = []
            self._admit(now, budget, admitted, result)
            for s, n in admitted:
                pf_tokens += n
                pf_pairs += causal_pairs(s.num_computed, n)
                if s.lora:
                    batch_loras[s.lora] = None
                s.num_computed += n
                if s.num_computed == s.plen + len(s.out):
                    self._sample(s, emitted, firsts, finished)

        # 3. The step's duration: the step-time model over what was scheduled, plus adapter loads.
        if pf_tokens or ndec:
            duration = self._step_s(pf_tokens + ndec, pf_tokens, pf_pairs, ndec, dsum, dmax)
        elif self.has_work():
            # Nothing fit (cannot happen with validated limits); still let time pass so drivers progress.
            duration = self._model.overhead_ms / 1000.0
        else:
            duration = 0.0
        if batch_loras:
            duration += self._load_loras(batch_loras)
        result.duration = duration
        result.num_prefill_tokens = pf_tokens
        result.num_decode_tokens = ndec

        # 4. Stamp the step's end on first tokens and finished requests.
        t_end = now + duration
        for req in firsts:
            req.first_token_time = t_end
            self.prompt_tokens_total += len(req.prompt_token_ids)
        self.generation_tokens_total += len(emitted)
        if finished:
            for req in finished:
                req.finish_reason = "length"
                req.finish_time = t_end
            self._finish(finished)
        if self._sink is not None and pool.events:
            self._sink(pool.drain_events())
        return result

    def _step_s(self, tokens: int, pf_tokens: int, pf_pairs: int, ndec: int, dsum: int, dmax: int) -> float:
        """``StepModel.step_s`` with ``linear`` memoised (at most one entry per batch size): the same
        arithmetic in the same order, so the same floats."""
        lin = self._linear.get(tokens)
        if lin is None:
            lin = self._linear[tokens] = self._model.linear(tokens)
        m = self._model
        gpu = lin + m.prefill_ms_per_pair * pf_pairs + m.prefill_ms_per_token * pf_tokens
        if ndec > 0:
            bw = m.decode_ms_per_kv_token * dsum + m.decode_ms_per_seq * ndec
            lat = m.decode_seq_ms_base + m.decode_seq_ms_per_token * dmax
            gpu += bw if bw > lat else lat
        return (m.overhead_ms + gpu) / 1000.0

    def _refill_tokens(self, s: _Seq, pos: int) -> int:
        """Compute ``s``'s next chunk of output tokens (from position ``pos``); return the first."""
        count = min(s.max_out - pos, _TOKEN_CHUNK)
        s.tbuf = buf = output_tokens(s.seed, pos, max(1, count), self._vocab)
        s.tbase = pos
        return buf[0]

    def _sample(
        self,
        s: _Seq,
        emitted: list[tuple[SimRequest, int]],
        firsts: list[SimRequest],
        finished: list[SimRequest],
    ) -> None:
        """Step 1's sampling, for requests admitted in this step whose prefill completed."""
        out, req = s.out, s.req
        nout = len(out)
        k = nout - s.tbase
        tok = s.tbuf[k] if k < len(s.tbuf) else self._refill_tokens(s, nout)
        out.append(tok)
        emitted.append((req, tok))
        if req.first_token_time is None:
            firsts.append(req)
        if len(out) >= s.max_out:
            finished.append(req)

    def stats(self) -> EngineStats:
        cfg = self.config
        return EngineStats(
            num_running=len(self._running),
            num_waiting=len(self._waiting),
            kv_cache_usage=self.pool.usage,
            block_size=cfg.block_size,
            num_gpu_blocks=cfg.num_gpu_blocks,
            max_loras=cfg.max_loras,
            running_loras=sorted(self._running_loras),
            waiting_loras=sorted(self._waiting_loras),
            prefix_cache_queries=self.prefix_cache_queries,
            prefix_cache_hits=self.prefix_cache_hits,
            num_preemptions=self.num_preemptions,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            requests_finished=self.requests_finished,
        )

    # ---------------------------------------------------------------------------------------------------
    # Extras

    def reset_prefix_cache(self) -> bool:
        """vLLM's ``/reset_prefix_cache``: drop every cached block; refused while requests hold blocks."""
        ok = self.pool.reset()
        if ok:
            for s in self._by_id.values():
                s.n_cached_blocks = 0
                s.next_full = self.config.block_size
        self._flush_events()
        return ok

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    # ---------------------------------------------------------------------------------------------------
    # Internals

    def _admit(self, now: float, budget: int, scheduled: list[tuple[_Seq, int]], result: StepResult) -> int:
        cfg = self.config
        bs = cfg.block_size
        pool = self.pool
        running = self._running
        waiting = self._waiting
        caching = cfg.enable_prefix_caching
        skipped: list[_Seq] = []
        while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
            s = waiting[0]
            lora = s.lora
            if lora and lora not in self._running_loras and len(self._running_loras) >= cfg.max_loras:
                skipped.append(waiting.popleft())  # no adapter slot: later requests may still fit
                continue
            total = s.num_tokens
            hit: list[int] = []
            if caching:
                # At least the last token is computed, so it has logits to sample from.
                max_hit = (total - 1) // bs
                self._ensure_hashes(s, max_hit)
                hit = pool.lookup(s.hashes, max_hit)
            n_cached = len(hit) * bs
            n = min(total - n_cached, budget)
            need = -(-(n_cached + n) // bs) - len(hit)
            if need + pool.num_reviving(hit) > pool.num_free:
                break  # FCFS: no skipping ahead on memory
            pool.touch(hit)
            s.blocks = hit + pool.allocate(need) if need else hit
            s.slots = len(s.blocks) * bs
            s.n_cached_blocks = len(hit)
            s.next_full = (len(hit) + 1) * bs
            s.num_computed = n_cached
            waiting.popleft()
            _dec(self._waiting_loras, lora)
            _inc(self._running_loras, lora)
            s.state = _RUNNING
            running.append(s)
            req = s.req
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
                req.num_cached_tokens = n_cached
                self.prefix_cache_queries += total
                self.prefix_cache_hits += n_cached
                result.started.append(req)
            self._cache_full_blocks(s, n_cached + n)
            scheduled.append((s, n))
            budget -= n
        if skipped:
            waiting.extendleft(reversed(skipped))
        return budget

    def _preempt(self, s: _Seq) -> None:
        """Recompute preemption: free its blocks (cached ones stay findable) and requeue it at the front."""
        self.pool.free_blocks(s.blocks)
        s.blocks = []
        s.slots = 0
        s.num_computed = 0
        s.n_cached_blocks = 0
        s.next_full = self.config.block_size
        s.state = _WAITING
        s.req.num_preemptions += 1
        self.num_preemptions += 1
        if self.config.scheduling_policy == "priority":
            self._enqueue(s)  # (as vLLM's priority queue: by key, not at the front)
        else:
            self._waiting.appendleft(s)
        _dec(self._running_loras, s.lora)
        _inc(self._waiting_loras, s.lora)

    def _finish(self, finished: Sequence[SimRequest]) -> None:
        by_id = self._by_id
        for req in finished:
            s = by_id.pop(req.request_id)
            s.state = _DONE
            self.pool.free_blocks(s.blocks)
            s.blocks = []
            s.slots = 0
            _dec(self._running_loras, s.lora)
        self._running = [s for s in self._running if s.state == _RUNNING]
        self.requests_finished += len(finished)

    def _ensure_hashes(self, s: _Seq, nblocks: int) -> None:
        hs = s.hashes
        have = len(hs)
        if have >= nblocks:
            return
        bs = self.config.block_size
        hasher = self.config.block_hasher
        parent = hs[-1] if hs else None
        if hasher is xxhash64_block and nblocks - have > 1:  # the default: hash all new blocks in one pass
            hs += xxhash64_chain(parent, s.tokens(have * bs, nblocks * bs), bs, s.lora)
            return
        for i in range(have, nblocks):
            parent = hasher(parent, s.tokens(i * bs, (i + 1) * bs), s.lora)
            hs.append(parent)

    def _cache_full_blocks(self, s: _Seq, computed: int) -> None:
        """Register the blocks that ``computed`` tokens fill (vLLM caches them when they are scheduled)."""
        if not self._caching:
            return
        bs = self._bs
        full = computed // bs
        start = s.n_cached_blocks
        if full <= start:
            return
        hs = s.hashes
        if len(hs) == start and full == start + 1 and self._pack_block is not None:
            # A decode filling one block (every block_size tokens of every request): xxhash64_block inline.
            lo = start * bs - s.plen
            toks = s.out[lo : lo + bs] if lo >= 0 else s.tokens(start * bs, full * bs)
            data = (hs[-1] if hs else 0).to_bytes(8, "little") + self._pack_block(*toks)
            hs.append(xxhash.xxh64_intdigest(data + s.lora.encode() if s.lora else data))
        else:
            self._ensure_hashes(s, full)
        self.pool.cache_blocks(s.blocks, hs, start, full, s.tokens, s.lora)
        s.n_cached_blocks = full
        s.next_full = (full + 1) * bs

    def _load_loras(self, batch: dict[str, None]) -> float:
        """Make the batch's adapters resident (LRU of ``max_loras`` slots); each new one costs a load."""
        loaded = self._loaded_loras
        cost = 0.0
        for name in batch:
            if name in loaded:
                loaded.move_to_end(name)
                continue
            if len(loaded) >= self.config.max_loras:
                victim = next((k for k in loaded if k not in batch), None)
                if victim is not None:
                    del loaded[victim]
            loaded[name] = None
            self.lora_loads += 1
            cost += self.config.lora_load_time_s
        return cost

    def _flush_events(self) -> None:
        if self._sink is not None and self.pool.events:
            self._sink(self.pool.drain_events())


def _inc(counts: dict[str, int], key: str | None) -> None:
    if key:
        counts[key] = counts.get(key, 0) + 1


def _dec(counts: dict[str, int], key: str | None) -> None:
    if key:
        c = counts[key] - 1
        if c:
            counts[key] = c
        else:
            del counts[key]
