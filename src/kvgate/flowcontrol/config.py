"""The EndpointPickerConfig ``flowControl`` section and its feature gate.

Flow control is off unless ``featureGates`` lists ``flowControl`` (the reference's gate). Then::

    featureGates: [flowControl]
    flowControl:
      maxRequests: 5000           # global queued-request limit (0 = none)
      maxBytes: 1073741824        # global queued-body-bytes limit (0 = none)
      defaultRequestTTL: 30s      # a request queued longer fails (503, as the reference)
      fairnessPolicy: round-robin # global-strict | round-robin | least-attained-service
      orderingPolicy: fcfs        # fcfs | edf | slo-deadline | slo-feasible (kvgate)
      defaultTTFTSLO: 2s          # slo-deadline ordering for requests without an x-slo-ttft-ms header
      preemption: false           # evict the newest sheddable request without a first token
      holdPredictedMisses: false  # hold a sheddable request predicted to miss its SLO (not 429)
      sloAdmission: false         # kvgate: at dispatch, a sheddable request the latency model predicts
                                  # to miss its TTFT SLO waits while it can make it, then 429
      sloAdmissionConfidence: 1   # kvgate: standard deviations added to the model's prediction
      fairShareHeadroom: 0        # kvgate: a flow over its fair share (in flight + queued) dispatches
                                  # only while the pool's saturation stays below 1 - this (0 = off)
      fairShareHeadroomOn: saturation  # kvgate: saturation (every bound of the gate) | pending
                                  # (concurrency-detector's maxPendingRequests bound, and as many
                                  # running slots kept free)
      fairShareTTFTTarget: 0      # kvgate: p90 TTFT goal for the flows at or under their share; with
                                  # it the headroom adapts in [0, fairShareHeadroom] (0 = fixed)
      fairShareTTFTConfidence: 1.645  # kvgate: the target is a bound: a minute's p90 under it with this
                                  # one-sided normal quantile (0: aim at it, one miss in ten)
      fairShareSLOFirst: false    # kvgate: a request the headroom holds back goes through the whole
                                  # gate once its TTFT deadline is near (streamed replies teach it)
      priorityBands:              # per-band overrides; a priority not listed gets the defaults
      - priority: 0
        maxRequests: 1000
        maxBytes: 0
        fairnessPolicy: least-attained-service
        orderingPolicy: slo-deadline

Every error names the exact key (``flowControl.priorityBands[1].maxBytes: must be ...``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvgate.scheduling.framework import ConfigError, Params

FEATURE_GATE = "flowControl"
# Accepted names: the short ones and the reference's plugin type names.
FAIRNESS_POLICIES = {
    "global-strict": "global-strict",
    "global-strict-fairness-policy": "global-strict",
    "round-robin": "round-robin",
    "round-robin-fairness-policy": "round-robin",
    "least-attained-service": "least-attained-service",
    "least-attained-service-fairness-policy": "least-attained-service",
}
ORDERING_POLICIES = {
    "fcfs": "fcfs",
    "fcfs-ordering-policy": "fcfs",
    "edf": "edf",
    "edf-ordering-policy": "edf",
    "slo-deadline": "slo-deadline",
    "slo-deadline-ordering-policy": "slo-deadline",
    "slo-feasible": "slo-feasible",
}
HEADROOM_ON = ("saturation", "pending")
_GLOBAL_KEYS = ("maxRequests", "maxBytes", "defaultRequestTTL", "fairnessPolicy", "orderingPolicy",
                "defaultTTFTSLO", "preemption", "holdPredictedMisses", "sloAdmission",
                "sloAdmissionConfidence", "fairShareHeadroom",
                "fairShareHeadroomOn", "fairShareTTFTTarget", "fairShareTTFTConfidence", "fairShareSLOFirst",
                "priorityBands")  # fmt: skip


@dataclass(slots=True, frozen=True)
class BandConfig:
    priority: int
    max_requests: int = 0  # 0 = no band limit
    max_bytes: int = 0
    fairness: str = "round-robin"
    ordering: str = "fcfs"


@dataclass(slots=True)
class FlowControlConfig:
    max_requests: int = 5000
    max_bytes: int = 1 << 30
    ttl: float = 30.0
    fairness: str = "round-robin"
    ordering: str = "fcfs"
    default_ttft_slo: float = 2.0
    preemption: bool = False
    hold_predicted_misses: bool = False
    # kvgate: judge sheddable requests at dispatch by the latency model (``sloadmission``): hold the
    # ones predicted to miss their TTFT SLO while they can still make it, shed them (429) after.
    slo_admission: bool = False
    slo_admission_confidence: float = 1.0  # z: the prediction judged is mean + z x std
    # kvgate (the reference has no such key): the share of the dispatch gate's capacity kept free for
    # flows at or under their fair share (requests in flight + queued); 0 = off.
    fair_share_headroom: float = 0.0
    # Which bounds the headroom comes off: "saturation" (the detector's whole score) or "pending"
    # (concurrency-detector's maxPendingRequests, and the same number of slots off maxConcurrency).
    fair_share_headroom_on: str = "saturation"
    # kvgate: a p90 TTFT goal (seconds) for the flows at or under their fair share; with it the headroom
    # is not fixed but adapts between 0 and ``fair_share_headroom`` to keep their TTFT there (0 = off).
    fair_share_ttft_target: float = 0.0
    # kvgate: z, the one-sided normal quantile with which a window's p90 stays under that target: the
    # controllers aim at the share of misses p with p + z sqrt(p (1 - p) / n) = 0.1 (``aim_miss``);
    # 0 aims at one miss in ten (the p90 at the target, as before session 11).
    fair_share_ttft_confidence: float = 1.645
    # kvgate: the headroom lets a request it holds back through once its TTFT deadline is near
    # (``FlowController.deadline_due``; any flow's head: ``due_head``); learned from streamed replies only.
    fair_share_slo_first: bool = False
    # kvgate: a request the headroom holds back leaves only while more than F running slots are free,
    # F sized on the measured rates at which the others take free slots and finishes give them back
    # (``FlowController.free_reserve``).
    fair_share_running_reserve: bool = False
    # kvgate: flow control's late pick goes to an endpoint with a free running slot when some have one
    # (concurrency-detector with maxPendingRequests: maxConcurrency is the servers' batch limit).
    free_slot_pick: bool = False
    bands: dict[int, BandConfig] = field(default_factory=dict)

    @property
    def picks_free_slot(self) -> bool:
        """The free-slot pick: its own key, or with the running reserve (measured together)."""
        return self.free_slot_pick or self.fair_share_running_reserve

    def band(self, priority: int) -> BandConfig:
        b = self.bands.get(priority)
        if b is None:
            b = self.bands[priority] = BandConfig(priority, fairness=self.fairness, ordering=self.ordering)
        return b


def enabled(feature_gates: Sequence[str]) -> bool:
    return FEATURE_GATE in feature_gates


def _policy(p: Params, key: str, table: Mapping[str, str], default: str) -> str:
    return table[p.get_str(key, default, choices=list(table))]


def parse_flow_control(raw: Mapping[str, Any] | None, path: str = "flowControl") -> FlowControlConfig:
    p = Params(raw, path)
    cfg = FlowControlConfig(
        max_requests=p.get_int("maxRequests", 5000, min=0),
        max_bytes=p.get_int("maxBytes", 1 << 30, min=0),
        ttl=p.get_duration("defaultRequestTTL", 30.0),
        fairness=_policy(p, "fairnessPolicy", FAIRNESS_POLICIES, "round-robin"),
        ordering=_policy(p, "orderingPolicy", ORDERING_POLICIES, "fcfs"),
        default_ttft_slo=p.get_duration("defaultTTFTSLO", 2.0),
        preemption=p.get_bool("preemption", False),
        hold_predicted_misses=p.get_bool("holdPredictedMisses", False),
        slo_admission=p.get_bool("sloAdmission", False),
        slo_admission_confidence=p.get_float("sloAdmissionConfidence", 1.0, min=0.0, max=10.0),
        fair_share_headroom=p.get_float("fairShareHeadroom", 0.0, min=0.0),
        fair_share_headroom_on=p.get_str("fairShareHeadroomOn", "saturation", choices=list(HEADROOM_ON)),
        fair_share_ttft_target=p.get_duration("fairShareTTFTTarget", 0.0),
        fair_share_ttft_confidence=p.get_float("fairShareTTFTConfidence", 1.645, min=0.0, max=10.0),
        fair_share_slo_first=p.get_bool("fairShareSLOFirst", False),
        fair_share_running_reserve=p.get_bool("fairShareRunningReserve", False),
        free_slot_pick=p.get_bool("freeSlotPick", False),
    )
    if cfg.fair_share_ttft_target and not cfg.fair_share_headroom:
        raise ConfigError(
            f"{path}.fairShareTTFTTarget: needs {path}.fairShareHeadroom > 0 (the most headroom it may "
            f"take), got {p.raw['fairShareTTFTTarget']!r} with no headroom"
        )
    if cfg.fair_share_slo_first and not cfg.fair_share_headroom:
        raise ConfigError(
            f"{path}.fairShareSLOFirst: needs {path}.fairShareHeadroom > 0 (it lets requests through the "
            "headroom), and there is none"
        )
    if cfg.fair_share_running_reserve and not cfg.fair_share_headroom:
        raise ConfigError(
            f"{path}.fairShareRunningReserve: needs {path}.fairShareHeadroom > 0 (it reserves for the "
            "flows the headroom does not hold back, and at most that share of the running slots), and "
            "there is none"
        )
    if cfg.fair_share_headroom >= 1.0:
        raise ConfigError(
            f"{path}.fairShareHeadroom: must be < 1 (a share of the saturation gate), "
            f"got {p.raw['fairShareHeadroom']!r}"
        )
    if cfg.ttl <= 0:
        raise ConfigError(f"{path}.defaultRequestTTL: must be > 0, got {p.raw['defaultRequestTTL']!r}")
    bands = p._get("priorityBands")
    p.finish()
    if bands is None:
        return cfg
    if not isinstance(bands, list):
        raise ConfigError(f"{path}.priorityBands: must be a list, got {type(bands).__name__}")
    for i, raw_band in enumerate(bands):
        bpath = f"{path}.priorityBands[{i}]"
        bp = Params(raw_band, bpath)
        if not isinstance(raw_band, Mapping) or "priority" not in raw_band:
            raise ConfigError(f"{bpath}.priority: required")
        prio = bp.get_int("priority", 0)
        if prio in cfg.bands:
            raise ConfigError(f"{bpath}.priority: band {prio} is listed twice")
        cfg.bands[prio] = BandConfig(
            prio,
            max_requests=bp.get_int("maxRequests", 0, min=0),
            max_bytes=bp.get_int("maxBytes", 0, min=0),
            fairness=_policy(bp, "fairnessPolicy", FAIRNESS_POLICIES, cfg.fairness),
            ordering=_policy(bp, "orderingPolicy", ORDERING_POLICIES, cfg.ordering),
        )
        bp.finish()
    return cfg
