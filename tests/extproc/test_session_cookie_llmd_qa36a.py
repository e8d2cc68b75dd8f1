"""qa36a F4, the ext_proc door: ``kvgate epp`` with llm-d's session-affinity sample answers a request with
``Set-Cookie: llm-d-session=<base64 of the endpoint>`` (added beside the server's own ``Set-Cookie``, never
over it) and sends a request carrying that cookie to that endpoint. Before, no cookie was set and picks
spread. Real EPP (grpc.aio on 127.0.0.1, port 0), three simulated vLLM replicas, the test harness as Envoy."""

from __future__ import annotations

import base64
from collections import Counter

import orjson
import yaml

from extproc.test_lora_session_e2e import epp_harness
from gateway.test_session_cookie_llmd_qa36a import SAMPLE, cookie_value
from kvgate.datalayer.endpoint import Endpoint
from kvgate.extproc import headers as hdr
from kvgate.scheduling.plugins.session import endpoint_token
from kvgate.sim import server as sim


async def test_kvgate_epp_pins_a_cookie_keeping_client() -> None:
    reps = [
        sim.Replica(sim.ReplicaConfig(model="sim-model", time_scale=50.0, seed=i), index=i) for i in range(3)
    ]
    for r in reps:
        await r.start()
    try:
        addresses = [f"127.0.0.1:{r.port}" for r in reps]
        async with epp_harness(addresses, config_text=yaml.safe_dump(SAMPLE)) as (harness, _store):
            body = {"model": "sim-model", "prompt": "first", "max_tokens": 2}
            res = await harness.request("POST", "/v1/completions", orjson.dumps(body))
            assert res.status == 200, res.body[:300]
            line = res.headers.get("set-cookie", "")
            assert line.endswith("; Path=/; HttpOnly; SameSite=Lax"), res.headers
            home = res.destination
            assert base64.b64decode(cookie_value(line)).decode() == endpoint_token(Endpoint(address=home))
            seen: Counter[str] = Counter()
            for i in range(12):
                body = {"model": "sim-model", "prompt": f"unrelated {i} " * (i + 1), "max_tokens": 2}
                cookie = {"cookie": f"llm-d-session={cookie_value(line)}"}
                res = await harness.request("POST", "/v1/completions", orjson.dumps(body), cookie)
                assert res.status == 200 and "set-cookie" not in res.headers
                seen[res.destination] += 1
            assert seen == {home: 12}, seen
    finally:
        for r in reps:
            await r.stop()


def test_the_cookie_is_appended_not_set_over_the_servers() -> None:
    mutation = hdr.header_mutation({"x-a": "1"}, (), ("set-cookie", "llm-d-session=YQ==; Path=/"))
    [plain, cookie] = mutation.set_headers
    assert plain.append_action == plain.OVERWRITE_IF_EXISTS_OR_ADD
    assert (cookie.header.key, cookie.append_action) == ("set-cookie", cookie.APPEND_IF_EXISTS_OR_ADD)
