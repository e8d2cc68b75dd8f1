"""``kvgate serve --clusters``: an SSE event over 1 MiB (completions ``echo`` + ``logprobs`` on a long
prompt) goes through, and a drain cut inside it closes the body mid-body with no event glued onto the
half event (fixedge16, review s16-fixes-a #1; on fcdf1a4 the relay cut the stream at 1 MiB and counted
it against the cluster)."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from gateway.test_drain_cut_races import _raw_upstream, _read_at_least, _read_rest
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

EV = b'data: {"id":"c","object":"text_completion","model":"m","choices":[{"index":0,"text":"tok"}]}\n\n'
BIG = b'data: {"choices":[{"text":"' + b"x" * (3 << 19) + b'"}]}\n\n'


async def test_a_drain_cut_inside_an_event_past_1_mib_closes_the_body_without_an_event() -> None:
    half = BIG[: (1 << 20) + (1 << 17)]
    pieces = [EV] + [half[i : i + (1 << 16)] for i in range(0, len(half), 1 << 16)]
    async with _raw_upstream(pieces) as address:
        clusters = ClustersConfig((ClusterSpec("c1", gateway=address),))
        gw = GlobalGateway(clusters, "round-robin", fetch=False, drain_s=0.1)
        await gw.start("127.0.0.1", 0)
        req = {"model": "m", "prompt": "x", "stream": True}
        stop = None
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=orjson.dumps(req)) as r,
            ):
                assert r.status == 200
                raw = await _read_at_least(r, len(EV) + len(half))
                stop = asyncio.create_task(gw.stop())
                rest, broken = await _read_rest(r)
                raw += rest
            await asyncio.wait_for(stop, 30)
        finally:
            if stop is None:
                await gw.stop()
    assert raw == EV + half  # the half event as it came, no error event glued onto it
    assert broken  # the client sees an incomplete body, not a short one
    assert gw.metrics.errors.counts == {("m", "m", "stream_cut"): 1}
    cuts = gw.metrics.registry.get_sample_value("kvgate_multicluster_responses_cut_total", {"cluster": "c1"})
    assert cuts is None  # not the cluster's doing
