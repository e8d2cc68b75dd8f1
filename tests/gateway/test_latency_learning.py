"""Only streamed, successful replies teach the latency model (over real HTTP on loopback): a
non-streamed reply's first token comes with its last (the whole response time, not a TTFT), and an
error reply says nothing about prefill."""

from __future__ import annotations

import aiohttp
import orjson

from gateway.backend import Backend
from gateway.conftest import base_url, running_gateway
from kvgate.config.gateway import GatewayConfig, parse_gateway_config
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.plugins.predicted_latency import PredictedLatencyScorer


def _config(address: str) -> GatewayConfig:
    picker = {
        "plugins": [{"type": "predicted-latency-scorer"}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "predicted-latency-scorer"}]}],
    }
    return parse_gateway_config(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "pools": [{"name": "p", "endpoints": [address], "models": ["m"], "endpointPickerConfig": picker}],
        }
    )


async def test_only_streamed_successful_replies_teach_the_ttft_model(backends) -> None:
    (b,) = await backends(1)
    assert isinstance(b, Backend)
    async with running_gateway(_config(b.address)) as gw:
        director = gw.pools[0].director
        assert isinstance(director, Director)
        model = director.handle.find(PredictedLatencyScorer)
        assert isinstance(model, PredictedLatencyScorer)

        def learned() -> int:
            m = model.predictor._models.get(b.address)
            return m.ttft.n if m is not None else 0

        url = base_url(gw) + "/v1/completions"
        async with aiohttp.ClientSession() as http:

            async def send(stream: bool) -> int:
                body = orjson.dumps({"model": "m", "prompt": "p", "max_tokens": 4, "stream": stream})
                async with http.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()
                    return r.status

            assert await send(stream=False) == 200
            assert learned() == 0  # the whole response's time: no first token to learn from
            b.mode = "error400"
            assert await send(stream=True) == 400
            assert await send(stream=False) == 400
            assert learned() == 0
            b.mode = "ok"
            assert await send(stream=True) == 200
            assert learned() == 1
