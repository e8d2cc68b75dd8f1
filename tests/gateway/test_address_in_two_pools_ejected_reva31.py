"""Review s31-rev-a31 F2: ``kvgate serve`` keeps one ``HealthTracker`` for all its pools and one
``EndpointStore`` per pool, and one server may be in two pools (one vLLM serving two pools' models): two
live ``Endpoint`` objects for one address. Since de07a4c5 any other object for the address started a fresh
failure record, so failures taking turns between the pools reset each other's and a server failing every
request was never ejected. Both fail on de07a4c5 .. 7131a4a0 and pass on de07a4c5^."""

from __future__ import annotations

import aiohttp

from gateway.backend import Backend
from gateway.conftest import base_url, running_gateway
from kvgate.config.gateway import HealthConfig, parse_gateway_config
from kvgate.datalayer.ejection import HealthTracker
from kvgate.datalayer.endpoint import Endpoint


def test_a_server_in_two_pools_failing_every_request_is_ejected():
    now = [0.0]
    tracker = HealthTracker(HealthConfig(eject_after_failures=3), lambda: now[0])
    peer = Endpoint(address="10.0.0.2:8000", pool="a")
    tracker.success(peer)  # (a peer serving: an ejection is allowed)
    in_a = Endpoint(address="10.0.0.1:8000", pool="a")
    in_b = Endpoint(address="10.0.0.1:8000", pool="b")  # the same server, the other pool's store
    ejected = False
    for i in range(6):  # six failures in a row at one server, the pools' requests taking turns
        ep = in_a if i % 2 == 0 else in_b
        ejected = tracker.failure(ep, [ep, peer]) or ejected
    assert ejected, "six failures in a row at 10.0.0.1:8000, never ejected (each pool's reset the other's)"


def test_with_pools_to_look_at_only_a_departed_membership_starts_afresh():
    in_a = Endpoint(address="10.0.0.1:8000", pool="a")
    in_b = Endpoint(address="10.0.0.1:8000", pool="b")
    peer = Endpoint(address="10.0.0.2:8000", pool="a")
    live = [in_a, in_b, peer]
    tracker = HealthTracker(HealthConfig(eject_after_failures=3), lambda: 0.0, lambda: live)
    tracker.success(peer)
    assert not tracker.failure(in_a, [in_a, peer])
    assert not tracker.failure(in_b, [in_b, peer])
    assert tracker.failure(in_a, [in_a, peer])  # (the server's third failure, whichever pool saw it)
    assert not in_a.healthy


async def test_through_kvgate_serve_a_server_in_two_pools_dropping_every_request_is_ejected():
    """One backend in pools ``p`` (model m) and ``q`` (model n) reads each request and resets the
    connection; requests take turns between the models (round-robin beside a good backend in both)."""
    bad, good = await Backend("bad").start(), await Backend("good").start()
    bad.mode = "drop"
    both = [bad.address, good.address]  # (a healthy peer in each pool: an ejection is allowed)
    raw = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "pools": [
            {"name": "p", "endpoints": both, "models": ["m"], "policy": "round-robin"},
            {"name": "q", "endpoints": both, "models": ["n"], "policy": "round-robin"},
        ],
        # (3 failures eject; the back-off far beyond the test: no probe brings it back meanwhile)
        "health": {"ejectAfterFailures": 3, "ejectBaseSeconds": 300, "ejectMaxSeconds": 300},
        "limits": {"maxAttempts": 1},
    }
    try:
        async with running_gateway(parse_gateway_config(raw)) as gw, aiohttp.ClientSession() as s:
            for i in range(24):
                body = b'{"model":"%s","prompt":"x","max_tokens":2}' % (b"m" if i % 4 < 2 else b"n")
                async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                    await r.read()
                    assert r.status in (200, 503)
            eps = [ep for p in gw.pools for ep in p.endpoints() if ep.address == bad.address]
            assert len(eps) == 2
            assert len(bad.received) >= 3, len(bad.received)
            assert not all(ep.healthy for ep in eps), (
                f"{len(bad.received)} failures at one server, never ejected"
            )
    finally:
        await bad.stop()
        await good.stop()
