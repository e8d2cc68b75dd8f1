"""Malformed bodies and headers never make the gateway itself answer 5xx, and never crash it."""

from __future__ import annotations

import json

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.conftest import base_url, make_config, running_gateway


def _dumps(v: object) -> bytes:
    # stdlib json: it writes integers beyond 64 bits, which the gateway must refuse cleanly.
    return json.dumps(v).encode()


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)),
    max_leaves=12,
)
# Bodies that look like requests, with every field possibly of the wrong type.
request_like = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just("m"), st.just("nope"), json_values),
        "prompt": json_values,
        "messages": st.one_of(
            json_values, st.lists(st.dictionaries(st.text(max_size=5), json_values, max_size=3), max_size=3)
        ),
        "input": json_values,
        "stream": json_values,
        "max_tokens": json_values,
        "stream_options": json_values,
        "user": json_values,
    },
).map(_dumps)
bodies = st.one_of(request_like, st.binary(max_size=200), json_values.map(_dumps))
header_names = st.sampled_from(
    [
        "x-gateway-destination-endpoint",
        "x-gateway-inference-objective",
        "x-gateway-inference-fairness-id",
        "x-session-id",
        "x-request-id",
        "x-kvgate-explain",
        "content-type",
        "x-other",
    ]
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
paths = st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/x"])


async def test_fuzz_never_5xx(backends):
    (b,) = await backends(1)
    async with running_gateway(make_config([b.address])) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw)
        statuses: set[int] = set()

        async def one(method, u, body, headers):
            async with s.request(method, u, data=body, headers=headers) as r:
                await r.read()
                return r.status

        # Draw examples first (sync), then send them (async) — hypothesis' given is sync-only.
        examples = []

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
        )
        @given(
            body=bodies,
            headers=st.dictionaries(header_names, header_values, max_size=4),
            path=paths,
            method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
        )
        def collect(body, headers, path, method):
            examples.append((method, url + path, body, headers))

        collect()
        for method, u, body, headers in examples:
            status = await one(method, u, body, headers)
            assert status < 500, (method, u, body, headers, status)
            statuses.add(status)
        # The gateway is still up and serving.
        async with s.post(url + "/v1/completions", data=b'{"model":"m","prompt":"ok"}') as r:
            assert r.status == 200
        assert 400 in statuses
