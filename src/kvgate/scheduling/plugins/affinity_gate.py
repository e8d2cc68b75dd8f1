"""llm-d-router's rule for ``prefix-cache-affinity-filter``, taken when a config sets its parameters.

The reference keeps the "sticky" endpoints (prefix match >= ``affinityThreshold``) unless its load gate
breaks stickiness: the best sticky endpoint's TTFT exceeds the best non-sticky one's by more than
``maxTTFTPenaltyMs``. With ``ttftSource: prefillThroughput`` (its default) an endpoint's TTFT is its
uncached prompt tokens in flight over the pool's ``peakPrefillThroughput`` (tokens/s), in ms; with
``latencyPredictor`` it is the latency model's prediction. ``maxTokensInFlightPenalty`` is the same gate
in tokens (the rule's earlier form, still in llm-d's guides). ``explorationProbability`` skips the gate.
The throughput may come from the reference's calibration record (``prefillCalibrationFile``, applied only
when its fingerprint matches ``prefillCalibrationFingerprint`` and the key itself is not written).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvgate.scheduling.framework import ConfigError, Params

# The reference's parameters (llm-d-router pkg/epp/framework/plugins/scheduling/filter/prefixcacheaffinity)
# that select its rule; kvgate's own rule's keys may not be mixed with them.
REFERENCE_KEYS = (
    "affinityThreshold",
    "explorationProbability",
    "maxTTFTPenaltyMs",
    "ttftSource",
    "peakPrefillThroughput",
    "maxTokensInFlightPenalty",
    "prefillCalibrationFile",
    "prefillCalibrationFingerprint",
    "prefillCalibrationRequired",
    "inFlightLoadProducerName",
    "latencyPredictionInfoProducerName",
)
KVGATE_KEYS = ("threshold", "slack", "queueThreshold", "kvCacheUtilThreshold", "maxInFlight")

PREFILL_THROUGHPUT = "prefillThroughput"
LATENCY_PREDICTOR = "latencyPredictor"
# The reference's defaults (its DefaultConfig): 15928 tokens/s is its calibration for Qwen3-32B on 2x H100.
DEFAULT_THRESHOLD = 0.80
DEFAULT_PENALTY_MS = 18000.0
DEFAULT_PEAK_PREFILL = 15928.0
# The reference's calibration record (calibration.go): schema 1, status OK, >= 10 valid samples.
_CALIBRATION_SCHEMA = 1
_CALIBRATION_MIN_SAMPLES = 10


@dataclass(frozen=True)
class AffinityGate:
    threshold: float = DEFAULT_THRESHOLD
    exploration: float = 0.0
    max_ttft_penalty_ms: float = DEFAULT_PENALTY_MS
    ttft_source: str = PREFILL_THROUGHPUT
    peak_prefill_throughput: float = DEFAULT_PEAK_PREFILL
    max_tokens_penalty: int = 0  # 0: the tokens gate is off (the reference's default)
    predictor_ref: str = ""  # latencyPredictionInfoProducerName: a predicted-latency-scorer

    @property
    def uses_predictor(self) -> bool:
        return self.ttft_source == LATENCY_PREDICTOR and self.max_ttft_penalty_ms > 0

    def sticky(self, ratios: Sequence[float]) -> list[bool]:
        return [r >= self.threshold for r in ratios]

    def ttft_ms(self, inflight_tokens: int) -> float:
        """The reference's throughput estimate: in-flight uncached prompt tokens / peak * 1000."""
        return inflight_tokens / self.peak_prefill_throughput * 1000.0

    def breaks(self, sticky: Sequence[bool], ttft_ms: Sequence[float], tokens: Sequence[int]) -> bool:
        """True when the load gate opens every endpoint: the best sticky endpoint is more than the
        penalty behind the best non-sticky one (in ms, then in tokens)."""
        if all(sticky):
            return False
        for values, limit in ((ttft_ms, self.max_ttft_penalty_ms), (tokens, self.max_tokens_penalty)):
            if limit > 0:
                best_sticky = min(v for v, s in zip(values, sticky, strict=True) if s)
                best_other = min(v for v, s in zip(values, sticky, strict=True) if not s)
                if best_sticky - best_other > limit:
                    return True
        return False


