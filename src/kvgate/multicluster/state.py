"""What a global gateway knows about each cluster: its last aggregate, when it came, EPP health, what it sent.

Times are the injected clock's (monotonic), never the aggregate's wall-clock ``snapshot_time``, except to
notice a new snapshot: ``sent_since_snapshot`` (this gateway's own dispatches the snapshot cannot show yet,
the anti-herding term) resets when the snapshot changes.

TTFT evidence is censored data: answered requests give their TTFT, and requests still waiting for their
first byte give a lower bound, their age. A cluster that swallows requests gets slower in this gateway's
eyes while it does, instead of looking best because it has not answered yet.

An answered request's TTFT describes the queue it met when it was sent, one TTFT ago. So what answers
teach is the policy's error, not the cluster's TTFT now. The policy's model is the cluster's idle TTFT
(its floor, below) times a load factor from the snapshot; each streamed dispatch keeps the load factor
the policy computed for that request (``ClusterRequest.model_load``, passed to ``dispatched``), and its
answer is judged against that factor times the floor when it arrives: the load part is what the answer
corrects, the speed part is the floor's job (judged against a start-up prior over GPU labels, the same
error would be counted twice: in the floor and in the bias; before any floor, no error is learnt). The
error, observed / predicted clamped to [1/4, 8], goes into an EWMA of its logarithm (a ratio is
right-skewed: one stalled answer must not weigh like ten good ones) started from 0 (no error); the EWMA
fades towards 0 with its age, in what it stores as well as in what it reads, so an answer after a quiet
spell updates the faded value, not the old peak. ``model_bias`` (at least 1) scales the model at the
current snapshot. A cluster that drained since its last slow answers is then judged by its snapshot
(times the error the model made there), not by a queue that is gone; one whose snapshot understates its
queue (a restarted cluster's slot prior, cold caches) is scaled up by how wrong the model was there.

The cluster's speed as measured, whatever its GPU labels say, is its TTFT floor: the 10th percentile of the
TTFTs observed there, tracked by a multiplicative stochastic-quantile step (each answer above the floor
raises it by a small factor, each one below lowers it by a 9 x larger one: scale-free, and one outlier
moves it by a bounded step). It is the TTFT of a prefix hit (a miss's cost is added to it): once an answer
has reported a hit there (its cached tokens, else the Bloom summary's sure hit), the hits' own tracker,
else every answer's. Unlike the recent EWMA it does not fade: left alone, a cluster's load
changes (its snapshot shows that) but its speed does not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from kvgate.datalayer.aggregate import MAX_MODELS, PoolAggregate
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.openai.labels import ReportedNames, kept_per_source

FAILURE_BACKOFF_S = 1.0  # a cluster that failed a request (connect error, 5xx) sits out this long, doubling
FAILURE_BACKOFF_MAX_S = 8.0
# A failing streak (attempts failing in a row, unbroken by a success) is logged once (WARNING) at this many
# failures, as ``kvgate serve`` logs an endpoint's ejection at its ``ejectAfterFailures`` (3), or at once
# when the cluster is found hung, and its end once (INFO); a new streak's WARNING at most once a
# ``FAILING_SAID_GAP_S`` per cluster (a cluster that flaps between 429s and answers says no line a request).
FAILING_SAID_AFTER = 3
FAILING_SAID_GAP_S = 60.0

log = logging.getLogger("kvgate.multicluster")

# The floor tracker: log(floor) moves up FLOOR_STEP x FLOOR_QUANTILE for an answer above it, down
# FLOOR_STEP x (1 - FLOOR_QUANTILE) for one below, so it settles where FLOOR_QUANTILE of answers are below.
FLOOR_QUANTILE = 0.1
FLOOR_STEP = 0.2
# The model's error: observed / predicted clamped to this range (a stalled answer, a lucky cache hit),
# its log averaged with weight BIAS_ALPHA per answer, fading with time constant BIAS_TAU_S.
BIAS_RANGE = (0.25, 8.0)
BIAS_ALPHA = 0.1
BIAS_TAU_S = 5.0
# The cost of a prefix cache miss there: the median TTFT of the answers that missed less that of those
# that hit, each answer first divided by the queue factor the policy predicted at its dispatch
# (``DispatchNote.queue``): sure misses are mostly first sends, answered on a quiet cluster, sure hits
# their repeats under load, so raw TTFTs would mix the queue into the difference (review s7-mc #1); at
# the idle scale the difference is the prefill of the uncached part. A hit: at least HIT_SHARE of its
# leading blocks in the cluster's Bloom summary at dispatch (a summary lists only the hot blocks, so it
# misses many hits but seldom names a miss one). A miss: the first request this gateway sends there
# with that prefix (its home key) that reached the cluster (a send that failed before any answer does
# not count as sent), and not in the summary either. Other answers teach nothing of it. Tracked as the
# floor is, at the median.
HIT_SHARE = 0.5
# With the answer's own reported cached tokens (``usage.prompt_tokens_details.cached_tokens``, given to
# ``finished``): a hit at least HIT_SHARE of its prompt cached, a miss at most MISS_SHARE; the prediction
# above is the fallback when an answer reports none (several gateways, a restart: this gateway's "first
# send" is not the cluster's, and an approximate summary's hit can miss in the engine).
MISS_SHARE = 0.2
CLASS_START = 8  # the first answers of a class set its median as their geometric mean (few sure misses)
SENT_KEYS_MAX = 16384  # the prefixes remembered as sent there (LRU): 8-byte keys, bounded memory
# Slow start for a cluster that comes back (its snapshot stale or empty, then fresh again): at most
# ``ramp_window`` requests waiting for their first byte there, starting at one per ready endpoint (or
# what is still waiting there); each answer at most
# RAMP_OK x the model's prediction for it opens one more (doubling per round trip, as TCP's slow start),
# a slower one halves it; a non-streamed answer that ends (no TTFT to judge it by) opens one more. It
# ends once the window reaches the cluster's slots, or after RAMP_MAX_S.
RAMP_OK = 1.5
RAMP_MAX_S = 20.0


@dataclass(slots=True)
class EppBackoff:
    """Endpoint mode's memory of a stalled EPP (qa27 Q7): one that did not answer within ``epp_timeout_s``
    (a stopped process, a wedged loop: it takes the stream and answers nothing) is not asked again for a
    while, as a failed cluster is not (``FAILURE_BACKOFF_S``, doubling to ``FAILURE_BACKOFF_MAX_S``), so the
    requests meanwhile go by Parent mode at once instead of each waiting the deadline first. Once the
    window has passed, one request asks it again (the others keep to Parent mode until it is answered or
    stalls): answered, the back-off ends; stalled again, it doubles. An EPP health check that fails after
    the stall and then answers SERVING (the EPP back) ends it too; one that answered SERVING all along says
    nothing of a hung ext_proc stream."""

    stalls: int = 0  # stalls that set or doubled the back-off
    backoff_s: float = 0.0  # 0: not backing off
    down_until: float = 0.0
    since: float = 0.0  # when the current window began: a stall of a stream asked before it adds nothing
    trying: bool = False  # a request is asking it after the window (the one trial)
    seen_down: bool = False  # a health check failed since the stall

    def may_ask(self, now: float) -> bool:
        """Whether a request may ask the EPP now: not backing off, or the window over and no other request
        asking (this one then is the trial: ``trial_over`` after it)."""
        if not self.backoff_s:
            return True
        if now < self.down_until or self.trying:
            return False
        self.trying = True
        return True

    def trial_over(self) -> None:
        self.trying = False

    def stalled(self, now: float, asked_at: float, healthy: bool | None) -> bool:
        """A stream asked at ``asked_at`` found the EPP stalled; True when this set or doubled the back-off
        (the requests already waiting on it when it hung stall one after another: one event, counted once)."""
        if self.backoff_s and asked_at < self.since:
            return False
        self.stalls += 1
        self.backoff_s = min(FAILURE_BACKOFF_MAX_S, self.backoff_s * 2 or FAILURE_BACKOFF_S)
        self.since = now
        self.down_until = now + self.backoff_s
        self.trying = False
        self.seen_down = self.seen_down or healthy is False
        return True

    def answered(self) -> bool:
        """The EPP answered a pick; True when that ended a back-off."""
        was = bool(self.backoff_s)
        self.backoff_s = self.down_until = 0.0
        self.trying = self.seen_down = False
        return was

    def health(self, healthy: bool) -> bool:
        """An EPP health check's verdict; True when it ended the back-off (failed since the stall, now
        SERVING)."""
        if not self.backoff_s:
            return False
        if not healthy:
            self.seen_down = True
            return False
        return self.seen_down and self.answered()


@dataclass(frozen=True, slots=True)
class DispatchNote:
    """What the policy expected of a request at one cluster, kept with its dispatch there: ``load``, its
    predicted TTFT over the cluster's floor (None: no model yet); ``cached``, the share of its leading
    blocks in the cluster's Bloom summary (None: no summary or no blocks); ``key``, its prefix's home key
    (None: no full block); ``queue``, the load factor alone, without the predicted prefill of its
    uncached part and without ``wait`` (None: ``load`` stands for it); ``wait``, the predicted wait for
    a slot past full, in seconds (added, not multiplied). Its answer less ``wait`` (at least 0), over
    ``queue``, is its TTFT at idle, what the miss cost is learnt from."""

    load: float | None = None
    cached: float | None = None
    key: bytes | None = None
    queue: float | None = None
    wait: float | None = None


@dataclass(slots=True)
class ClusterState:
    spec: ClusterSpec
    aggregate: PoolAggregate | None = None
    fetched_at: float | None = None  # clock time of the last successful aggregate fetch
    fetch_error: str | None = None
    healthy: bool | None = None  # EPP gRPC health: None = not checked / no health address
    sent_since_snapshot: int = 0
    inflight: int = 0
    sent_total: int = 0
    failures: int = 0
    down_until: float = 0.0
    backoff_s: float = 0.0
    # This failing streak's WARNING was logged (``failed``), and when the last one was (clock time).
    said_failing: bool = False
    said_failing_at: float = -math.inf
    # Logs no streak (a fleet simulator's virtual gateway, rev-e34-F4: its virtual clock's losses are the
    # run's subject, not a cluster an operator must look at).
    quiet: bool = False
    # Found hung (``GlobalRouter``: a request got no response head while the aggregate, fresh when it was
    # sent, went stale with its fetches failing): the ``fetched_at`` of then. Not ``available`` until an
    # aggregate is fetched again (or a request succeeds there).
    hung_at: float | None = None
    # The log of the model's error there (observed TTFT / predicted at dispatch), an EWMA fading towards
    # 0 (no error) with its age since ``bias_at``; see ``model_bias``.
    log_bias: float = 0.0
    bias_at: float = 0.0
    # ~10th percentile of the observed TTFTs of prefix hits: the cluster's speed, what a miss's cost is
    # added to. The hits' floor once an answer has reported a hit there (``hit_floor_s``), else every
    # answer's (``any_floor_s``): a cold start's first answers are all misses (1.2 s live against 0.27 s
    # for a hit), and a cluster with few answers took tens of seconds to walk its floor down from them.
    any_floor_s: float | None = None
    hit_floor_s: float | None = None
    # Streamed requests sent there still waiting for their first byte: token -> dispatch time (insertion
    # order is dispatch order, so the first is the oldest). Bounded by what is in flight.
    waiting: dict[int, float] = field(default_factory=dict)
    # EWMA of a streamed request's first byte to its end, as this gateway saw them (RTT cancels out): how
    # long a request holds its slot there after its prefill, so the queue past full drains at slots / (this
    # + the floor) requests per second. None until a streamed request has ended there.
    decode_s: float | None = None
    _first_at: dict[int, float] = field(default_factory=dict)  # token -> its first byte's time
    _load: dict[int, float] = field(default_factory=dict)  # waiting token -> the model's load at dispatch
    # Median TTFT of the answers expected to hit / to miss the prefix cache there (``miss_cost_s``).
    hit_ttft_s: float | None = None
    miss_ttft_s: float | None = None
    hit_n: int = 0  # answers counted in each
    miss_n: int = 0
    _hit: dict[int, bool] = field(default_factory=dict)  # waiting token -> a hit (True) or a miss (False)
    _scale: dict[int, tuple[float, float]] = field(default_factory=dict)  # token -> (queue factor, wait s)
    # Tokens whose caller reports the answer's cached tokens at ``finished`` (``dispatched(usage=True)``),
    # and their TTFTs at idle scale with the predicted class, kept from the first byte to the end.
    _usage: dict[int, None] = field(default_factory=dict)
    _sample: dict[int, tuple[float, bool | None, float]] = field(default_factory=dict)  # + the TTFT
    # Prefix home keys this gateway has sent there and the cluster answered, oldest first (bounded): a
    # first send is a sure miss.
    sent_keys: dict[bytes, None] = field(default_factory=dict)
    # Keys of requests in flight there, not yet answered: token -> key, and key -> how many (a second
    # concurrent send of a new prefix is no sure miss). Recorded as sent at the answer (``_answered``).
    _keys: dict[int, bytes] = field(default_factory=dict)
    _pending: dict[bytes, int] = field(default_factory=dict)
    _plain: dict[int, None] = field(default_factory=dict)  # non-streamed tokens in flight
    # Slow start (``start_ramp``): requests in their prefill allowed there; None = no ramp.
    ramp_window: float | None = None
    ramp_until: float = 0.0
    gone: bool = False  # seen usable, then not (stale, empty, NOT_SERVING): its return is ramped
    # Endpoint mode: its EPP found stalled, not asked for a while (``EppBackoff``).
    epp: EppBackoff = field(default_factory=EppBackoff)
    seen_usable: bool = False
    _token: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def fresh(self, now: float, ttl_s: float) -> bool:
        """A usable snapshot: fetched within the TTL and its own metrics no older than the TTL."""
        a = self.aggregate
        if a is None or self.fetched_at is None or now - self.fetched_at > ttl_s:
            return False
        return a.metrics_age_s is None or a.metrics_age_s <= ttl_s

    def respec(self, spec: ClusterSpec) -> None:
        """A reload's spec for this cluster (its state kept). One that removes ``aggregate:`` drops what
        the last fetch left: the snapshot, its time and the hung mark, which waited for a fetch nothing
        makes any more (closing note s22: hung for good; a later hang was marked against the old fetch).
        One that changes or removes ``health:`` drops the last round's verdict, the old address's (review
        s24-rev-fix24 F2: it stood on the new address, or on a cluster nothing checks, until the next round;
        an unhealthy one kept a fixed cluster out of the policies for up to ``interval_s``). One that changes
        ``epp:`` drops the old EPP's stall back-off."""
        if spec.aggregate is None and self.spec.aggregate is not None:
            self.aggregate = self.fetched_at = self.fetch_error = self.hung_at = None
            self.sent_since_snapshot = 0
        if spec.health != self.spec.health:
            self.healthy = None
        if spec.epp != self.spec.epp:  # (another EPP: what the old one did says nothing of it)
            self.epp = EppBackoff()
        self.spec = spec

    def set_health(self, healthy: bool) -> bool:
        """The EPP health check's verdict; True when it ended the EPP's stall back-off (``EppBackoff``)."""
        self.healthy = healthy
        return self.epp.health(healthy)

    def set_aggregate(self, agg: PoolAggregate, now: float) -> None:
        if self.aggregate is None or agg.snapshot_time != self.aggregate.snapshot_time:
            self.sent_since_snapshot = 0
        self.aggregate = agg
        self.fetched_at = now
        self.fetch_error = None

    def dispatched(
        self,
        now: float | None = None,
        load: float | None = None,
        note: DispatchNote | None = None,
        usage: bool = False,
    ) -> int:
        """Count a request sent there. With ``now`` (a streamed request), it also waits for its first byte
        until ``observe_ttft`` or ``finished`` gets the returned token (a non-streamed one's token is for
        ``finished`` alone). ``load``: the
        policy's model for this request there, its predicted TTFT over the cluster's floor, which its
        answer is judged against; None: no model there, the answer is no evidence of its error. ``note``:
        the policy's expectations (its ``load`` stands for the argument): a sure hit or miss there counts
        its answer towards the hit or the miss median (``miss_cost_s``). ``usage``: the caller may give the
        answer's reported cached share to ``finished``, which then classifies the answer (the prediction
        only where it reports none)."""
        hit: bool | None = None
        if note is not None:
            load = note.load if load is None else load
            hit = self._classify(note)
        self.sent_since_snapshot += 1
        self.sent_total += 1
        self.inflight += 1
        self._token += 1
        token = self._token
        if note is not None and note.key is not None and len(self._keys) < SENT_KEYS_MAX:
            self._keys[token] = note.key
            self._pending[note.key] = self._pending.get(note.key, 0) + 1
        if now is None:
            if len(self._plain) < SENT_KEYS_MAX:
                self._plain[token] = None
            return token
        self.waiting[token] = now
        if load is not None and load > 0.0:
            self._load[token] = load
        if hit is not None:
            self._hit[token] = hit
        if usage and note is not None and note.key is not None and len(self._usage) < SENT_KEYS_MAX:
            self._usage[token] = None
        if hit is not None or token in self._usage:
            scale = note.queue if note is not None and note.queue is not None else load
            if scale is not None and scale > 0.0:
                wait = note.wait if note is not None and note.queue is not None and note.wait else 0.0
                self._scale[token] = (scale, wait)
        return token

    def _classify(self, note: DispatchNote) -> bool | None:
        """A sure hit (in the summary), a sure miss (this prefix's first send here that the cluster
        answers, none in flight there either, not in the summary), or None."""
        key = note.key
        first = key is not None and key not in self.sent_keys and key not in self._pending
        if note.cached is None:
            return None
        if note.cached >= HIT_SHARE:
            return True
        return False if first else None

    def _answered(self, token: int) -> None:
        """The cluster answered the request: its prefix is now sent there (a later send is no first)."""
        key = self._keys.pop(token, None)
        if key is None:
            return
        self._unpend(key)
        self.sent_keys.pop(key, None)
        self.sent_keys[key] = None
        if len(self.sent_keys) > SENT_KEYS_MAX:
            self.sent_keys.pop(next(iter(self.sent_keys)))

    def _unpend(self, key: bytes) -> None:
        n = self._pending.get(key, 0) - 1
        if n > 0:
            self._pending[key] = n
        else:
            self._pending.pop(key, None)

    def _dropped(self, token: int) -> None:
        """The request ended without an answer from the cluster: its prefix is not sent there."""
        key = self._keys.pop(token, None)
        if key is not None:
            self._unpend(key)

    def observe_ttft(self, seconds: float, now: float, token: int = 0) -> None:
        if self.waiting.pop(token, None) is not None:
            self._first_at[token] = now
        self._answered(token)
        f = self.ttft_floor_s
        load = self._load.pop(token, None)
        hit = self._hit.pop(token, None)
        # At the idle scale (over the queue factor predicted at dispatch; none before any floor: as is).
        factor, wait = self._scale.pop(token, (1.0, 0.0))
        idle = max(0.0, seconds - wait) / factor
        if token in self._usage:  # classified at its end, by its reported cached tokens if any
            self._sample[token] = (idle, hit, seconds)
        elif hit is not None:
            self._count_class(hit, idle)
            if hit:
                self._hit_floor_step(seconds)
        if load is not None and f is not None and f > 0.0 and seconds > 0.0:
            # Judged against the load factor x the floor now: the speed error is the floor's, not the
            # bias's (before any floor, the first answer sets it: no error to learn from yet).
            lo, hi = BIAS_RANGE
            r = min(hi, max(lo, seconds / (load * f)))
            old = self.faded_log_bias(now)
            self.log_bias = old + BIAS_ALPHA * (math.log(r) - old)
            self.bias_at = now
            if self.ramp_window is not None:
                self._ramp_step(r <= RAMP_OK, now)
        self.any_floor_s = _quantile_step(self.any_floor_s, seconds, FLOOR_QUANTILE)

    @property
    def ttft_floor_s(self) -> float | None:
        """The floor a miss's cost is added to: the hits' once one is reported there, else every answer's."""
        return self.any_floor_s if self.hit_floor_s is None else self.hit_floor_s

    def _hit_floor_step(self, seconds: float) -> None:
        """A prefix hit's TTFT: the floor's own evidence. A first hit faster than every answer's floor
        replaces it; a slower one (live, queued behind the warm-up's misses: up to 3.4x the floor, review
        s8-mc B1) starts the hits' tracker at that floor, never above it."""
        if seconds > 0.0:
            q = self.hit_floor_s
            if q is None and self.ttft_floor_s and self.ttft_floor_s <= seconds:
                q = self.ttft_floor_s
            self.hit_floor_s = _quantile_step(q, seconds, FLOOR_QUANTILE)

    def _count_class(self, hit: bool, idle: float) -> None:
        if idle <= 0.0:
            return
        if hit:
            self.hit_n += 1
            self.hit_ttft_s = _median_step(self.hit_ttft_s, idle, self.hit_n)
        else:
            self.miss_n += 1
            self.miss_ttft_s = _median_step(self.miss_ttft_s, idle, self.miss_n)

    @property
    def miss_cost_s(self) -> float | None:
        """What a prefix cache miss costs there, in seconds at idle: the median TTFT of the answers
        expected to miss less that of those expected to hit, each over its dispatch's queue factor (at
        least 0; the policy floors it, ``KvgatePolicy.miss_cost``); None until both are measured."""
        if self.hit_ttft_s is None or self.miss_ttft_s is None:
            return None
        return max(0.0, self.miss_ttft_s - self.hit_ttft_s)

    def start_ramp(self, now: float) -> None:
        """The cluster is back: slow start, one request in its prefill per ready endpoint at first, or
        what this gateway still has waiting there if more (a snapshot that only lapsed, its requests
        still being answered, is not throttled below what it is serving). Its hits' floor is learnt again
        (every answer's floor until a hit, ``_hit_floor_step``): it may come back on other hardware, and
        where no answer reports a hit the old one would hold for good (review s8-mc R2)."""
        if self.hit_floor_s is not None and self.any_floor_s is not None:
            self.hit_floor_s = None
        a = self.aggregate
        ready = a.ready_endpoints if a is not None else 1
        self.ramp_window = float(max(1, ready, self.prefilling()))
        self.ramp_until = now + RAMP_MAX_S

    def ramped_full(self, now: float, slots: float) -> bool:
        """In slow start with its window in use: not to be given more while another cluster can take it.
        Ends the ramp once its window reaches ``slots`` (the requests it holds when full) or its time."""
        w = self.ramp_window
        if w is None:
            return False
        if w >= slots or now >= self.ramp_until:
            self.ramp_window = None
            return False
        return self.prefilling() >= w

    def prefilling(self) -> int:
        """This gateway's requests there not yet past their prefill: streamed ones waiting for their first
        byte, and the untracked ones (not streamed) in flight. A slow start guards the prefill queue; a
        request decoding holds a slot, not the queue (the live fleet decodes for seconds)."""
        untracked = self.inflight - len(self.waiting) - len(self._first_at)
        return len(self.waiting) + max(0, untracked)

    def _ramp_step(self, ok: bool, now: float) -> None:
        w = self.ramp_window
        assert w is not None
        self.ramp_window = w + 1.0 if ok else max(1.0, float(int(w / 2.0)))

    def answered_without_ttft(self, token: int) -> None:
        """The request got an answer that says nothing of the cluster's TTFT (an error reply): no longer
        waiting, and no evidence either way."""
        self.waiting.pop(token, None)
        self._load.pop(token, None)
        self._hit.pop(token, None)
        self._scale.pop(token, None)
        self._sample.pop(token, None)
        self._usage.pop(token, None)
        self._plain.pop(token, None)  # (the hub's eviction of a request whose end it will not see)
        self._dropped(token)  # (an error reply prefilled nothing: not sent there)

    def oldest_wait(self, now: float) -> float:
        """Age of the oldest request still waiting for its first byte (0 when none): its TTFT is at least
        this."""
        for t in self.waiting.values():
            return max(0.0, now - t)
        return 0.0

    def faded_log_bias(self, now: float) -> float:
        """``log_bias`` faded towards 0 with its age (time constant ``BIAS_TAU_S``)."""
        if self.log_bias == 0.0:
            return 0.0
        return self.log_bias * math.exp(-max(0.0, now - self.bias_at) / BIAS_TAU_S)

    def model_bias(self, now: float) -> float:
        """How far the answers here exceeded the policy's model (observed / predicted at dispatch, a
        clamped geometric EWMA), at least 1, fading with its age (a cluster left alone is tried again
        at the model's word). 1 before any answer with a prediction."""
        return math.exp(max(0.0, self.faded_log_bias(now)))

    def observed_ttft(self, now: float) -> float:
        """The TTFT evidence of the present, a lower bound: the cluster's floor (its speed: a slow cluster
        stays slow), the oldest unanswered request's age (a censored observation: a cluster that swallows
        requests looks slower the longer it does), and the floor times the prefill queue a new request
        would join: this gateway's requests there still waiting for their first byte, spread over the
        snapshot's ready endpoints (each prefills one after the other, about a floor each). Past answers
        are not in it: they describe the queue they met (``model_bias``)."""
        floor = self.ttft_floor_s or 0.0
        if floor and self.waiting:
            a = self.aggregate
            ready = a.ready_endpoints if a is not None and a.ready_endpoints > 0 else 1
            floor *= 1.0 + len(self.waiting) / ready
        return max(floor, self.oldest_wait(now))

    def finished(
        self, token: int = 0, now: float | None = None, alpha: float = 0.1, cached: float | None = None
    ) -> None:
        """The request ended there. With ``now`` (it was answered; without: given up, never reached the
        cluster, or failed), a streamed request that had its first byte gives its decode time (first byte
        to end), and a non-streamed one (its token, or 0: untracked) opens a slow start's window by one:
        its answer came, and it holds no prefill there any more. ``cached``: the share of its prompt the
        answer reports cached (``dispatched(usage=True)``): a hit or a miss by that, not the prediction."""
        self.inflight = max(0, self.inflight - 1)
        self._usage.pop(token, None)
        sample = self._sample.pop(token, None)
        if sample is not None:
            idle, predicted, ttft = sample
            hit = predicted
            if cached is not None:
                hit = True if cached >= HIT_SHARE else (False if cached <= MISS_SHARE else None)
            if hit is not None:
                self._count_class(hit, idle)
                if hit:
                    self._hit_floor_step(ttft)
        streamed_unanswered = self.waiting.pop(token, None) is not None
        self._load.pop(token, None)
        self._hit.pop(token, None)
        self._scale.pop(token, None)
        plain = token == 0 or token in self._plain
        self._plain.pop(token, None)
        if now is not None and not streamed_unanswered:
            self._answered(token)
            if plain and self.ramp_window is not None:
                self._ramp_step(True, now)
        else:
            self._dropped(token)
        first = self._first_at.pop(token, None)
        if first is not None and now is not None:
            d = max(0.0, now - first)
            self.decode_s = d if self.decode_s is None else self.decode_s + alpha * (d - self.decode_s)

    def failed(self, now: float, why: str = "") -> None:
        """An attempt failed there (``why``: its outcome, for the streak's log line): backs off."""
        self.failures += 1
        self.backoff_s = min(FAILURE_BACKOFF_MAX_S, self.backoff_s * 2 or FAILURE_BACKOFF_S)
        self.down_until = now + self.backoff_s
        if self.failures >= FAILING_SAID_AFTER or self.hung_at is not None:
            self._say_failing(now, why, self.hung_at is not None)

    def found_hung(self, now: float, why: str) -> None:
        """A probe found it hung after its attempt was charged (the cut's ``failed``, hung not known then):
        the streak's WARNING at once (once a streak, at most once a gap), not charged again (rev-e34-F3:
        a hung cluster is left out, so no 3rd failure came to say it). Not after a success there meanwhile
        (no streak to say: rev-f34 F2)."""
        if self.failures == 0:
            return
        self._say_failing(now, why, True)

    def _say_failing(self, now: float, why: str, hung: bool) -> None:
        if self.quiet or self.said_failing or now - self.said_failing_at < FAILING_SAID_GAP_S:
            return
        self.said_failing, self.said_failing_at = True, now
        log.warning("cluster %s failing: %d attempts in a row failed%s (last: %s); backing off (up to %gs at "
                    "a time) until one succeeds there (logged once until then)", self.name, self.failures,
                    ", found hung" if hung else "", why or "unknown", FAILURE_BACKOFF_MAX_S)  # fmt: skip

    def succeeded(self) -> None:
        if self.said_failing:
            self.said_failing = False
            log.info("cluster %s answers again (after %d failed attempts in a row)", self.name, self.failures)
        self.hung_at = None
        self.failures = 0
        self.backoff_s = 0.0
        self.down_until = 0.0

    def available(self, now: float) -> bool:
        if self.hung_at is not None and self.hung_at == self.fetched_at:
            return False  # hung, and no aggregate fetched since: it still answers nothing
        return now >= self.down_until


