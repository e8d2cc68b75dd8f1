"""Review s25-rev-fixfc25 F3: ``FlowController.due_head`` (``fairShareSLOFirst``) looks at each flow's head
as every other look does (the reach: now + the dispatch -> first-token p90; the time now), so with
``slo-feasible`` a due request is not hidden behind its flow's overdue one, which is not due (nearer its
deadline than the p90: it misses wherever it goes) and which the dispatch itself orders after it. Fails on
main 29f4ddf8's src (its look took ``now`` as the reach: None). No process is started; time is injected."""

from __future__ import annotations

from kvgate.flowcontrol.config import parse_flow_control
from kvgate.flowcontrol.controller import FlowController
from kvgate.scheduling.types import InferenceRequest


def _req(rid: str, flow: str, slo_ms: int, at: float) -> InferenceRequest:
    return InferenceRequest(
        rid, "m", prompt_tokens=10, max_tokens=10, fairness_id=flow, priority=0,
        headers={"x-slo-ttft-ms": str(slo_ms)}, arrival_time=at,
    )  # fmt: skip


def test_due_head_sees_the_due_request_behind_its_flows_overdue_head() -> None:
    ctl = FlowController(parse_flow_control({"orderingPolicy": "slo-feasible", "maxRequests": 100}))
    ctl.service_ttft = 0.1  # (due: deadline within 0.1-0.5 s)
    now = 10.0
    skip = ctl.enqueue(_req("a", "a", 2000, now), now)
    ctl.enqueue(_req("b-overdue", "b", 100, 9.95), now)  # deadline 10.05: nearer than the p90, not due
    due = ctl.enqueue(_req("b-due", "b", 300, now), now)  # deadline 10.3: due
    assert not ctl.deadline_due(10.05, now) and ctl.deadline_due(due.slo_deadline, now)
    assert ctl.due_head(0, now, skip) is due
