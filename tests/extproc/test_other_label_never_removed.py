"""Review s15-labels H1: the overflow label ``other`` must never lose its series (docs/epp.md, labels.py:
"The config's names, ``other`` and the empty label are never removed").

A client that sends ``"model": "other"`` to a server that answers any name with a 2xx (SGLang) gets the
literal name ``other`` learnt (``ModelLabels.served``: it is not known, not reported, a slot is free), so
``label`` records it in ``seen``; GRACE_S after that request ``sweep`` puts ``other`` in ``gone`` and
every collector's ``forget`` drops every series whose model_name/target_model_name is ``other`` -- the
overflow bucket that carries every unlabelled name's requests, while those are still coming. The same
through a pod (or a cluster's aggregate) that reports an adapter literally named ``other`` and then stops.

Both tests fail before the fix (``AssertionError: (2, 5, 1)``: the ``other`` total dropped 5 -> 1; and
``(2, 1)``)."""

from __future__ import annotations

from kvgate.extproc.metrics import EppMetrics
from kvgate.openai.labels import GRACE_S, MAX_MODEL_LABELS, ModelLabels

from .pickers import one_endpoint_context
from .test_error_counts import request_stats
from .test_model_label_learning import _post

KEY = ("inference_objective_request_total", "other", "other")


def test_the_other_series_survive_a_client_named_other() -> None:
    clock = [0.0]
    metrics = EppMetrics(models=ModelLabels(["m"], clock=lambda: clock[0]))
    ctx = one_endpoint_context(metrics)
    _post(ctx, "other", 200)  # a client's name "other", answered 2xx (at bad69a3: learnt)
    names = [f"name-{i}" for i in range(MAX_MODEL_LABELS)]
    last = 0.0
    for step in range(6):  # 6 x GRACE_S / 2: every name below stays in use, never unseen for GRACE_S
        for n in names:
            _post(ctx, n, 200)  # the slots stay taken (at most 16 learnt), so ...
        _post(ctx, "overflow", 200)  # ... this one is always counted under ``other``
        metrics.exposition()  # (a scrape sweeps)
        now = request_stats(metrics.registry).get(KEY, 0.0)
        assert now > last, (step, last, now)  # fails at bad69a3: ``other`` removed, restarts from 0/1
        last = now
        clock[0] += GRACE_S / 2 + 1.0


def test_a_reported_adapter_named_other_does_not_take_the_other_series_with_it() -> None:
    clock = [0.0]
    reported = {"other"}  # a pod reports an adapter literally named "other" ...
    metrics = EppMetrics(
        models=ModelLabels(["m"], reported=lambda: frozenset(reported), clock=lambda: clock[0])
    )
    ctx = one_endpoint_context(metrics)
    _post(ctx, "other", 200)
    reported.clear()  # ... then unloads it
    for n in range(MAX_MODEL_LABELS):
        _post(ctx, f"name-{n}", 200)
    _post(ctx, "overflow", 200)
    before = request_stats(metrics.registry)[KEY]
    for n in range(MAX_MODEL_LABELS):
        clock[0] += GRACE_S / MAX_MODEL_LABELS
        _post(ctx, f"name-{n % MAX_MODEL_LABELS}", 200)
        _post(ctx, "overflow", 200)
    clock[0] += 1.0
    metrics.exposition()
    after = request_stats(metrics.registry).get(KEY, 0.0)
    assert after >= before, (before, after)  # fails at bad69a3: ``other`` removed with the adapter
