"""The cost of the held-back test and the running reserve on the fleet's counts (``fleet.FleetShares``).

    PYTHONPATH=src python scripts/fc_fleet_shares_cost.py [--flows 7] [--calls 20000] [--repeats 7]

Two workers' controllers on one shared buffer (a ``bytearray``, as the segment), the live bench's flow
control (fair share 0.75, TTFT target 0.05 s, running reserve), ``--flows`` flows with requests in flight
and arrivals in both workers. Per call, microseconds, the median over ``--repeats``: the held-back test of
a request (``FlowController.held_back``, what the dispatch gate asks for every flow-controlled request,
and again at its dispatch and first token), and the reserve's size (``free_reserve``, asked for a
held-back request, at a new instant each call), each on the worker's own counts ("own": ``fleet`` None,
as one process and main) and on the fleet's ("fleet"); and one sync of the shares (``FleetShares.sync``:
the worker's row written, the other's folded), which every worker runs every ``SHARED_INFLIGHT_SYNC_S``
(5 ms) per pool with flow control, off the request path. Time injected; run it more than once on a
loaded machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.fleet import FleetMarks, FleetShares, segment_size
from kvgate.scheduling.types import InferenceRequest

CFG = FlowControlConfig(
    ttl=60.0, fair_share_headroom=0.75, fair_share_ttft_target=0.05, fair_share_running_reserve=True
)


def setup(flows: int) -> tuple[list[FlowController], list[FleetShares]]:
    buf = memoryview(bytearray(segment_size(2)))
    ctls = [FlowController(CFG) for _ in range(2)]
    shares = []
    for w in range(2):
        mark = FleetMarks(buf, 2, w).pool("default")
        assert mark is not None
        shares.append(mark.shares)
    now = 100.0
    for i in range(flows * 4):
        now += 0.01
        flow = f"tenant-{i % flows}"
        for w, ctl in enumerate(ctls):
            r = InferenceRequest(f"{w}-{i}", "m", prompt_tokens=100, max_tokens=50, fairness_id=flow)
            ctl.arrived(r, now)
            ctl.started(flow, r, now)
            if i % 3 == 0:
                ctl.ended(flow, now)
    for _ in range(2):
        for s, ctl in zip(shares, ctls, strict=True):
            s.sync(ctl, now)
    return ctls, shares


def per_call(fn: object, calls: int) -> float:
    f = fn  # (a callable of no argument)
    t = time.perf_counter()
    for _ in range(calls):
        f()  # type: ignore[operator]
    return (time.perf_counter() - t) / calls * 1e6


def _reserve(ctl: FlowController, now: float) -> object:
    clock = [now]

    def reserve() -> int:
        clock[0] += 1e-6  # (a new instant: not the cached answer)
        return ctl.free_reserve(clock[0], 24)

    return reserve


def once(flows: int, calls: int) -> dict[str, float]:
    ctls, shares = setup(flows)
    ctl, share = ctls[0], shares[0]
    assert ctl.fleet is share
    now = 100.0 + flows * 4 * 0.01
    r = InferenceRequest("x", "m", prompt_tokens=100, max_tokens=50, fairness_id="tenant-0")
    out: dict[str, float] = {}
    for mode in ("own", "fleet"):
        ctl.fleet = None if mode == "own" else share
        out[f"held_back, {mode}"] = per_call(lambda: ctl.held_back(r, now), calls)
        out[f"free_reserve, {mode}"] = per_call(_reserve(ctl, now), calls)
    ctl.fleet = share
    out["sync (5 ms, per pool)"] = per_call(lambda: share.sync(ctl, now), max(1, calls // 10))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flows", type=int, default=7)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    runs = [once(args.flows, args.calls) for _ in range(args.repeats)]
    print(f"{args.flows} flows, 2 workers; microseconds per call, median of {args.repeats}")
    for k in runs[0]:
        print(f"  {k:28s} {statistics.median(r[k] for r in runs):8.2f}")


if __name__ == "__main__":
    main()
