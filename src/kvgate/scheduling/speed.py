"""Per-endpoint speed learned from the responses the picker sees (fleets of unequal replicas).

What a streamed response shows is its decode pace: the seconds from its first token to its last over its
output tokens, i.e. the engine's step time while it ran. That is not the replica's speed by itself: a
step's time grows with the batch it carries, roughly ``step = c x (B + B0)`` for a decode-bound engine
(``c`` the cost of one sequence slot, what differs between GPUs; ``B0`` the batch at which reading the
weights costs as much as reading the sequences' KV, tens of sequences for an 8B model at a few thousand
tokens of context). A fast replica given a large batch therefore shows a *slower* pace per sequence than
a slow replica capped at a small one (in the fleet simulator's hetero scenario under overload: H200s at
~900 sequences, 95 ms per token; A100s at 256, 79 ms), and a raw pace would send work to the slow ones.

So each sample is the pace divided by ``B + B0`` (``B`` = sequences decoding on that endpoint, averaged
over the response's first and last token), which reads ``c``: seconds per token-slot, comparable across
replicas whatever their load. The estimate is a robust running mean of its logarithm: it starts at the
median of the first ``min_samples`` samples, then each sample moves it by ``alpha`` of its distance, and a
sample further than ``clip`` x the running mean absolute deviation counts only as that far (Huber-style),
so one stalled response cannot swing it. An endpoint's estimate is published (``InFlight.pace``) only
after ``min_samples`` samples; until then it has none and the cost scorer treats every candidate as
equally fast (a prior of 1.0 for the ratio). Memory: a few floats per endpoint (``min_samples`` while
warming up), at most ``max_endpoints`` endpoints (least recently updated forgotten). Time is passed in
by the caller (the Director's clock); nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from kvgate.datalayer.endpoint import Endpoint

# Responses shorter than this say little about decode speed.
MIN_TOKENS = 8
# A non-streamed response reports its first token together with its last: a span this short per token
# (10,000 tokens/s for one sequence) is no decode at all, and would make the replica look infinitely fast.
MIN_S_PER_TOKEN = 1e-4
# The batch at which a decode step's fixed cost (reading the weights) equals its per-sequence cost
# (reading KV): 16 GB of Llama-3-8B weights / (1.3k tokens x 128 KiB of KV per token) ~ 94; 64 keeps it
# within a few percent across the context lengths and models tried (the ratio between two replicas moves
# by (B1 + B0') (B2 + B0) / ((B1 + B0) (B2 + B0')) when B0 is off: 6% for 900 vs 252 sequences, 94 vs 64).
BATCH_KNEE = 64.0


@dataclass(slots=True)
class _State:
    n: int = 0
    log_cost: float = 0.0  # running estimate of log(seconds per token-slot)
    spread: float = 0.0  # running mean absolute deviation of the log samples
    warm: list[float] | None = None  # the first samples, until there are enough for a median


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    k = len(s) // 2
    return s[k] if len(s) % 2 else (s[k - 1] + s[k]) / 2


class SpeedEstimator:
    """Learns each endpoint's seconds per token-slot (lower = faster) and publishes it as
    ``endpoint.inflight.pace`` once ``min_samples`` responses have been seen there."""

    def __init__(
        self,
        *,
        alpha: float = 0.05,
        min_samples: int = 8,
        clip: float = 3.0,
        min_spread: float = 0.05,
        batch_knee: float = BATCH_KNEE,
        max_endpoints: int = 4096,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.min_samples = max(1, min_samples)
        self.clip = clip
        self.min_spread = min_spread
        self.batch_knee = batch_knee
        self.max_endpoints = max_endpoints
        self._states: OrderedDict[str, _State] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def observe(self, endpoint: Endpoint, seconds: float, tokens: int, batch: float) -> bool:
        """Fold one response in: ``seconds`` from its first token to its last, ``tokens`` output tokens,
        ``batch`` the sequences decoding on the endpoint meanwhile (the response's own included).
        Returns whether the sample was used."""
        if tokens < MIN_TOKENS:
            return False
        per_token = seconds / (tokens - 1)
        if per_token < MIN_S_PER_TOKEN:
            return False
        x = math.log(per_token / (max(1.0, batch) + self.batch_knee))
        st = self._states.get(endpoint.address)
        if st is None:
            st = self._states[endpoint.address] = _State()
            if len(self._states) > self.max_endpoints:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(endpoint.address)
        st.n += 1
        if st.n <= self.min_samples:
            # Start from the median of the first samples: one outlier among them does not bias the start.
            if st.warm is None:
                st.warm = []
            st.warm.append(x)
            if st.n < self.min_samples:
                return True
            st.log_cost = _median(st.warm)
            st.spread = _median([abs(v - st.log_cost) for v in st.warm])
            st.warm = None
        else:
            r = x - st.log_cost
            # Huber: a sample far from the estimate pulls it only as far as ``clip`` spreads.
            lim = self.clip * max(st.spread, self.min_spread)
            clipped = lim if r > lim else -lim if r < -lim else r
            a = self.alpha
            st.log_cost += a * clipped
            st.spread += a * (abs(clipped) - st.spread)
        endpoint.inflight.pace = math.exp(st.log_cost)
        return True

    def cost(self, address: str) -> float | None:
        """The learned seconds per token-slot, or None until ``min_samples`` responses (tests, explain)."""
        st = self._states.get(address)
        if st is None or st.n < self.min_samples:
            return None
        return math.exp(st.log_cost)

    def forget(self, address: str) -> None:
        self._states.pop(address, None)
