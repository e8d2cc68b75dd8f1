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
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.openai.responses import ResponseHomes, ResponseIdReader


@pytest.fixture
async def stores() -> AsyncIterator[list[ResponsesStore]]:
    async with serving(ResponsesStore("s0"), ResponsesStore("s1")) as started:
        yield started


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


LONG = "x" * (80 * 1024)  # a long system prompt (~20k tokens), as agents send: past ``ID_HEAD_BYTES``


def _created(rid: str, instructions: str) -> bytes:
    doc = {"type": "response.created", "response": {"id": rid, "instructions": instructions, "output": []}}
    return b"event: response.created\ndata: " + orjson.dumps(doc) + b"\n\n"


@pytest.mark.parametrize(
    ("cuts", "feeds"), [([], 1), ([40], 2), ([60, 2000], 2), ([1000, 70_000], 1), ([40, 50, 60, 70], 5)]
)
def test_a_streams_id_is_read_wherever_its_created_event_ends(cuts: list[int], feeds: int) -> None:
    """A long ``response.created`` (vLLM's holds the request's instructions and tools), in one read or
    cut anywhere (the id itself too): its id is read from the read that completes it, and nothing more is
    fed (review s18-doors M1: only a whole event within the first 64 KiB counted; M2: all 64 KiB kept)."""
    raw = _created("resp_long", LONG) + b'event: response.completed\ndata: {"response": {"id": "z"}}\n\n'
    ids = ResponseIdReader(True)
    at, fed = 0, 0
    for cut in [*cuts, len(raw)]:
        ids.feed(raw[at:cut])
        at, fed = cut, fed + 1
        if ids.done:
            break
    assert (ids.done, fed) == (True, feeds)
    assert ids.response_id() == "resp_long"


def test_a_created_event_whose_id_is_not_first_is_parsed_when_it_ends() -> None:
    raw = b'event: response.created\ndata: {"response": {"object": "response", "id": "resp_9"}}\n\n'
    ids = ResponseIdReader(True)
    ids.feed(raw[:30])
    assert not ids.done
    ids.feed(raw[30:])
    assert ids.done and ids.response_id() == "resp_9"


def test_a_stream_without_an_id_is_given_up_at_the_bound() -> None:
    from kvgate.openai.responses import ID_HEAD_BYTES

    ids = ResponseIdReader(True)
    delta = b'event: response.output_text.delta\ndata: {"delta": "tok"}\n\n'
    for _ in range(ID_HEAD_BYTES // len(delta) + 1):
        ids.feed(delta)
    assert ids.done and ids.response_id() is None


@pytest.mark.parametrize("split", [None, 1400], ids=["long", "split"])
async def test_a_long_or_split_created_event_keeps_the_follow_ups_home(
    stores: list[ResponsesStore], split: int | None
) -> None:
    """kvgate serve read the id from a stream's first chunk only: a ``response.created`` past 64 KiB, or
    one that came in two reads (vLLM writes it whole; TCP splits it past one segment), left no home and
    its follow-up went anywhere: vLLM's 404 (review s18-doors M1; both fail before)."""
    for st in stores:
        st.split_created = split
    instructions = LONG if split is None else "y" * 2000
    async with (
        running_gateway(make_config([st.address for st in stores])) as gw,
        aiohttp.ClientSession() as s,
    ):
        url = base_url(gw) + "/v1/responses"
        for i in range(2):  # (round-robin: the follow-up's own pick is the other endpoint)
            body = {"model": "m", "input": f"q{i}", "stream": True, "instructions": instructions}
            async with s.post(url, data=orjson.dumps(body)) as r:
                assert r.status == 200
                raw = await r.read()
            rid = orjson.loads(raw.split(b"\n\n")[0].split(b"data: ", 1)[1])["response"]["id"]
            follow = {"model": "m", "input": "more", "previous_response_id": rid}
            async with s.post(url, data=orjson.dumps(follow)) as r:
                assert r.status == 200, await r.text()
