"""Why each SLO miss of the flow-control bench missed, kvgate and the reference side by side (issue #15).

Runs the flooded mix of ``kvgate bench flowcontrol`` (same capacity probe, same arrivals, same arms:
the virtual clock makes a cell the bench's to the last digit) and samples the fleet every ``--tick``
(5 ms) of virtual time: the running slots free (per server: ``max-num-seqs`` less running less
waiting, at least 0, summed; the servers' true engine state, not the gateway's scraped view), kvgate's
queue length, the running reserve's free slots the gate would keep at that tick (``free_reserve``
computed then for the whole pool, its writes to the controller undone: the trace leaves the run alone)
and the adaptive headroom. Each measured request (arrival after ``--warmup``) that missed its TTFT SLO
is put in one class, by the first counterfactual that saves it:

- ``shed``: 429 or 503 (TTL) -- no first token;
- ``queue, slot free``: it waited in kvgate's queue while at least one server had a free running slot
  (``max-num-seqs`` less running less waiting > 0: a server with a request waiting in its own queue
  still counts while running + waiting < ``max-num-seqs``) for at least its excess (TTFT - SLO): sent
  at the first free moment, with the same server time, it would have made it -- the gate (saturation
  detector, fair-share headroom, running reserve) held it. Per request: each such miss could have
  taken a free slot, not all of them together. Split by whether the fair-share gate held its flow
  back when it left the queue (``gate_holds_back``: headroom to keep as adapted then, or the running
  reserve, and ``FlowController.held_back``). That says whether the headroom / reserve applied to
  it, not which gate was closed: with the running reserve the flooder is over its share nearly all the
  time and, with a TTFT target, a sheddable one always is: a flood miss cannot land in "not held back";
- ``queue, all busy``: its whole wait in kvgate's queue was at least its excess, but the part with a
  slot free was not: capacity;
- ``server``: it left kvgate early enough (its wait in the queue less than its excess: even sent at its
  arrival it misses with that server time) -- the server was slow: split into ``server queue`` (more of
  the server time in the server's own queue than in the steps from its first schedule) and ``steps``.

    PYTHONPATH=src python scripts/slo_miss_trace.py [--replicas 2 --max-num-seqs 16] --load 0.7 --seed 0
        [--arms reference,kvgate-reserve-feasible] [--cycle] [--floor] [--out FILE.json]
    PYTHONPATH=src python scripts/slo_miss_trace.py --summarize FILE.json...   (one line per cell and arm)

The kvgate arm's settings default to the configuration docs/flowcontrol.md recommends for the goals
(``--headroom 0.75 --headroom-on pending --ttft-target 0.05 --running-reserve``); trial patches that read
environment variables (docs/benchmarks/trials/) act here as in the bench. Prints a table per arm and
tenant group, then the flood's 10 s cycle second by second (misses by arrival second and class, mean
free slots, queue, reserve slots, headroom). Not in any hot path: a diagnostic on the simulator only.

``--floor`` (session 18) asks of the quiet tenants what no admission or routing rule could change once
the fleet is as busy as the arm made it: every engine step of every server is recorded, and for each
measured quiet request the best TTFT it could have had had it been sent at its arrival to the best
server: min over the servers of (the rest of the step that server is in, 0 when idle) + (its own step:
one 1,024-token prefill next to that step's decodes and the prefills of the requests already handed to
that server during that step, which wait for the same next step; the step model with each decode's
context at prompt + half the output); nothing sent after it shares its step. A request whose floor is
over the goal's line (1.5 x the arm's own ``calm`` p90, from a run of the calm mix) is over it whatever
the gate or the pick does at its arrival, the fleet's state held as the arm made it (a per-request bound:
the quiet requests' floors cannot all be had together, as they share servers); printed per arm
(share of quiet requests, and by second of the flood's cycle with the share of server time spent in
steps with one / two or more prefills).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvgate.bench.flowcontrol_bench import (
    BATCH,
    CRITICAL,
    FLOOD,
    QUIET,
    FlowSim,
    Mix,
    Outcome,
    _slo,
    baseline,
    rates,
)
from kvgate.flowcontrol.controller import FlowController

CLASSES = (
    "shed",
    "queue, slot free (held back)",
    "queue, slot free (not held back)",
    "queue, all busy",
    "server queue",
    "steps",
    "unfinished",
)
GROUPS = {"flood": (FLOOD,), "quiet": QUIET, "critical": (CRITICAL,), "batch": (BATCH,)}
CYCLE_S = 10.0  # the flood's period (on 5 s, off 5 s)


@dataclass(slots=True)
class Miss:
    tenant: str
    at: float  # arrival
    cls: str
    wait: float = 0.0  # arrival to dispatch (kvgate's queue)
    free_wait: float = 0.0  # the part of it with a running slot free somewhere
    server: float = 0.0  # dispatch to first token


@dataclass
class Trace:
    tick: float
    free: list[int] = field(default_factory=list)  # fleet-wide free running slots, per tick
    queued: list[int] = field(default_factory=list)
    reserve: list[int] = field(default_factory=list)
    headroom: list[float] = field(default_factory=list)
    held_at_dispatch: dict[str, bool] = field(default_factory=dict)  # request id -> held back
    # --floor: per server, its engine steps as (start, end, prefills, decodes), in order
    steps: list[list[tuple[float, float, int, int]]] = field(default_factory=list)
    # --floor: per server, the times requests were handed to it (they join its next step)
    submits: list[list[float]] = field(default_factory=list)
    _prefix: list[int] = field(default_factory=list)

    def free_time(self, start: float, end: float) -> float:
        """Virtual seconds in [start, end) with a running slot free (piecewise constant per tick)."""
        if end <= start:
            return 0.0
        if len(self._prefix) != len(self.free) + 1:  # free ticks in [0, k), built once after the run
            self._prefix = [0]
            for f in self.free:
                self._prefix.append(self._prefix[-1] + (f > 0))
        n, dt = len(self.free), self.tick
        k0, k1 = int(start / dt), int(end / dt)

        def part(k: int, lo: float, hi: float) -> float:
            return max(0.0, hi - lo) if 0 <= k < n and self.free[k] > 0 else 0.0

        if k0 == k1:
            return part(k0, start, end)
        whole = self._prefix[min(n, k1)] - self._prefix[min(n, k0 + 1)]
        return part(k0, start, (k0 + 1) * dt) + whole * dt + part(k1, k1 * dt, end)


def classify(out: Outcome, held: bool | None, free_wait: float) -> str | None:
    """The class of a measured request's miss (None: it met its SLO). Pure: the rule above."""
    if out.status:
        return "shed"
    if out.ttft is None or out.sent is None:
        return "unfinished"
    slo = _slo(out.tenant)
    if out.ttft <= slo:
        return None
    excess = out.ttft - slo
    wait = out.sent - out.start
    if free_wait >= excess:
        return "queue, slot free (held back)" if held else "queue, slot free (not held back)"
    if wait >= excess:
        return "queue, all busy"
    sched = out.scheduled if out.scheduled is not None else out.sent
    server_queue = sched - out.sent
    steps = out.start + out.ttft - sched
    return "server queue" if server_queue > steps else "steps"


