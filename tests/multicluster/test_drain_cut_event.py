"""``kvgate serve --clusters``: the drain's deadline cuts a stream mid-body; its client gets an OpenAI error
event and the body's clean end, as ``kvgate serve`` (``tests/gateway/test_drain_cut_event.py``; doors16:
before, the connection closed mid-body and the openai SDK raised a connection error with nothing said).
The cluster is not blamed: no ``kvgate_multicluster_responses_cut_total`` for it."""

from __future__ import annotations

import asyncio

import openai

from gateway.backend import Backend
from gateway.test_drain_cut_event import sdk_stream_cut
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


async def test_the_drain_cut_ends_an_openai_sdk_stream_with_an_api_error() -> None:
    pod = await Backend("pod", tokens=200, chunk_delay=0.05).start()
    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c1", gateway=pod.address),)), "round-robin", fetch=False, drain_s=0.3
    )
    await gw.start("127.0.0.1", 0)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="k", max_retries=0)
    saw_abort = False
    try:
        ei, got = await sdk_stream_cut(client, gw.stop, gw.stop)
        for _ in range(1500):  # (the pod sees it at its next write; 30 s: 4 s before)
            if saw_abort := pod.disconnects == 1:
                break
            await asyncio.sleep(0.02)
    finally:
        await client.close()
        await pod.stop()
    # fails before: APIConnectionError (the body cut mid-chunk)
    assert type(ei.value) is openai.APIError, repr(ei.value)
    assert ei.value.message == (
        "the gateway is shutting down: its drain deadline (0.3s) cut the stream before its end"
    )
    assert 1 <= len(got) < 200
    assert gw.metrics.errors.counts == {("m", "m", "stream_cut"): 1}
    cuts = gw.metrics.registry.get_sample_value("kvgate_multicluster_responses_cut_total", {"cluster": "c1"})
    assert cuts is None  # not the cluster's doing
    assert saw_abort  # the upstream request aborted (the pod stops generating)
