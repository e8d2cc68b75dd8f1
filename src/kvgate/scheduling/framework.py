"""The plugin framework: plugin roles, per-request cycle state, and typed parameter parsing.

A profile is filters -> weighted scorers -> picker (the reference's shape). A plugin class takes a role
by subclassing ``Filter``, ``Scorer`` or ``Picker``; it may also be a ``Producer`` (computes data into
the cycle state before any filter runs, e.g. prefix matching) and/or a ``PostPick`` hook (learns from
the decision, e.g. the prefix index records the chosen endpoint). Nothing here knows about HTTP.
"""

from __future__ import annotations

import decimal
import math
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.types import InferenceRequest, Usage

if TYPE_CHECKING:
    from kvgate.datalayer.store import EndpointStore


class ConfigError(ValueError):
    """A configuration problem naming the exact key path: ``.key`` (``plugins[2].parameters.x``,
    ``pools[0].engine``, ``--endpoints``), and the message starts with it.

    The one base of every configuration error (picker config, gateway config, ``kvgate epp`` flags).
    ``ConfigError(key, message)``, or ``ConfigError("key: message")`` (the key read back from it).
    """

    def __init__(self, key_or_message: str, message: str | None = None) -> None:
        if message is None:
            key, sep, _rest = key_or_message.partition(": ")
            self.key = key if sep else ""
            super().__init__(key_or_message)
        else:
            self.key = key_or_message
            super().__init__(f"{key_or_message}: {message}")


# -- what plugins publish for the request-control layer (which names no plugin) -------------------------

EXPECTED_CACHE = "expected-cache"  # cycle.data key: a CacheExpectation
EXPLAIN_EXTRAS = "explain-extras"  # cycle.data key: {name: value} added to a pick's explanation


class CacheExpectation(Protocol):
    """What a prefix plugin expects each endpoint to hold of this request's prompt.

    The Director reads it for the chosen endpoints to charge only the uncached part of the prompt as
    pending prefill (in-flight accounting); without it every dispatch counts the whole prompt.
    """

    def uncached_fraction(self, address: str) -> float:
        """Share of the prompt, in [0, 1], the endpoint at ``address`` will have to prefill."""
        ...


def publish_cache_expectation(cycle: CycleState, expectation: CacheExpectation, *, override: bool) -> None:
    """Offer ``expectation`` for this cycle; ``override=False`` yields to one already published."""
    if override or EXPECTED_CACHE not in cycle.data:
        cycle.data[EXPECTED_CACHE] = expectation


def cache_expectation(cycle: CycleState) -> CacheExpectation | None:
    return cycle.data.get(EXPECTED_CACHE)


def add_explanation(cycle: CycleState, name: str, value: Any) -> None:
    """Put ``value`` under ``name`` in this pick's explanation (call only when ``cycle.explain``)."""
    cycle.data.setdefault(EXPLAIN_EXTRAS, {})[name] = value


class CycleState:
    """What one scheduling cycle shares between plugins (reference: CycleState)."""

    __slots__ = ("data", "explain", "now", "request")

    def __init__(self, request: InferenceRequest, now: float, explain: bool = False) -> None:
        self.request = request
        self.now = now
        self.explain = explain
        self.data: dict[Any, Any] = {}


