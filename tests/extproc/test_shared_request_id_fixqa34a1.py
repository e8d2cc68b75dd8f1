"""qa34a F1: two requests that share a client ``x-request-id`` (a tracing id a mesh propagates, or one reused
on purpose) shared ONE in-flight track in ``kvgate epp``: the session handed the client's id to the picker,
whose accounting is keyed by it, so the second got no track and the first's end removed the shared one. A
pool saturated by the second (``concurrency-detector``, ``maxConcurrency: 1``) then admitted a sheddable
request. The picker now gets an id of its own per request, as ``kvgate serve``'s; the client's goes
upstream unchanged. ``[same]`` fails on 875551f0; ``[distinct]`` is the control (passes there)."""

from __future__ import annotations

import orjson
import pytest

from extproc.flow_epp import epp_serving
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc import keys
from kvgate.extproc.context import build_epp_director
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.testing import Exchange
from kvgate.openai.request import RequestPolicy

ADDR = "127.0.0.9:8000"
CONFIG = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
    "kind": "EndpointPickerConfig",
    "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
}
BODY = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4})


def _headers(objective: str, rid: str | None = None) -> dict[str, str]:
    h = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json",
         keys.OBJECTIVE: objective}  # fmt: skip
    if rid is not None:
        h[keys.REQUEST_ID] = rid
    return h


@pytest.mark.parametrize(
    "ids", [("qa34a-a", "qa34a-b"), ("qa34a-dup", "qa34a-dup")], ids=["distinct", "same"]
)
async def test_second_request_stays_in_flight_after_the_first_ends(ids: tuple[str, str]) -> None:
    store = EndpointStore.from_addresses([ADDR])
    director = build_epp_director(CONFIG, store)
    policy = RequestPolicy(objectives={"critical": 10, "batch": -1})
    async with epp_serving(director, store, EppMetrics(), None, policy=policy) as stub:
        async with Exchange(stub) as a, Exchange(stub) as b:
            for ex, rid in ((a, ids[0]), (b, ids[1])):
                out = await ex.send_request(_headers("critical", rid), BODY)
                assert out.destination == ADDR
                assert keys.REQUEST_ID not in out.mutation.set_headers  # the client's goes upstream as it is
            # a ends (its accounting closed before its last answer); b still runs on the only endpoint.
            await a.send_response(200, {"content-type": "application/json"}, [b'{"model":"m"}'])
            async with Exchange(stub) as shed:
                got = await shed.send_request(_headers("batch"), BODY)
            assert got.status == 429, "a sheddable request admitted while the pool is saturated (1 of 1)"
            await b.send_response(200, {"content-type": "application/json"}, [b'{"model":"m"}'])
        # Both ended: the pool has room again.
        async with Exchange(stub) as shed:
            assert (await shed.send_request(_headers("batch"), BODY)).destination == ADDR
