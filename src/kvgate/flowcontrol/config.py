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

The reference's spellings load as they are (review s26-qa F2): a band's policies by plugin reference
(``fairnessPolicyRef`` / ``orderingPolicyRef``: the name of a policy plugin declared under ``plugins:``, or
a policy plugin type itself, e.g. ``round-robin-fairness-policy``, ``edf-ordering-policy``), the template
``defaultPriorityBand`` (``maxBytes``, ``maxRequests``, the two refs) for every priority not listed, and
Kubernetes quantities for the limits (``maxBytes: 1Gi``, ``maxRequests: 1k``). A band names its policy
by one spelling, not both.

Every error names the exact key (``flowControl.priorityBands[1].maxBytes: must be ...``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kvgate.scheduling.framework import INT64_MAX, ConfigError, Params, Plugin
from kvgate.scheduling.registry import register

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
# The policy plugin types a ``...PolicyRef`` may name (the reference's names, and kvgate's
# least-attained-service and slo-deadline under the same pattern); each is a plugin type of its own.
FAIRNESS_PLUGINS = {k: v for k, v in FAIRNESS_POLICIES.items() if k.endswith("-fairness-policy")}
ORDERING_PLUGINS = {k: v for k, v in ORDERING_POLICIES.items() if k.endswith("-ordering-policy")}
HEADROOM_ON = ("saturation", "pending")
_GLOBAL_KEYS = ("maxRequests", "maxBytes", "defaultRequestTTL", "fairnessPolicy", "orderingPolicy",
                "defaultTTFTSLO", "preemption", "holdPredictedMisses", "sloAdmission",
                "sloAdmissionConfidence", "fairShareHeadroom",
                "fairShareHeadroomOn", "fairShareTTFTTarget", "fairShareTTFTConfidence", "fairShareSLOFirst",
                "priorityBands", "defaultPriorityBand")  # fmt: skip


@dataclass(slots=True, frozen=True)
class BandConfig:
    priority: int
    max_requests: int = 0  # 0 = no band limit
    max_bytes: int = 0
    fairness: str = "round-robin"
    ordering: str = "fcfs"


class FlowPolicyPlugin(Plugin):
    """A flow-control policy declared under ``plugins:`` (the reference's way: a band names it by
    ``fairnessPolicyRef`` / ``orderingPolicyRef``). It holds nothing: the flow controller runs the policy
    its type names; it never sits in a scheduling profile."""


for _type in (*FAIRNESS_PLUGINS, *ORDERING_PLUGINS):
    register(_type)(type(_type.title().replace("-", ""), (FlowPolicyPlugin,), {}))


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
    # kvgate: a request the headroom holds back that is a certain miss (dispatched now, its first token
    # comes past its TTFT deadline by the dispatch-to-first-token p90) shares its prefill with other
    # certain misses, not with requests that can still meet theirs (the Director's late pick; needs a
    # concurrency-detector with maxPendingRequests: it counts the requests pending per endpoint).
    pack_certain_misses: bool = False
    # kvgate: flow control's late pick goes to an endpoint with no request pending (sent, not yet at its
    # first token) and a free running slot, when some but not all candidates are such: its prefill is
    # then alone in that server's next step (concurrency-detector with maxPendingRequests).
    prefill_alone_pick: bool = False
    bands: dict[int, BandConfig] = field(default_factory=dict)
    # ``defaultPriorityBand`` (the reference's template): a priority not listed gets its limits and
    # policies; None: no band limit and the global policies (``fairness``, ``ordering``).
    default_band: BandConfig | None = None

    @property
    def picks_free_slot(self) -> bool:
        """The free-slot pick: its own key, or with the running reserve (measured together)."""
        return self.free_slot_pick or self.fair_share_running_reserve

    def band(self, priority: int) -> BandConfig:
        b = self.bands.get(priority)
        if b is None:
            t = self.default_band
            if t is None:
                b = BandConfig(priority, fairness=self.fairness, ordering=self.ordering)
            else:
                b = BandConfig(priority, t.max_requests, t.max_bytes, t.fairness, t.ordering)
            self.bands[priority] = b
        return b


def enabled(feature_gates: Sequence[str]) -> bool:
    return FEATURE_GATE in feature_gates


def _policy(p: Params, key: str, table: Mapping[str, str], default: str) -> str:
    return table[p.get_str(key, default, choices=list(table))]


# apimachinery's ``resource.Quantity`` grammar: a signed number (``5``, ``5.5``, ``5.``, ``.5``), then a
# binary or decimal SI suffix (``m`` included) or a decimal exponent (``e3``, ``E-2``).
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)|[eE]([+-]?[0-9]+))?$"
)
_SUFFIX: dict[str | None, int | Fraction] = {
    None: 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "E": 10**18, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
}  # fmt: skip
_MAX_EXPONENT = 64  # (``1e99999999`` would be a huge integer to build; no limit needs more)


