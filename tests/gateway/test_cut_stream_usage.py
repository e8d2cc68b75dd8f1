"""rev-final F2: ``kvgate serve`` observed the usage of a stream cut after its usage event (before
``[DONE]``) when it transformed the stream (here: the gateway added ``include_usage`` and strips the usage
chunk), but not when it relayed it untouched (the tail is read only at ``finish``), and ``kvgate serve
--clusters`` never does (9f00155; docs/multicluster.md: "a cut response ... gives none", "as kvgate
serve"). The transformed case failed before (7/2 observed); both doors now observe none."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from extproc.test_error_counts import request_stats
from gateway.conftest import make_config, running_gateway
from gateway.handler_server import cut_after_usage, serve_handler


@pytest.mark.parametrize("include_usage", [False, True])  # False: transformed (strip); True: pass-through
async def test_a_cut_streams_usage_is_not_observed_however_relayed(include_usage: bool) -> None:
    runner, port = await serve_handler(cut_after_usage)
    try:
        async with running_gateway(make_config([f"127.0.0.1:{port}"])) as gw:
            body: dict[str, object] = {"model": "m", "prompt": "x", "stream": True}
            if include_usage:
                body["stream_options"] = {"include_usage": True}
            async with aiohttp.ClientSession() as s:
                url = f"http://127.0.0.1:{gw.port}/v1/completions"
                async with s.post(url, data=orjson.dumps(body)) as r:
                    assert r.status == 200
                    await r.read()
            stats = request_stats(gw.metrics.registry)
            assert ("inference_objective_input_tokens_sum", "m", "m") not in stats, stats
    finally:
        await runner.cleanup()
