"""`kvgate bench flowcontrol`: flow control under a multi-tenant flood, on the virtual clock.

The real ``Director`` (built from an EndpointPickerConfig, flow controller included) in front of the
simulator's engine model (``kvgate.sim.engine`` on ``kvgate.sim.vclock``), with no sockets: arrivals
are ``Director.admit``'s synchronous equivalent -- pick at once when nothing is queued and the pool has
room, else ``FlowController.enqueue`` -- and queued requests leave through the same
``flowcontrol.dispatcher.dispatch_ready`` rule the front doors use, re-run whenever a request produces
its first token or finishes and after every scrape (50 ms).

Workload (all Poisson except the flood): five interactive tenants (priority 0, TTFT SLO 1 s), one of
which floods at 10x the others in bursts (on 5 s at 20x, off 5 s); a critical tenant (priority 10, TTFT
SLO 1 s); a sheddable batch tenant (priority -1, TTFT SLO 10 s, long outputs). ``--load`` = the flooded
mix's mean work / the fleet's capacity (measured closed loop with the interactive request shape). Two
unflooded mixes for comparison: ``calm`` (the flooder sends like the others: 40 % of the flooded load)
and ``even`` (the flooded mix's volume, spread evenly over the five interactive tenants: same load,
no skew, so flood/even isolates unfairness from plain load).

Arms (the same kvgate scheduling profile each time; only admission differs):
- ``none``: no flow control; at saturation a sheddable request is rejected (429), everything else goes
  to the servers' own FCFS queues (the reference without its feature gate);
- ``reference``: flow control as the reference's defaults: ``global-strict`` fairness, ``fcfs``
  ordering, the ``utilization-detector`` (queue 5, KV 80 %) gating dispatch;
- ``kvgate``: ``least-attained-service`` fairness, ``slo-deadline`` ordering and a lag-free dispatch
  gate (``concurrency-detector`` with ``maxPendingRequests``: a request leaves the EPP only when a server
  can start it, so the fair order decided in the EPP is the order the servers run in);
- ``kvgate-preempt`` (only with ``--arms``): ``kvgate`` plus ``flowControl.preemption``: a queued request
  that is not sheddable stops the newest batch request that has no first token yet (the simulated
  server aborts it; it counts as shed, 429).
- ``kvgate-reserve`` (only with ``--arms``): ``kvgate`` plus ``flowControl.fairShareHeadroom``
  (``--headroom``, taken from the bound ``--headroom-on`` names): a flow over its fair share of
  requests (in flight + queued) dispatches only while the gate is below ``1 - headroom``, and the
  flows under their share are chosen first; ``--ttft-target`` adapts the headroom (aiming, per
  ``--ttft-confidence``, ``flowControl.fairShareTTFTConfidence``, at a share of misses), ``--slo-first``
  (``flowControl.fairShareSLOFirst``) lets a held-back request through once its deadline is near.
- ``kvgate-slo``, ``kvgate-reserve-slo`` (only with ``--arms``): those arms plus
  ``flowControl.sloAdmission`` (``--slo-confidence``): a batch request the latency model (a
  ``predicted-latency-scorer`` in ``plugins``, not in the profile) predicts to miss its TTFT SLO waits
  while it can still make it and is shed (429) once it cannot.
- ``...-feasible`` (a suffix to any ``kvgate`` arm, last): ``orderingPolicy: slo-feasible``, the
  requests past their TTFT deadline dispatched after those that can still meet it.
- ``...+pack`` / ``...+alone`` (after the arm's name, ``kvgate-reserve`` arms): that arm with
  ``flowControl.packCertainMisses`` / ``prefillAlonePick`` (as ``--pack-misses`` / ``--prefill-alone``
  for every such arm), so the keys run side by side in one run (fc31).

``--frontier [ARM:]KNOB=V1,...`` (``kvgate.bench.flowcontrol_frontier``): SLO attainment against shed
rate, each arm over a knob's settings, compared at the same shed rate.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvgate.bench.fleetsim import _copy_stats
from kvgate.bench.frontier import KNOBS
from kvgate.bench.outdir import add_out, wrote
from kvgate.bench.report import pct, write_json
from kvgate.datalayer.endpoint import Endpoint
from kvgate.entry import ArgumentParser, nonneg_int, nonneg_number, positive_int, positive_number
from kvgate.flowcontrol.dispatcher import GIVE_UP_MESSAGE
from kvgate.scheduling.types import InferenceRequest, PickResult, SchedulingError, Usage
from kvgate.sim.profiles import profile_arg

MODEL = "sim-model"
QUIET = ("t1", "t2", "t3", "t4")
FLOOD = "t0"
CRITICAL = "critical"
BATCH = "batch"
SLO_TTFT = {CRITICAL: 1.0, BATCH: 10.0}
INTERACTIVE_SLO = 1.0
PRIORITY = {CRITICAL: 10, BATCH: -1}
# maxConcurrency = the servers' running-batch limit (--max-num-seqs, as the live run sets it); the
# pending bound does the work.
DETECTOR_KVGATE: dict[str, Any] = {
    "type": "concurrency-detector",
    "parameters": {"maxConcurrency": 128, "maxPendingRequests": 2},
}

# An arm's late-pick modifiers (``kvgate-reserve-feasible+pack``): the key each turns on.
ARM_LATE_PICKS = {"pack": "packCertainMisses", "alone": "prefillAlonePick"}
# Issue #15's goal configuration: this arm with these settings (``arm_config``'s), since fc31 with
# prefillAlonePick (session 31's pre-registered head-to-head); as one document, for 4 x 128 and a 30 s TTL:
# docs/benchmarks/policies/kvgate-reserve-goal.yaml.
GOAL_ARM = "kvgate-reserve-feasible+alone"
GOAL_SETTINGS: dict[str, Any] = {"headroom": 0.75, "headroom_on": "pending", "ttft_target": 0.05,
                                 "running_reserve": True}  # fmt: skip

_SCHED = {
    "plugins": [
        {"type": "kvgate-cost-scorer"},
        {"type": "prefix-cache-scorer"},
        {"type": "max-score-picker"},
    ],
    "schedulingProfiles": [
        {
            "name": "default",
            "plugins": [{"pluginRef": "kvgate-cost-scorer", "weight": 10}, {"pluginRef": "max-score-picker"}],
        }
    ],
}


# The arms' names: ``none``, ``reference``, and each kvgate arm with its optional ``-slo`` then ``-feasible``
# suffix (the order ``arm_config`` strips them in). Any other name is refused: it was configured as the
# plain ``kvgate`` arm, silently (late-b31).
KVGATE_ARMS = ("kvgate", "kvgate-preempt", "kvgate-reserve")
KNOWN_ARMS = ("none", "reference", *(f"{a}{s}{f}" for a in KVGATE_ARMS for s in ("", "-slo")
                                     for f in ("", "-feasible")))  # fmt: skip


def split_arm(arm: str) -> tuple[str, list[str]]:
    """``arm``'s name and its ``+`` modifiers; ValueError (``main`` checks every ``--arms`` entry before
    any runs) for an unknown modifier or one on an arm that, less its ``-feasible`` then ``-slo`` suffix
    (as ``arm_config`` strips them), is not ``kvgate-reserve``: the keys act only under its headroom;
    and for a name not in ``KNOWN_ARMS``."""
    name, *late_picks = arm.split("+")
    base = name.removesuffix("-feasible").removesuffix("-slo")
    for key in late_picks:
        if key not in ARM_LATE_PICKS or base != "kvgate-reserve":
            raise ValueError(
                f"arm {arm}: +{'/+'.join(ARM_LATE_PICKS)} only on a kvgate-reserve arm "
                f"(kvgate-reserve[-slo][-feasible]), got +{key} on {name}"
            )
    if name not in KNOWN_ARMS:
        raise ValueError(f"arm {arm}: unknown arm {name!r} (known: {', '.join(KNOWN_ARMS)})")
    return name, late_picks


def arm_config(
    arm: str,
    ttl: float,
    max_pending: int = 2,
    headroom: float = 0.25,
    max_concurrency: int = 128,
    headroom_on: str = "saturation",
    ttft_target: float = 0.0,
    slo_confidence: float = 1.0,
    slo_first: bool = False,
    running_reserve: bool = False,
    free_slot_pick: bool = False,
    ttft_confidence: float | None = None,
    batch_cap: int = 0,
    pack_misses: bool = False,
    prefill_alone: bool = False,
) -> dict[str, Any]:
    arm, late_picks = split_arm(arm)
    pack_misses = pack_misses or "pack" in late_picks
    prefill_alone = prefill_alone or "alone" in late_picks
    doc: dict[str, Any] = dict(_SCHED)
    if arm == "none":
        return doc
    doc["featureGates"] = ["flowControl"]
    # The batch band's queued-request limit (429 past it; 0 = none, the default): a frontier knob.
    bands = [{"priority": PRIORITY[BATCH], "maxRequests": batch_cap}] if batch_cap else []
    if arm == "reference":
        doc["flowControl"] = {"fairnessPolicy": "global-strict", "orderingPolicy": "fcfs",
                              "defaultRequestTTL": ttl}  # fmt: skip
        if bands:
            doc["flowControl"]["priorityBands"] = bands
        # The default utilization-detector gates dispatch, by the reference's rule alone (no carry-forward
        # of a quiet page by kvgate's own accounting, so live its pool is scraped every 0.1 s at most).
        doc["saturationDetector"] = {"ownLoadStalenessThreshold": 0}
        return doc
    doc["flowControl"] = {"fairnessPolicy": "least-attained-service", "orderingPolicy": "slo-deadline",
                          "defaultRequestTTL": ttl}  # fmt: skip
    if bands:
        doc["flowControl"]["priorityBands"] = bands
    if arm.endswith("-feasible"):  # + slo-feasible ordering (not in the default arms)
        arm = arm.removesuffix("-feasible")
        doc["flowControl"]["orderingPolicy"] = "slo-feasible"
    if arm.endswith("-slo"):  # + SLO admission on the latency model (not in the default arms)
        arm = arm.removesuffix("-slo")
        # The model is in plugins, not in the profile: routing stays kvgate's; it learns from every pick.
        doc["plugins"] = [*doc["plugins"], {"type": "predicted-latency-scorer"}]
        doc["flowControl"]["sloAdmission"] = True
        doc["flowControl"]["sloAdmissionConfidence"] = slo_confidence
    if arm == "kvgate-preempt":  # + preemption of sheddable work (not in the default arms)
        doc["flowControl"]["preemption"] = True
    if arm == "kvgate-reserve":  # + a fair-share reservation (not in the default arms)
        doc["flowControl"]["fairShareHeadroom"] = headroom
        doc["flowControl"]["fairShareHeadroomOn"] = headroom_on
        if ttft_target:
            doc["flowControl"]["fairShareTTFTTarget"] = ttft_target
        if slo_first:
            doc["flowControl"]["fairShareSLOFirst"] = True
        if running_reserve:
            doc["flowControl"]["fairShareRunningReserve"] = True
        if pack_misses:
            doc["flowControl"]["packCertainMisses"] = True
        if prefill_alone:
            doc["flowControl"]["prefillAlonePick"] = True
    params = {**DETECTOR_KVGATE["parameters"], "maxPendingRequests": max_pending,
              "maxConcurrency": max_concurrency}  # fmt: skip
    doc["saturationDetector"] = {**DETECTOR_KVGATE, "parameters": params}
    if free_slot_pick:  # (any kvgate arm; fairShareRunningReserve implies it)
        doc["flowControl"]["freeSlotPick"] = True
    if ttft_confidence is not None:  # (any kvgate arm; it acts only with fairShareTTFTTarget)
        doc["flowControl"]["fairShareTTFTConfidence"] = ttft_confidence
    return doc


def engine_priority(band: int, over_share: bool) -> int:
    """vLLM's ``priority`` (lower first) for a request of ``band`` (higher more important): the band
    first (steps of 10), and inside a band a flow over its fair share after the others."""
    return -10 * band + (1 if over_share else 0)


@dataclass(slots=True)
class Arrival:
    at: float
    tenant: str
    prompt: int
    output: int


@dataclass(slots=True)
class Mix:
    base_rate: float  # requests/s of one quiet tenant
    mode: str  # "flood" | "calm" (the flooder sends like the others) | "even" (flood's volume, spread evenly)
    duration: float
    prompt: int = 1024
    output: int = 128
    batch_prompt: int = 2048
    batch_output: int = 512
    # the critical tenant's extra burst (``--critical-burst``): this x its rate for 1 s of every 10 (5-6 s,
    # the flood's off half), drawn after the rest so the other arrivals stay the same (0: none)
    critical_burst: float = 0.0

    def arrivals(self, rng: random.Random) -> list[Arrival]:
        out: list[Arrival] = []

        def poisson(tenant: str, rate: float, prompt: int, output: int, on: Callable[[float], bool]) -> None:
            t = 0.0
            while True:
                t += rng.expovariate(rate)
                if t >= self.duration:
                    return
                if on(t):
                    out.append(Arrival(t, tenant, prompt, output))

        always = lambda _t: True  # noqa: E731
        # "even": the flooded mix's interactive volume (4 + 10 base rates) shared by all five tenants.
        rate = self.base_rate * (14 / 5 if self.mode == "even" else 1.0)
        for tenant in QUIET:
            poisson(tenant, rate, self.prompt, self.output, always)
        poisson(CRITICAL, self.base_rate, self.prompt, self.output, always)
        poisson(BATCH, self.base_rate, self.batch_prompt, self.batch_output, always)
        if self.mode == "flood":  # 20x during the first half of every 10 s: 10x on average
            poisson(FLOOD, 20 * self.base_rate, self.prompt, self.output, lambda t: (t % 10.0) < 5.0)
        else:
            poisson(FLOOD, rate, self.prompt, self.output, always)
        if self.critical_burst > 0:
            burst = lambda t: 5.0 <= (t % 10.0) < 6.0  # noqa: E731
            poisson(CRITICAL, self.critical_burst * self.base_rate, self.prompt, self.output, burst)
        out.sort(key=lambda a: a.at)
        return out


@dataclass(slots=True)
class Outcome:
    tenant: str
    start: float
    ttft: float | None = None
    status: int = 0  # 0 = served; 429 / 503 = shed
    output: int = 0
    sent: float | None = None  # left the EPP for a server (the TTFT breakdown)
    scheduled: float | None = None  # the server's first step with it (its own queue ends)
    shed_by: str = ""  # why: the error's class (PredictedSLOMissError = sloAdmission), "preempted"


@dataclass
class Run:
    arm: str
    outcomes: list[Outcome] = field(default_factory=list)
    duration: float = 0.0
    # (time, fair-share headroom in force) at each scrape: what fairShareTTFTTarget adapted it to
    headroom: list[tuple[float, float]] = field(default_factory=list)
    held: int = 0  # picks turned back into the queue (sloAdmission / holdPredictedMisses), whole run
    slos: dict[str, float] = field(default_factory=lambda: dict(SLO_TTFT))  # TTFT SLO by tenant (``_slo``)


class FlowSim:
    def __init__(
        self,
        arm: str,
        replicas: int,
        profile: str,
        seed: int,
        ttl: float,
        max_num_seqs: int = 128,
        max_pending: int = 2,
        headroom: float = 0.25,
        headroom_on: str = "saturation",
        ttft_target: float = 0.0,
        engine_priority: bool = False,
        slo_confidence: float = 1.0,
        slo_first: bool = False,
        running_reserve: bool = False,
        free_slot_pick: bool = False,
        ttft_confidence: float | None = None,
        batch_cap: int = 0,
        critical_slo: float = SLO_TTFT[CRITICAL],
        pack_misses: bool = False,
        prefill_alone: bool = False,
    ) -> None:
        from kvgate.config.director import build_director
        from kvgate.datalayer.store import EndpointStore
        from kvgate.sim.engine import Engine, EngineConfig
        from kvgate.sim.vclock import VirtualClock, VirtualReplica

        self.arm = arm
        self.engine_priority = engine_priority
        policy = "priority" if engine_priority else "fcfs"  # the servers' --scheduling-policy
        self.clock = VirtualClock()
        self.endpoints = [Endpoint(address=f"10.0.0.{i}:8000") for i in range(replicas)]
        config = arm_config(
            arm, ttl, max_pending, headroom, max_num_seqs, headroom_on, ttft_target, slo_confidence,
            slo_first, running_reserve, free_slot_pick, ttft_confidence, batch_cap, pack_misses,
            prefill_alone,
        )  # fmt: skip
        self.director = build_director(
            config, EndpointStore(self.endpoints), clock=self.clock.time, seed=seed, flow_metrics=False
        )
        self.replicas = [
            VirtualReplica(
                self.clock,
                Engine(EngineConfig(profile=profile, max_num_seqs=max_num_seqs, scheduling_policy=policy)),
                name=ep.address,
                on_first_token=self._first,
                on_finished=self._finished,
            )
            for ep in self.endpoints
        ]
        self._index = {ep.address: i for i, ep in enumerate(self.endpoints)}
        self._live: dict[str, tuple[InferenceRequest, int, Outcome]] = {}
        self.run = Run(arm)
        self.run.slos[CRITICAL] = critical_slo
        self._n = 0
        self._n_sent = 0
        self.preempted = 0
        self._end = 0.0
        self.on_done: Callable[[float], None] | None = None  # closed-loop capacity probe

    # ---- admission (Director.admit without asyncio) ---------------------------------------------
    def _arrive(self, a: Arrival) -> None:
        now = self.clock.now
        self._n += 1
        rid = f"r{self._n}"
        slo = _slo(a.tenant, self.run.slos)
        req = InferenceRequest(
            rid, MODEL, prompt_tokens=a.prompt, max_tokens=a.output, priority=PRIORITY.get(a.tenant, 0),
            fairness_id=a.tenant, headers={"x-slo-ttft-ms": str(int(slo * 1000))}, arrival_time=now,
            stream=True,  # (replicas stream: a first token before the end, so preemptible)
        )  # fmt: skip
        out = Outcome(a.tenant, now)
        self.run.outcomes.append(out)
        d = self.director
        flow = d.flow
        try:
            got = d.pick(req) if flow is None else flow.arrive(req, now, out)
        except SchedulingError as e:
            _shed(out, e)
            return
        if isinstance(got, PickResult):
            self._send(req, got.primary, out)
            return
        self._pump()

    def _pump(self) -> None:
        flow = self.director.flow
        if flow is None or len(flow.ctl) == 0:
            return
        from kvgate.flowcontrol.dispatcher import dispatch_ready

        now = self.clock.now
        for item, err in flow.expired(now):
            _shed(item.handle, err)
        for item in dispatch_ready(flow.ctl, now, flow.saturated, flow.preempt):
            got = flow.settle(item, now)
            if got is None:
                self.run.held += 1
            elif isinstance(got, SchedulingError):
                _shed(item.handle, got)
            elif got is not None:
                self._send(item.req, got.primary, item.handle)

    def _send(self, req: InferenceRequest, ep: Endpoint, out: Outcome) -> None:
        from kvgate.sim.types import SimRequest

        self.director.on_dispatched(req, ep)  # no-op when flow control already charged it
        i = self._index[ep.address]
        if req.sheddable:  # (a no-op without flowControl.preemption)
            self.director.preemptible(req, ep, lambda: self._stop(req.request_id))
        # A distinct first token per request: no prefix is shared, so caching plays no part here.
        ids = [1 + self._n_sent % 30000, *([7] * (req.prompt_tokens - 1))]
        self._n_sent += 1
        sim = SimRequest(req.request_id, ids, req.max_tokens or 1, arrival_time=self.clock.now,
                         priority=self._engine_priority(req))  # fmt: skip
        self._live[req.request_id] = (req, i, out)
        out.sent = self.clock.now
        # As its own event: a dispatch from inside a replica's step-end callback must not start a
        # second step on that replica while the first one is still being delivered.
        self.clock.call_soon(self._submit, i, sim)

    def _engine_priority(self, req: InferenceRequest) -> int:
        """vLLM's request ``priority`` (lower first) with ``--engine-priority``: the band, and inside
        it a flow over its fair share after the others."""
        if not self.engine_priority:
            return 0
        flow = self.director.flow
        over = flow is not None and flow.ctl.over_share(req.fairness_id or "")
        return engine_priority(req.priority, over)

    def _submit(self, i: int, sim: Any) -> None:
        if sim.request_id in self._live:  # (not preempted before it got there)
            self.replicas[i].submit(sim)

    def _stop(self, request_id: str) -> bool:
        """Preemption: the server aborts the request, its client gets a 429."""
        live = self._live.pop(request_id, None)
        if live is None:
            return False
        _req, i, out = live
        self.replicas[i].abort(request_id)
        out.status = 429
        out.shed_by = "preempted"
        self.preempted += 1
        return True

    # ---- engine callbacks ----------------------------------------------------------------------
    def _first(self, sim: Any, t: float) -> None:
        live = self._live.get(sim.request_id)
        if live is None:
            return
        req, i, out = live
        out.ttft = t - out.start
        out.scheduled = sim.first_scheduled_time
        self.director.on_first_token(req, self.endpoints[i])
        self._pump()

    def _finished(self, sim: Any, t: float) -> None:
        live = self._live.pop(sim.request_id, None)
        if live is None:
            return
        req, i, out = live
        out.output = len(sim.output_token_ids)
        self._end = max(self._end, t)
        usage = Usage(len(sim.prompt_token_ids), out.output, sim.num_cached_tokens)
        self.director.on_finished(req, self.endpoints[i], usage, True)
        self._pump()
        if self.on_done is not None:
            self.on_done(t)

    def _scrape(self, until: float) -> None:
        now = self.clock.now
        for ep, rep in zip(self.endpoints, self.replicas, strict=True):
            _copy_stats(ep, rep.engine.stats(), now)
        if self.director.flow is not None:
            self.run.headroom.append((now, self.director.flow.ctl.headroom))
        self._pump()
        if now < until:
            self.clock.call_later(0.05, self._scrape, until)

    def simulate(self, arrivals: list[Arrival], horizon: float) -> Run:
        for a in arrivals:
            self.clock.call_at(a.at, self._arrive, a)
        self.clock.call_at(0.0, self._scrape, horizon)
        self.clock.run_until(horizon)
        self.run.duration = horizon
        return self.run


def _shed(out: Outcome, err: SchedulingError) -> None:
    out.status = err.status
    out.shed_by = type(err).__name__
    if err.message == GIVE_UP_MESSAGE:  # sloAdmission: out of reach while still queued
        out.shed_by += ":queued"


# ---- figures --------------------------------------------------------------------------------------
def _slo(tenant: str, slos: dict[str, float] = SLO_TTFT) -> float:
    return slos.get(tenant, INTERACTIVE_SLO)


def unanswered(o: Outcome) -> bool:
    """Sent by the client, neither served (no first token) nor shed (no 429 / 503) when the run ends:
    still queued in kvgate or at a server, or (live) any other outcome without a first token: the client's
    timeout or the run's cut, a 5xx (or a 4xx but 429), a connection error (each also in the run's
    ``errors``). The reading's rule, for every arm alike (fc28): a miss in every SLO figure, and in a TTFT
    percentile later than every request answered (it has waited longer than the run); the shed rate
    counts refusals only."""
    return not o.status and o.ttft is None


def ttft_pct(ttft: list[float], unanswered: int, q: float) -> float | None:
    """The ``q``th percentile of the TTFTs with ``unanswered`` requests counted as later than all of
    them: ``inf`` when the percentile falls among those (JSON: null; a goal on it is not met)."""
    if not unanswered:
        return pct(ttft, q) if ttft else None
    pos = q / 100.0 * (len(ttft) + unanswered - 1)
    if math.ceil(pos) >= len(ttft):
        return math.inf
    return pct(ttft, 100.0 * pos / (len(ttft) - 1)) if len(ttft) > 1 else ttft[0]


def _group(run: Run, tenants: tuple[str, ...]) -> dict[str, Any]:
    outs = [o for o in run.outcomes if o.tenant in tenants]
    ttft = [o.ttft for o in outs if o.ttft is not None]
    met = sum(1 for o in outs if o.ttft is not None and o.ttft <= _slo(o.tenant, run.slos))
    shed = sum(1 for o in outs if o.status)
    lost = sum(1 for o in outs if unanswered(o))
    return {
        "requests": len(outs),
        "p50_ttft_s": ttft_pct(ttft, lost, 50),
        "p90_ttft_s": ttft_pct(ttft, lost, 90),
        "slo_attainment": met / len(outs) if outs else None,
        "shed": shed,
        "unfinished": lost,
    }


def late(run: Run, tenant: str) -> dict[str, Any]:
    """What ``tenant``'s requests that missed their SLO paid (``--critical-slo``: a higher band's late
    requests under ``slo-feasible``, review s25-rev-fc25 F4): how many missed (served late or shed), and the
    served ones' TTFT and lateness past the SLO (p50 / p90 / max)."""
    slo = _slo(tenant, run.slos)
    outs = [o for o in run.outcomes if o.tenant == tenant]
    missed = [o for o in outs if o.status or o.ttft is None or o.ttft > slo]
    ttft = sorted(o.ttft for o in missed if o.ttft is not None)
    return {
        "slo_s": slo,
        "requests": len(outs),
        "missed": len(missed),
        "shed": sum(1 for o in missed if o.status),
        "missed_p50_ttft_s": pct(ttft, 50) if ttft else None,
        "missed_p90_ttft_s": pct(ttft, 90) if ttft else None,
        "missed_max_ttft_s": ttft[-1] if ttft else None,
        "missed_over_10s": sum(1 for t in ttft if t > 10.0),
    }


