"""hub33 (a gap session 32 documented): with two gateways or more the hub EPP always named a fallback list in
``x-gateway-destination-endpoint`` (``east,west``), and the one Envoy setup kvgate ships and documents
(docs/epp.md "The Envoy side": an ``ORIGINAL_DST`` cluster reading that header) takes one ``ip:port`` and
answers a list 503: every request of a documented multi-cluster hub failed. Now the hub names the chosen
gateway alone unless ``destination_fallbacks: true`` (the clusters file) or ``--destination-fallbacks true``
asks for the list (Envoy's Override Host policy), the flag over the key; and with one address named, a cut
before the head charges and probes the chosen cluster only: the cut walk no longer takes a cluster Envoy was
never sent to as the one that held the bound.

The cut over real ext_proc gRPC (a refusing or blackholed primary, a live fallback); the option through the
real ``kvgate epp --clusters`` subprocess, a request sent over gRPC to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.test_cli import _launch, _stop
from kvgate.extproc.testing import Exchange
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.hub import ClusterDirector
from multicluster.hub_pick import pick_once
from multicluster.test_hub_cut_fallback import _blackholed, _refusing
from multicluster.test_hub_request_timeout import BODY, HEADERS, Healthz, _until, hub_epp, serve_healthz


@pytest.mark.parametrize("east_kind", ["refused", "blackholed"])
async def test_one_address_named_and_a_cut_charges_only_the_cluster_envoy_was_sent_to(east_kind: str) -> None:
    west_health = Healthz()
    async with serve_healthz(west_health) as west_port:
        with _blackholed() if east_kind == "blackholed" else _refusing() as east_addr:
            specs = (ClusterSpec("east", gateway=east_addr),
                     ClusterSpec("west", gateway=f"127.0.0.1:{west_port}", priority=1))  # fmt: skip
            cfg = ClustersConfig(specs, probe_timeout_s=0.3, request_timeout_s=0.6)
            director = ClusterDirector(cfg, "active-passive", seed=0)  # (the default: no fallbacks)
            east, west = director.states["east"], director.states["west"]
            async with hub_epp(director) as ch:
                async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
                    out = await ex.send_request(HEADERS, BODY)
                    assert out.destination == east_addr, f"not one address: {out.destination}"
                    assert out.metadata_destination == east_addr, out.metadata_destination
                    reply = await ex.read()
                    assert reply.immediate_response.status.code == 504, reply
                assert east.backoff_s > 0
                await _until(lambda: not director._live_probes, "the probe after the cut did not end")
                assert west_health.probes == 0, "the cut walked on to a cluster Envoy was never sent to"
                assert west.backoff_s == 0 and west.failures == 0, "a cluster Envoy was never sent to charged"


def _file(path: Path, fallbacks: bool | None) -> str:
    key = "" if fallbacks is None else f"destination_fallbacks: {str(fallbacks).lower()}\n"
    path.write_text(
        f"{key}clusters:\n- {{name: a, gateway: '127.0.0.1:9'}}\n- {{name: b, gateway: '127.0.0.1:10'}}\n"
    )
    return str(path)


@pytest.mark.parametrize(
    ("in_file", "flag", "listed"),
    [
        (None, None, False),
        (True, None, True),
        (False, None, False),
        (True, "false", False),
        (None, "true", True),
    ],
)
async def test_the_key_and_the_flag_choose_one_address_or_the_list(
    tmp_path: Path, in_file: bool | None, flag: str | None, listed: bool
) -> None:
    flags = [] if flag is None else ["--destination-fallbacks", flag]
    proc, ports = await _launch(
        "--clusters", _file(tmp_path / "clusters.yaml", in_file), "--plaintext", *flags
    )
    try:
        out = await pick_once(ports["grpc"])
        named = out.destination.split(",")
        assert set(named) <= {"127.0.0.1:9", "127.0.0.1:10"}, out.destination
        assert len(named) == (2 if listed else 1), out.destination
        assert out.metadata_destination == out.destination  # (header and metadata match)
    finally:
        assert await _stop(proc) == 0


async def test_kvgate_serve_refuses_the_hub_only_key(tmp_path: Path) -> None:
    from kvgate.multicluster.clusters import ClustersError, ClustersFile
    from kvgate.multicluster.serve import serve_check

    path = _file(tmp_path / "clusters.yaml", False)
    with pytest.raises(ClustersError, match="destination_fallbacks: is for hub EPPs"):
        ClustersFile(path, check=serve_check)
    ClustersFile(_file(tmp_path / "other.yaml", None), check=serve_check)  # (absent: taken)


def test_a_pool_epp_refuses_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """Flags that cannot apply are refused, not ignored (as --cluster-policy is without --clusters)."""
    import kvgate.extproc.cli as epp_cli

    argv = ["--endpoints", "127.0.0.1:9", "--model", "m", "--plaintext", "--destination-fallbacks", "true"]
    assert epp_cli.main(argv) == 2
    assert "--destination-fallbacks: only with --clusters" in capsys.readouterr().err
