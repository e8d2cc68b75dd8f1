"""With ``destination_fallbacks`` (hub33: Envoy's Override Host policy walks the list; the one address the
default names: test_hub_one_address.py). Review s21-mc L3: a cut at ``limits.requestTimeoutSeconds`` before
the response head, with fallbacks in the destination ("east,west"). The served address comes only with the
headers, so when Envoy could not connect to east and went on to west, which hung, the cut charged and probed
east alone: west, the cluster that held the bound, stayed unprobed and uncharged. Now east is charged (it hung
or refused Envoy either way); when the hub's probe gets no connection to east, west is taken as the one Envoy
waited on: charged and probed (``GET /healthz``: no answer, hung). Over real ext_proc gRPC; east a loopback
port that refuses connections (a bound socket that does not listen), west a real loopback gateway.

Review s21-fixes-b F3: a primary whose SYNs are dropped (blackholed: Envoy waits out its connect_timeout and
goes on to the fallback) made the probe time out like a gateway that accepted and never answered, and the
fallback was neither charged nor probed. Now a probe that times out is checked by a connect of its own
(``connects``, the kernel's view): none within ``probe_timeout_s`` is "took no connection", as a refusal.
East blackholed here: a loopback listener whose accept queue is full, so the kernel drops every new SYN.

Review s22-hubqa F1: the other side of that check, a primary that takes the connection and never answers
(``hung``), stays "hung": the fallback neither charged nor probed (a mutant reading every timeout as "no
connection" passed the other cases)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.extproc.testing import Exchange
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.hub import ClusterDirector
from multicluster.test_hub_request_timeout import BODY, HEADERS, Healthz, _until, hub_epp, serve_healthz


@contextlib.contextmanager
def _refusing() -> Iterator[str]:
    """A loopback address whose connections are refused (bound, not listening: no other process gets it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


def active_passive(
    primary: tuple[str, str],
    fallback: tuple[str, str],
    probe_timeout_s: float,
    request_timeout_s: float,
    fallbacks: bool = True,
) -> ClusterDirector:
    """An active-passive hub director (seeded) over two clusters, each ``(name, gateway address)``:
    ``primary`` (priority 0) and ``fallback`` (priority 1); ``fallbacks``: the destination names the
    fallback after the primary (``destination_fallbacks``, for Envoy's Override Host policy)."""
    specs = (
        ClusterSpec(primary[0], gateway=primary[1]),
        ClusterSpec(fallback[0], gateway=fallback[1], priority=1),
    )
    cfg = ClustersConfig(specs, probe_timeout_s=probe_timeout_s, request_timeout_s=request_timeout_s)
    return ClusterDirector(cfg, "active-passive", seed=0, fallbacks=fallbacks)


@contextlib.contextmanager
def _blackholed() -> Iterator[str]:
    """A loopback address that drops connections' SYNs: a listener (backlog 0) never accepting, its accept
    queue filled by connects of its own, so the kernel drops every later SYN (tcp_abort_on_overflow 0, the
    default): a connect to it neither completes nor is refused, as a firewall's silent drop."""
    with contextlib.ExitStack() as stack:
        ls = stack.enter_context(socket.socket())
        ls.bind(("127.0.0.1", 0))
        ls.listen(0)
        for _ in range(8):  # (the queue holds backlog + 1: one, two on older kernels)
            c = stack.enter_context(socket.socket())
            c.settimeout(0.2)
            try:
                c.connect(ls.getsockname())
            except TimeoutError:
                break  # (a SYN dropped: the queue is full)
        else:
            pytest.skip("this kernel does not drop SYNs to a full accept queue (tcp_abort_on_overflow?)")
        yield f"127.0.0.1:{ls.getsockname()[1]}"


@pytest.mark.parametrize(
    ("east_kind", "west_hung"),
    [
        ("refused", True),
        ("refused", False),
        ("blackholed", True),
        ("blackholed", False),
        ("up", True),
        ("hung", True),
    ],
)
async def test_a_cut_before_the_head_charges_the_fallback_when_the_primary_takes_no_connection(
    east_kind: str, west_hung: bool
) -> None:
    east_up = east_kind in ("up", "hung")  # (hung: it takes the connection and never answers the probe)
    east_health = Healthz(5.0 if east_kind == "hung" else 0.0)
    west_health = Healthz(5.0 if west_hung else 0.0)
    async with serve_healthz(east_health) as east_port, serve_healthz(west_health) as west_port:
        with _blackholed() if east_kind == "blackholed" else _refusing() as unreachable:
            east_addr = f"127.0.0.1:{east_port}" if east_up else unreachable
            west_addr = f"127.0.0.1:{west_port}"
            director = active_passive(
                ("east", east_addr), ("west", west_addr), probe_timeout_s=0.3, request_timeout_s=0.6
            )
            east, west = director.states["east"], director.states["west"]
            async with hub_epp(director) as ch:
                async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
                    out = await ex.send_request(HEADERS, BODY)
                    assert out.destination == f"{east_addr},{west_addr}", out.destination
                    reply = await ex.read()  # (no head from whichever Envoy is waiting on)
                    assert reply.immediate_response.status.code == 504, reply
                assert east.backoff_s > 0  # (it hung, or it refused Envoy: charged either way)
                await _until(lambda: not director._live_probes, "the probes after the cut did not end")
                # (east up: it took the probe's connection, it is the one Envoy waited on; west untouched)
                if east_up:
                    assert east_health.probes == 1 and west_health.probes == 0
                    assert (east.hung_at is not None) is (east_kind == "hung"), east.hung_at
                    assert west.backoff_s == 0 and west.hung_at is None
                else:
                    assert west_health.probes == 1, "the fallback Envoy waited on was not probed"
                    assert west.backoff_s > 0, "the fallback that held the bound was not charged"
                    assert (west.hung_at is not None) is west_hung, west.hung_at
