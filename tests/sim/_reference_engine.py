"""The simulator's engine as it was before the speed work (``Engine`` + ``BlockPool``), kept as a slow but
plain oracle: ``test_engine_equivalence.py`` runs seeded random workloads through both and asserts identical
behaviour. Do not optimise this file; it only changes if the engine's behaviour is meant to change.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import xxhash

from kvgate.sim.engine import EngineConfig
from kvgate.sim.kvcache import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEvent,
    lora_int_id,
    xxhash64_block,
    xxhash64_chain,
)
from kvgate.sim.profiles import causal_pairs
from kvgate.sim.types import EngineStats, SimRequest, StepResult

KVEventSink = Callable[[list[KVEvent]], None]
_M64 = (1 << 64) - 1


@dataclass(slots=True)
class RefBlockPool:
    """The pre-optimisation pool: an ``OrderedDict`` free queue over every block."""

    num_blocks: int
    block_size: int
    enable_caching: bool = True
    emit_events: bool = False
    ref: list[int] = field(init=False)
    block_hash: list[int | None] = field(init=False)
    cached: dict[int, int] = field(init=False, default_factory=dict)  # hash -> block id
    free: OrderedDict[int, None] = field(init=False)  # eviction order: oldest first
    events: list[KVEvent] = field(init=False, default_factory=list)
    evictions: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.ref = [0] * self.num_blocks
        self.block_hash = [None] * self.num_blocks
        self.free = OrderedDict.fromkeys(range(self.num_blocks))

    @property
    def num_free(self) -> int:
        """Blocks with no user (cached or not): what an allocation can take."""
        return len(self.free)

    @property
    def usage(self) -> float:
        """vLLM's ``kv_cache_usage_perc``: blocks in use by requests / all blocks."""
        return 1.0 - len(self.free) / self.num_blocks if self.num_blocks else 0.0

    def lookup(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        """The longest run of cached blocks matching ``hashes[:max_blocks]`` from the start."""
        hit: list[int] = []
        if not self.enable_caching:
            return hit
        cached = self.cached
        for i in range(min(max_blocks, len(hashes))):
            bid = cached.get(hashes[i])
            if bid is None:
                break
            hit.append(bid)
        return hit

    def num_reviving(self, block_ids: Sequence[int]) -> int:
        """How many of these (hit) blocks are free now, i.e. would leave the free queue when touched."""
        ref = self.ref
        return sum(1 for b in block_ids if ref[b] == 0)

    def touch(self, block_ids: Sequence[int]) -> None:
        ref, free = self.ref, self.free
        for b in block_ids:
            if ref[b] == 0:
                del free[b]
            ref[b] += 1

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks from the head of the free queue (caller checked ``num_free``), evicting cached
        ones."""
        out: list[int] = []
        free, ref, block_hash = self.free, self.ref, self.block_hash
        removed: list[int] = []
        for _ in range(n):
            b, _ = free.popitem(last=False)
            h = block_hash[b]
            if h is not None:
                block_hash[b] = None
                if self.cached.get(h) == b:
                    del self.cached[h]
                removed.append(h)
            ref[b] = 1
            out.append(b)
        if removed:
            self.evictions += len(removed)
            if self.emit_events:
                self.events.append(BlockRemoved(removed, "GPU"))
        return out

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        """Drop one reference from each block; blocks reaching zero join the free queue's tail, the request's
        last block first so that its tail is evicted before its (more shareable) head."""
        ref, free = self.ref, self.free
        for b in reversed(block_ids):
            ref[b] -= 1
            if ref[b] == 0:
                free[b] = None

    def cache_blocks(
        self,
        block_ids: Sequence[int],
        hashes: Sequence[int],
        start: int,
        end: int,
        tokens: Callable[[int, int], list[int]],
        lora: str | None,
    ) -> None:
        """Register full blocks ``start..end-1`` of a request (``block_ids[i]`` holds tokens of block ``i``,
        hash ``hashes[i]``). A block whose hash is already cached elsewhere stays an uncached duplicate.
        Emits one ``BlockStored`` per run of newly registered blocks, as vLLM batches them."""
        if not self.enable_caching:
            return
        cached, block_hash, bs = self.cached, self.block_hash, self.block_size
        run_start = -1
        for i in range(start, end):
            b, h = block_ids[i], hashes[i]
            new = block_hash[b] is None and h not in cached
            if new:
                block_hash[b] = h
                cached[h] = b
                if run_start < 0:
                    run_start = i
            if self.emit_events and run_start >= 0 and (not new or i == end - 1):
                last = i + 1 if new else i
                self.events.append(
                    BlockStored(
                        block_hashes=list(hashes[run_start:last]),
                        parent_block_hash=hashes[run_start - 1] if run_start > 0 else None,
                        token_ids=tokens(run_start * bs, last * bs),
                        block_size=bs,
                        lora_id=lora_int_id(lora),
                        medium="GPU",
                        lora_name=lora,
                    )
                )
                run_start = -1
            elif not new:
                run_start = -1

    def reset(self) -> bool:
        """Forget every cached hash (vLLM's ``reset_prefix_cache``); refused while any block is in use."""
        if len(self.free) != self.num_blocks:
            return False
        self.cached.clear()
        self.block_hash = [None] * self.num_blocks
        if self.emit_events:
            self.events.append(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KVEvent]:
        ev, self.events = self.events, []
        return ev


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


class RefEngine:
    def __init__(self, config: EngineConfig | None = None, kv_event_sink: KVEventSink | None = None) -> None:
        self.config = cfg = config or EngineConfig()
        self.profile = cfg.step_profile
        self._model = self.profile.model
        self._sink = kv_event_sink
        self.pool = RefBlockPool(
            cfg.num_gpu_blocks,
            cfg.block_size,
            cfg.enable_prefix_caching,
            emit_events=kv_event_sink is not None,
        )
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
        self._waiting.append(s)
        _inc(self._waiting_loras, s.lora)

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
        cfg = self.config
        bs = cfg.block_size
        pool = self.pool
        budget = cfg.max_num_batched_tokens
        running = self._running
        result = StepResult(duration=0.0)
        emitted = result.tokens
        finished = result.finished
        firsts: list[SimRequest] = []  # first tokens: their time is the step's end, known after costing
        vocab = cfg.vocab_size

        # 1. Running requests, oldest first; make room by preempting the newest (victims come from the
        # unscheduled tail, so what is already in the batch stays). Cost terms accumulate on the way, and a
        # request whose tokens are now all computed samples its next token (it is visible at the step's end).
        caching = cfg.enable_prefix_caching
        tokens = pf_tokens = pf_pairs = dsum = dmax = ndec = 0
        batch_loras: dict[str, None] = {}  # ordered, so LRU updates are deterministic
        i = 0
        while i < len(running) and budget > 0:
            s = running[i]
            out = s.out
            nc = s.num_computed
            total = s.plen + len(out)
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
                if s.state != _RUNNING:
                    break
                s.blocks += pool.allocate(need)
                s.slots = len(s.blocks) * bs
            if caching and end >= s.next_full:
                self._cache_full_blocks(s, end)
            budget -= n
            i += 1
            tokens += n
            if n == 1 and out:  # a decode: reads nc + 1 tokens of KV
                dsum += end
                if end > dmax:
                    dmax = end
                ndec += 1
            else:
                pf_tokens += n
                pf_pairs += causal_pairs(nc, n)
            if s.lora:
                batch_loras[s.lora] = None
            s.num_computed = end
            if end < total:
                continue  # a prefill chunk that is not the last
            req = s.req
            # A cheap deterministic mix of (request, position): the same request id gives the same tokens.
            tok = ((((s.seed ^ (len(out) * 0x9E3779B97F4A7C15)) * 0xBF58476D1CE4E5B9) & _M64) >> 29) % vocab
            out.append(tok)
            emitted.append((req, tok))
            if req.first_token_time is None:
                firsts.append(req)
            if len(out) >= s.max_out:
                finished.append(req)

        # 2. New requests, FCFS, unless this step had to preempt (as vLLM). They all start a prefill.
        if self._waiting and not result.num_preempted:
            admitted: list[tuple[_Seq, int]] = []
            self._admit(now, budget, admitted, result)
            for s, n in admitted:
                tokens += n
                pf_tokens += n
                pf_pairs += causal_pairs(s.num_computed, n)
                if s.lora:
                    batch_loras[s.lora] = None
                s.num_computed += n
                if s.num_computed == s.plen + len(s.out):
                    self._sample(s, emitted, firsts, finished)

        # 3. The step's duration: the step-time model over what was scheduled, plus adapter loads.
        if tokens:
            duration = self._model.step_s(tokens, pf_tokens, pf_pairs, ndec, dsum, dmax)
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
        self._flush_events()
        return result

    def _sample(
        self,
        s: _Seq,
        emitted: list[tuple[SimRequest, int]],
        firsts: list[SimRequest],
        finished: list[SimRequest],
    ) -> None:
        """Step 1's sampling, for requests admitted in this step whose prefill completed."""
        out, req = s.out, s.req
        tok = ((((s.seed ^ (len(out) * 0x9E3779B97F4A7C15)) * 0xBF58476D1CE4E5B9) & _M64) >> 29) % (
            self.config.vocab_size
        )
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
        if hasher is xxhash64_block:  # the default: hash all new blocks in one pass
            hs += xxhash64_chain(parent, s.tokens(have * bs, nblocks * bs), bs, s.lora)
            return
        for i in range(have, nblocks):
            parent = hasher(parent, s.tokens(i * bs, (i + 1) * bs), s.lora)
            hs.append(parent)

    def _cache_full_blocks(self, s: _Seq, computed: int) -> None:
        """Register the blocks that ``computed`` tokens fill (vLLM caches them when they are scheduled)."""
        if not self.config.enable_prefix_caching:
            return
        bs = self.config.block_size
        full = computed // bs
        if full <= s.n_cached_blocks:
            return
        self._ensure_hashes(s, full)
        self.pool.cache_blocks(s.blocks, s.hashes, s.n_cached_blocks, full, s.tokens, s.lora)
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
