"""Closing note s22 ("Noticed and left undone"): the hub's cut walk (``ClusterDirector._live``: after a cut
before the head, a primary that takes no connection hands the cut to the next address) registered its probe
under the first cluster only (``_live_probes``). A fallback it reached was probed a second time when that
fallback's own probe after a cut was in flight already, and a cut of the fallback while the walk probed it
started another probe of it: "one probe per cluster at a time" (docs/multicluster.md) held for primaries
only. Now the walk's probe is registered under the cluster it probes, and a fallback with a probe of its
own in flight is charged but not probed again.

Over real ext_proc gRPC: west (priority 0) a loopback gateway whose ``/healthz`` never answers in time
(hung), east (priority 1) a loopback port that refuses connections. The first request goes to west first:
cut, west charged and probed (for ``probe_timeout_s``). The second, sent then, goes to east first (west
backs off): cut, east refused the walk's connect, so west is charged again, while its first probe is still
in flight."""

from __future__ import annotations

from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.extproc.testing import Exchange
from kvgate.scheduling.types import InferenceRequest
from multicluster.test_hub_cut_fallback import _refusing, active_passive
from multicluster.test_hub_request_timeout import BODY, HEADERS, Healthz, _until, hub_epp, serve_healthz


async def test_a_fallback_the_cut_walk_reaches_while_its_own_probe_runs_is_not_probed_twice() -> None:
    west_health = Healthz(30.0)  # (takes the connection, never answers within probe_timeout_s: hung)
    async with serve_healthz(west_health) as port:
        with _refusing() as east_addr:
            west_addr = f"127.0.0.1:{port}"
            # (probe_timeout_s: west's first probe is still in flight when the second request is cut)
            director = active_passive(
                ("west", west_addr), ("east", east_addr), probe_timeout_s=4.0, request_timeout_s=0.5
            )
            west = director.states["west"]
            async with hub_epp(director) as ch:
                stub = pb_grpc.ExternalProcessorStub(ch)
                async with Exchange(stub, timeout=30) as ex:
                    out = await ex.send_request(HEADERS, BODY)
                    assert out.destination == f"{west_addr},{east_addr}", out.destination
                    assert (await ex.read()).immediate_response.status.code == 504
                await _until(lambda: west_health.probes == 1, "west's probe after its cut did not come")
                assert "west" in director._live_probes
                async with Exchange(stub, timeout=30) as ex:  # (west backs off: east first)
                    out = await ex.send_request(HEADERS, BODY)
                    assert out.destination == f"{east_addr},{west_addr}", out.destination
                    assert (await ex.read()).immediate_response.status.code == 504
                assert west.failures == 2, "the walk did not charge west, the fallback that held the bound"
                # (the walk probes west a second time, or ends without: east holds no probe any more)
                await _until(lambda: west_health.probes > 1 or "east" not in director._live_probes,
                             "east's walk neither probed west nor ended")  # fmt: skip
                assert west_health.probes == 1, "west probed again while its probe after a cut was in flight"
                assert "west" in director._live_probes, "west's probe ended early: the test proves nothing"


async def test_a_cut_of_the_fallback_the_walk_is_probing_starts_no_second_probe() -> None:
    """East (priority 0) refuses, west (1) hangs: the first request's cut walks from east to west and
    probes west. A cut of west itself meanwhile (a request sent to west first, as its session reports it:
    ``on_cut``) finds west's probe in flight, as a primary's would."""
    west_health = Healthz(30.0)
    async with serve_healthz(west_health) as port:
        with _refusing() as east_addr:
            west_addr = f"127.0.0.1:{port}"
            director = active_passive(
                ("east", east_addr), ("west", west_addr), probe_timeout_s=2.0, request_timeout_s=0.5
            )
            async with hub_epp(director) as ch:
                async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
                    out = await ex.send_request(HEADERS, BODY)
                    assert out.destination == f"{east_addr},{west_addr}", out.destination
                    assert (await ex.read()).immediate_response.status.code == 504
                await _until(lambda: west_health.probes == 1, "the walk did not probe west")
                west_ep = next(ep for ep in director.store.all() if ep.address == west_addr)
                req = InferenceRequest("r2", "m", prompt_text="p")
                director.on_cut(req, west_ep, headed=False, steady=False, bound_s=0.5)
                await _until(lambda: west_health.probes > 1 or not director._live_probes, "no probe ended")
                assert west_health.probes == 1, (
                    "a cut of west started a second probe while the walk probed it"
                )