def breakdown(run: Run, tenants: tuple[str, ...]) -> dict[str, Any] | None:
    """Where the tenants' TTFT went: waiting in the EPP (arrival to dispatch), in the server's own
    queue (dispatch to its first step with the request), in prefill (that step to the first token).
    Simulator runs only (the live run cannot see inside the servers)."""
    parts: dict[str, list[float]] = {"epp_wait": [], "server_queue": [], "prefill": []}
    for o in run.outcomes:
        if o.tenant not in tenants or o.ttft is None:
            continue
        if o.sent is None or o.scheduled is None:
            return None
        parts["epp_wait"].append(o.sent - o.start)
        parts["server_queue"].append(o.scheduled - o.sent)
        parts["prefill"].append(o.start + o.ttft - o.scheduled)
    if not parts["prefill"]:
        return None
    return {
        f"{name}_{stat}_s": (pct(v, 90) if stat == "p90" else sum(v) / len(v))
        for name, v in parts.items()
        for stat in ("mean", "p90")
    }


GOAL_RATIO = 1.5  # the issue's goal: the quiet tenants' p90 under the flood within 1.5x the calm p90


def baseline(calm_p90: float | None) -> float | None:
    """The calm p90 as the goal's baseline: None where it gives none (no quiet request, or ``inf``: the p90
    fell among unanswered requests, fc28's rule), so neither a ratio nor a goal line is drawn over it."""
    return calm_p90 if calm_p90 and math.isfinite(calm_p90) else None