class PluginHandle:
    """What a plugin may reach outside itself: the clock, the endpoint store, other plugins by name."""

    def __init__(
        self,
        store: EndpointStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        staleness: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        # Every random choice (tie-breaks, random pickers) draws from here, so a seeded run repeats.
        self.rng = rng or random.Random()
        self.clock = clock
        # Scraped metrics older than this are stale for the picker (reference: 2 s).
        self.staleness = staleness
        self.plugins: dict[str, Plugin] = {}

    def plugin(self, name: str) -> Plugin | None:
        return self.plugins.get(name)

    def find(self, kind: type[Plugin]) -> Plugin | None:
        """The first configured plugin of a class, e.g. the prefix scorer a filter consumes."""
        for p in self.plugins.values():
            if isinstance(p, kind):
                return p
        return None

    def fresh(self, ep: Endpoint, now: float) -> bool:
        t = ep.metrics.updated_at
        return t is not None and now - t <= self.staleness

    def fresh_flags(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[bool]:
        """Freshness of each endpoint's metrics, computed once per cycle and shared by the scorers."""
        key = ("fresh", id(endpoints), len(endpoints))
        got = cycle.data.get(key)
        if got is None:
            now, st = cycle.now, self.staleness
            got = [t is not None and now - t <= st for t in [ep.metrics.updated_at for ep in endpoints]]
            cycle.data[key] = got
        return got


# Go's ``time.ParseDuration`` (what the reference's ``metav1.Duration`` fields are read with, and what Go
# writes: 60 s is ``1m0s``): a sign, then one or more number+unit terms (``1h2m3.5s``, ``300ms``, ``.5s``).
# kvgate also takes a bare number as seconds (``2``, ``0.5``), as it always did. Possessive quantifiers: a
# long digit run with no unit is refused in one pass, not by trying every split of it (review rev-d36 F1).
_NUM = r"(?:[0-9]++(?:\.[0-9]*+)?+|\.[0-9]++)"
_UNIT = r"(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h)"
_GO_DURATION = re.compile(rf"([+-]?)(?:((?:{_NUM}\s*+{_UNIT})++)|({_NUM}))")  # (kvgate took ``200 ms`` too)
_TERM = re.compile(rf"({_NUM})\s*+({_UNIT})")
_UNITS = {
    "ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip
_UNIT_NS = {u: round(f * 1e9) for u, f in _UNITS.items()}
# Go's int64 (the reference's integer fields): a larger integer fails its JSON decoding; kvgate refuses it
# naming the key rather than overflow a float later (review qa36a F1).
INT64_MAX = (1 << 63) - 1
# (exact for any term Go reads: 19 digits times a unit of <= 13; a longer number only needs its magnitude)
_DECIMAL = decimal.Context(prec=40, Emax=decimal.MAX_EMAX, traps=[])  # (no trap: a huge term is Infinity)
_PAST_INT64 = decimal.Decimal(INT64_MAX + 1)


def parse_duration(text: str) -> float | None:
    """Seconds from a Go duration string (``1m0s``, ``-1.5h``, ``300ms``; a bare number is seconds);
    None when it is not one, or past Go's int64 nanoseconds (~292 years; review rev-d36 F4). Each term is
    whole nanoseconds, as Go truncates it."""
    m = _GO_DURATION.fullmatch(text.strip())
    if m is None:
        return None
    # (a bare number is never scanned for terms: findall would retry its digit run from every position)
    terms = _TERM.findall(m.group(2)) if m.group(3) is None else [(m.group(3), "s")]
    ns = 0
    for num, unit in terms:
        term = _DECIMAL.multiply(decimal.Decimal(num), _UNIT_NS[unit])
        if term > _PAST_INT64:  # (before int(): a 200,000-digit term never becomes an integer)
            return None
        ns += int(term)
        if ns > INT64_MAX + 1:
            return None
    if m.group(1) == "-":
        return -ns / 1e9
    return None if ns > INT64_MAX else ns / 1e9


def as_finite(v: Any) -> float | None:
    """``v`` as a finite float; None for NaN, infinity and an integer too large for a float (a 400-digit
    YAML integer: ``float()`` of it raises ``OverflowError``, which no caller expects)."""
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _big(v: int) -> str:
    """A huge integer in an error message: its size, not its digits (past 4300 ``repr`` itself raises)."""
    return f"an integer of {v.bit_length()} bits"


def _range(low: float | None, high: float | None) -> str:
    """The bound a number broke, in words: "must be >= 0", not "must be in [0, None]" (review s21-qa)."""
    if high is None:
        return f"must be >= {low}"
    if low is None:
        return f"must be <= {high}"
    return f"must be in [{low}, {high}]"


class Params:
    """Typed, strict reading of a plugin's ``parameters``: wrong types and unknown keys are ConfigErrors."""

    def __init__(self, raw: Mapping[str, Any] | None, path: str) -> None:
        if raw is not None and not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: must be a mapping, got {type(raw).__name__}")
        self.raw = dict(raw or {})
        self.path = path
        self._seen: set[str] = set()
        # What was taken but not as written (a deprecated key converted, a setting kvgate cannot honour):
        # one line each, logged once per config load (``config.picker.validate``).
        self.warnings: list[str] = []

    def _get(self, key: str) -> Any:
        self._seen.add(key)
        return self.raw.get(key)

    def _err(self, key: str, what: str, value: Any) -> ConfigError:
        return ConfigError(f"{self.path}.{key}: {what}, got {value!r}")

    def get_int(self, key: str, default: int, *, min: int | None = None, max: int | None = None) -> int:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._err(key, "must be an integer", v)
        if abs(v) > INT64_MAX:
            raise ConfigError(f"{self.path}.{key}: must fit a 64-bit integer, got {_big(v)}")
        if (min is not None and v < min) or (max is not None and v > max):
            raise self._err(key, _range(min, max), v)
        return v

    def get_float(
        self, key: str, default: float, *, min: float | None = None, max: float | None = None
    ) -> float:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self._err(key, "must be a number", v)
        if as_finite(v) is None:  # NaN passes every range check below; no key means inf
            shown = _big(v) if isinstance(v, int) else repr(v)
            raise ConfigError(f"{self.path}.{key}: must be a finite number, got {shown}")
        if (min is not None and v < min) or (max is not None and v > max):
            raise self._err(key, _range(min, max), v)
        return float(v)

    def get_bool(self, key: str, default: bool) -> bool:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._err(key, "must be true or false", v)
        return v

    def get_str(self, key: str, default: str, *, choices: Sequence[str] | None = None) -> str:
        v = self._get(key)
        if v is None:
            return default
        if not isinstance(v, str) or (choices is not None and v not in choices):
            raise self._err(key, f"must be one of {list(choices)}" if choices else "must be a string", v)
        return v

    def get_list(self, key: str) -> list[Any]:
        v = self._get(key)
        if v is None:
            return []
        if not isinstance(v, list):
            raise self._err(key, "must be a list", v)
        return v

    def get_duration(self, key: str, default: float, *, positive: bool = False) -> float:
        """Seconds, from a number (seconds) or a Go duration string (``200ms``, ``2s``, ``1m0s``,
        ``1h2m3.5s``: ``parse_duration``); with ``positive``, zero is refused too (for a duration
        something is divided by)."""
        v = self._get(key)
        if v is None:
            return default
        got: float | None = None
        if isinstance(v, int | float) and not isinstance(v, bool):
            if isinstance(v, int) and abs(v) > INT64_MAX:
                raise ConfigError(f"{self.path}.{key}: must be a finite duration, got {_big(v)}")
            got = float(v)
        elif isinstance(v, str):
            got = parse_duration(v)
        if got is None or got < 0:
            raise self._err(key, "must be a duration >= 0 like 200ms, 2s or 1m0s", v)
        if not math.isfinite(got):  # (YAML's ``.inf``: no bound at all where the key is one; s23-qa F6)
            raise self._err(key, "must be a finite duration, like 200ms or 2s", v)
        if positive and not got > 0.0:
            raise self._err(key, "must be a duration above 0, like 200ms or 2s", v)
        return got

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def warn(self, key: str, what: str) -> None:
        self.warnings.append(f"{self.path}.{key}: {what}")

    def finish(self) -> None:
        unknown = sorted(set(self.raw) - self._seen)
        if unknown:
            raise ConfigError(f"{self.path}.{unknown[0]}: unknown parameter (known: {sorted(self._seen)})")


class Plugin:
    """Base of all plugins. Subclasses set ``type_name`` and register with ``@register``."""

    type_name: ClassVar[str] = ""

    def __init__(self, name: str, handle: PluginHandle) -> None:
        self.name = name
        self.handle = handle

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> Plugin:
        """Build from config; override to read parameters (then call ``params.finish()``)."""
        params.finish()
        return cls(name, handle)


class DataSource(Protocol):
    """A data-layer feed a plugin needs (e.g. ``datalayer.kvevents.KVEventSources``): the front door
    starts it beside the metrics scraper and stops it on shutdown."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class DataConsumer(Plugin):
    """A plugin that reads a data-layer feed beyond scraped metrics; it says which, the front door runs it."""

    def data_sources(self, store: EndpointStore) -> list[DataSource]:
        raise NotImplementedError


class Producer(Plugin):
    """Runs before any filter of the profile and writes into ``cycle.data`` for its consumers."""

    def prepare(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> None:
        raise NotImplementedError


class PostPick(Plugin):
    """Learns from the decision (reference: PreRequest), e.g. to index the chosen endpoint's prefix."""

    def on_picked(self, cycle: CycleState, endpoint: Endpoint) -> None:
        raise NotImplementedError


class ResponseObserver(Plugin):
    """Learns from how a dispatched request went (the Director's response events), e.g. a latency
    model learning TTFT and TPOT per endpoint. ``now`` is the Director's clock."""

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        raise NotImplementedError

    def on_finished(
        self, request: InferenceRequest, endpoint: Endpoint, output_tokens: int, ok: bool, now: float
    ) -> None:
        raise NotImplementedError

    def on_usage(self, request: InferenceRequest, endpoint: Endpoint, usage: Usage, now: float) -> None:
        """The engine's own account of a request that completed (its OpenAI ``usage``, once, before
        ``on_finished``), e.g. the prompt tokens it found cached (``usage.cached_reported``). Optional:
        the default ignores it."""

    def on_prefilled(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        """The engine ran this request's prefill at ``endpoint``, known only by its 2xx reply (no first
        token it timed, no usage read: ``kvgate epp`` passes a reply it does not hold unread, review
        rev-d34 F2), before ``on_finished``. Optional: the default ignores it."""


class TTFTEstimate(NamedTuple):
    """A predicted time to first token on one endpoint, in seconds from dispatch."""

    mean: float
    std: float  # one standard deviation of the prediction's uncertainty
    samples: int  # first tokens the endpoint's model has learned from (0 = a prior, not a prediction)


class TTFTOracle(Plugin):
    """Predicts this request's TTFT on each endpoint (a latency model, e.g. ``predicted-latency-scorer``).
    Flow control's SLO admission reads it without naming the plugin."""

    def ttft_estimates(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[TTFTEstimate]:
        raise NotImplementedError

    def ttft_floor(self, cycle: CycleState, endpoints: Sequence[Endpoint], z: float = 0.0) -> float:
        """The least TTFT the model predicts for this request on any endpoint it knows, were that
        endpoint idle (its mean plus ``z`` standard deviations): what waiting for the load to fall
        could at best bring it to."""
        raise NotImplementedError

    def samples(self, address: str) -> int:
        """First tokens the model of ``address`` has learned from (0: it knows nothing of it)."""
        return 0


class Filter(Plugin):
    # True when the filter drops only endpoints at a load bound: none left means the pool is busy, a
    # 429 (``PoolBusyError``), not an ineligible pool's 503 (``NoCapacityError``).
    full_when_empty: ClassVar[bool] = False

    def filter(self, cycle: CycleState, endpoints: list[Endpoint]) -> list[Endpoint]:
        raise NotImplementedError


class Scorer(Plugin):
    # True when ``score`` always returns values in [0, 1], so the profile may skip clamping them.
    bounded: ClassVar[bool] = False

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        """One score per endpoint, same order; the profile clamps them to [0, 1]."""
        raise NotImplementedError


class Picker(Plugin):
    def pick(
        self, cycle: CycleState, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        """Best first; more than one = a fallback list."""
        raise NotImplementedError


class ProfileHandler(Plugin):
    """Chooses which profiles run for a request (P/D disaggregation would run two)."""

    def select(self, cycle: CycleState, profiles: Sequence[str]) -> list[str]:
        raise NotImplementedError
