"""qa27 Q3 (test by the reviewer, adapted): ``kvgate serve --clusters`` cut every stream still relayed 5 s
after SIGTERM (``GlobalGateway.drain_s`` 5.0), and the clusters file's ``limits`` refused
``drainTimeoutSeconds`` ("unknown key"), where ``kvgate serve`` drains ``limits.drainTimeoutSeconds``
(30 s default). An LLM answer streaming longer than 5 s past the stop got the drain's error event instead
of its end at every rollout of the global gateway. Now the clusters file takes the gateway config's key
and default (30 s; 0: no wait), read when the stop begins (hot reload included).

Fail on 6782b99d: the 7 s stream ends with "the gateway is shutting down: its drain deadline (5s) cut the
stream before its end"; the key is refused.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from kvgate.multicluster.clusters import ClustersConfig, ClustersError, ClusterSpec, parse
from kvgate.multicluster.serve import GlobalGateway

EVENTS = 70  # one each 0.1 s: a 7 s answer (longer under load: the default drain is 30 s)


async def _chat(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(EVENTS):
        delta = {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [delta]}
        await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await asyncio.sleep(0.1)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def test_a_stream_longer_than_5s_is_drained_to_its_end() -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    clusters = ClustersConfig((ClusterSpec("c1", gateway=f"127.0.0.1:{port}"),))
    gw = GlobalGateway(clusters, "round-robin", fetch=False)  # the drain: its default
    await gw.start("127.0.0.1", 0)
    stopping: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            async with http.post(f"http://127.0.0.1:{gw.port}/v1/chat/completions", json=body) as r:
                assert r.status == 200
                got = b""
                async for line in r.content:
                    got += line
                    if stopping is None and got.count(b"data:") >= 3:
                        stopping = asyncio.create_task(gw.stop())  # SIGTERM, about 0.3 s in
        assert b"shutting down" not in got, got[-300:]
        assert got.rstrip().endswith(b"data: [DONE]"), got[-300:]
        assert got.count(b"data:") == EVENTS + 1
    finally:
        if stopping is None:
            await gw.stop()
        else:
            await asyncio.wait([stopping], timeout=60)
        await runner.cleanup()


def _file(limits: dict[str, Any]) -> dict[str, Any]:
    return {"clusters": [{"name": "c1", "gateway": "127.0.0.1:1"}], "limits": limits}


def test_the_clusters_file_takes_drain_timeout_seconds() -> None:
    assert parse(_file({})).drain_timeout_s == 30.0  # (kvgate serve's default)
    cfg = parse(_file({"drainTimeoutSeconds": 60, "sendTimeoutSeconds": 30}))
    assert cfg.drain_timeout_s == 60.0 and cfg.limits.send_timeout_s == 30
    assert parse(_file({"drainTimeoutSeconds": 0})).drain_timeout_s == 0.0  # (no wait, as kvgate serve)
    gw = GlobalGateway(cfg, "round-robin", fetch=False)
    assert gw.drain_s == 60.0
    gw.reload(parse(_file({"drainTimeoutSeconds": 90})))  # (a reload: read when the stop begins)
    assert gw.drain_s == 90.0
    assert GlobalGateway(cfg, "round-robin", fetch=False, drain_s=0.5).drain_s == 0.5  # (the caller's wins)
    for bad in (-1, True, "30", float("nan"), float("inf")):  # (an error naming the key, as the others)
        with pytest.raises(ClustersError) as e:
            parse(_file({"drainTimeoutSeconds": bad}))
        assert e.value.key == "limits.drainTimeoutSeconds" and "expected a finite number" in str(e.value)


@pytest.mark.parametrize("drain", [None, 0, 90.5])
def test_the_charts_hub_gateway_grace_covers_its_drain(drain: float | None) -> None:
    """The chart's global gateway pod outlives its drain and the stop's steps before it (before: 30 s, the
    drain's default now; review s27-rev-fixes27b F3: up to 30 s of steps come before the drain starts)."""
    from k8s.test_chart import HUB, _named, render

    settings = dict(HUB["settings"])
    if drain is not None:
        settings["limits"] = {**settings["limits"], "drainTimeoutSeconds": drain}
    values = {"inferenceExtension": {"enabled": False}, "hub": {**HUB, "settings": settings}}
    docs = render(values)
    pod = _named(docs, "Deployment", "llama-hub")["spec"]["template"]["spec"]
    cfg = parse(yaml.safe_load(_named(docs, "ConfigMap", "llama-hub")["data"]["clusters.yaml"]))
    assert cfg.drain_timeout_s == (30.0 if drain is None else drain)
    assert pod["terminationGracePeriodSeconds"] >= cfg.drain_timeout_s + 40
