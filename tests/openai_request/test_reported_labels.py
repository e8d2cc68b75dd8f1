"""The bounded model labels' reported names (kvgate.openai.labels), from review s14-final.

M1: ``ReportedNames`` kept the first 256 names ever reported, adapters and base models alike, for the
process's life: after adapter churn a base model the servers begin to report (a roll-out) stayed
``other`` until a restart, and the reported names took every learnt slot so no 2xx taught it either.
Now each re-read rebuilds the set from what the servers report then, base names before adapters.
L2: a learnt name later reported took two of the 16 slots. L1: the true bound per door at a moment is
the config's names + 256 reported + 16 learnt (docs/epp.md, docs/multicluster.md)."""

from __future__ import annotations

from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.datalayer.endpoint import Endpoint
from kvgate.extproc.metrics import models_reported
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.state import ClusterState, models_listed
from kvgate.openai.labels import (
    KEEP_S,
    MAX_MODEL_LABELS,
    MAX_REPORTED_NAMES,
    OTHER_MODEL,
    ModelLabels,
    ReportedNames,
)


def test_a_new_base_model_gets_a_label_after_adapter_churn() -> None:
    clock = [0.0]
    running: list[str] = ["llama-8b"]
    labels = ModelLabels(reported=ReportedNames(lambda: iter(running), lambda: clock[0]))
    # A day of per-tenant adapters, 4 loaded at a time, each seen running at some walk.
    for i in range(0, MAX_REPORTED_NAMES, 4):
        running[:] = ["llama-8b", *(f"tenant-{j}" for j in range(i, i + 4))]
        clock[0] += 1.5
        labels.label("probe")  # any request with an unknown name triggers the walk
    # Roll-out: the pods now serve a new base model, reported by their metrics' model_name.
    running[:] = ["llama-8b-v2"]
    clock[0] += 1.5
    assert labels.label("llama-8b-v2") == "llama-8b-v2"  # fails before: other
    # The adapters seen within KEEP_S keep their labels, the most recent first, up to the cap: the
    # oldest give way.
    assert labels.label(f"tenant-{MAX_REPORTED_NAMES - 1}") == f"tenant-{MAX_REPORTED_NAMES - 1}"
    assert labels.label("tenant-0") == OTHER_MODEL


def test_a_name_no_longer_reported_leaves_the_set_after_keep_s() -> None:
    clock = [0.0]
    running = ["base", "lora-a"]
    reported = ReportedNames(lambda: iter(running), lambda: clock[0])
    labels = ModelLabels(reported=reported)
    assert labels.label("lora-a") == "lora-a"
    running[:] = ["base"]
    clock[0] += KEEP_S - 1.0
    assert labels.label("lora-a") == "lora-a"  # idle a while: kept
    clock[0] += 2.0
    assert labels.label("lora-a") == OTHER_MODEL  # gone for KEEP_S: no longer occupies the set
    assert reported() == {"base"}


def test_the_pods_base_models_come_before_any_adapter_in_the_cut() -> None:
    """Pod 1's adapters fill more than the cap; pod 2's base model is still in the cut (the walk went pod by
    pod before, so pod 1's adapters came first)."""
    one, two = Endpoint(address="10.0.0.1:8000"), Endpoint(address="10.0.0.2:8000")
    one.metrics.models = {"base-1"}
    one.metrics.running_loras = {f"lora-{i}" for i in range(MAX_REPORTED_NAMES + 10)}
    two.metrics.models = {"base-2"}
    names = models_reported(lambda: [one, two], lambda: 0.0)()
    assert len(names) == MAX_REPORTED_NAMES
    assert {"base-1", "base-2"} <= names


def _cluster(name: str, models: tuple[str, ...]) -> ClusterState:
    st = ClusterState(ClusterSpec(name, gateway="10.0.0.1:80"))
    st.aggregate = PoolAggregate("p", 1.0, 1, 1, models=models)
    return st


def test_the_clusters_lists_are_cut_rank_by_rank() -> None:
    """Four clusters list 64 names each (their base model, then adapters), a fifth its base model last:
    taken cluster by cluster, the cut at 256 left the fifth's base model out."""
    full = [_cluster(f"c{i}", (f"base-{i}", *(f"lora-{i}-{j}" for j in range(63)))) for i in range(4)]
    states = [*full, _cluster("late", ("base-late", "lora-late"))]
    names = models_listed(lambda: states, lambda: 0.0)()
    assert len(names) == MAX_REPORTED_NAMES
    assert {"base-0", "base-1", "base-2", "base-3", "base-late"} <= names  # fails before: base-late cut


def test_a_learnt_name_later_reported_takes_one_slot_not_two() -> None:
    clock = [0.0]
    servers: list[str] = []
    labels = ModelLabels(reported=ReportedNames(lambda: iter(servers), lambda: clock[0]))
    half = [f"adapter-{i}" for i in range(MAX_MODEL_LABELS // 2)]
    for name in half:  # answered 2xx before any walk saw them
        labels.served(name)
    servers[:] = half  # now reported too
    clock[0] += 2.0
    labels.served("second-served-name")  # 8 distinct names use the 16 slots: room is left
    assert labels.label("second-served-name") == "second-served-name"  # fails before: other


def test_learnt_plus_reported_stay_within_the_documented_bound() -> None:
    """The documented maximum at a moment: config names + 256 reported + 16 learnt (learnt names are not
    taken back; reported names coming later still get labels), reached and not passed however the
    reported names turn over. Fails before from the second round: the first round's adapters kept the
    reported set full (M1), so 17."""
    clock = [0.0]
    servers: list[str] = []
    labels = ModelLabels(["base"], reported=ReportedNames(lambda: iter(servers), lambda: clock[0]))
    for i in range(100):  # before the first scrape: made-up names answered 2xx
        labels.served(f"made-up-{i}")
    for round_ in range(3):  # then the servers report 256 adapters, a new set each round
        servers[:] = [f"adapter-{round_}-{i}" for i in range(2 * MAX_REPORTED_NAMES)]
        clock[0] += KEEP_S + 2.0
        names = ["base", *(f"made-up-{i}" for i in range(100)), *servers]
        distinct = {labels.label(n) for n in names} - {OTHER_MODEL}
        assert len(distinct) == 1 + MAX_REPORTED_NAMES + MAX_MODEL_LABELS
