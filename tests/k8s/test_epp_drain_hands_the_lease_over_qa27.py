"""s27-qa Q2 (fixqa27a): with leader election, a ``kvgate epp`` told to stop gives its Lease up before it
drains its open streams (``--drain-timeout``), so another replica leads, and is ready, meanwhile. Before
(53bd5818) the Lease went only after the drain: with the drain now 30 s by default (120 s in the chart) no
replica would have been ready for that long; and the open stream was cut at 5 s. Fails on 53bd5818
(``--drain-timeout`` unknown; without it, the stream is cut before the Lease is released)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.extproc.testing import Exchange, channel
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiError, ApiServerDouble

from .eppproc import launch_epp

HEADERS = {":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw", ":scheme": "http",
           "content-type": "application/json"}  # fmt: skip
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
LAST = b"data: [DONE]\n\n"


async def _until(cond, within_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not cond():
        assert loop.time() - t0 < within_s, "condition not met in time"
        await asyncio.sleep(0.05)


def _holder(double: ApiServerDouble) -> str | None:
    try:
        return double.get(R.LEASE, "kvgate-epp-llm")["spec"].get("holderIdentity")
    except ApiError:  # (not created yet)
        return None


async def test_a_stopping_leader_releases_its_lease_then_serves_its_open_stream(
    double: ApiServerDouble, tmp_path: Path
) -> None:
    spec = {"selector": {"matchLabels": {"app": "m"}}, "targetPorts": [{"number": 8000}]}
    double.create({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                   "metadata": {"name": "llm"}, "spec": spec})  # fmt: skip
    double.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "m0", "labels": {"app": "m"}}})
    double.set_pod_status("m0", ip="10.0.0.1", ready=True)
    epp = await launch_epp(
        double.url, tmp_path / "epp.log", "--pool-name", "llm", "--ha-enable-leader-election",
        "--ha-lease-duration", "2", "--ha-renew-deadline", "1.5", "--ha-retry-period", "0.2",
        "--drain-timeout", "120",
    )  # fmt: skip
    ch = channel(f"127.0.0.1:{epp.grpc}")
    try:
        await _until(lambda: bool(_holder(double)))  # it leads
        ready = asyncio.get_running_loop().time() + 30
        while (await epp.readyz())[0] != 200:
            assert asyncio.get_running_loop().time() < ready, await epp.readyz()
            await asyncio.sleep(0.05)
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=60) as ex:
            assert (await ex.send_request(HEADERS, BODY)).destination == "10.0.0.1:8000"
            await ex.send_response_headers(200, {"content-type": "text/event-stream"}, served="10.0.0.1:8000")
            epp.proc.send_signal(signal.SIGTERM)
            await _until(lambda: _holder(double) == "")  # released while its stream is still open
            await ex.send_response_chunk(LAST, end_of_stream=True)
            got = bytearray()
            async for chunk, _eos in ex.response_body():
                got += chunk
            assert bytes(got) == LAST
        assert await epp.stop() == 0
    finally:
        await ch.close()
        if epp.proc.returncode is None:
            epp.proc.kill()
            await epp.proc.wait()


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
