"""``kvgate epp`` keeps Responses API ids (closing note s20: it kept none, so a ``previous_response_id``
follow-up through the ext_proc door went wherever the picker sent it, and vLLM, which keeps a stored
response in the memory of the server that made it, answered 404 elsewhere; ``kvgate serve`` pins it).

The EPP sees the answer (FULL_DUPLEX_STREAMED response bodies): a 2xx ``POST /v1/responses`` answer's id (a
JSON body's ``id``, a stream's ``response.created`` event) is remembered with the endpoint that served it
(Envoy's served-endpoint metadata when it fell back), and a follow-up naming it, or a lookup (``GET
/v1/responses/{id}``, body-less), is picked there. Over real gRPC with the Envoy-side test client, a
round-robin picker that would otherwise move each request on."""

from __future__ import annotations

import orjson

from kvgate.extproc.testing import Exchange

from .conftest import StartEpp

PODS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]
RESPONSES = {":method": "POST", ":path": "/v1/responses", "content-type": "application/json"}
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}


def _create(prev: str | None = None, stream: bool = False) -> bytes:
    body: dict[str, object] = {"model": "m", "input": "hello", "stream": stream}
    if prev is not None:
        body["previous_response_id"] = prev
    return orjson.dumps(body)


async def _made(epp: object, rid: str, stream: bool, served: str | None = None) -> str:
    """A Responses create answered with ``rid``; the address it was sent to (or ``served``)."""
    async with Exchange(epp.stub, timeout=10) as ex:  # type: ignore[attr-defined]
        out = await ex.send_request(RESPONSES, _create(stream=stream))
        if stream:
            events = [
                b'event: response.created\ndata: {"type":"response.created","response":{"id":"%s"}}\n\n'
                % rid.encode(),
                b"data: [DONE]\n\n",
            ]
            await ex.send_response(200, SSE, events, served=served)
        else:
            await ex.send_response(200, JSON, [b'{"id": "%s", "object": "response"}' % rid.encode()],
                                   served=served)  # fmt: skip
        return served or out.destination.split(",")[0]


async def test_a_follow_up_goes_to_the_endpoint_that_made_the_response(start_epp: StartEpp) -> None:
    epp = await start_epp(PODS, policy="round-robin", fallbacks=0)
    for stream in (False, True):
        rid = f"resp_{int(stream)}"
        home = await _made(epp, rid, stream)
        for _ in range(4):  # (round robin would move each of them on)
            async with Exchange(epp.stub, timeout=10) as ex:
                out = await ex.send_request(RESPONSES, _create(prev=rid))
                assert out.destination.split(",")[0] == home, (out.destination, home)
                await ex.send_response(200, JSON, [b'{"id": "resp_next"}'])


async def test_the_served_endpoint_is_the_home_and_a_lookup_goes_there(start_epp: StartEpp) -> None:
    """Envoy fell back to another address: the one that served the create is the home."""
    epp = await start_epp(PODS, policy="round-robin", fallbacks=0)
    home = await _made(epp, "resp_fb", False, served=PODS[2])
    assert home == PODS[2]
    for _ in range(3):
        async with Exchange(epp.stub, timeout=10) as ex:
            lookup = {":method": "GET", ":path": "/v1/responses/resp_fb"}
            out = await ex.send_request(lookup, None)
            assert out.destination.split(",")[0] == PODS[2], out.destination


async def test_an_unknown_id_or_an_unhealthy_home_is_picked_as_any_request(start_epp: StartEpp) -> None:
    epp = await start_epp(PODS, policy="round-robin", fallbacks=0)
    seen = set()
    for _ in range(3):
        async with Exchange(epp.stub, timeout=10) as ex:
            out = await ex.send_request(RESPONSES, _create(prev="resp_unknown"))
            seen.add(out.destination.split(",")[0])
            await ex.send_response(200, JSON, [b"{}"])
    assert len(seen) > 1  # (no pin: round robin)
    home = await _made(epp, "resp_sick", False)
    sick = next(e for e in epp.store.all() if e.address == home)
    sick.healthy = False
    for _ in range(3):
        async with Exchange(epp.stub, timeout=10) as ex:
            out = await ex.send_request(RESPONSES, _create(prev="resp_sick"))
            assert out.destination.split(",")[0] != home, out.destination
            await ex.send_response(200, JSON, [b"{}"])