def run_arm(arm: str, args: argparse.Namespace, base: float) -> tuple[FlowSim, Trace]:
    sim = FlowSim(
        arm, args.replicas, args.profile, args.seed, args.ttl, max_num_seqs=args.max_num_seqs,
        max_pending=args.max_pending, headroom=args.headroom, headroom_on=args.headroom_on,
        ttft_target=args.ttft_target, running_reserve=args.running_reserve,
    )  # fmt: skip
    trace = Trace(args.tick)
    n = args.max_num_seqs
    flow = sim.director.flow
    send = sim._send

    # Only a fair-share arm holds a flow back (the reference's controller still computes shares).
    cfg = flow.ctl.cfg if flow is not None else None
    reserve_on = cfg is not None and cfg.fair_share_running_reserve
    total = sim.director._running_slots() * len(sim.endpoints)  # 0: no gate on running slots

    def sent(req: Any, ep: Any, out: Outcome) -> None:
        if flow is not None:  # held back when it left (the gate's view of its flow, before the charge)
            trace.held_at_dispatch[req.request_id] = gate_holds_back(flow.ctl, req, sim.clock.now)
        send(req, ep, out)

    sim._send = sent  # type: ignore[method-assign]
    horizon = args.duration + 60.0
    if getattr(args, "floor", False):
        for rep in sim.replicas:
            rows: list[tuple[float, float, int, int]] = []
            trace.steps.append(rows)

            def on_step(r: Any, res: Any, rows: list[tuple[float, float, int, int]] = rows) -> None:
                end = r.clock.now
                start = end - res.duration
                if rows and abs(start - rows[-1][1]) < 1e-9:  # back to back: the last end (no rounding)
                    start = rows[-1][1]
                rows.append((start, end, len(res.started), res.num_decode_tokens))

            rep.on_step = on_step
            subs: list[float] = []
            trace.submits.append(subs)
            submit = rep.submit

            def submitted(req: Any, rep: Any = rep, subs: list[float] = subs, submit: Any = submit) -> None:
                subs.append(rep.clock.now)
                submit(req)

            rep.submit = submitted  # type: ignore[method-assign]

    def sample() -> None:
        trace.free.append(sum(max(0, n - r.engine.num_running - r.engine.num_waiting) for r in sim.replicas))
        if flow is not None:
            ctl = flow.ctl
            trace.queued.append(len(ctl))
            # (the whole pool: the sim's candidates are every server)
            trace.reserve.append(reserve_in_force(ctl, sim.clock.now, total) if reserve_on and total else 0)
            trace.headroom.append(ctl.headroom)
        if sim.clock.now < horizon:
            sim.clock.call_later(args.tick, sample)

    sim.clock.call_at(0.0, sample)
    arrivals = Mix(base, "flood", args.duration).arrivals(random.Random(args.seed))
    sim.simulate(arrivals, horizon)
    return sim, trace


