"""``kvgate bench multicluster --live``: what can be checked without running it (the run itself takes
minutes in network namespaces: docs/benchmarks/multicluster-live.md)."""

from __future__ import annotations

import pytest

from kvgate.bench import multicluster, multicluster_live, netns


def test_refuses_clearly_without_namespaces(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(netns, "unavailable", lambda: "network namespaces need root")
    assert multicluster.main(["--live", "--out", "/nonexistent/never-written"]) == 2
    err = capsys.readouterr().err
    assert "cannot create network namespaces" in err and "need root" in err


def test_unknown_policy_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert multicluster.main(["--live", "--policies", "kvgate,nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err


def test_every_path_into_a_cluster_goes_through_the_relay(tmp_path: object) -> None:
    cfg = multicluster_live.LiveConfig()
    c = multicluster_live.LiveCluster(cfg.clusters[1], 2, 100, cfg, tmp_path)  # type: ignore[arg-type]
    routes = dict(c.routes())
    assert set(routes) == {"aggregate", "epp", "health", "gateway", "pod0", "pod1"}
    assert all(r.endswith("@40") for r in routes.values())
    # The pods' relays listen on the pods' own address (what the cluster's EPP hands out).
    assert routes["pod1"] == "10.101.2.2:8002=10.100.2.2:8002@40"
    c.relay_ports = {svc: 1000 + i for i, svc in enumerate(routes)}
    spec = c.spec(1)
    assert spec["epp"] == "127.0.0.1:1001" and spec["rtt_ms"] == 40.0


def test_markdown_ratios_against_llm_d_hub() -> None:
    def row(policy: str, p90: float) -> dict[str, object]:
        return {
            "phase": "steady", "policy": policy, "ttft_p50": p90 / 2, "ttft_p90": p90,
            "goodput_req_per_s": 1.0, "cross_cluster_share": 0.25, "lost": 0, "cut": 0, "retries": 0,
            "served_by": {"east": 3, "west": 1},
        }  # fmt: skip

    meta = {"slo_ttft": 1.0, "clusters": [{"name": "east"}, {"name": "west"}, {"name": "eu"}]}
    table = multicluster_live.markdown([row("kvgate", 0.2), row("llm-d-hub", 0.4)], meta)
    assert "| steady | kvgate | 100 | 200 | 0.50x |" in table
    assert "3/1/0 |" in table
