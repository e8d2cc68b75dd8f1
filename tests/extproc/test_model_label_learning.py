"""Which names earn the EPP's bounded model labels (kvgate.openai.labels), from review s13-doors M1.

A label is learnt only from a request whose body was parsed and that a model server answered with a 2xx,
and only under the name the server was sent (a rewrite's target): a body-less request's model comes from
a client header (``x-gateway-model-name``, which no server checks: GET /v1/models is 200 whatever it
says), and a client's name rewritten to a real model (``x-gateway-model-name-rewrite``, or a configured
rule) says nothing of the client's name. Before, 16 such requests filled every learnable slot with junk,
and a real model served afterwards stayed ``other``. The configured rewrite rules' names are labels of
their own from the start (``kvgate epp``'s CLI)."""

from __future__ import annotations

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from kvgate.config.gateway import RewriteRule, RewriteTarget
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.mappings import extract
from kvgate.extproc.cli import rewrite_names
from kvgate.extproc.metrics import EppMetrics, models_reported
from kvgate.extproc.session import Session, SessionContext
from kvgate.extproc.testing import header_map
from kvgate.openai.labels import MAX_MODEL_LABELS, REFRESH_S, ModelLabels

from .pickers import one_endpoint_context


def _respond(s: Session, status: int) -> None:
    h = pb.HttpHeaders(headers=header_map({":status": str(status), "content-type": "application/json"}))
    s.handle(pb.ProcessingRequest(response_headers=h))
    s.handle(pb.ProcessingRequest(response_body=pb.HttpBody(body=b"{}", end_of_stream=True)))
    s.close()


def _get_models(ctx: SessionContext, header_model: str) -> None:
    """GET /v1/models (body-less) with a client-set x-gateway-model-name; the server answers 200."""
    s = Session(ctx)
    hdrs = {":method": "GET", ":path": "/v1/models", "x-gateway-model-name": header_model}
    first = pb.HttpHeaders(headers=header_map(hdrs), end_of_stream=True)
    out = s.handle(pb.ProcessingRequest(request_headers=first))
    assert out and out[0].WhichOneof("response") == "request_headers"
    _respond(s, 200)


def _post(ctx: SessionContext, model: str, status: int, rewrite: str | None = None) -> None:
    s = Session(ctx)
    hdrs = {":method": "POST", ":path": "/v1/completions"}
    if rewrite:
        hdrs["x-gateway-model-name-rewrite"] = rewrite
    s.handle(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(hdrs))))
    body = pb.HttpBody(body=orjson.dumps({"model": model, "prompt": "p"}), end_of_stream=True)
    s.handle(pb.ProcessingRequest(request_body=body))
    _respond(s, status)


def _labels(metrics: EppMetrics) -> set[tuple[str, str]]:
    return {
        (s.labels["model_name"], s.labels["target_model_name"])
        for metric in metrics.registry.collect()
        if metric.name == "inference_objective_request_error"
        for s in metric.samples
        if s.name.endswith("_total") and s.value
    }


def test_a_client_set_model_header_on_a_get_earns_no_label() -> None:
    metrics = EppMetrics(models=ModelLabels(["m"]))
    ctx = one_endpoint_context(metrics)
    for i in range(MAX_MODEL_LABELS):
        _get_models(ctx, f"junk-{i}")  # GET /v1/models is 200 whatever the header says
    _post(ctx, "junk-0", 404)  # no model server ever served "junk-0"
    assert _labels(metrics) == {("other", "other")}
    assert not metrics.models.learnt


def test_a_made_up_client_model_rewritten_to_a_real_one_earns_no_label() -> None:
    metrics = EppMetrics(models=ModelLabels(["m"]))
    ctx = one_endpoint_context(metrics)
    for i in range(MAX_MODEL_LABELS):
        _post(ctx, f"junk-{i}", 200, rewrite="m")  # the server served "m", not "junk-i"
    assert not metrics.models.learnt
    _post(ctx, "m-lora", 200)  # a real (unlisted) model first served now earns its label
    _post(ctx, "m-lora", 500)
    _post(ctx, "junk-0", 500, rewrite="m")
    assert _labels(metrics) == {("m-lora", "m-lora"), ("other", "m")}


def test_the_rewrite_target_is_learnt_not_the_clients_name() -> None:
    metrics = EppMetrics(models=ModelLabels())
    ctx = one_endpoint_context(metrics)
    _post(ctx, "alias", 200, rewrite="real")
    assert metrics.models.learnt == {"real"}


def test_configured_rewrite_names_are_known() -> None:
    rules = [RewriteRule(["alias"], [RewriteTarget("real", 1), RewriteTarget("canary", 1)])]
    labels = ModelLabels(["*", *rewrite_names(rules)])
    assert labels.known == {"alias", "real", "canary"}
    labels.set_rules(rewrite_names([RewriteRule([], [RewriteTarget("live", 1)])]))  # a live rule (Kubernetes)
    assert labels.label("live") == "live" and labels.label("junk") == "other"