def gate_holds_back(ctl: FlowController, req: Any, now: float) -> bool:
    """Does the fair-share gate hold ``req`` back now: as ``Director.saturated`` asks it, only with
    headroom to keep as adapted now (``ctl.headroom``, not the configured one) or the running reserve
    on, and then ``FlowController.held_back``."""
    return bool(ctl.headroom or ctl.cfg.fair_share_running_reserve) and ctl.held_back(req, now)


def reserve_in_force(ctl: FlowController, now: float, total: int) -> int:
    """The running reserve's free slots the gate would keep at ``now`` for a held-back request on a
    pool of ``total`` running slots (``Director._reserve_full``: ``free_reserve(now, int(total *
    fair_share_headroom))``), computed now with every write it makes to the controller undone: the
    trace leaves the run alone. (Its cache is no reading: every dispatch not held back and every
    finish clear it, and the gate asks no more while the pending headroom already holds the flow
    back: review s15-fc F1.)"""
    saved = dict(ctl.__dict__)  # free_reserve rebinds its cache, the extra's cap and the extra
    try:
        return ctl.free_reserve(now, int(total * ctl.cfg.fair_share_headroom))
    finally:
        ctl.__dict__.clear()
        ctl.__dict__.update(saved)


def misses(sim: FlowSim, trace: Trace, warmup: float) -> tuple[list[Outcome], list[Miss]]:
    measured = [o for o in sim.run.outcomes if o.start >= warmup]
    found: list[Miss] = []
    held_by_start = _held_by_outcome(sim, trace)
    for o in measured:
        free_wait = trace.free_time(o.start, o.sent) if o.sent is not None else 0.0
        cls = classify(o, held_by_start.get(id(o)), free_wait)
        if cls is None:
            continue
        m = Miss(o.tenant, o.start, cls)
        if o.sent is not None:
            m.wait, m.free_wait = o.sent - o.start, free_wait
            if o.ttft is not None:
                m.server = o.start + o.ttft - o.sent
        found.append(m)
    return measured, found


def _held_by_outcome(sim: FlowSim, trace: Trace) -> dict[int, bool]:
    # FlowSim numbers requests r1, r2, ... in arrival order, and appends an Outcome per arrival.
    return {id(o): trace.held_at_dispatch[f"r{i + 1}"] for i, o in enumerate(sim.run.outcomes)
            if f"r{i + 1}" in trace.held_at_dispatch}  # fmt: skip