def p90_ratio(p90: float | None, calm_p90: float | None) -> float | None:
    """``p90`` over the calm ``baseline`` (every flood / calm and flood / even ratio: the bench, the live
    bench, the frontier): ``inf`` where ``p90`` fell among unanswered requests (over the goal, not met), None
    where there is no baseline (``f / inf`` would read 0.0: goal 1 met by the widest margin)."""
    c = baseline(calm_p90)
    return p90 / c if p90 and c else None


def over_goal(run: Run, tenants: tuple[str, ...], calm_p90: float, measured_from: float) -> dict[str, Any]:
    """The tenants' requests over ``GOAL_RATIO`` x ``calm_p90`` (what puts their p90 over the goal),
    as shares of all their served requests, by where the excess was: kvgate's queue (> 10 ms from
    arrival to dispatch), else the server's queue (> 15 ms from dispatch to its first step), else the
    step itself (prefill: a second prefill in it); and the three parts' means over those requests."""
    line = GOAL_RATIO * calm_p90
    served = [
        o
        for o in run.outcomes
        if o.tenant in tenants and o.start >= measured_from and o.ttft is not None
        and o.sent is not None and o.scheduled is not None
    ]  # fmt: skip
    over = [o for o in served if o.ttft is not None and o.ttft > line]
    n = max(1, len(served))
    parts = {"kvgate_queue": 0, "server_queue": 0, "step": 0}
    sums = [0.0, 0.0, 0.0]
    for o in over:
        if o.sent is None or o.scheduled is None or o.ttft is None:
            continue
        epp, srv, step = o.sent - o.start, o.scheduled - o.sent, o.start + o.ttft - o.scheduled
        where = "kvgate_queue" if epp > 0.010 else "server_queue" if srv > 0.015 else "step"
        parts[where] += 1
        sums[0], sums[1], sums[2] = sums[0] + epp, sums[1] + srv, sums[2] + step
    k = max(1, len(over))
    return {
        "line_s": line,
        "over_share": len(over) / n,
        **{f"{name}_share": v / n for name, v in parts.items()},
        "mean_kvgate_queue_s": sums[0] / k,
        "mean_server_queue_s": sums[1] / k,
        "mean_step_s": sums[2] / k,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def jain(values: list[float]) -> float:
    s, sq = sum(values), sum(v * v for v in values)
    return (s * s) / (len(values) * sq) if sq else 1.0


def summarize(run: Run, measured_from: float) -> dict[str, Any]:
    kept = Run(run.arm, [o for o in run.outcomes if o.start >= measured_from], run.duration, held=run.held,
               slos=run.slos)  # fmt: skip
    tenants = {t: _group(kept, (t,)) for t in (*QUIET, FLOOD, CRITICAL, BATCH)}
    interactive = (*QUIET, FLOOD)
    attain = [tenants[t]["slo_attainment"] or 0.0 for t in interactive]
    span = max(1e-9, run.duration - measured_from)
    good = sum(1 for o in kept.outcomes if o.ttft is not None and o.ttft <= _slo(o.tenant, run.slos))
    all_outs = kept.outcomes
    return {
        "arm": run.arm,
        "tenants": tenants,
        "bands": {
            "critical (10)": _group(kept, (CRITICAL,)),
            "interactive (0)": _group(kept, interactive),
            "batch (-1)": _group(kept, (BATCH,)),
        },
        "quiet": _group(kept, QUIET),
        "quiet_breakdown": breakdown(kept, QUIET),
        "critical_late": late(kept, CRITICAL),
        "jain_slo_attainment": jain(attain),
        "goodput_rps": good / span,
        "slo_attainment": good / len(all_outs) if all_outs else None,
        "shed": sum(1 for o in all_outs if o.status),
        "shed_rate": sum(1 for o in all_outs if o.status) / max(1, len(all_outs)),
        # 429 (capacity, preemption, sloAdmission) / 503 (TTL); by_slo_gate: sloAdmission's 429s
        "shed_429": sum(1 for o in all_outs if o.status == 429),
        "shed_503": sum(1 for o in all_outs if o.status == 503),
        # neither served nor shed when the run ended: misses above, not in the shed rate (``unanswered``)
        "unanswered": sum(1 for o in all_outs if unanswered(o)),
        "shed_by_slo_gate": sum(1 for o in all_outs if o.shed_by.startswith("PredictedSLOMissError")),
        # of those, shed while still queued (at the SLO deadline, or the time a prediction gave)
        "shed_by_slo_gate_queued": sum(1 for o in all_outs if o.shed_by == "PredictedSLOMissError:queued"),
        "held": run.held,
        # SLO attainment of the requests served (shed ones left out): with the all-request figure, what
        # shedding bought
        "served_slo_attainment": good / max(1, sum(1 for o in all_outs if not o.status)),
        "requests": len(all_outs),
        "headroom_mean": _mean([h for t, h in run.headroom if t >= measured_from]),
    }


def step_floor(profile: str, prompt: int, output: int, max_num_seqs: int) -> dict[str, float]:
    """The engine's step times (the simulator's own step model) for one interactive prefill: alone,
    next to a full running batch, and two prefills next to it; and the floor that admission order
    cannot beat while every server runs a full batch: a request sent at once, arriving at a uniformly
    random point of the step in progress and prefilled alone in the next, has p90 TTFT 0.9 x step +
    step."""
    from kvgate.sim.profiles import causal_pairs, get_profile

    m = get_profile(profile).model
    pairs, ctx, top = causal_pairs(0, prompt), prompt + output // 2, prompt + output
    n = max_num_seqs - 1
    full = m.step_s(prompt + n, prompt, pairs, n, n * ctx, top)
    two = m.step_s(2 * prompt + n - 1, 2 * prompt, 2 * pairs, n - 1, (n - 1) * ctx, top)
    return {
        "prefill_alone_s": m.step_s(prompt, prompt, pairs, 0, 0, 0),
        "prefill_full_batch_s": full,
        "two_prefills_full_batch_s": two,
        "admission_floor_p90_s": 1.9 * full,
    }


def capacity(replicas: int, profile: str, seed: int, prompt: int, output: int, max_num_seqs: int) -> float:
    """Requests/s the fleet completes with the interactive request shape, closed loop (every server
    kept at its batch limit, nothing queued in front of it): 20 virtual seconds after 10 of warm-up."""
    sim = FlowSim("none", replicas, profile, seed, 30.0, max_num_seqs)
    done: list[float] = []

    def again(t: float) -> None:
        done.append(t)
        sim._arrive(Arrival(t, "t1", prompt, output))

    sim.on_done = again
    first = [Arrival(0.001 * i, "t1", prompt, output) for i in range(replicas * max_num_seqs)]
    sim.simulate(first, 30.0)
    return sum(1 for t in done if t >= 10.0) / 20.0


def rates(
    replicas: int, profile: str, seed: int, max_num_seqs: int, load: float, duration: float
) -> tuple[float, float]:
    """The fleet's capacity (req/s, ``capacity``) and the quiet tenants' base rate that puts the
    flooded mix at ``load`` of it (also ``scripts/slo_miss_trace.py``'s, so its arrivals are the bench's)."""
    mix = Mix(1.0, "flood", duration)
    cap = capacity(replicas, profile, seed, mix.prompt, mix.output, max_num_seqs)
    # Rates in interactive-request units; a batch request costs ~ (2048 + 512) / (1024 + 128) of one.
    weight = 4 + 1 + 10 + (mix.batch_prompt + mix.batch_output) / (mix.prompt + mix.output)
    return cap, load * cap / weight


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="kvgate bench flowcontrol", description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=positive_int, default=4)
    p.add_argument("--profile", type=profile_arg, default="llama3-8b-h100")
    p.add_argument("--max-num-seqs", type=positive_int, default=128, help="each server's running-batch limit")
    p.add_argument(
        "--load", type=positive_number, default=0.9, help="flooded mix's mean rate / fleet capacity"
    )
    p.add_argument("--duration", type=positive_number, default=60.0, help="virtual seconds of arrivals")
    p.add_argument("--warmup", type=nonneg_number, default=10.0, help="arrivals before this are not measured")
    p.add_argument("--ttl", type=positive_number, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--critical-slo", type=positive_number, default=SLO_TTFT[CRITICAL], metavar="S",
                   help="the critical tenant's TTFT SLO, s: tight, some of its requests are late (what a "
                        "late higher-band request pays under slo-feasible)")  # fmt: skip
    p.add_argument("--critical-burst", type=nonneg_number, default=0.0, metavar="X",
                   help="the critical tenant also sends X x its rate for 1 s of every 10 (0: off): with a "
                        "tight --critical-slo, some of its requests wait past their deadline")  # fmt: skip
    p.add_argument("--arms", default="none,reference,kvgate")
    p.add_argument("--max-pending", type=nonneg_int, default=2,
                   help="kvgate arm: the detector's maxPendingRequests")  # fmt: skip
    p.add_argument("--headroom", type=float, default=0.25,
                   help="kvgate-reserve arm: flowControl.fairShareHeadroom")  # fmt: skip
    p.add_argument("--headroom-on", choices=("saturation", "pending"), default="saturation",
                   help="kvgate-reserve arm: flowControl.fairShareHeadroomOn")  # fmt: skip
    p.add_argument("--ttft-target", type=float, default=0.0,
                   help="kvgate-reserve arm: flowControl.fairShareTTFTTarget, s (0: fixed)")  # fmt: skip
    p.add_argument("--slo-first", action="store_true",
                   help="kvgate-reserve arms: flowControl.fairShareSLOFirst")  # fmt: skip
    p.add_argument("--running-reserve", action="store_true",
                   help="kvgate-reserve arms: flowControl.fairShareRunningReserve")  # fmt: skip
    p.add_argument("--free-slot-pick", action="store_true",
                   help="kvgate arms: flowControl.freeSlotPick (--running-reserve implies it)")  # fmt: skip
    p.add_argument("--pack-misses", action="store_true",
                   help="kvgate-reserve arms: flowControl.packCertainMisses")  # fmt: skip
    p.add_argument("--prefill-alone", action="store_true",
                   help="kvgate-reserve arms: flowControl.prefillAlonePick")  # fmt: skip
    p.add_argument("--slo-confidence", type=float, default=1.0,
                   help="*-slo arms: flowControl.sloAdmissionConfidence")  # fmt: skip
    p.add_argument("--ttft-confidence", type=float, default=None, metavar="Z",
                   help="kvgate arms: flowControl.fairShareTTFTConfidence (unset: the default, 1.645; "
                        "it acts only with --ttft-target)")  # fmt: skip
    p.add_argument("--engine-priority", action="store_true",
                   help="servers schedule by vLLM request priority (band, then over-share last)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="30 s of arrivals (tests)")
    p.add_argument("--frontier", action="append", default=[], metavar="[ARM:]KNOB=V1,V2,...",
                   help="frontier mode (repeatable): run each arm of --arms on the flooded mix at its own "
                        "settings and at every value of KNOB ("
                        + "; ".join(f"{k}: {v}" for k, v in KNOBS.items())
                        + "), and compare each arm's own setting with "
                        "the other arms' attainment-vs-shed-rate frontier at the same shed rate; writes "
                        "flowcontrol-frontier.json")  # fmt: skip
    p.add_argument("--seeds", default="", help="frontier mode: comma-separated seeds (default: --seed)")
    # Not docs/benchmarks by default (kvgate.bench.outdir): a run without --out overwrote the tracked
    # flowcontrol.json there. Pass --out docs/benchmarks to publish.
    add_out(p, "flowcontrol", "flowcontrol.json / flowcontrol-live.json")
    p.add_argument("--live", action="store_true", help="real kvgate serve + simulated fleet over HTTP")
    from kvgate.bench import flowcontrol_live

    flowcontrol_live.add_arguments(p)
    args = p.parse_args(argv)
    for arm in args.arms.split(","):  # (before any arm runs: a bad name is not found minutes in)
        try:
            split_arm(arm)
        except ValueError as e:
            p.error(f"--arms: {e}")
    if args.quick:
        args.duration, args.warmup = 30.0, 5.0
    if args.live and (args.critical_burst or args.critical_slo != SLO_TTFT[CRITICAL]):
        # (the live run sends the default SLOs and mix: refused, not silently dropped; review s26-rev-fc26 F3)
        p.error("--critical-slo and --critical-burst act in the simulator only, not with --live")
    if args.live:
        return flowcontrol_live.main_from_args(args, list(argv or []))
    if args.frontier:
        from kvgate.bench.flowcontrol_frontier import frontier_main

        return frontier_main(args, list(argv or []))
    cap, base = rates(args.replicas, args.profile, args.seed, args.max_num_seqs, args.load, args.duration)
    mix = Mix(base, "flood", args.duration)
    rows: dict[str, Any] = {"capacity_rps": cap, "base_rate_rps": base, "load": args.load, "runs": {},
                            "critical_slo_s": args.critical_slo}  # fmt: skip
    rows["step_model"] = step_floor(args.profile, mix.prompt, mix.output, args.max_num_seqs)
    horizon = args.duration + 60.0
    flood_runs: dict[str, Run] = {}
    for mode in ("calm", "even", "flood"):
        arrivals = Mix(base, mode, args.duration, critical_burst=args.critical_burst).arrivals(
            random.Random(args.seed)
        )
        for arm in args.arms.split(","):
            run = sim_from_args(args, arm, args.seed).simulate(arrivals, horizon)
            rows["runs"][f"{arm}/{mode}"] = summarize(run, args.warmup)
            if mode == "flood":
                flood_runs[arm] = run
    for arm in args.arms.split(","):
        f = rows["runs"][f"{arm}/flood"]["quiet"]["p90_ttft_s"]
        for mode in ("calm", "even"):
            c = rows["runs"][f"{arm}/{mode}"]["quiet"]["p90_ttft_s"]
            rows["runs"][f"{arm}/flood"][f"quiet_p90_vs_{mode}"] = p90_ratio(f, c)
        calm = baseline(rows["runs"][f"{arm}/calm"]["quiet"]["p90_ttft_s"])
        if calm:  # (no line at 1.5 x inf: no quiet request would be over it)
            rows["runs"][f"{arm}/flood"]["quiet_over_goal"] = over_goal(
                flood_runs[arm], QUIET, calm, args.warmup
            )
    rows["command"] = "kvgate bench flowcontrol " + " ".join(argv or [])
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "flowcontrol.json", rows)
    print(render(rows))
    print()
    wrote(args.out / "flowcontrol.json")
    return 0


