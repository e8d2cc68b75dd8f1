"""``kvgate serve``: a Responses follow-up (``previous_response_id``) is picked on the endpoint that made the
response it names, no header needed (vLLM keeps a stored response in the server that made it: anywhere
else the follow-up is a 404). Before doors18 the pick ignored it: with two endpoints round-robin, every
follow-up went to the other endpoint and got vLLM's 404."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from gateway.responses_backend import ResponsesStore
from kvgate.openai.responses import ResponseHomes, ResponseIdReader


@pytest.fixture
async def stores() -> AsyncIterator[list[ResponsesStore]]:
    started = [await ResponsesStore(f"s{i}").start() for i in range(2)]
    yield started
    for s in started:
        await s.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_follow_up_is_picked_on_the_endpoint_that_made_its_response(
    stores: list[ResponsesStore], stream: bool
) -> None:
    a, b = stores
    async with running_gateway(make_config([a.address, b.address])) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/responses"
        for i in range(4):
            async with s.post(
                url, data=orjson.dumps({"model": "m", "input": f"q{i}", "stream": stream})
            ) as r:
                assert r.status == 200
                raw = await r.read()
            if stream:
                rid = orjson.loads(raw.split(b"\n\n")[0].split(b"data: ", 1)[1])["response"]["id"]
            else:
                rid = orjson.loads(raw)["id"]
            for _ in range(2):  # (a chain: each follow-up names the response before it)
                body = {"model": "m", "input": "more", "previous_response_id": rid}
                async with s.post(url, data=orjson.dumps(body)) as r:
                    assert r.status == 200, await r.text()
                    rid = (await r.json())["id"]
        assert len(a.followed) + len(b.followed) == 8
        # Each follow-up was answered where its response was made (its id names its server).
        assert all(p.startswith(f"resp_{st.name}_") for st in stores for p in st.followed)


async def test_an_unknown_or_unhealthy_home_is_picked_as_any_request(stores: list[ResponsesStore]) -> None:
    a, b = stores
    async with running_gateway(make_config([a.address, b.address])) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/responses"
        body = {"model": "m", "input": "x", "previous_response_id": "resp_nope"}
        async with s.post(url, data=orjson.dumps(body)) as r:
            assert r.status == 404 and "not found" in (await r.json())["error"]["message"]
        assert gw.proxy is not None
        gw.proxy.responses.remember("resp_gone", "127.0.0.1:1")  # an endpoint not in the pool: ignored
        body["previous_response_id"] = "resp_gone"
        async with s.post(url, data=orjson.dumps(body)) as r:
            assert r.status == 404


def test_the_homes_are_bounded_and_expire() -> None:
    now = [0.0]
    homes = ResponseHomes(max_entries=3, ttl_s=10.0, clock=lambda: now[0])
    for i in range(5):
        homes.remember(f"r{i}", f"e{i}")
    assert len(homes) == 3 and homes.home("r0") is None and homes.home("r4") == "e4"
    now[0] = 9.9
    assert homes.home("r2") == "e2"
    now[0] = 10.0
    assert homes.home("r2") is None
    homes.remember("r5", "e5")  # (the expired ones at the old end go)
    assert len(homes) == 1 and homes.home("r5") == "e5"
    homes.remember("x" * 257, "e")  # (an id past 256 characters is not kept)
    assert len(homes) == 1


@pytest.mark.parametrize(
    ("sse", "chunks", "want"),
    [
        (False, [b'{"id": "resp_1", "output": [{"id": "msg_1"}]}'], "resp_1"),
        (False, [b'{"object": "response", "output": [{"id": "msg_1"}], "id": "resp_2"}'], "resp_2"),
        (False, [b'{"id": "re', b'sp_3", "x": 1}'], "resp_3"),
        (False, [b'{"object": "response", "output": [{"id": "msg_1"}]}'], None),
        (False, [b"not json"], None),
        (True, [b'event: response.created\ndata: {"response": {"id": "resp_4"}}\n\n'], "resp_4"),
        (True, [b'event: response.created\ndata: {"type": "response.created", "response": {"id": "re'], None),
        (True, [b'event: response.created\r\ndata: {"response": {"id": "resp_5"}}\r\n\r\n'], "resp_5"),
    ],
)
def test_the_id_is_read_from_the_answer(sse: bool, chunks: list[bytes], want: str | None) -> None:
    ids = ResponseIdReader(sse)
    for c in chunks:
        ids.feed(c)
    assert ids.response_id() == want


def test_a_json_answer_whose_id_is_not_first_is_read_only_when_whole() -> None:
    from kvgate.openai.responses import ID_HEAD_BYTES

    ids = ResponseIdReader(False)
    ids.feed(b'{"output": "' + b"a" * ID_HEAD_BYTES + b'", "id": "resp_late"}')
    assert ids.response_id() is None
    ids = ResponseIdReader(False)
    ids.feed(b'{"id": "resp_first", "output": "' + b"a" * ID_HEAD_BYTES + b'"}')
    assert ids.response_id() == "resp_first"