def table(arm: str, measured: list[Outcome], found: list[Miss]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name, tenants in (*GROUPS.items(), ("all", (*QUIET, FLOOD, CRITICAL, BATCH))):
        outs = [o for o in measured if o.tenant in tenants]
        ms = [m for m in found if m.tenant in tenants]
        by = Counter(m.cls for m in ms)
        q = [m for m in ms if m.cls.startswith("queue")]
        rows[name] = {
            "requests": len(outs),
            "missed": len(ms),
            "attainment": 1 - len(ms) / len(outs) if outs else None,
            "by_class": {c: by.get(c, 0) for c in CLASSES},
            "mean_wait_s": _mean([m.wait for m in ms]),
            "mean_free_wait_s": _mean([m.free_wait for m in ms]),
            "mean_server_s": _mean([m.server for m in ms if m.cls not in ("shed", "unfinished")]),
            "mean_queue_missed_wait_s": _mean([m.wait for m in q]),
        }
    return {"arm": arm, "groups": rows}


def cycle(trace: Trace, found: list[Miss], warmup: float, duration: float) -> list[dict[str, Any]]:
    out = []
    for s in range(int(CYCLE_S)):
        ks = [
            k for k in range(len(trace.free))
            if warmup <= k * trace.tick < duration and int((k * trace.tick) % CYCLE_S) == s
        ]  # fmt: skip
        ms = [m for m in found if int(m.at % CYCLE_S) == s]
        row: dict[str, Any] = {
            "second": s,
            "misses": dict(Counter(m.cls for m in ms)),
            "flood_misses": sum(1 for m in ms if m.tenant == FLOOD),
            "free_slots": _mean([trace.free[k] for k in ks]),
            "share_with_free_slot": _mean([1.0 if trace.free[k] > 0 else 0.0 for k in ks]),
        }
        if trace.queued:
            row["queued"] = _mean([trace.queued[k] for k in ks])
            row["reserve_slots"] = _mean([trace.reserve[k] for k in ks])
            row["headroom"] = _mean([trace.headroom[k] for k in ks])
            row["share_free_while_queued"] = _mean(
                [1.0 if trace.free[k] > 0 and trace.queued[k] > 0 else 0.0 for k in ks]
            )
        out.append(row)
    return out


def own_step_s(profile: str, decodes: int, others: int = 0, prompt: int = 1024, output: int = 128) -> float:
    """One ``prompt``-token prefill next to ``decodes`` decodes (each at context prompt + output / 2) and
    ``others`` prefills of the same size, by the simulator's step model: the quiet request's own step."""
    from kvgate.sim.profiles import causal_pairs, get_profile

    ctx = prompt + output // 2
    m = get_profile(profile).model
    n = 1 + others
    return m.step_s(
        n * prompt + decodes,
        n * prompt,
        n * causal_pairs(0, prompt),
        decodes,
        decodes * ctx,
        ctx if decodes else 0,
    )


def step_at(rows: list[tuple[float, float, int, int]], t: float) -> tuple[float, float, int, int] | None:
    """The step of one server in progress at ``t`` (start <= t < end), None when it is idle then."""
    lo, hi = 0, len(rows)
    while lo < hi:  # first step ending after t
        mid = (lo + hi) // 2
        if rows[mid][1] <= t:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(rows) and rows[lo][0] <= t:
        return rows[lo]
    return None


def quiet_floor(trace: Trace, t: float, own: Callable[[int, int], float]) -> float:
    """The best TTFT a request arriving at ``t`` could have had: sent at once to the server where the
    rest of its step in progress plus its own step is least; its own step holds its prefill, that step's
    decodes and the requests already handed to that server during the step in progress (they wait for
    the same next step; ``trace.submits``, counted as prompts of the quiet size), no others."""
    best = math.inf
    for i, rows in enumerate(trace.steps):
        st = step_at(rows, t)
        if st is None:
            v = own(0, 0)
        else:
            subs = trace.submits[i] if i < len(trace.submits) else []
            waiting = bisect.bisect_left(subs, t) - bisect.bisect_left(subs, st[0])
            v = (st[1] - t) + own(st[3], waiting)
        best = min(best, v)
    return best


def floor_table(
    trace: Trace, measured: list[Outcome], line: float, profile: str, warmup: float, duration: float
) -> dict[str, Any]:
    """--floor: the measured quiet requests over ``line``, as sent and at their floor; by cycle second
    with the share of server time in steps with one / two or more prefills."""
    cache: dict[tuple[int, int], float] = {}

    def own(d: int, k: int) -> float:
        if (d, k) not in cache:
            cache[(d, k)] = own_step_s(profile, d, k)
        return cache[(d, k)]

    quiet = [o for o in measured if o.tenant in QUIET and o.ttft is not None]
    fl = {id(o): quiet_floor(trace, o.start, own) for o in quiet}
    rows = []
    for s in range(int(CYCLE_S)):
        qs = [o for o in quiet if int(o.start % CYCLE_S) == s]
        one = two = busy = 0.0
        span = 0.0
        for srv in trace.steps:
            for a, b, npf, _d in srv:
                if b <= warmup or a >= duration:
                    continue
                # (steps are short next to a second: charged to the second they start in)
                if int(a % CYCLE_S) != s:
                    continue
                busy += b - a
                one += (b - a) if npf == 1 else 0.0
                two += (b - a) if npf >= 2 else 0.0
        span = len(trace.steps) * (duration - warmup) / CYCLE_S
        rows.append({
            "second": s,
            "quiet": len(qs),
            "over_line": sum(1 for o in qs if o.ttft is not None and o.ttft > line) / len(qs) if qs else None,
            "floor_over_line": sum(1 for o in qs if fl[id(o)] > line) / len(qs) if qs else None,
            "share_busy": busy / span if span else None,
            "share_one_prefill": one / span if span else None,
            "share_two_prefills": two / span if span else None,
        })  # fmt: skip
    n = len(quiet)
    return {
        "line_s": line,
        "quiet": n,
        "over_line": sum(1 for o in quiet if o.ttft is not None and o.ttft > line) / n if n else None,
        "floor_over_line": sum(1 for o in quiet if fl[id(o)] > line) / n if n else None,
        "floor_p90_s": sorted(fl.values())[int(0.9 * (n - 1))] if n else None,
        "cycle": rows,
    }


def render_floor(arm: str, t: dict[str, Any]) -> str:
    head = (
        f"{arm}: quiet requests over the line {t['line_s']:.4f} s: as sent {_f(t['over_line'], '.1%')}, "
        f"at their floor {_f(t['floor_over_line'], '.1%')} (floor p90 {_f(t['floor_p90_s'], '.4f')} s; "
        f"{t['quiet']} requests)"
    )
    lines = [
        "",
        head,
        "",
        "| s | quiet | over the line | floor over the line | server time in steps | one prefill | two or more"
        " |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in t["cycle"]:
        cells = [
            str(r["second"]), str(r["quiet"]), _f(r["over_line"], ".1%"), _f(r["floor_over_line"], ".1%"),
            _f(r["share_busy"], ".2f"), _f(r["share_one_prefill"], ".2f"), _f(r["share_two_prefills"], ".2f"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def calm_p90(arm: str, args: argparse.Namespace, base: float) -> float | None:
    """The quiet tenants' p90 TTFT of ``arm`` on the calm mix (the goal's baseline), as the bench."""
    from kvgate.bench.flowcontrol_bench import summarize

    sim = FlowSim(
        arm, args.replicas, args.profile, args.seed, args.ttl, max_num_seqs=args.max_num_seqs,
        max_pending=args.max_pending, headroom=args.headroom, headroom_on=args.headroom_on,
        ttft_target=args.ttft_target, running_reserve=args.running_reserve,
    )  # fmt: skip
    arrivals = Mix(base, "calm", args.duration).arrivals(random.Random(args.seed))
    run = sim.simulate(arrivals, args.duration + 60.0)
    p90: float | None = summarize(run, args.warmup)["quiet"]["p90_ttft_s"]
    return p90


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def render(cell: str, tables: list[dict[str, Any]], cycles: dict[str, list[dict[str, Any]]]) -> str:
    short = ["shed", "free/held", "free/not held", "all busy", "srv queue", "steps", "unfin"]
    lines = [
        f"## {cell}",
        "",
        "| arm | group | requests | attainment | missed | "
        + " | ".join(short)
        + " | mean wait / free / server s |",
        "|---|---|---|---|---|" + "---|" * len(short) + "---|",
    ]
    for t in tables:
        for g, r in t["groups"].items():
            lines.append(
                f"| {t['arm']} | {g} | {r['requests']} | {_f(r['attainment'], '.3f')} | {r['missed']} | "
                + " | ".join(str(r["by_class"][c]) for c in CLASSES)
                + f" | {_f(r['mean_wait_s'], '.2f')} / {_f(r['mean_free_wait_s'], '.2f')}"
                f" / {_f(r['mean_server_s'], '.2f')} |"
            )
    for arm, rows in cycles.items():
        lines += [
            "",
            f"{arm}: the flood's cycle by second (arrival second for misses; fleet state means over ticks)",
            "",
            "| s | misses (flood) | free/held | free/not held | all busy | server | free slots | share free "
            "| queued | free while queued | reserve | headroom |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            m = r["misses"]
            srv = m.get("server queue", 0) + m.get("steps", 0)
            lines.append(
                f"| {r['second']} | {sum(m.values())} ({r['flood_misses']}) | {m.get(CLASSES[1], 0)} "
                f"| {m.get(CLASSES[2], 0)} | {m.get(CLASSES[3], 0)} | {srv} | {_f(r['free_slots'], '.1f')} "
                f"| {_f(r['share_with_free_slot'], '.2f')} | {_f(r.get('queued'), '.1f')} "
                f"| {_f(r.get('share_free_while_queued'), '.2f')} | {_f(r.get('reserve_slots'), '.1f')} "
                f"| {_f(r.get('headroom'), '.2f')} |"
            )
    return "\n".join(lines)


def summary(paths: list[str]) -> str:
    """One line per cell and arm from ``--out`` files: attainment and the misses by class (all
    requests), and which tenants missed."""
    short = ["shed", "free/held", "free/not held", "all busy", "srv queue", "steps", "unfin"]
    lines = [
        "| cell | arm | attainment | vs ref | missed (flood/quiet/crit/batch) | " + " | ".join(short) + " |",
        "|---|---|---|---|---|" + "---|" * len(short),
    ]
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        ref = next((t for t in doc["tables"] if t["arm"] == "reference"), None)
        for t in doc["tables"]:
            g = t["groups"]
            a = g["all"]
            vs = "" if ref is None else f"{a['attainment'] - ref['groups']['all']['attainment']:+.3f}"
            who = "/".join(str(g[k]["missed"]) for k in ("flood", "quiet", "critical", "batch"))
            lines.append(
                f"| {doc['cell']} | {t['arm']} | {a['attainment']:.3f} | {vs} | {a['missed']} ({who}) | "
                + " | ".join(str(a["by_class"][c]) for c in CLASSES)
                + " |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--summarize"]:
        print(summary(args_in[1:]))
        return 0
    p = argparse.ArgumentParser(prog="slo_miss_trace.py", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--profile", default="llama3-8b-h100")
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--load", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--ttl", type=float, default=30.0)
    p.add_argument("--arms", default="reference,kvgate-reserve-feasible")
    p.add_argument("--max-pending", type=int, default=2)
    p.add_argument("--headroom", type=float, default=0.75)
    p.add_argument("--headroom-on", choices=("saturation", "pending"), default="pending")
    p.add_argument("--ttft-target", type=float, default=0.05)
    p.add_argument("--no-running-reserve", dest="running_reserve", action="store_false")
    p.add_argument("--tick", type=float, default=0.005, help="fleet sampling period, virtual s")
    p.add_argument("--cycle", action="store_true", help="also print the flood's cycle by second")
    p.add_argument("--floor", action="store_true",
                   help="also the quiet tenants' floor: the best TTFT any gate or pick could give them, "
                        "against 1.5x the arm's calm p90")  # fmt: skip
    p.add_argument("--out", help="write the tables (and the cycle) as JSON here")
    args = p.parse_args(argv)
    _cap, base = rates(args.replicas, args.profile, args.seed, args.max_num_seqs, args.load, args.duration)
    cell = f"{args.replicas} x {args.max_num_seqs}, load {args.load}, seed {args.seed}"
    tables, cycles, floors, no_line = [], {}, {}, []
    for arm in args.arms.split(","):
        sim, trace = run_arm(arm, args, base)
        measured, found = misses(sim, trace, args.warmup)
        tables.append(table(arm, measured, found))
        cycles[arm] = cycle(trace, found, args.warmup, args.duration)
        if args.floor:
            c = baseline(calm_p90(arm, args, base))
            if c:  # (none where the calm p90 fell among unanswered requests: no line at 1.5 x inf)
                floors[arm] = floor_table(trace, measured, 1.5 * c, args.profile, args.warmup, args.duration)
                floors[arm]["calm_p90_s"] = c
            else:
                no_line.append(arm)
    print(render(cell, tables, cycles if args.cycle else {}), flush=True)
    for arm, t in floors.items():
        print(render_floor(arm, t), flush=True)
    for arm in no_line:
        print(f"\n{arm}: no floor table: its calm quiet p90 is none or among unanswered requests", flush=True)
    if args.out:
        line = " ".join(sys.argv[1:] if argv is None else argv)
        doc = {
            "cell": cell,
            "command": f"scripts/slo_miss_trace.py {line}",
            "tables": tables,
            "cycles": cycles,
            **({"floors": floors} if floors else {}),
        }
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1, allow_nan=False)  # (JSON has no Infinity: fail, never write one)
    return 0


if __name__ == "__main__":
    sys.exit(main())