def sim_from_args(
    args: argparse.Namespace, arm: str, seed: int, knob: str = "", value: float = 0.0
) -> FlowSim:
    """``arm`` as the command line configures it, but for ``knob`` set to ``value`` (a frontier
    setting: ``ttl``, ``batch-cap``, ``slo-confidence``; see ``kvgate.bench.frontier.KNOBS``)."""
    return FlowSim(arm, args.replicas, args.profile, seed, value if knob == "ttl" else args.ttl,
                   max_num_seqs=args.max_num_seqs, max_pending=args.max_pending,
                   headroom=args.headroom, headroom_on=args.headroom_on,
                   ttft_target=args.ttft_target, engine_priority=args.engine_priority,
                   slo_confidence=value if knob == "slo-confidence" else args.slo_confidence,
                   slo_first=args.slo_first, running_reserve=args.running_reserve,
                   free_slot_pick=args.free_slot_pick, ttft_confidence=args.ttft_confidence,
                   batch_cap=round(value) if knob == "batch-cap" else 0,
                   critical_slo=args.critical_slo,
                   pack_misses=getattr(args, "pack_misses", False),
                   prefill_alone=getattr(args, "prefill_alone", False))  # fmt: skip


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render(rows: dict[str, Any]) -> str:
    lines = [
        f"capacity {rows['capacity_rps']:.1f} req/s; "
        f"quiet tenant base rate {rows['base_rate_rps']:.2f} req/s; "
        f"load {rows['load']:.0%} of capacity (flooded mix)",
        "",
        "| arm / mix | quiet p90 TTFT s | flood / calm | flood / even | flood tenant p90 | critical p90 "
        "| critical SLO | batch SLO | all SLO | Jain (SLO) | goodput req/s | shed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows["runs"].items():
        b = r["bands"]
        lines.append(
            f"| {name} | {_f(r['quiet']['p90_ttft_s'])} | {_f(r.get('quiet_p90_vs_calm'))} "
            f"| {_f(r.get('quiet_p90_vs_even'))} "
            f"| {_f(r['tenants'][FLOOD]['p90_ttft_s'])} | {_f(b['critical (10)']['p90_ttft_s'])} "
            f"| {_f(b['critical (10)']['slo_attainment'], 3)} | {_f(b['batch (-1)']['slo_attainment'], 3)} "
            f"| {_f(r['slo_attainment'], 3)} | {_f(r['jain_slo_attainment'], 3)} | {_f(r['goodput_rps'])} "
            f"| {r['shed']} ({r['shed_rate']:.1%}) |"
        )
    ref = rows["runs"].get("reference/flood")
    floods = [(name, r) for name, r in rows["runs"].items() if name.endswith("/flood")]
    if ref is not None and len(floods) > 1:
        lines += [
            "",
            "Against the reference at its shed rate (flooded mix): all-request SLO attainment counts a shed "
            "request, and one still unanswered when the run ends, as a miss, so an arm that sheds more is "
            "above the reference only if what it sheds buys more requests within their SLO than it drops",
            "",
            "| arm | all SLO (shed = miss) | vs reference | shed | vs reference | 429 / 503 "
            "| unanswered (miss) | by sloAdmission (shed while queued; picks turned back) | SLO of served "
            "| goodput req/s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in floods:
            lines.append(
                f"| {name.removesuffix('/flood')} | {_f(r['slo_attainment'], 3)} "
                f"| {r['slo_attainment'] - ref['slo_attainment']:+.3f} | {r['shed']} "
                f"| {r['shed'] - ref['shed']:+d} | {r.get('shed_429', '-')} / {r.get('shed_503', '-')} "
                f"| {r.get('unanswered', '-')} "
                f"| {r.get('shed_by_slo_gate', '-')} ({r.get('shed_by_slo_gate_queued', '-')} queued; "
                f"{r.get('held', '-')} turn-backs) | {_f(r.get('served_slo_attainment'), 3)} "
                f"| {_f(r['goodput_rps'])} |"
            )
    parts = [(name, r["quiet_breakdown"]) for name, r in rows["runs"].items() if r.get("quiet_breakdown")]
    if parts:
        lines += [
            "",
            "Where the quiet tenants' TTFT goes (s): EPP queue (arrival to dispatch), server queue (dispatch "
            "to the server's first step with it), prefill (that step to the first token)",
            "",
            "| arm / mix | EPP mean | EPP p90 | server queue mean | server queue p90 | prefill mean "
            "| prefill p90 |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, b in parts:
            lines.append(
                f"| {name} | {b['epp_wait_mean_s']:.3f} | {b['epp_wait_p90_s']:.3f} "
                f"| {b['server_queue_mean_s']:.3f} | {b['server_queue_p90_s']:.3f} "
                f"| {b['prefill_mean_s']:.3f} | {b['prefill_p90_s']:.3f} |"
            )
    over = [(name, r["quiet_over_goal"]) for name, r in rows["runs"].items() if r.get("quiet_over_goal")]
    if over:
        lines += [
            "",
            f"The quiet tenants' requests over {GOAL_RATIO}x their calm p90 under the flood (what puts the "
            "p90 over the goal), as shares of their requests, by where the excess was: kvgate's queue (> 10 "
            "ms), else the server's queue (> 15 ms), else the step (a second prefill in it); the parts' "
            "means over those requests",
            "",
            "| arm | line s | over | kvgate queue | server queue | step | mean kvgate / server / step ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, o in over:
            lines.append(
                f"| {name.removesuffix('/flood')} | {o['line_s']:.3f} | {o['over_share']:.1%} "
                f"| {o['kvgate_queue_share']:.1%} | {o['server_queue_share']:.1%} | {o['step_share']:.1%} "
                f"| {1000 * o['mean_kvgate_queue_s']:.0f} / {1000 * o['mean_server_queue_s']:.0f} "
                f"/ {1000 * o['mean_step_s']:.0f} |"
            )
    lates = [
        (name, r["critical_late"])
        for name, r in rows["runs"].items()
        if r.get("critical_late", {}).get("missed")
    ]
    if lates:
        lines += [
            "",
            f"The critical band's requests that missed their {lates[0][1]['slo_s']:g} s SLO (served late or "
            "shed): what a late higher-band request pays; TTFT of the served ones",
            "",
            "| arm / mix | missed / requests | shed | p50 TTFT s | p90 TTFT s | max TTFT s | over 10 s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, c in lates:
            lines.append(
                f"| {name} | {c['missed']} / {c['requests']} | {c['shed']} | {_f(c['missed_p50_ttft_s'])} "
                f"| {_f(c['missed_p90_ttft_s'])} | {_f(c['missed_max_ttft_s'])} | {c['missed_over_10s']} |"
            )
    st = rows.get("step_model")
    calm = baseline(rows["runs"].get("kvgate/calm", {}).get("quiet", {}).get("p90_ttft_s"))
    if st:
        lines += [
            "",
            f"Engine step (the simulator's step model): one prefill alone {st['prefill_alone_s']:.3f} s, "
            f"next to a full running batch {st['prefill_full_batch_s']:.3f} s, two prefills next to it "
            f"{st['two_prefills_full_batch_s']:.3f} s. Floor for a quiet p90 while every server runs a full "
            f"batch (sent at once, prefilled alone in the next step): {st['admission_floor_p90_s']:.3f} s"
            + (f" = {st['admission_floor_p90_s'] / calm:.2f}x the kvgate/calm p90" if calm else ""),
        ]
    return "\n".join(lines)