def _median_step(m: float | None, x: float, n: int) -> float:
    """A class median after its ``n``-th answer ``x``: the geometric mean of the first CLASS_START
    answers (a tracker's small steps would take tens of answers to leave its first one, and sure misses
    are few), then the median tracker's steps."""
    if m is None or m <= 0.0 or x <= 0.0:
        return x if x > 0.0 else (m or x)
    if n <= CLASS_START:
        return math.exp(math.log(m) + (math.log(x) - math.log(m)) / n)
    return _quantile_step(m, x, 0.5)


def _quantile_step(q: float | None, x: float, quantile: float) -> float:
    """One step of a multiplicative stochastic-quantile tracker: ``q`` moves up by FLOOR_STEP x
    ``quantile`` (in log) for an ``x`` above it, down by FLOOR_STEP x (1 - ``quantile``) for one below (not
    past ``x``), so it settles where ``quantile`` of the values are below it; the first value sets it."""
    if q is None or q <= 0.0:
        return x
    if x > q:
        return q * math.exp(FLOOR_STEP * quantile)
    if x < q:
        return max(x, q * math.exp(-FLOOR_STEP * (1.0 - quantile)))
    return q


def models_listed(states: Callable[[], Iterable[ClusterState]], clock: Callable[[], float]) -> ReportedNames:
    """The names the clusters' aggregates list (``PoolAggregate.models``: their front doors' config names,
    then what their servers report, base models before adapters), walked at most once per ``REFRESH_S``
    of ``clock``: ``ModelLabels``' ``reported``.

    Each cluster holds at most ``MAX_MODELS`` (64, what one aggregate may list) of the set: its latest
    list, then the names it listed within ``KEEP_S`` but not now, most recently listed first (an adapter
    idle at one scrape keeps its label a while). So a cluster that lists different names on every fetch
    churns only its own share: it never holds more than 64 labels, and its past lists never take another
    cluster's place (before, the names kept were shared by all clusters, the most recently seen first,
    so a churning peer's last few lists took them all). The lists are taken rank by rank (every
    cluster's first name, then every second one, ...), every latest list before any kept name, so one
    cluster's long adapter list cannot push another cluster's first names (its base models) out of the
    cut at ``MAX_REPORTED_NAMES`` (reached only past 4 clusters of 64 names: then a churning cluster's
    latest list counts as any cluster's latest list does)."""

    def walk() -> Iterator[tuple[str, tuple[Iterable[str]]]]:
        for st in states():
            yield st.name, (st.aggregate.models if st.aggregate is not None else (),)

    # (a cluster dropped from the clusters file loses its kept names at once)
    return kept_per_source(walk, clock, cap=MAX_MODELS, keep_gone=False)
