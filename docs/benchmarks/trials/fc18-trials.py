"""Session 18 (fc18) trial rules for issue #15, as patches over `kvgate bench flowcontrol` (and, with
FC18_TRACE=1, over `scripts/slo_miss_trace.py`). Not landed; kept so every trial figure in
docs/benchmarks/flowcontrol.md ("Session 18") reruns. Usage, from the repository root:

    FC18=clean FC18_K=2 FC18_KDUE=1 FC18_DUE=0.85 PYTHONPATH=$PWD/src nice -n 10 python \
      docs/benchmarks/trials/fc18-trials.py --arms kvgate-reserve-feasible --headroom 0.75 \
      --headroom-on pending --ttft-target 0.05 --running-reserve --load 0.7 --seed 0 --out /tmp/x

FC18 (unset: no patch, the landed code):

- clean (4 x 128 at 70-80 %): keep K servers' next step free of held-back prefills instead of holding
  the flood back in the queue. Acts on the arm with fairShareRunningReserve (kvgate-reserve-feasible
  --running-reserve); the pending headroom and the running reserve are replaced by this rule:
  - a request not held back (the quiet tenants, the critical band) goes to a server with no request
    pending (sent, no first token yet: that server's step in progress is decode-only, so its prefill
    starts within one decode step and shares it with no other prefill of ours); none such: to one
    with no request not held back pending, fewest pending first;
  - a held-back request (a flow over its share, the sheddable band) may go only to a server with no
    request not held back pending, and only while K (FC18_K) servers other than it stay with nothing
    pending; K_DUE (FC18_KDUE) instead of K once the request has used FC18_DUE of its TTFT slack; it
    prefers servers with held-back requests already pending (stacking the flood's prefills), under the
    detector's own bound (maxPendingRequests) per server.
- oracle (an upper bound for placement by step phase, not implementable as is: it reads the simulated
  servers' true state): as clean, but with no K rule (a held-back request goes anywhere the detector
  and the no-protected-pending rule allow; FC18_SPREAD=1: without preferring servers with held-back
  requests pending), and a request not held back goes to the one server where the rest of its step in
  progress + its own prefill next to that server's running batch + 0.026 s per request waiting or
  pending there is least; FC18_BYPASS=1: such a request never waits in kvgate's queue (the detector is
  not asked for it).
- deadline (the shedding question): a sheddable request with an explicit TTFT SLO header still queued
  at its SLO deadline is shed then (429, as sloAdmission's give-up), not at the TTL.
"""

import os
import sys

from kvgate.flowcontrol import controller as C
from kvgate.flowcontrol.policies import SLO_TTFT_HEADERS, header_ms
from kvgate.requestcontrol import director as D

MODE = os.environ.get("FC18", "")
K = int(os.environ.get("FC18_K", "1"))
K_DUE = int(os.environ.get("FC18_KDUE", str(K)))  # K for a held-back request past FC18_DUE of its slack
DUE = float(os.environ.get("FC18_DUE", "0.5"))

