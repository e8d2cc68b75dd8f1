"""Session 16 (fc16) trial release rules for issue #15, as patches over `kvgate bench flowcontrol`.

Not landed; kept so every trial figure in docs/benchmarks/flowcontrol.md ("Session 16") reruns. Usage,
from the repository root (the arguments are `kvgate bench flowcontrol`'s; the patches act only on the
arm with `fairShareRunningReserve`, `kvgate-reserve-feasible` with `--running-reserve`):

    VAR=neg PYTHONPATH=$PWD/src nice -n 10 python docs/benchmarks/trials/fc16-variants.py \
      --replicas 2 --max-num-seqs 16 --arms kvgate-reserve-feasible --headroom 0.75 \
      --headroom-on pending --ttft-target 0.05 --running-reserve --load 0.7 --seed 0 --out /tmp/x

VAR:
- base: no patch (the same run as `kvgate bench flowcontrol` with those arguments);
- neg: the reserve's learned correction `free_extra` may go below 0 (down to minus the cap): the
  reserve settles where the measured misses by waiting are its budget, whatever the model keeps;
- cont: the model's miss budget `reserve_miss` divided by the share (decayed over 60 s) of the
  protected dispatches made while the reserve was binding (the last gate check refused a held-back
  request and something was queued), at most max(CONT_CAP=0.5, the budget): misses can only happen
  there, so the budget is spread over those; prints that share, averaged over the gate's checks, at
  exit (`STATS share`);
- pack: a held-back request goes to the most loaded endpoint that can take it (the others' pick as
  before), to leave lighter endpoints for the flows not held back;
- iso (ISO_K=1): the first K endpoints take no held-back request; the flows not held back go to one of
  them while it is not saturated, else anywhere; the held-back requests are gated on the other
  endpoints by the detector alone (no headroom, no reserve);
- cap (ISO_K=2, ISO_C=32): as iso, but held-back requests may hold up to C requests in flight on the
  first K endpoints;
- rot (ISO_K): no fixed endpoints: a held-back request leaves only while more than K candidate
  endpoints have no request pending (dispatched, no first token) or onto one that has one already;
  the others go to an endpoint with none pending.
"""
import math
import os
import sys

from kvgate.flowcontrol import controller as C

VAR = os.environ.get("VAR", "base")

if VAR.startswith("neg"):
    # free_extra may go below 0 (down to -cap): the learned correction takes slots away too
    orig_obs = C.FlowController.observe_first_token
    def observe_first_token(self, req, ttft, service=None, held=None):
        cfg = self.cfg
        before = self.free_extra
        orig_obs(self, req, ttft, service, held)
        target = cfg.fair_share_ttft_target
        if not target or service is None or not cfg.fair_share_running_reserve:
            return
        held_then = self.held_back(req) if held is None else held
        if held_then:
            return
        waited = 1.0 if ttft > target >= service else 0.0
        extra = before + C.FREE_GAIN * (waited - self.reserve_miss)
        lo = -float(self._extra_cap or 0)
        self.free_extra = max(lo, min(extra, self._extra_cap) if self._extra_cap else extra)
        self._reserve_cache = (None, 0)
    C.FlowController.observe_first_token = observe_first_token
    def free_reserve(self, now, cap):
        key = (now, cap)
        if self._reserve_cache[0] == key:
            return self._reserve_cache[1]
        if cap > self._extra_cap:
            self._extra_cap = cap
        if self.free_extra > self._extra_cap:
            self.free_extra = float(self._extra_cap)
        take, give = self.rates(now)
        f = max(0, min(cap, C.free_slots(take, give, self.reserve_miss, cap) + round(self.free_extra)))
        self._reserve_cache = (key, f)
        return f
    C.FlowController.free_reserve = free_reserve

if VAR.startswith("pack"):
    # held-back work packed onto the most loaded endpoint that can take it; the others' pick unchanged
    from kvgate.requestcontrol import director as D
    orig_free = D.Director._free_slot
    def _free_slot(self, req):
        flow = self.flow
        if flow is None or not flow.ctl.cfg.fair_share_running_reserve:
            return orig_free(self, req)
        now = self.clock()
        if not flow.ctl.held_back(req, now):
            return orig_free(self, req)
        cands = self.candidates(req)
        ok = [ep for ep in cands if not self.detector.saturated([ep], now)]
        if not ok:
            return orig_free(self, req)
        top = max(ep.inflight.requests for ep in ok)
        return [ep for ep in ok if ep.inflight.requests == top]
    D.Director._free_slot = _free_slot

