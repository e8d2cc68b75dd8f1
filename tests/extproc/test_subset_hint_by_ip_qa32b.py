"""qa32b Q1: the gateway's subset hint (``envoy.lb.subset_hint`` / ``x-gateway-destination-endpoint-subset``)
names pods. The reference keeps every candidate whose IP an entry names, the entry's port dropped (GIE
``DatastorePodLocator.Locate``, earlier ``Director.getCandidatePodsForScheduling`` and the subset filter).
kvgate matched the whole ``ip:port``: a hint naming a data-parallel pod's IP with its Service port, or a bare
IP, was a 503 where the reference routes. An entry naming a known endpoint's ``ip:port`` exactly still keeps
that endpoint alone (rev-c32 F1, a deliberate difference: the hub's pin names one rank). Distinct loopback
IPs (127.0.0.x) stand for the pods; nothing is contacted. Fails on 0d8d2049 (all but the 503 controls and
the exact-rank case)."""

from __future__ import annotations

import orjson
import pytest

from kvgate.extproc.testing import Exchange

H = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
BODY = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 4})
# One pod with two data-parallel ranks (two ports on one IP), and a second pod.
PODS = ["127.0.0.7:8000", "127.0.0.7:8001", "127.0.0.8:8000"]
PODS6 = ["[fd00::7]:8000", "[fd00::7]:8001", "[fd00::8]:8000"]


async def _pick(epp, subset: list[str]) -> tuple[int | None, str, frozenset[str] | None]:
    async with Exchange(epp.stub) as ex:
        out = await ex.send_request(H, BODY, subset=subset)
    hinted = epp.picker.calls.requests[-1].subset if epp.picker.calls.requests else None
    return out.status, out.destination, hinted


@pytest.mark.parametrize(
    ("pods", "hint", "kept"),
    [
        (PODS, ["127.0.0.7:80"], PODS[:2]),  # the pod's Service port, no rank's
        (PODS, ["127.0.0.7:8000"], PODS[:1]),  # one known rank named: that rank only (rev-c32 F1)
        (PODS, ["127.0.0.8"], PODS[2:]),  # a bare IP
        (PODS, ["127.0.0.8:9", "10.9.9.9:8000"], PODS[2:]),  # an unknown IP beside it: ignored
        (PODS6, ["[fd00::7]:80"], PODS6[:2]),  # IPv6, bracketed with a port
        (PODS6, ["fd00::8"], PODS6[2:]),  # IPv6, bare
    ],
)
async def test_a_hint_keeps_every_endpoint_on_the_ips_it_names(
    start_epp, pods: list[str], hint: list[str], kept: list[str]
) -> None:
    epp = await start_epp(pods)
    status, dest, hinted = await _pick(epp, hint)
    assert status is None, f"hint {hint}: {status} where the reference routes to {kept}"
    assert hinted == frozenset(kept)
    assert dest.split(",")[0] in kept


@pytest.mark.parametrize("hint", [[], ["10.9.9.9:8000"], ["127.0.0.9"]])
async def test_an_empty_hint_or_one_naming_no_known_ip_is_still_503(start_epp, hint: list[str]) -> None:
    epp = await start_epp(PODS)
    status, _, _ = await _pick(epp, hint)
    assert status == 503
    assert epp.picker.calls.dispatched == []