if MODE in ("clean", "oracle"):
    prot: dict[str, dict[str, None]] = {}  # endpoint address -> request ids not held back, pending
    where: dict[str, str] = {}
    orig_disp, orig_first, orig_fin = (
        D.Director.on_dispatched,
        D.Director.on_first_token,
        D.Director.on_finished,
    )
    orig_sat, orig_free = D.Director.saturated, D.Director._free_slot

    def _on(self):
        return self.flow is not None and self.flow.ctl.cfg.fair_share_running_reserve

    def _pend(ep):
        return ep.inflight.requests - ep.inflight.decoding

    def _held(self, req, now):
        return self.flow.ctl.held_back(req, now)

    def _drop(req):
        a = where.pop(req.request_id, None)
        if a is not None:
            prot.get(a, {}).pop(req.request_id, None)

    def on_dispatched(self, req, ep, *a, **k):
        if _on(self) and req.request_id not in where and not _held(self, req, self.clock()):
            where[req.request_id] = ep.address
            prot.setdefault(ep.address, {})[req.request_id] = None
        return orig_disp(self, req, ep, *a, **k)

    def on_first_token(self, req, ep, *a, **k):
        _drop(req)
        return orig_first(self, req, ep, *a, **k)

    def on_finished(self, req, ep, *a, **k):
        _drop(req)
        return orig_fin(self, req, ep, *a, **k)

    def _k(self, req, now):
        if K_DUE == K:
            return K
        slo = self.flow.ctl.slo_deadline(req, now) - (req.arrival_time or now)
        left = self.flow.ctl.slo_deadline(req, now) - now
        return K_DUE if 0 < left <= (1 - DUE) * slo else K

    REPL = {}
    if MODE == "oracle":
        from kvgate.bench import flowcontrol_bench as FB
        from kvgate.sim.profiles import causal_pairs

        orig_init = FB.FlowSim.__init__

        def init(self, *a, **kw):
            orig_init(self, *a, **kw)
            for ep, rep in zip(self.endpoints, self.replicas, strict=True):
                REPL[ep.address] = rep

        FB.FlowSim.__init__ = init
        _own = {}

        def own(profile, d):
            if d not in _own:
                m = profile.model
                ctx = 1024 + 64
                _own[d] = m.step_s(1024 + d, 1024, causal_pairs(0, 1024), d, d * ctx, ctx if d else 0)
            return _own[d]

        def oracle_cost(ep, now):
            rep = REPL[ep.address]
            eng = rep.engine
            res = (rep._step_end.when - now) if rep.busy else 0.0
            return res + own(eng.config.step_profile, eng.num_running) + 0.026 * (eng.num_waiting + _pend(ep))

    def _allowed(self, cands, now, k=K):
        open_ = [ep for ep in cands if not self.detector.saturated([ep], now)]
        clean = [ep for ep in cands if _pend(ep) <= 0]
        ok = []
        for ep in open_:
            if prot.get(ep.address):
                continue
            others = len(clean) - (1 if _pend(ep) <= 0 else 0)
            if MODE == "oracle" or others >= k:
                ok.append(ep)
        if MODE == "oracle" and os.environ.get("FC18_SPREAD"):
            return ok
        stacked = [ep for ep in ok if _pend(ep) > 0]
        return stacked or ok

    def saturated(self, req):
        if not _on(self):
            return orig_sat(self, req)
        cands, now = self.candidates(req), self.clock()
        if _held(self, req, now):
            return not _allowed(self, cands, now, _k(self, req, now))
        if MODE == "oracle" and os.environ.get("FC18_BYPASS"):
            return False  # a protected request never waits in kvgate's queue
        return self.detector.saturated(cands, now)

    def _free_slot(self, req):
        if not _on(self):
            return orig_free(self, req)
        cands, now = self.candidates(req), self.clock()
        if _held(self, req, now):
            return _allowed(self, cands, now, _k(self, req, now)) or None
        if MODE == "oracle":
            ok = [ep for ep in cands if not self.detector.saturated([ep], now)] or list(cands)
            return [min(ok, key=lambda ep: oracle_cost(ep, now))]
        clean = [ep for ep in cands if _pend(ep) <= 0 and not self.detector.saturated([ep], now)]
        if clean:
            return clean
        free = [ep for ep in cands if not prot.get(ep.address) and not self.detector.saturated([ep], now)]
        if free:
            least = min(_pend(ep) for ep in free)
            return [ep for ep in free if _pend(ep) == least]
        return None

    D.Director.on_dispatched, D.Director.on_first_token, D.Director.on_finished = (
        on_dispatched,
        on_first_token,
        on_finished,
    )
    D.Director.saturated, D.Director._free_slot = saturated, _free_slot

if MODE == "deadline":
    orig_enqueue = C.FlowController.enqueue

    def enqueue(self, req, now, *, handle=None, explain=False):
        item = orig_enqueue(self, req, now, handle=handle, explain=explain)
        if req.sheddable and header_ms(req.headers, SLO_TTFT_HEADERS):
            self.give_up(item, item.slo_deadline)
        return item

    C.FlowController.enqueue = enqueue

if os.environ.get("FC18_TRACE"):
    sys.argv = [sys.argv[0], *sys.argv[1:]]
    import runpy

    runpy.run_path("scripts/slo_miss_trace.py", run_name="__main__")
else:
    from kvgate.bench.flowcontrol_bench import main

    sys.exit(main(sys.argv[1:]))
