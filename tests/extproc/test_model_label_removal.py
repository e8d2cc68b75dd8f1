"""Stale model-label series are removed (kvgate.openai.labels, labels15).

Session 14 bounded the EPP's ``model_name`` / ``target_model_name`` values at any moment (config + 256
reported + 16 learnt) but never removed a series: every LoRA adapter a pod ever reported and a client
used kept its ``inference_objective_*`` series for the process's life, so adapter churn grew the
exposition without bound, and a learnt name kept its slot for good. Now a name neither known, nor
reported, nor seen on a request for ``GRACE_S`` loses its series in every collector that carries it
(and its learnt slot); a name that comes back starts from 0. All times are the injected clock's."""

from __future__ import annotations

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.mappings import extract
from kvgate.extproc.metrics import EppMetrics, models_reported
from kvgate.extproc.session import Session
from kvgate.extproc.testing import header_map
from kvgate.openai.labels import GRACE_S, KEEP_S, MAX_MODEL_LABELS, MAX_RETIRED_NAMES, ModelLabels

from .pickers import one_endpoint_context
from .test_error_counts import request_stats
from .test_model_label_learning import _post, _respond

_POST = {":method": "POST", ":path": "/v1/completions"}


def _page(adapter: str) -> str:
    """A vLLM page: base model ``m``, LoRA adapter ``adapter`` running."""
    return (
        'vllm:num_requests_waiting{engine="0",model_name="m"} 0\n'
        'vllm:num_requests_running{engine="0",model_name="m"} 1\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.1\n'
        f'vllm:lora_requests_info{{max_lora="4",running_lora_adapters="{adapter}",'
        'waiting_lora_adapters=""} 1.7e9\n'
    )


def _series(metrics: EppMetrics) -> set[str]:
    """The model names that have a series in any family the EPP labels by model (errors included)."""
    out: set[str] = set()
    for family in metrics.registry.collect():
        for s in family.samples:
            out.update(v for k, v in s.labels.items() if k in ("model_name", "target_model_name"))
    return out


def _churn_door(clock: list[float]) -> tuple[EppMetrics, Endpoint]:
    pod = Endpoint(address="10.0.0.9:8000")
    pod.metrics = extract(_page("lora-0"), "vllm", now=1.0)
    labels = ModelLabels(
        ["m"], reported=models_reported(lambda: [pod], lambda: clock[0]), clock=lambda: clock[0]
    )
    return EppMetrics(models=labels), pod


def test_an_unloaded_adapters_series_go_after_the_grace() -> None:
    """Four hours of adapters, one loaded at a time for a minute, each used by requests: the series of
    those unloaded more than KEEP_S + GRACE_S ago are gone, so the exposition stays bounded however long
    the churn lasts (before: one series set per adapter ever used, 240 here)."""
    clock = [0.0]
    metrics, pod = _churn_door(clock)
    ctx = one_endpoint_context(metrics)
    for i in range(4 * 60):
        pod.metrics = extract(_page(f"lora-{i}"), "vllm", now=clock[0])
        clock[0] += 60.0
        _post(ctx, f"lora-{i}", 200)
        _post(ctx, f"lora-{i}", 500)  # (an error series too: removed with the rest)
        _post(ctx, "m", 200)
    metrics.exposition()  # (a scrape sweeps too)
    names = _series(metrics)
    assert "m" in names and "lora-239" in names
    # KEEP_S reported after its last scrape, then GRACE_S unseen: at most that many minutes' adapters
    assert len(names - {"m"}) <= (KEEP_S + GRACE_S) / 60.0 + 2  # fails before: 240
    assert "lora-0" not in names
    assert len(metrics.models.seen) <= len(names)


def test_a_learnt_names_slot_is_freed_after_the_grace() -> None:
    """16 names learnt from 2xx answers (no pod reports them), then unused: after GRACE_S their series go
    and their slots are free, so a new name is learnt (before: learnt for the process's life, and every
    later name ``other``)."""
    clock = [0.0]
    metrics = EppMetrics(models=ModelLabels(["m"], clock=lambda: clock[0]))
    ctx = one_endpoint_context(metrics)
    for i in range(MAX_MODEL_LABELS):
        _post(ctx, f"old-{i}", 200)
    _post(ctx, "busy", 200)  # (no slot left: ``other``)
    assert ("inference_objective_request_total", "other", "other") in request_stats(metrics.registry)
    clock[0] += GRACE_S / 2
    _post(ctx, "old-0", 200)  # old-0 stays in use: it keeps its slot
    clock[0] += GRACE_S / 2 + 1.0
    metrics.exposition()
    assert metrics.models.learnt == {"old-0"}  # fails before: all 16
    _post(ctx, "busy", 200)
    assert "busy" in metrics.models.learnt
    stats = request_stats(metrics.registry)
    assert stats[("inference_objective_request_total", "busy", "busy")] == 1
    assert stats[("inference_objective_request_total", "old-0", "old-0")] == 2
    assert not any(k[1].startswith("old-") and k[1] != "old-0" for k in stats)


