"""``kvgate epp``'s reported model names are kept per pod (doors16; session 15's closing note: "EPP pods
share one kept-name history"). A name a pod no longer reports keeps its label ``KEEP_S``; those kept
names were one history for all pods, the most recently seen first, so a pod churning LoRA adapters (a
different waiting list at every scrape) took every kept place within a few scrapes and another pod's
adapter, idle at one scrape, lost its label (its series retired). The multi-cluster door kept its names
per cluster since labels15; the EPP now keeps them per pod the same way (``labels.kept_per_source``)."""

from __future__ import annotations

from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.extproc.metrics import models_reported
from kvgate.openai.labels import KEEP_S, MAX_REPORTED_NAMES, MAX_SOURCE_NAMES, REFRESH_S, ModelLabels


def _pod(address: str, models: tuple[str, ...], running: tuple[str, ...] = (), waiting=()) -> Endpoint:
    ep = Endpoint(address=address)
    _report(ep, models, running, waiting)
    return ep


def _report(ep: Endpoint, models: tuple[str, ...], running=(), waiting=()) -> None:
    ep.metrics = EndpointMetrics(
        models=frozenset(models), running_loras=frozenset(running), waiting_loras=frozenset(waiting)
    )


def test_a_pod_churning_adapters_cannot_push_out_another_pods_kept_name() -> None:
    clock = [0.0]
    steady = _pod("10.0.0.1:8000", ("m",), running=("lora-idle",))
    churn = _pod("10.0.0.2:8000", ("m",))
    pods = [steady, churn]
    reported = models_reported(lambda: pods, lambda: clock[0])
    labels = ModelLabels(reported=reported, clock=lambda: clock[0])
    assert labels.label("lora-idle") == "lora-idle"
    _report(steady, ("m",))  # idle at this scrape
    for scrape in range(20):
        _report(churn, ("m",), waiting=tuple(f"x{scrape}-{i}" for i in range(64)))
        clock[0] += 2 * REFRESH_S
        names = reported()
        # fails before at scrape 3: 65 names now + 3 x 64 kept, the shared history's most recent first
        assert "lora-idle" in names and "m" in names, scrape
        # fails before at scrape 1 (128): the churning pod churns only its own share
        assert len([n for n in names if n.startswith("x")]) <= MAX_SOURCE_NAMES, scrape
    assert labels.label("lora-idle") == "lora-idle"
    clock[0] += KEEP_S  # not reported for KEEP_S: it goes
    assert "lora-idle" not in reported()


def test_a_replaced_pods_kept_names_stay_to_their_end() -> None:
    """A pod gone from the pool (replaced, scaled down) keeps its names ``KEEP_S`` as one shared history
    kept them: its adapters keep their labels while the new pod loads them."""
    clock = [0.0]
    old = _pod("10.0.0.1:8000", ("m",), running=("lora-a",))
    pods = [old]
    reported = models_reported(lambda: pods, lambda: clock[0])
    assert "lora-a" in reported()
    pods[:] = [_pod("10.0.0.3:8000", ("m",))]
    clock[0] += KEEP_S - 1.0
    assert reported() == {"m", "lora-a"}
    clock[0] += 1.0
    assert reported() == {"m"}


def test_every_pods_base_model_comes_before_any_adapter_in_the_cut() -> None:
    """Past ``MAX_REPORTED_NAMES`` the cut drops adapters (kept names first) before any pod's base model."""
    clock = [0.0]
    pods = [
        _pod(f"10.0.1.{i}:8000", (f"base-{i}",), running=tuple(f"r{i}-{j}" for j in range(63)))
        for i in range(8)
    ]
    reported = models_reported(lambda: pods, lambda: clock[0])
    names = reported()
    assert len(names) == MAX_REPORTED_NAMES
    assert {f"base-{i}" for i in range(8)} <= names
