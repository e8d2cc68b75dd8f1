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


def test_unknown_phase_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert multicluster.main(["--live", "--phases", "steady,split"]) == 2
    assert "unknown phase 'split'" in capsys.readouterr().err


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


def test_ttft_floors_per_cluster_from_every_run() -> None:
    rows = [
        {"timeline": [(0.0, "east", 0.3), (0.1, "east", 1.0), (0.2, "eu", 4.0), (0.3, "", None)]},
        {"timeline": [(0.0, "east", 0.2), (0.1, "eu", None)]},
    ]
    assert multicluster_live.ttft_floors(rows, q=0.0) == {"east": 0.2, "eu": 4.0}


async def test_open_loop_splits_arrivals_over_several_gateways() -> None:
    """``--gateways N``: each request goes to one of the global gateways, at random (real HTTP)."""
    from aiohttp import web

    hits = [0, 0]

    def app(i: int) -> web.Application:
        async def completions(request: web.Request) -> web.StreamResponse:
            hits[i] += 1
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b'data: {"choices":[{"text":"a"}]}\n\ndata: [DONE]\n\n')
            return resp

        a = web.Application()
        a.router.add_post("/v1/completions", completions)
        return a

    runners = [web.AppRunner(app(i)) for i in range(2)]
    urls = []
    for r in runners:
        await r.setup()
        site = web.TCPSite(r, "127.0.0.1", 0)
        await site.start()
        urls.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")  # type: ignore[union-attr]
    try:
        specs = multicluster_live.LiveWorkload(tenants=2, system_prompt_len=8, question_len=4).stream(0, 1000)
        res = await multicluster_live.open_loop(urls, specs, 100.0, 0.5, 0, 10.0)
    finally:
        for r in runners:
            await r.cleanup()
    assert len(res) > 20 and all(r.error is None and r.ttft is not None for r in res)
    assert min(hits) > 0 and sum(hits) == len(res)