def _quantity(p: Params, key: str, default: int) -> int:
    """An integer >= 0, or a Kubernetes quantity as the reference's config takes it (``1Gi``, ``500M``,
    ``1e9``, ``2000m``; apimachinery's grammar), or a YAML float (``1.5e9``): a whole number >= 0 once
    scaled (review s26-rev-fixqa26b F3)."""
    v = p.raw.get(key)
    if isinstance(v, float) and not isinstance(v, bool):
        p._get(key)
        if v.is_integer() and v >= 0:
            return int(v)
    elif not isinstance(v, str):
        return p.get_int(key, default, min=0)
    else:
        p._get(key)
        m = _QUANTITY.match(v.strip())
        exp = m.group(3) if m is not None else None
        if m is not None and (exp is None or (len(exp) <= 4 and abs(int(exp)) <= _MAX_EXPONENT)):
            try:  # (a number of more digits than int() parses is refused as any bad value)
                n = Fraction(m.group(1)) * (_SUFFIX[m.group(2)] if exp is None else Fraction(10) ** int(exp))
            except ValueError:
                n = Fraction(1, 2)
            if n.denominator == 1 and 0 <= n <= INT64_MAX:  # (a 64-bit integer, as the reference's; qa36a F1)
                return int(n)
    raise ConfigError(
        f"{p.path}.{key}: must be an integer >= 0 or a Kubernetes quantity (e.g. 1Gi, 500M, 1e9) that is a "
        f"whole number in [0, 2^63-1], got {v!r}"
    )


def _policy_ref(
    p: Params,
    key: str,
    own: str,
    table: Mapping[str, str],
    refs: Mapping[str, str],
    plugins: Mapping[str, str],
    default: str,
) -> str:
    """A band's policy: kvgate's ``own`` key (a policy name), or the reference's ``key`` (a reference to a
    policy plugin: a plugin's name under ``plugins:``, else a policy plugin type); not both."""
    ref = p._get(key)  # (seen either way: an error names it among the known keys)
    if ref is None or ref == "":  # (the reference's ``omitempty``: "" is omitted; review s26-rev-fixqa26b F5)
        return _policy(p, own, table, default)
    if p._get(own) is not None:
        raise ConfigError(f"{p.path}.{key}: {p.path}.{own} is set too; name the policy once")
    ptype = plugins.get(ref, ref) if isinstance(ref, str) else ""
    if ptype not in refs:
        declared = f" (plugin {ref!r} is a {ptype!r})" if isinstance(ref, str) and ref in plugins else ""
        raise ConfigError(
            f"{p.path}.{key}: must name a plugin of one of the types {sorted(refs)} (declared under "
            f"plugins:, or the type itself), got {ref!r}{declared}"
        )
    return refs[ptype]


def _band(raw: Any, path: str, prio: int, cfg: FlowControlConfig, plugins: Mapping[str, str]) -> BandConfig:
    fair, order = FAIRNESS_POLICIES, ORDERING_POLICIES
    bp = Params(raw, path)
    bp.get_int("priority", 0)  # (the template's, as the reference's, is not read)
    band = BandConfig(
        prio,
        max_requests=_quantity(bp, "maxRequests", 0),
        max_bytes=_quantity(bp, "maxBytes", 0),
        fairness=_policy_ref(
            bp, "fairnessPolicyRef", "fairnessPolicy", fair, FAIRNESS_PLUGINS, plugins, cfg.fairness
        ),
        ordering=_policy_ref(
            bp, "orderingPolicyRef", "orderingPolicy", order, ORDERING_PLUGINS, plugins, cfg.ordering
        ),
    )
    bp.finish()
    return band


def parse_flow_control(
    raw: Mapping[str, Any] | None, path: str = "flowControl", plugins: Mapping[str, str] | None = None
) -> FlowControlConfig:
    """``plugins``: the config's declared plugins, name -> type (what a ``...PolicyRef`` may name)."""
    plugins = plugins or {}
    p = Params(raw, path)
    cfg = FlowControlConfig(
        max_requests=_quantity(p, "maxRequests", 5000),
        max_bytes=_quantity(p, "maxBytes", 1 << 30),
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
        pack_certain_misses=p.get_bool("packCertainMisses", False),
        prefill_alone_pick=p.get_bool("prefillAlonePick", False),
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
    if cfg.pack_certain_misses and not cfg.fair_share_headroom:
        raise ConfigError(
            f"{path}.packCertainMisses: needs {path}.fairShareHeadroom > 0 (it packs the requests the "
            "headroom holds back that can no longer meet their SLO), and there is none"
        )
    if cfg.fair_share_headroom >= 1.0:
        raise ConfigError(
            f"{path}.fairShareHeadroom: must be < 1 (a share of the saturation gate), "
            f"got {p.raw['fairShareHeadroom']!r}"
        )
    if cfg.ttl <= 0:
        raise ConfigError(f"{path}.defaultRequestTTL: must be > 0, got {p.raw['defaultRequestTTL']!r}")
    bands = p._get("priorityBands")
    template = p._get("defaultPriorityBand")
    p.finish()
    if template is not None:
        cfg.default_band = _band(template, f"{path}.defaultPriorityBand", 0, cfg, plugins)
    if bands is None:
        return cfg
    if not isinstance(bands, list):
        raise ConfigError(f"{path}.priorityBands: must be a list, got {type(bands).__name__}")
    for i, raw_band in enumerate(bands):
        bpath = f"{path}.priorityBands[{i}]"
        if not isinstance(raw_band, Mapping) or "priority" not in raw_band:
            raise ConfigError(f"{bpath}.priority: required")
        prio = Params(raw_band, bpath).get_int("priority", 0)
        if prio in cfg.bands:
            raise ConfigError(f"{bpath}.priority: band {prio} is listed twice")
        cfg.bands[prio] = _band(raw_band, bpath, prio, cfg, plugins)
    return cfg