def test_a_name_that_comes_back_starts_from_zero_and_known_names_stay() -> None:
    """Prometheus semantics: a removed series that comes back is a new series from 0 (a counter reset to
    ``rate()``); the config's names keep their series however long unused."""
    clock = [0.0]
    metrics = EppMetrics(models=ModelLabels(["m"], clock=lambda: clock[0]))
    ctx = one_endpoint_context(metrics)
    for _ in range(3):
        _post(ctx, "x", 200)
    _post(ctx, "m", 200)
    assert request_stats(metrics.registry)[("inference_objective_request_total", "x", "x")] == 3
    clock[0] += GRACE_S + 1.0
    metrics.exposition()
    assert _series(metrics) == {"m"}
    _post(ctx, "x", 200)
    stats = request_stats(metrics.registry)
    assert stats[("inference_objective_request_total", "x", "x")] == 1
    assert stats[("inference_objective_request_total", "m", "m")] == 1


def test_a_reported_name_keeps_its_series_while_reported_however_idle() -> None:
    clock = [0.0]
    metrics, pod = _churn_door(clock)
    ctx = one_endpoint_context(metrics)
    _post(ctx, "lora-0", 200)
    for _ in range(10):
        clock[0] += GRACE_S
        metrics.exposition()
    assert "lora-0" in _series(metrics)  # still reported by the pod: kept
    pod.metrics = extract(_page("lora-1"), "vllm", now=clock[0])
    # Scraped every minute: the last sweep that sees it in the reported set is a minute before it leaves
    # (KEEP_S after its last report); GRACE_S later it goes.
    gone_at = clock[0] + KEEP_S - 60.0 + GRACE_S
    while clock[0] + 60.0 < gone_at:
        clock[0] += 60.0
        metrics.exposition()
        assert "lora-0" in _series(metrics)  # reported within KEEP_S, then unseen under GRACE_S: kept
    clock[0] += 60.0
    metrics.exposition()
    assert "lora-0" not in _series(metrics)


def test_fast_churn_is_bounded_by_the_retired_cap() -> None:
    """Names that leave the label set faster than GRACE_S lets them go: at most MAX_RETIRED_NAMES of them
    keep series (the longest unseen go first), so the series stay bounded at every moment."""
    clock = [0.0]
    metrics, pod = _churn_door(clock)
    ctx = one_endpoint_context(metrics)
    most = 0
    for i in range(4 * MAX_RETIRED_NAMES):
        pod.metrics = extract(_page(f"lora-{i}"), "vllm", now=clock[0])
        clock[0] += 2.0  # (past REFRESH_S: each request sees a new walk)
        _post(ctx, f"lora-{i}", 200)
        most = max(most, len({m for key in metrics.requests.children for m in key[:2]}))
    # base, other, the adapters still in the reported set (KEEP_S / 2 s) and the retired ones
    assert most <= 2 + KEEP_S / 2.0 + 1 + MAX_RETIRED_NAMES  # fails before: 1026


def test_a_learnt_name_in_flight_keeps_its_label_to_its_end() -> None:
    """Review s15-labels L2: a learnt name whose only request outlasts GRACE_S was swept mid-request (its
    slot freed, its series removed); 16 other names then took the slots and its end was counted under
    ``other``. Now a name with a request in flight (``ModelLabels.hold`` from the session's model to its
    ``close``) counts as seen: kept, and its end counted under its own name."""
    clock = [0.0]
    metrics = EppMetrics(models=ModelLabels(["m"], clock=lambda: clock[0]))
    ctx = one_endpoint_context(metrics)
    _post(ctx, "long", 200)  # learnt
    s = Session(ctx)
    s.handle(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(_POST))))
    body = pb.HttpBody(body=orjson.dumps({"model": "long", "prompt": "p"}), end_of_stream=True)
    s.handle(pb.ProcessingRequest(request_body=body))
    clock[0] += GRACE_S + 1.0
    metrics.exposition()  # (a scrape sweeps)
    assert "long" in metrics.models.learnt  # fails before: swept while in flight
    assert metrics.models.inflight == {"long": 1}
    for i in range(MAX_MODEL_LABELS):  # other names take every free slot meanwhile
        _post(ctx, f"name-{i}", 200)
    _respond(s, 200)
    assert metrics.models.inflight == {}
    assert request_stats(metrics.registry)[("inference_objective_request_total", "long", "long")] == 2


def test_a_rewritten_requests_names_are_held_and_dropped_once() -> None:
    metrics = EppMetrics(models=ModelLabels(["m"]))
    ctx = one_endpoint_context(metrics)
    s = Session(ctx)
    hdrs = {**_POST, "x-gateway-model-name-rewrite": "target"}
    s.handle(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(hdrs))))
    body = pb.HttpBody(body=orjson.dumps({"model": "client", "prompt": "p"}), end_of_stream=True)
    s.handle(pb.ProcessingRequest(request_body=body))
    assert metrics.models.inflight == {"client": 1, "target": 1}
    s.close()
    s.close()  # (a second close drops nothing more)
    assert metrics.models.inflight == {}


def test_an_infinite_grace_removes_no_label_for_being_unused() -> None:
    """``--model-series-grace inf``: a learnt name unused for ever keeps its label and series."""
    clock = [0.0]
    labels = ModelLabels(["m"], clock=lambda: clock[0], grace_s=float("inf"))
    gone: list[set[str]] = []
    labels.forget.append(lambda names: gone.append(set(names)))
    labels.served("lora")
    assert labels.label("lora") == "lora"
    clock[0] += 1e9
    labels.sweep()
    assert labels.learnt == {"lora"} and not gone
