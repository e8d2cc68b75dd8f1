"""Who shares an engine step with whom: late-pick trials for the goal configuration (issue #15, fc29).

Runs the bench's flooded and calm mixes (``kvgate bench flowcontrol``'s capacity probe, arrivals and
reading: ``summarize``, ``p90_ratio``) for ``kvgate-reserve-feasible`` with the goal configuration's
settings (``--headroom 0.75 --headroom-on pending --ttft-target 0.05 --running-reserve``), once per
trial, and the reference once. A trial patches the Director's flow-control late pick (and for
``servers*`` the fair-share gate) in this process only; nothing in ``src/`` changes:

- ``shipped``: no patch (the bench's figures to the digit);
- ``pack-over``: a request the fair-share headroom holds back (its flow over its share) goes to a server
  that already has requests sent and not yet at their first token, below the pending bound, when one has
  (Session 28's idea: the over-share flow's starts share steps with each other);
- ``servers`` / ``servers-floor`` / ``servers-ceil``: the headroom keeps whole servers for the flows under
  their share instead of a count of pending requests: a held-back request may go to a server whose pending
  requests are all held-back ones (below the pending bound), or to a server with none pending while
  round / floor / ceil(servers x headroom) others stay with none; the others' picks keep off servers with
  held-back requests pending;
- ``miss-pack``: a held-back request that is a certain miss (``now`` + the dispatch-to-first-token p90 past
  its SLO deadline) goes to a server whose pending requests are all such certain misses (below the bound)
  when one has, else where the pick puts it; every other request keeps off servers with certain misses
  pending;
- ``miss-apart``: that second half alone (certain misses where the pick puts them);
- ``miss-pack-only``: the first half alone (the others where the pick puts them);
- ``miss-pack-room`` (fc30): certain misses packed as in ``miss-pack``; the others to a server with no
  certain miss pending and room (pending below the bound, a free running slot) when some but not all are;
- ``miss-pack-idle`` (fc30; what ``flowControl.packCertainMisses`` does): certain misses packed as in
  ``miss-pack``; the others to a server with nothing pending and a free running slot when some but not
  all are;
- ``idle`` (fc30): that second half alone (no request marked).

Prints per trial: the quiet tenants' p90 over their calm p90 (goal 1), critical and all-request SLO
attainment, shed and unanswered, the mean adapted headroom, the flooder's dispatches that met their SLO
per second of the flood's cycle (sent time), the backlog at each cycle's start, and the quiet requests
over 1.5x calm by second of the cycle (arrival; the flood sends in seconds 0-4).

    PYTHONPATH=src python scripts/fc_step_share_trials.py --seed 87 --ttl 1000 [--trials shipped,miss-pack]

Not in any hot path: a diagnostic on the simulator only.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from kvgate.bench.flowcontrol_bench import (
    FLOOD,
    QUIET,
    FlowSim,
    Mix,
    Outcome,
    _slo,
    baseline,
    p90_ratio,
    rates,
    summarize,
)
from kvgate.datalayer.endpoint import Endpoint
from kvgate.flowcontrol.saturation import ConcurrencyDetector
from kvgate.requestcontrol import director as director_mod

ARM = "kvgate-reserve-feasible"
TRIALS = (
    "shipped", "pack-over", "servers", "servers-floor", "servers-ceil",
    "miss-pack", "miss-apart", "miss-pack-only", "miss-pack-room", "miss-pack-idle", "idle",
)  # fmt: skip
Director = director_mod.Director
_ORIG_PICK = Director._pick_late
_ORIG_FIRST = Director.on_first_token
_ORIG_FINISHED = Director.on_finished
_ORIG_RESERVING = ConcurrencyDetector.saturated_reserving


class State:
    trial = "shipped"
    marked: dict[tuple[str, str], None] = {}  # (request id, address): held-back / certain-miss, pending


def pending(ep: Endpoint) -> int:
    return ep.inflight.requests - ep.inflight.decoding


def marked_at(ep: Endpoint) -> int:
    return sum(1 for _rid, a in State.marked if a == ep.address)


def keep_clean(n: int, headroom: float) -> int:
    x = n * headroom
    return {"servers": round(x), "servers-floor": math.floor(x), "servers-ceil": math.ceil(x)}[State.trial]


def servers_open(det: ConcurrencyDetector, eps: Sequence[Endpoint], headroom: float) -> list[Endpoint]:
    clean = sum(1 for ep in eps if pending(ep) == 0)
    k = keep_clean(len(eps), headroom)
    out = []
    for ep in eps:
        p = pending(ep)
        if ep.inflight.requests >= det.max_requests or p >= det.max_pending:
            continue
        if (0 < p <= marked_at(ep)) or (p == 0 and clean - 1 >= k):
            out.append(ep)
    return out


def reserving(self: ConcurrencyDetector, endpoints: Sequence[Endpoint], now: float, headroom: float,
              pending_only: bool = False) -> bool:  # fmt: skip
    if not State.trial.startswith("servers") or not (pending_only and self.pending_bound):
        return _ORIG_RESERVING(self, endpoints, now, headroom, pending_only)
    return not servers_open(self, endpoints, headroom)


def _go(d: Any, req: Any, explain: bool, only: list[Endpoint] | None, mark: bool) -> Any:
    res = d.pick(req, explain, judge=True, only=only)
    d.on_dispatched(req, res.primary)
    if mark:
        State.marked[(req.request_id, res.primary.address)] = None
    return res


def pick_late(self: Any, req: Any, explain: bool) -> Any:
    flow, det, trial = self.flow, self.detector, State.trial
    if trial == "shipped" or flow is None or not isinstance(det, ConcurrencyDetector) or not det.max_pending:
        return _ORIG_PICK(self, req, explain)
    try:
        cands = self.candidates(req)
    except Exception:
        return _ORIG_PICK(self, req, explain)
    ctl, now = flow.ctl, self.clock()
    back = ctl.held_back(req, now)
    if trial == "idle":
        mark = False
    elif trial.startswith("miss"):
        mark = back and now + ctl.service_ttft > ctl.slo_deadline(req, now)
    else:
        mark = back
    if mark:
        if trial == "pack-over":
            # (no mark kept: the pick looks at every pending request, as the gate does)
            packed = [ep for ep in cands if 0 < pending(ep) < det.max_pending
                      and ep.inflight.requests < det.max_requests]  # fmt: skip
            return _go(self, req, explain, packed, False) if packed else _ORIG_PICK(self, req, explain)
        if trial.startswith("servers") and ctl.headroom:
            ok = servers_open(det, cands, ctl.headroom)
            if ok:
                return _go(self, req, explain, ok, True)
        if trial in ("miss-pack", "miss-pack-only", "miss-pack-room", "miss-pack-idle"):
            packed = [ep for ep in cands if 0 < pending(ep) <= marked_at(ep) and pending(ep) < det.max_pending
                      and ep.inflight.requests < det.max_requests]  # fmt: skip
            if packed:
                return _go(self, req, explain, packed, True)
        res = _ORIG_PICK(self, req, explain)
        State.marked[(req.request_id, res.primary.address)] = None
        return res
    if trial not in ("pack-over", "miss-pack-only"):
        free = [ep for ep in cands if marked_at(ep) == 0]
        if trial == "miss-pack-room":
            free = [
                ep for ep in free if pending(ep) < det.max_pending and ep.inflight.requests < det.max_requests
            ]
        elif trial in ("miss-pack-idle", "idle"):
            free = [ep for ep in free if pending(ep) == 0 and ep.inflight.requests < det.max_requests]
        if free and len(free) < len(cands):
            only = self._free_slot(req)
            only = [ep for ep in free if only is None or ep in only] or free
            return _go(self, req, explain, only, False)
    return _ORIG_PICK(self, req, explain)


def on_first_token(self: Any, req: Any, endpoint: Endpoint, learn: bool = True) -> None:
    State.marked.pop((req.request_id, endpoint.address), None)
    _ORIG_FIRST(self, req, endpoint, learn)


def on_finished(self: Any, req: Any, endpoint: Endpoint, usage: Any, ok: bool) -> None:
    State.marked.pop((req.request_id, endpoint.address), None)
    _ORIG_FINISHED(self, req, endpoint, usage, ok)


def patch() -> None:
    Director._pick_late = pick_late  # type: ignore[method-assign]
    Director.on_first_token = on_first_token  # type: ignore[method-assign]
    Director.on_finished = on_finished  # type: ignore[method-assign]
    ConcurrencyDetector.saturated_reserving = reserving  # type: ignore[method-assign]


def hit(o: Outcome) -> bool:
    return not o.status and o.ttft is not None and o.ttft <= _slo(o.tenant)


def simulate(arm: str, mix: str, args: argparse.Namespace, base: float) -> Any:
    State.marked.clear()
    sim = FlowSim(
        arm, args.replicas, args.profile, args.seed, args.ttl, max_num_seqs=args.max_num_seqs,
        max_pending=2, headroom=0.75, headroom_on="pending", ttft_target=0.05, running_reserve=True,
    )  # fmt: skip
    arrivals = Mix(base, mix, args.duration).arrivals(random.Random(args.seed))
    return sim.simulate(arrivals, args.duration + 60.0)


def cycle(run: Any, args: argparse.Namespace, line: float | None) -> dict[str, Any]:
    cycles = max(1, round((args.duration - args.warmup) / 10.0))
    flood_hit = [0.0] * 10
    for o in run.outcomes:
        if o.tenant == FLOOD and o.sent is not None and args.warmup <= o.sent < args.duration and hit(o):
            flood_hit[int(o.sent % 10.0)] += 1 / cycles
    backlog, t = [], args.warmup
    while t < args.duration:
        backlog.append(sum(1 for o in run.outcomes if o.start < t and (o.sent is None or o.sent >= t)
                           and not o.status))  # fmt: skip
        t += 10.0
    over: Counter[int] = Counter()
    for o in run.outcomes:
        if o.tenant not in QUIET or o.start < args.warmup or line is None:
            continue
        if o.status or o.ttft is None or o.ttft > line:
            over[int(o.start % 10.0)] += 1
    return {"flood_hit": flood_hit, "backlog": backlog, "quiet_over": [over[s] for s in range(10)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--profile", default="llama3-8b-h100")
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--load", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--ttl", type=float, default=30.0)
    p.add_argument("--trials", default="shipped,miss-pack")
    p.add_argument("--no-reference", dest="reference", action="store_false")
    args = p.parse_args(argv)
    trials = args.trials.split(",")
    for t in trials:
        if t not in TRIALS:
            p.error(f"--trials: {t!r} is none of {', '.join(TRIALS)}")
    patch()
    _cap, base = rates(args.replicas, args.profile, args.seed, args.max_num_seqs, args.load, args.duration)
    cell = f"{args.replicas} x {args.max_num_seqs}, seed {args.seed}, --ttl {args.ttl:g}"
    if args.reference:
        State.trial = "shipped"
        ref = summarize(simulate("reference", "flood", args, base), args.warmup)
        print(f"{cell}: reference all SLO {ref['slo_attainment']:.4f}, shed {ref['shed']}, "
              f"unanswered {ref['unanswered']}")  # fmt: skip
    for trial in trials:
        State.trial = trial
        calm = summarize(simulate(ARM, "calm", args, base), args.warmup)
        run = simulate(ARM, "flood", args, base)
        s = summarize(run, args.warmup)
        c90 = calm["quiet"]["p90_ttft_s"]
        ratio = p90_ratio(s["quiet"]["p90_ttft_s"], c90)
        line = baseline(c90)
        cyc = cycle(run, args, 1.5 * line if line else None)
        hr = s["headroom_mean"]
        crit = s["bands"]["critical (10)"]["slo_attainment"]
        head = "-" if hr is None else f"{hr:.2f}"
        print(f"{cell}: {trial}: quiet p90 x calm {ratio:.3f}, all SLO {s['slo_attainment']:.4f}, "
              f"critical SLO {crit:.3f}, shed {s['shed']} (503 {s['shed_503']}), "
              f"unanswered {s['unanswered']}, mean headroom {head}")  # fmt: skip
        hits = " ".join(f"{h:.0f}" for h in cyc["flood_hit"])
        print(f"  flooder hits a second by second of the cycle: {hits}; backlog at the cycles' starts "
              + " ".join(map(str, cyc["backlog"])))  # fmt: skip
        q = cyc["quiet_over"]
        print(f"  quiet over 1.5x calm by second of the cycle: {' '.join(map(str, q))} "
              f"(flood on, s 0-4: {sum(q[:5])}; off, s 5-9: {sum(q[5:])})")  # fmt: skip
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
