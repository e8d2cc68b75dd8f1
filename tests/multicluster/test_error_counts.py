"""The global gateway (``kvgate serve --clusters``) counts each refused or failed request once on
``inference_objective_request_error_total{model_name,target_model_name,error_code}``, as the single-cluster
gateway does for the same request (``tests/gateway/test_error_counts.py``): the HTTP status its client
gets (the body's 400, the front's refusals, 429 / 503 when no cluster could start it, a cluster's error
reply passed through),
``stream_cut``, ``client_gone``. Real sockets, clusters in Parent mode on loopback backends (one test
in Endpoint mode, with a real ``kvgate epp``)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from gateway.backend import free_port
from gateway.conftest import error_codes, error_counts, labelled_counts
from gateway.test_front import _exchange, _req
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 1})


def labelled_errors(gw: GlobalGateway) -> dict[tuple[str, str, str], float]:
    return error_counts(gw.metrics.registry)


def errors(gw: GlobalGateway) -> dict[str, float]:
    return error_codes(gw.metrics.registry)


async def _post(port: int, body: bytes = BODY) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{port}/v1/completions"
    hdrs = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=hdrs) as r:
        return r.status, await r.read()


async def test_a_bad_body_and_a_front_refusal_are_counted_once_under_their_status(pods, gateway) -> None:
    pod = await pods()
    gw = await gateway([pod.address], max_body_bytes=1000)
    assert (await _post(gw.port, b"{not json"))[0] == 400
    assert (await _post(gw.port, orjson.dumps({"prompt": "x"})))[0] == 400  # no model
    raw = await _exchange(gw.port, _req(b"x" * 2000, extra="Connection: close\r\n"))
    assert raw.startswith(b"HTTP/1.1 413"), raw[:80]
    assert errors(gw) == {"400": 2, "413": 1}
    assert not pod.received  # none reached a cluster


async def test_no_cluster_started_is_counted_once_under_the_status_the_client_gets(pods, gateway) -> None:
    gw = await gateway([f"127.0.0.1:{free_port()}"])  # unreachable: 503
    assert (await _post(gw.port))[0] == 503
    assert errors(gw) == {"503": 1}
    busy = await pods()
    busy.mode = "error429"
    gw429 = await gateway([busy.address])  # every cluster at capacity: 429
    assert (await _post(gw429.port))[0] == 429
    assert errors(gw429) == {"429": 1}


async def test_a_clusters_error_reply_is_counted_once_under_its_status(pods, gateway) -> None:
    pod = await pods()
    pod.mode = "error400"  # passed through (a 4xx is the request's, not the cluster's)
    gw = await gateway([pod.address])
    assert (await _post(gw.port))[0] == 400
    assert errors(gw) == {"400": 1}


async def test_a_cut_stream_is_stream_cut_once(pods, gateway) -> None:
    pod = await pods(tokens=8)
    pod.mode = "cut"
    gw = await gateway([pod.address])
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 8, "stream": True})
    status, raw = await _post(gw.port, body)
    assert status == 200 and b"cut" in raw
    assert errors(gw) == {"stream_cut": 1}


async def test_a_client_gone_mid_stream_is_client_gone_once(pods, gateway) -> None:
    pod = await pods(tokens=8)
    pod.pause_after = 1
    gw = await gateway([pod.address])
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 8, "stream": True})
    async with aiohttp.ClientSession() as http:
        r = await http.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=body)
        assert r.status == 200
        await r.content.readany()
        await asyncio.wait_for(pod.paused.wait(), 30)
        r.close()  # the client goes away mid-stream
    loop = asyncio.get_running_loop()
    end = loop.time() + 30
    while gw.inflight and loop.time() < end:
        pod.resume.set()  # the next chunk's write finds the client gone
        await asyncio.sleep(0.02)
    assert gw.inflight == 0
    assert errors(gw) == {"client_gone": 1}


async def test_errors_carry_bounded_model_labels(pods, gateway) -> None:
    """As ``kvgate serve`` and ``kvgate epp``: the client's model on ``model_name`` and
    ``target_model_name`` (empty before the body parsed), bounded (kvgate.openai.labels): a model
    a cluster answered with a 2xx is its own label, one never served is ``other``. Before, the
    errors had only ``error_code`` (and ``kvgate_multicluster_requests_total`` no model)."""
    pod = await pods()
    gw = await gateway([pod.address])
    assert (await _post(gw.port))[0] == 200  # model m served: it earns its label
    pod.mode = "error400"
    assert (await _post(gw.port))[0] == 400
    made_up = orjson.dumps({"model": "made-up", "prompt": "x", "max_tokens": 1})
    assert (await _post(gw.port, made_up))[0] == 400
    assert (await _post(gw.port, b"{not json"))[0] == 400
    assert labelled_errors(gw) == {
        ("m", "m", "400"): 1,
        ("other", "other", "400"): 1,
        ("", "", "400"): 1,
    }
    started = labelled_counts(
        gw.metrics.registry, "kvgate_multicluster_requests_total", "model_name", zeros=True
    )
    assert started == {"m": 2, "other": 1}


async def test_a_rewrite_header_a_parent_mode_cluster_may_ignore_teaches_no_name(pods, gateway) -> None:
    """Review s13-doors M1, then s13-fixes D2: a made-up body model with ``x-gateway-model-name-rewrite``
    naming a real one, in Parent mode. The cluster's gateway may ignore the header (``kvgate serve`` does:
    the pod got ``junk``), so its 2xx says nothing of either name: none is learnt. Before fixdoors the
    client's body name was learnt; from fixdoors to fix2doors the header's (this test said ``{"real"}``,
    a name no model server was asked for)."""
    pod = await pods()
    gw = await gateway([pod.address])
    made_up = orjson.dumps({"model": "junk", "prompt": "x", "max_tokens": 1})
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    hdrs = {"Content-Type": "application/json", "x-gateway-model-name-rewrite": "real"}
    async with aiohttp.ClientSession() as http, http.post(url, data=made_up, headers=hdrs) as r:
        assert r.status == 200, await r.read()
    assert {b.get("model") for _path, _h, b in pod.received} == {"junk"}
    assert gw.metrics.models.learnt == set()


async def test_junk_rewrite_headers_fill_no_labels_in_parent_mode(pods, gateway) -> None:
    """Review s13-fixes D2: 16 requests for a served model, each with a made-up rewrite header, took every
    learnable label (the pod was only ever asked for ``m``)."""
    pod = await pods()
    gw = await gateway([pod.address])
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    async with aiohttp.ClientSession() as http:
        for i in range(16):
            hdrs = {"Content-Type": "application/json", "x-gateway-model-name-rewrite": f"junk-{i}"}
            async with http.post(url, data=BODY, headers=hdrs) as r:
                assert r.status == 200, await r.read()
    assert {b.get("model") for _path, _h, b in pod.received} == {"m"}
    assert gw.metrics.models.learnt == set()


async def test_a_rewrite_header_an_endpoint_mode_epp_obeys_teaches_its_name(pods, global_gateway) -> None:
    """Endpoint mode: the remote EPP (a real ``kvgate epp``) rewrites the body to the header's name, so
    the pod was asked for ``real`` and its 2xx teaches ``real`` (never the client's body name)."""
    pod = await pods()
    store = EndpointStore.from_addresses([pod.address])
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), AddressIndex(store),
                         clock=time.monotonic)  # fmt: skip
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await epp.start()
    try:
        gw = await global_gateway(ClusterSpec("a", epp=f"127.0.0.1:{epp.port}"))
        made_up = orjson.dumps({"model": "junk", "prompt": "x", "max_tokens": 1})
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        hdrs = {"Content-Type": "application/json", "x-gateway-model-name-rewrite": "real"}
        async with aiohttp.ClientSession() as http, http.post(url, data=made_up, headers=hdrs) as r:
            assert r.status == 200, await r.read()
            assert r.headers["x-kvgate-route-mode"] == "endpoint"
        assert {b.get("model") for _path, _h, b in pod.received} == {"real"}
        assert gw.metrics.models.learnt == {"real"}
    finally:
        await epp.stop(0)