if VAR.startswith("cont"):
    # the reserve's miss budget spread over the protected dispatches that met the reserve binding
    from kvgate.requestcontrol import director as D
    CAP = float(os.environ.get("CONT_CAP", "0.5"))
    W = C.AIM_WINDOW_S
    orig_rf = D.Director._reserve_full
    def _reserve_full(self, req, cands, now):
        full = orig_rf(self, req, cands, now)
        if self.flow is not None:
            self.flow.ctl._binding = full
        return full
    D.Director._reserve_full = _reserve_full
    orig_started = C.FlowController.started
    def started(self, flow, req=None, now=None):
        held = orig_started(self, flow, req, now)
        if req is not None and now is not None and self.cfg.fair_share_running_reserve:
            if held:
                self._binding = False  # (a held-back request went: the reserve was not binding)
            else:
                at = getattr(self, "_c_at", None)
                k = 1.0 if at is None else math.exp(-max(0.0, now - at) / W)
                cont = 1.0 if (getattr(self, "_binding", False) and self.count > 0) else 0.0
                self._c_all = getattr(self, "_c_all", 0.0) * k + 1.0
                self._c_cont = getattr(self, "_c_cont", 0.0) * k + cont
                self._c_at = now
        return held
    C.FlowController.started = started
    STATS = {"n": 0, "share": 0.0}
    def free_reserve(self, now, cap):
        key = (now, cap)
        if self._reserve_cache[0] == key:
            return self._reserve_cache[1]
        if cap > self._extra_cap:
            self._extra_cap = cap
        if self.free_extra > self._extra_cap:
            self.free_extra = float(self._extra_cap)
        take, give = self.rates(now)
        m = self.reserve_miss
        n_all = getattr(self, "_c_all", 0.0)
        share = getattr(self, "_c_cont", 0.0) / n_all if n_all >= 20 else 1.0
        STATS["n"] += 1
        STATS["share"] += share
        m_eff = min(max(CAP, m), m / max(share, 1e-9))
        f = min(cap, C.free_slots(take, give, m_eff, cap) + int(self.free_extra + 0.5))
        self._reserve_cache = (key, f)
        return f
    C.FlowController.free_reserve = free_reserve
    import atexit
    atexit.register(lambda: print("STATS share %.3f" % (STATS["share"] / max(1, STATS["n"]))))

if VAR in ("iso", "cap", "rot"):
    # 4 x 128 routing trials: K endpoints (the first K addresses) kept for the flows not held back
    from kvgate.requestcontrol import director as D
    K = int(os.environ.get("ISO_K", "1"))
    CAPC = int(os.environ.get("ISO_C", "0"))  # cap: held-back work may hold at most C in flight there
    orig_sat, orig_free = D.Director.saturated, D.Director._free_slot
    def _idx(ep):
        return int(ep.address.split(".")[3].split(":")[0])
    def _pend(ep):
        return ep.inflight.requests - ep.inflight.decoding
    def _on(self):
        return self.flow is not None and self.flow.ctl.cfg.fair_share_running_reserve
    def _allowed(self, cands, now):
        open_ = [ep for ep in cands if not self.detector.saturated([ep], now)]
        if VAR == "iso":
            return [ep for ep in open_ if _idx(ep) >= K]
        if VAR == "cap":
            return [ep for ep in open_ if _idx(ep) >= K or ep.inflight.requests < CAPC]
        idle = [ep for ep in cands if _pend(ep) <= 0]  # rot: K endpoints with no prefill pending
        return open_ if len(idle) > K else [ep for ep in open_ if _pend(ep) > 0]
    def saturated(self, req):
        if not _on(self):
            return orig_sat(self, req)
        cands, now = self.candidates(req), self.clock()
        if self.flow.ctl.held_back(req, now):
            return not _allowed(self, cands, now)
        return self.detector.saturated(cands, now)
    def _free_slot(self, req):
        if not _on(self):
            return orig_free(self, req)
        cands, now = self.candidates(req), self.clock()
        if self.flow.ctl.held_back(req, now):
            return _allowed(self, cands, now) or None
        if VAR == "rot":
            ok = [ep for ep in cands if _pend(ep) <= 0 and not self.detector.saturated([ep], now)]
        else:
            ok = [ep for ep in cands if _idx(ep) < K and not self.detector.saturated([ep], now)]
        return ok or None
    D.Director.saturated, D.Director._free_slot = saturated, _free_slot

from kvgate.bench.flowcontrol_bench import main  # noqa: E402 (after the patches above)

sys.exit(main(sys.argv[1:]))
