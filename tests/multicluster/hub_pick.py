"""One request's headers and body through a hub EPP's ext_proc port (the real ``kvgate epp --clusters``,
``extproc.test_cli._launch``): its answer, the destination named or the EPP's own refusal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.extproc.testing import Exchange, channel
from multicluster.test_hub_request_timeout import BODY, HEADERS


async def pick_once(grpc_port: int, headers: Mapping[str, str] = HEADERS, body: bytes = BODY) -> Any:
    """Send ``headers`` and ``body`` (a completion request) on a fresh channel; the EPP's answer to them
    (``destination``, ``metadata_destination``, ``status``)."""
    ch = channel(f"127.0.0.1:{grpc_port}")
    try:
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=30) as ex:
            return await ex.send_request(headers, body)
    finally:
        await ch.close()