# A vLLM page (``--served-model-name m``, LoRA adapter ``m-lora`` loaded): what the EPP's scraper reads.
_PAGE = (
    'vllm:num_requests_waiting{engine="0",model_name="m"} 0\n'
    'vllm:num_requests_running{engine="0",model_name="m"} 1\n'
    'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.1\n'
    'vllm:lora_requests_info{max_lora="4",running_lora_adapters="m-lora",waiting_lora_adapters=""} 1.7e9\n'
)


def _pod(page: str) -> Endpoint:
    ep = Endpoint(address="10.0.0.9:8000")
    ep.metrics = extract(page, "vllm", now=1.0)
    return ep


def test_a_server_answering_any_model_cannot_push_a_reported_model_out() -> None:
    """A model server that answers any ``model`` with a 2xx (SGLang; kvgate's simulator refuses an unknown
    model with 404) let a client teach the EPP 16 made-up names, after which a real model first served
    stayed ``other`` until a restart; then (ba6a221) a name the pods did not report was never learnt.
    Now the names a pod's scraped metrics report (``model_name`` label, a LoRA adapter) are labels of
    their own from the start, and made-up names take only the slots they leave."""
    pod = _pod(_PAGE)
    assert pod.metrics.models == {"m"} and pod.metrics.running_loras == {"m-lora"}
    metrics = EppMetrics(models=ModelLabels(reported=models_reported(lambda: [pod], lambda: 0.0)))
    ctx = one_endpoint_context(metrics)
    for i in range(2 * MAX_MODEL_LABELS):
        _post(ctx, f"junk-{i}", 200)  # answered 2xx: the server does not check ``model``
    assert metrics.models.learnt == {f"junk-{i}" for i in range(MAX_MODEL_LABELS - 2)}
    _post(ctx, "m", 500)  # (no 2xx yet: its own label all the same)
    _post(ctx, "m-lora", 200)
    _post(ctx, "m-lora", 503)
    _post(ctx, f"junk-{MAX_MODEL_LABELS}", 500)
    assert _labels(metrics) == {("m", "m"), ("m-lora", "m-lora"), ("other", "other")}


def test_a_served_name_no_pod_reports_is_still_learnt() -> None:
    """vLLM's metrics carry only the first ``--served-model-name`` (``a b``: ``model_name="a"``), and a
    LoRA adapter only while it is running or waiting at a scrape: a 2xx for such a real name teaches it
    while slots are left (on ba6a221 it was refused for good: the pods reported other names)."""
    pod = _pod(_PAGE)
    metrics = EppMetrics(models=ModelLabels(["m"], reported=models_reported(lambda: [pod], lambda: 0.0)))
    ctx = one_endpoint_context(metrics)
    _post(ctx, "m-alias", 200)
    _post(ctx, "idle-lora", 200)
    assert metrics.models.learnt == {"m-alias", "idle-lora"}


class _CountingTuple(tuple):  # type: ignore[type-arg]
    scans = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        _CountingTuple.scans += 1
        return super().__iter__()


def test_an_unreported_names_2xx_does_not_walk_the_pods_each_time() -> None:
    """Review s14-doors E: the check walked every pod on each 2xx of a name the pods do not list, and
    such a name was never learnt, so it paid on every request (253 us per 2xx at 2,048 pods, on the
    EPP's one loop). Now the reported names are one set, the pods walked at most once per ``REFRESH_S``
    of the injected clock."""
    eps = []
    for i in range(64):
        e = Endpoint(address=f"10.0.0.{i}:8000")
        e.metrics = extract('vllm:num_requests_waiting{model_name="a",engine="0"} 0\n', "vllm", now=1.0)
        eps.append(e)
    pods = _CountingTuple(eps)
    clock = [0.0]
    labels = ModelLabels(["a"], size=1, reported=models_reported(lambda: pods, lambda: clock[0]))
    labels.served("x")  # (the one slot: taken)
    _CountingTuple.scans = 0
    for _ in range(1000):
        labels.served("b")  # (no slot left: never learnt)
        assert labels.label("b") == "other"
    assert _CountingTuple.scans == 0
    clock[0] += REFRESH_S
    labels.served("b")
    assert _CountingTuple.scans == 1


def test_a_name_once_reported_keeps_its_label() -> None:
    """An adapter that is idle at the next scrape keeps the label it had (counters stay monotonic)."""
    pod = _pod(_PAGE)
    clock = [0.0]
    labels = ModelLabels(reported=models_reported(lambda: [pod], lambda: clock[0]))
    assert labels.label("m-lora") == "m-lora"
    pod.metrics = extract(
        _PAGE.replace('running_lora_adapters="m-lora"', 'running_lora_adapters=""'), "vllm", 2.0
    )
    clock[0] += REFRESH_S
    assert labels.label("m-lora") == "m-lora" and labels.label("m") == "m"


def test_where_no_pod_reports_a_model_name_a_2xx_still_teaches_one() -> None:
    """An engine whose metrics carry no ``model_name`` reports nothing: a 2xx teaches a name into the
    free slots (all 16 here)."""
    pod = _pod(_PAGE.replace('model_name="m"', 'model_name=""'))
    assert not pod.metrics.models
    metrics = EppMetrics(models=ModelLabels(reported=models_reported(lambda: [pod], lambda: 0.0)))
    _post(one_endpoint_context(metrics), "anything", 200)
    assert metrics.models.learnt == {"anything"}
