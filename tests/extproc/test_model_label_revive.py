"""Review s16-doors M3 (tests by the reviewer, the third by fixdoors16): 2a98264's new branch in
``ModelLabels.label`` (``model in self.inflight and model in self.seen`` -> the name) cannot tell a
request that started while the name was a label from a *new* request for a name that is no longer one:
every door ``hold``s the request's name at its start, before it labels it (``kvgate serve``'s
``Proxy._entry``, ``kvgate epp``'s ``Session`` via ``EppMetrics.begin``, ``kvgate serve --clusters``'
``_route``). So a name that stopped being a label (no longer reported, a rule gone) and still waits out
its grace in ``seen`` is handed back its own label by the next request for it, which renews ``seen``:
while clients keep asking at least once per ``GRACE_S``, the name never becomes ``other`` and its series
are never removed, against the module doc ("its label is ``other`` from then on unless the config names it
or it is learnt") and docs/gateway.md ("a name no rule names any more is ``other`` for new requests"). It
also bypasses the learnt-slot bound (``MAX_MODEL_LABELS``): such names hold labels with no slot.

The fix (fixdoors16): a name that leaves the reported set owes its label only to the requests in flight
under it at that moment, one end each (``ModelLabels._owed``).
"""

from __future__ import annotations

from extproc.pickers import one_endpoint_context
from extproc.test_model_label_learning import _post
from extproc.test_model_label_removal import _page
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.mappings import extract
from kvgate.extproc.metrics import EppMetrics, models_reported
from kvgate.openai.labels import GRACE_S, KEEP_S, OTHER_MODEL, ModelLabels


def test_a_new_request_for_a_name_no_longer_reported_is_other() -> None:
    clock = [0.0]
    reported = {"a"}
    labels = ModelLabels(["m"], reported=lambda: frozenset(reported), clock=lambda: clock[0])
    labels.hold("a")  # a request under "a" while it is reported: its label
    assert labels.label("a") == "a"
    labels.drop("a")
    reported.clear()  # no longer reported (nor learnt, nor the config's)
    clock[0] += 10.0
    labels.hold("a")  # a NEW request for it (the doors hold the name before labelling it)
    # fails on main: "a" (held and still in ``seen``, waiting out its grace)
    assert labels.label("a") == OTHER_MODEL
    labels.drop("a")


def test_requests_in_flight_when_a_name_retires_keep_it_and_overlapping_new_ones_cannot_revive_it() -> None:
    """A request in flight when its name stops being reported is counted under the name at its end; the
    new requests that overlap it (always one in flight: a busy adapter's traffic) do not keep the name
    alive past the ends owed: from then on it is ``other`` for every one, and its series can go."""
    clock = [0.0]
    reported = frozenset({"a"})
    labels = ModelLabels(["m"], reported=lambda: reported, clock=lambda: clock[0])
    labels.hold("a")
    assert labels.label("a") == "a"
    clock[0] += 1.0
    reported = frozenset()  # retired, one request (the old one) in flight under it
    labels.hold("a")  # a new one, overlapping
    assert labels.label("a") == "a"  # (still owed: the old one's end comes first here)
    labels.drop("a")  # the old one ends: its end was owed
    for _ in range(5):  # every next request starts before the one before it ends
        clock[0] += 1.0
        labels.hold("a")
        # fails on main: "a" (held and seen: every new request renews it)
        assert labels.label("a") == OTHER_MODEL
        labels.drop("a")
    labels.drop("a")
    clock[0] += GRACE_S + 1.0
    labels.sweep()
    assert "a" not in labels.seen  # (its series went)


def _errors(metrics: EppMetrics) -> dict[tuple[str, str], float]:
    return {
        (x.labels["model_name"], x.labels["target_model_name"]): x.value
        for family in metrics.registry.collect()
        if family.name == "inference_objective_request_error"
        for x in family.samples
        if x.name.endswith("_total") and x.labels.get("error_code") == "500"
    }


def test_kvgate_epp_requests_for_a_name_no_longer_reported_are_counted_under_other() -> None:
    """``kvgate epp``: a pod runs adapter ``lora-0``, then unloads it (reports ``lora-1``). Clients keep
    asking for ``lora-0`` every 200 s (500s: no 2xx, so nothing is learnt). From KEEP_S after its last
    report its requests should be counted under ``other`` (as on the code before 2a98264: 2 under
    ``lora-0``, 17 under ``other``); on main every request is handed the name back (19 under ``lora-0``,
    none under ``other``): the name never stops being a label."""
    clock = [0.0]
    pod = Endpoint(address="10.0.0.9:8000")
    pod.metrics = extract(_page("lora-0"), "vllm", now=1.0)
    labels = ModelLabels(
        ["m"], reported=models_reported(lambda: [pod], lambda: clock[0]), clock=lambda: clock[0]
    )
    metrics = EppMetrics(models=labels)
    ctx = one_endpoint_context(metrics)
    _post(ctx, "lora-0", 500)
    pod.metrics = extract(_page("lora-1"), "vllm", now=2.0)  # unloaded
    for _ in range(18):  # an hour of a request every 200 s
        clock[0] += 200.0
        _post(ctx, "lora-0", 500)
    assert clock[0] > KEEP_S + GRACE_S
    errors = _errors(metrics)
    # fails on main: {("lora-0", "lora-0"): 19.0}
    assert errors.get(("lora-0", "lora-0"), 0) <= 2 and errors.get(("other", "other"), 0) >= 16, errors
