"""Review s25-rev-wk25's findings on the order between ``--workers`` (``flowcontrol/fleet.py``), from the
review's tests (``/work/team/reviews/s25-rev-wk25-tests``), adapted. No process is started; time is injected.

- F1: the fleet part of the shared segment has a layout mark at a fixed offset (its first word): a worker
  spawned from code of another layout refuses to start instead of reading the rows at another stride.
- F2: ``scripts/fc_fleet_cost.py gate --ordering slo-feasible`` times the overdue check it is quoted for.
- F3: an arrival already past its deadline at a worker with nothing queued is judged by its deadline.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flowcontrol.test_fleet_feasible_bands_fc24b import FeasibleFleet, _req
from kvgate.flowcontrol import fleet
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import FlowController
from kvgate.gateway import workers
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.scheduling.types import InferenceRequest

REPO = Path(__file__).resolve().parents[2]
OLD = "4b81f3c8"  # main before wk25: the mark had 5 fields, the join entry 6, and no layout mark


def _script(name: str) -> Any:
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_rev_wk25_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cost_script_slo_feasible_gate_times_the_overdue_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """F2: ``fc_fleet_cost.py gate --ordering slo-feasible`` is the docs' measure of the new check; its
    controller had no band (nothing ever queued), so ``fleet._overdue`` returned at the missing band and
    the deadline (a header parse per gate check) was never computed."""
    cost = _script("fc_fleet_cost")
    monkeypatch.setitem(cost.ORDERING, "ordering", "slo-feasible")
    asked: list[bool] = []  # per ``_overdue`` call: was the request's band there?
    parsed: list[bool] = []  # per ``_overdue`` call: was its deadline computed (the check run)?
    real, deadline = fleet._overdue, FlowController.slo_deadline

    def counted(ctl: FlowController, req: InferenceRequest, now: float) -> bool:
        asked.append(ctl.bands.get(req.priority) is not None)
        parsed.append(False)
        return real(ctl, req, now)

    def seen(self: FlowController, req: InferenceRequest, now: float) -> float:
        if parsed:
            parsed[-1] = True
        return deadline(self, req, now)

    monkeypatch.setattr(fleet, "_overdue", counted)
    monkeypatch.setattr(FlowController, "slo_deadline", seen)
    cost.gate(2, 10)
    assert asked, "the gate figure never reaches the overdue check"
    assert all(asked), "a timed overdue check lacked its band (not as in a pool that has queued once)"
    assert all(parsed), "a timed overdue check returned before its deadline: the figure does not time it"


def test_an_arrival_past_its_deadline_at_an_empty_worker_waits_for_a_feasible_lower_band() -> None:
    """F3: one process would queue an arrival already past its TTFT deadline after a lower band's head that
    can still make its own (``heads``' late tier). At a worker with nothing queued the arrival takes
    ``arrive``'s fast path, and ``_overdue`` said "not overdue" (its band not there yet, or the last
    abandoned ``heads`` walk's part left in ``ctl._jump``): sent at once, ahead of worker 1's batch head."""
    f = FeasibleFleet()
    f.now = 104.0
    f.arrive(1, _req("batch", "batch", -1, 10.0, 104.0))
    f.now = 105.0
    f.step(1)  # worker 1's mark: a feasible band -1 head
    f.free = 1
    f.arrive(0, _req("late", "flood", 0, 1.0, 100.0))  # deadline 101: past it on arrival
    f.step(1)
    f.step(0)
    assert f.sent[0] == (1, "batch")


def test_an_arrival_past_its_deadline_is_judged_alike_after_an_abandoned_walk() -> None:
    """F3: the answer no longer hangs on what the last ``heads`` walk left: with its band there and a walk
    left in its first part (as ``publish``'s), the late arrival still waits for the feasible lower band."""
    f = FeasibleFleet()
    f.now = 104.0
    f.arrive(1, _req("batch", "batch", -1, 10.0, 104.0))
    f.now = 105.0
    f.step(1)
    ctl = f.ds[0].ctl
    item = ctl.enqueue(_req("warm", "flood", 0, 30.0, 105.0), 105.0)  # (its band there from now on)
    walk = ctl.heads(105.0)
    assert next(walk) is item  # a walk left in its first part (as ``publish``'s; its generator kept open)
    ctl.take(item, 105.0)
    assert len(ctl) == 0
    f.free = 1
    f.arrive(0, _req("late", "flood", 0, 1.0, 100.0))
    f.step(1)
    f.step(0)
    assert f.sent[0] == (1, "batch")


def _old_fleet() -> Any:
    try:
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{OLD}:src/kvgate/flowcontrol/fleet.py"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"{OLD} is not in this clone's history (the other test covers the refusal without it)")
    mod = type(sys)("_rev_wk25_old_fleet")
    mod.__dict__["__name__"] = "_rev_wk25_old_fleet"
    exec(compile(src, f"{OLD}:fleet.py", "exec"), mod.__dict__)
    return mod


def test_a_worker_of_the_other_mark_layout_is_refused_or_read_right() -> None:
    """F1: wk25 changed the segment's layout (mark 5 -> 7 floats, join entry 6 -> 7) with no layout mark: a
    worker spawned from new code under a running old supervisor read the old workers' marks at another
    stride (``SHARE_VERSION`` cannot catch it: it is itself read at the other offset). A worker checks the
    segment at its start (``fleet.check_layout``, as ``shared_responses``' table) and refuses it."""
    old = _old_fleet()
    assert old.FIELDS != fleet.FIELDS  # (the layout did change)
    buf = bytearray(max(old.segment_size(2), fleet.segment_size(2)))
    old.FleetMarks(memoryview(buf), 2, -1)  # (the old supervisor's view: no mark)
    writer = old.FleetMarks(memoryview(buf), 2, 1)
    writer.pool("a")
    theirs = writer.pool("b")  # (the second pool: its mark is the row's second slot)
    octl = FlowController(FlowControlConfig(ttl=60.0))
    hi = InferenceRequest("hi", "m", prompt_tokens=10, max_tokens=4, priority=5, fairness_id="x")
    octl.enqueue(hi, 1.0)
    theirs.publish(octl, 1.0)
    ctl = FlowController(FlowControlConfig(ttl=60.0))
    req = InferenceRequest("lo", "m", prompt_tokens=10, max_tokens=4, priority=0, fairness_id="y")
    check = getattr(fleet, "check_layout", None)  # (none before the fix: the rows read as they were)
    try:
        if check is not None:
            check(memoryview(buf), 2)
        reader = fleet.FleetMarks(memoryview(buf), 2, 0)
        reader.pool("a")
        mine = reader.pool("b")
    except ValueError:
        return  # (refused)
    assert mine is not None
    assert mine.defers(req, ctl, 1.0), "the other worker's band 5 head is not seen (misread stride)"


def test_a_worker_refuses_a_supervisors_segment_of_another_layout() -> None:
    """F1 on the worker's start (``workers._worker``: ``_check_fleet_layout`` before anything is attached):
    a segment made as ``Supervisor.run`` makes it passes; one whose fleet part's first word is not this
    code's mark (an older supervisor's: zeroed, or worker 0's first mark's stamp there) is refused with an
    error that says what to do. No git history needed."""
    ctx = multiprocessing.get_context("spawn")
    for mark in ("this", "zero", "stamp"):
        at = workers._tenants_offset(2)
        shared = SharedInFlight.create(2, ctx.Lock(), extra=at + 4096)
        sup = fleet.FleetMarks(shared.extra, 2, -1, table=workers.inflight_layout())  # (the supervisor's)
        try:
            if mark == "this":
                workers._check_fleet_layout((shared.name, shared.lock, 2))
                assert fleet.segment_size(2) <= len(shared.extra)
                continue
            with shared.extra[:8].cast("d") as word:
                word[0] = 0.0 if mark == "zero" else 12345.678  # (an old layout's worker 0 stamp)
            with pytest.raises(ValueError, match=r"not this kvgate's layout.*restart the supervisor"):
                workers._check_fleet_layout((shared.name, shared.lock, 2))
        finally:
            sup.close()
            shared.close()
    with pytest.raises(ValueError, match="not this kvgate's layout"):  # (a segment too small for this layout)
        fleet.check_layout(memoryview(bytearray(fleet.segment_size(2) - 8)), 2)