def read_gate(params: Params) -> AffinityGate:
    """The reference's parameters, checked as it checks them (its ``validate``), each error naming the key."""
    mixed = next((k for k in KVGATE_KEYS if params.has(k)), None)
    if mixed is not None:
        ours = next(k for k in REFERENCE_KEYS if params.has(k))
        raise ConfigError(
            f"{params.path}.{mixed}",
            f"kvgate's rule's key, with the reference's {ours!r}: write one rule's keys, not both "
            f"(reference: {', '.join(REFERENCE_KEYS[:6])}; kvgate: {', '.join(KVGATE_KEYS)})",
        )
    source = params.get_str("ttftSource", PREFILL_THROUGHPUT, choices=(PREFILL_THROUGHPUT, LATENCY_PREDICTOR))
    penalty = params.get_float("maxTTFTPenaltyMs", DEFAULT_PENALTY_MS, min=0.0)
    explicit = params.has("peakPrefillThroughput")
    peak = params.get_float("peakPrefillThroughput", DEFAULT_PEAK_PREFILL, min=0.0)
    cal_file = params.get_str("prefillCalibrationFile", "")
    fingerprint = params.get_str("prefillCalibrationFingerprint", "")
    required = params.get_bool("prefillCalibrationRequired", False)
    if source == PREFILL_THROUGHPUT and not explicit and (cal_file or required):
        try:
            peak = _calibrated(cal_file, fingerprint)
        except ValueError as e:
            key = "prefillCalibrationFile" if cal_file else "prefillCalibrationRequired"
            if required:
                raise ConfigError(f"{params.path}.{key}", str(e)) from None
            params.warn(key, f"calibration not applied, peakPrefillThroughput stays {peak:g}: {e}")
    if source == PREFILL_THROUGHPUT and penalty > 0 and peak == 0:
        raise ConfigError(
            f"{params.path}.peakPrefillThroughput", "must be > 0 when ttftSource is prefillThroughput, got 0"
        )
    # (kvgate keeps each endpoint's in-flight load itself, Endpoint.inflight: the name is only checked to
    # name an inflight-load-producer, config.picker._load_producer_refs)
    params.get_str("inFlightLoadProducerName", "")
    return AffinityGate(
        threshold=params.get_float("affinityThreshold", DEFAULT_THRESHOLD, min=0.0, max=1.0),
        exploration=params.get_float("explorationProbability", 0.0, min=0.0, max=1.0),
        max_ttft_penalty_ms=penalty,
        ttft_source=source,
        peak_prefill_throughput=peak,
        max_tokens_penalty=params.get_int("maxTokensInFlightPenalty", 0, min=0),
        predictor_ref=params.get_str("latencyPredictionInfoProducerName", ""),
    )


def _calibrated(path: str, fingerprint: str) -> float:
    """The peak prefill throughput of the reference's calibration record, or ValueError saying why not."""
    if not path:
        raise ValueError("prefillCalibrationRequired is set but prefillCalibrationFile is empty")
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"calibration record {path!r} unreadable: {e}") from None
    if not isinstance(rec, dict):
        raise ValueError(f"calibration record {path!r} is not a JSON object")
    if rec.get("schema_version") != _CALIBRATION_SCHEMA:
        raise ValueError(f"schema_version is {rec.get('schema_version')!r}, want {_CALIBRATION_SCHEMA}")
    if rec.get("status") != "OK":
        raise ValueError(f"status is {rec.get('status')!r}, want 'OK'")
    for key in ("peak_prefill_tokens_per_second", "median_ttft_seconds", "chunk_tokens"):
        v = rec.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{key} is not a positive finite number: {v!r}")
    samples = rec.get("valid_samples")
    if not isinstance(samples, int) or samples < _CALIBRATION_MIN_SAMPLES:
        raise ValueError(f"valid_samples is {samples!r}, want at least {_CALIBRATION_MIN_SAMPLES}")
    if not rec.get("fingerprint"):
        raise ValueError("record carries no fingerprint")
    if not fingerprint:
        raise ValueError("no prefillCalibrationFingerprint is configured for this deployment")
    if rec["fingerprint"] != fingerprint:
        raise ValueError(f"record was measured on a different deployment: fingerprint {rec['fingerprint']!r}")
    return float(rec["peak_prefill_tokens_per_second"])
