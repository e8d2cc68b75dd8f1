"""Flow control's dispatch path with and without the fleet-wide queue order (``flowcontrol.fleet``).

    PYTHONPATH=src python scripts/fc_fleet_cost.py none|marks [--requests 4000] [--repeats 9]
    PYTHONPATH=src python scripts/fc_fleet_cost.py gate [--workers 8] [--requests 4000] [--repeats 9]
    PYTHONPATH=src python scripts/fc_fleet_cost.py pinned [--requests 4000] [--repeats 9]
    ... [--ordering slo-feasible]   (none, marks, gate: every band so, each request a 1 s TTFT SLO)

``marks``: a ``FlowDispatcher`` with a pool mark on a two-worker marks buffer, the other worker's mark
fresh with a lower band waiting (every gate check reads it and defers nothing); ``none``: no mark (one
process; on a tree without ``flowcontrol.fleet`` too). Per request, microseconds, the median over
``--repeats``: ``FlowDispatcher.arrive`` picked at once (queue empty, pool free), ``arrive`` queued (pool
full), and one dispatch pass that sends one queued request (plus the mark's publish). ``gate``: one gate
check alone (``PoolMark.defers`` of a quiet request) with ``--workers`` workers that all have the pool
(as ``kvgate serve`` gives each its marks at start) and nothing queued ("no marks"), then with each other
worker's mark fresh with a lower band waiting ("marks"), then with a request of the same band, not
held back, that arrived later ("marks, same band": every field read); and with the others on another
pool only ("pool only here"). ``pinned`` (flw19, review s18-doors M3): one dispatch pass sending one
queued request, alone in its band, and then with a head before it in its band that waits for its own
saturated endpoint (a Responses follow-up pinned to its busy home): passed over, put back (one process,
no marks; the Director's pick off the home is not run: the pick is a stub). Time injected
(``now`` fixed); the pick is a stub. Run the two modes back to back, more than once: on a loaded machine
the spread between runs is larger than the difference. ``--ordering slo-feasible`` (session 25): the
controllers order ``slo-feasible`` and every request carries ``x-slo-ttft-ms: 1000`` (none past it at the
injected ``now``), so a gate check also asks whether its request is past its deadline where the other
worker's mark is of a lower band or of its own (its header parsed: ``gate``'s controller has had its band
since one request came and went, review s25-rev-wk25 F2).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.flowcontrol.dispatcher import FlowDispatcher
from kvgate.scheduling.types import InferenceRequest, PickResult


class Waiter:
    def __init__(self) -> None:
        self.r: Any = None

    def done(self) -> bool:
        return self.r is not None

    def set_result(self, r: Any) -> None:
        self.r = r

    def set_exception(self, e: BaseException) -> None:
        self.r = e


ORDERING = {"ordering": "fcfs"}  # (--ordering)


def _cfg(**kw: Any) -> FlowControlConfig:
    return FlowControlConfig(ttl=60.0, ordering=ORDERING["ordering"], **kw)


def _req(rid: str, **kw: Any) -> InferenceRequest:
    r = InferenceRequest(rid, "m", prompt_tokens=10, max_tokens=4, **kw)
    if ORDERING["ordering"] == "slo-feasible":
        r.headers = {"x-slo-ttft-ms": "1000"}
    return r


def make(marks: bool) -> tuple[FlowDispatcher, dict[str, int]]:
    state = {"free": 1 << 30}
    ctl = FlowController(_cfg(fair_share_headroom=0.25))
    res = PickResult([object()])
    d = FlowDispatcher(
        ctl, pick=lambda _r, _e: res, saturated=lambda _r: state["free"] <= 0, clock=lambda: 1.0
    )
    if marks:
        from kvgate.flowcontrol.fleet import FleetMarks, segment_size

        buf = memoryview(bytearray(segment_size(2)))
        d.fleet = FleetMarks(buf, 2, 0).pool("default")
        other = FleetMarks(buf, 2, 1).pool("default")
        octl = FlowController(_cfg())
        octl.enqueue(_req("o", priority=-1, fairness_id="b"), 1.0)
        assert other is not None
        other.publish(octl, 1.0)
    return d, state


def once(marks: bool, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    reqs = [_req(f"r{i}", fairness_id=f"t{i % 5}") for i in range(n)]
    d, st = make(marks)
    t = time.perf_counter()
    for r in reqs:
        d.arrive(r, 1.0, Waiter())
    out["arrive, picked at once"] = (time.perf_counter() - t) / n * 1e6
    d, st = make(marks)
    st["free"] = 0
    t = time.perf_counter()
    for r in reqs:
        d.arrive(r, 1.0, Waiter())
    out["arrive, queued"] = (time.perf_counter() - t) / n * 1e6
    fleet = getattr(d, "fleet", None)
    t = time.perf_counter()
    for _ in range(n):
        st["free"] = 1
        d.step()
        if fleet is not None:
            fleet.publish(d.ctl, 1.0)
    out["dispatch pass sending one"] = (time.perf_counter() - t) / n * 1e6
    return out


def pinned(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, head in (("dispatch pass sending one", False), ("... past a pinned head", True)):
        d, st = make(False)
        d.saturated = lambda r, st=st: r.subset is not None or st["free"] <= 0
        st["free"] = 0
        if head:
            pin = InferenceRequest("p", "m", prompt_tokens=10, max_tokens=4, fairness_id="t0")
            pin.subset = frozenset({"10.0.0.9:8000"})
            d.arrive(pin, 1.0, Waiter())
        for i in range(n):
            r = InferenceRequest(f"r{i}", "m", prompt_tokens=10, max_tokens=4, fairness_id=f"t{i % 5}")
            d.arrive(r, 1.0, Waiter())
        t = time.perf_counter()
        for _ in range(n):
            st["free"] = 1
            d.step()
        out[label] = (time.perf_counter() - t) / n * 1e6
        assert len(d) == (1 if head else 0)  # (each pass sent one; the pinned head stayed)
    return out


def gate(workers: int, n: int) -> dict[str, float]:
    from kvgate.flowcontrol.fleet import FleetMarks, segment_size

    out: dict[str, float] = {}
    buf = memoryview(bytearray(segment_size(workers)))
    marks = [FleetMarks(buf, workers, w).pool("default") for w in range(workers)]
    mine = marks[0]
    assert mine is not None
    ctl = FlowController(_cfg())
    # The band there and nothing waiting (``arrive``'s fast path once the pool has queued once: bands stay):
    # with no band the slo-feasible check returned before the deadline (review s25-rev-wk25 F2).
    ctl.take(ctl.enqueue(_req("z", fairness_id="z"), 1.0), 1.0)
    r = _req("q", fairness_id="q")
    lone = memoryview(bytearray(segment_size(workers)))
    for w in range(1, workers):
        FleetMarks(lone, workers, w).pool("other")
    alone = FleetMarks(lone, workers, 0).pool("default")
    assert alone is not None
    t = time.perf_counter()
    for _ in range(n):
        alone.defers(r, ctl, 1.0)
    out["gate check, pool only here"] = (time.perf_counter() - t) / n * 1e6
    for label, nxt in (("no marks", -1), ("marks", 0), ("marks, same band", None)):
        t = time.perf_counter()
        for _ in range(n):
            mine.defers(r, ctl, 1.0)
        out[f"gate check, {label}"] = (time.perf_counter() - t) / n * 1e6
        if nxt is None:
            break
        # next: the others' marks fresh with a lower band waiting, then with one of the quiet request's
        # band, not held back, that arrived after it (every field read, the held-back test made; fcw16)
        octl = FlowController(_cfg())
        o = _req("o", priority=nxt, fairness_id="b")
        o.arrival_time = 2.0
        octl.enqueue(o, 1.0)
        for other in marks[1:]:
            assert other is not None
            other.publish(octl, 1.0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("none", "marks", "gate", "pinned"))
    p.add_argument("--workers", type=int, default=2, help="gate: workers sharing the marks")
    p.add_argument(
        "--requests", type=int, default=4000, help="per measurement (the queue holds at most 5000)"
    )
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--ordering", choices=("fcfs", "slo-feasible"), default="fcfs")
    a = p.parse_args()
    ORDERING["ordering"] = a.ordering
    if a.mode == "gate":
        runs = [gate(a.workers, a.requests) for _ in range(a.repeats)]
    elif a.mode == "pinned":
        runs = [pinned(a.requests) for _ in range(a.repeats)]
    else:
        runs = [once(a.mode == "marks", a.requests) for _ in range(a.repeats)]
    for k in runs[0]:
        print(f"{a.mode:6s} {k:28s} median {statistics.median(r[k] for r in runs):6.2f} us")


if __name__ == "__main__":
    main()
