"""qa34a F2/F3: llm-d-router's ``passthrough-parser`` (``requestHandler.parsers``) in ``kvgate epp``.

F3: ``plugins: [{type: passthrough-parser}]`` with ``requestHandler: {parsers: [{pluginRef:
passthrough-parser}]}`` (llm-d-router's integration tests' shape) exited 2, "unknown plugin type". F2: a
multipart ``/v1/audio/transcriptions`` was answered 400 ("request body is not valid JSON"), while
docs/gateway.md sent such requests to ``kvgate epp``. Upstream's default parser (``openai-parser``) refuses
a body it cannot read (400), so kvgate's default still does; the passthrough parser, opt-in, routes it
without reading it (llm-d-router ``parsers/passthrough``: the body as sent, no usage read from the answer),
and llm-d-router's ParserRegistry gives a parser claiming no path every path the parsers before it do not
claim. Driven through a real grpcio ext_proc client, message by message as Envoy sends them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client import generate_latest

from kvgate.config.picker import ConfigError, load_config
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc import config as epp_config
from kvgate.extproc.context import build_context
from kvgate.extproc.metrics import EppMetrics
from kvgate.extproc.parsers import ParserRoutes
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.testing import Exchange, channel

from .test_cli import _launch, _stop

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
# llm-d-router's TestDynamicAttributes_Concurrency shape: the passthrough parser alone.
PASSTHROUGH = (
    HEAD + "- type: passthrough-parser\n- type: queue-scorer\n"
    "requestHandler:\n  parsers:\n  - pluginRef: passthrough-parser\n"
    "schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: queue-scorer\n"
)
# openai-parser for the APIs it reads, the passthrough parser for every other path.
BOTH = (
    HEAD + "- type: openai-parser\n- type: passthrough-parser\n- type: queue-scorer\n"
    "requestHandler:\n  parsers:\n  - pluginRef: openai-parser\n  - pluginRef: passthrough-parser\n"
)
BND = "qa34a"
FORM = (
    (
        f'--{BND}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n--{BND}\r\n'
        'Content-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
    ).encode()
    + b"RIFF\x00\x01\xff\xfe"
    + f"\r\n--{BND}--\r\n".encode()
)
AUDIO = {
    ":method": "POST",
    ":path": "/v1/audio/transcriptions",
    "content-type": f"multipart/form-data; boundary={BND}",
}
ADDRS = ["10.9.0.1:8000", "10.9.0.2:8000"]  # (never dialled: the test plays the gateway and the server)


@asynccontextmanager
async def _epp(config_text: str | None) -> AsyncIterator[tuple[pb_grpc.ExternalProcessorStub, EppMetrics]]:
    """A real EPP server built as ``kvgate epp --config-text`` builds it, on an ephemeral port."""
    cfg = epp_config.load(
        config=None, pool_name="pool", endpoints=",".join(ADDRS), models=["m"], policy="kvgate",
        engine="vllm", config_file=None, config_text=config_text, conformance=False,
    )  # fmt: skip
    metrics = EppMetrics()
    ctx = build_context(
        cfg, EndpointStore.from_addresses(cfg.pool.endpoints), clock=time.monotonic, observer=metrics
    )
    server = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await server.start()
    ch = channel(f"127.0.0.1:{server.port}")
    try:
        yield pb_grpc.ExternalProcessorStub(ch), metrics
    finally:
        await ch.close()
        await server.stop(0)


def _value(metrics: EppMetrics, name: str) -> float:
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


def test_the_reference_passthrough_config_loads() -> None:
    assert load_config(PASSTHROUGH).parsers == ["passthrough-parser"]
    assert load_config(BOTH).parsers == ["openai-parser", "passthrough-parser"]
    older = (
        HEAD + "- type: passthrough-parser\n- type: queue-scorer\nparser: {pluginRef: passthrough-parser}\n"
    )
    assert load_config(older).parsers == ["passthrough-parser"]  # (GIE's ``parser`` section)
    with pytest.raises(ConfigError, match=r"requestHandler.parsers\[0\].pluginRef: 'queue-scorer' is not"):
        load_config(HEAD + "- type: queue-scorer\nrequestHandler: {parsers: [{pluginRef: queue-scorer}]}\n")


def test_a_parser_after_the_fallback_is_skipped_with_a_warning() -> None:
    text = BOTH.replace(
        "  - pluginRef: openai-parser\n  - pluginRef: passthrough-parser\n",
        "  - pluginRef: passthrough-parser\n  - pluginRef: openai-parser\n",
    )
    cfg = load_config(text)
    assert cfg.parsers == ["passthrough-parser"]
    assert cfg.warnings == [
        "requestHandler.parsers[1]: 'openai-parser' is skipped: it comes after the fallback parser "
        "'passthrough-parser', which takes every path"
    ]
    both = load_config(BOTH + "parser: {pluginRef: passthrough-parser}\n")
    assert both.parsers == ["openai-parser", "passthrough-parser"]
    assert both.warnings == ["parser: not applied: requestHandler.parsers replaces it"]


def test_which_parser_reads_each_path() -> None:
    default, alone, both = (
        ParserRoutes(),
        ParserRoutes(["passthrough-parser"]),
        ParserRoutes(load_config(BOTH).parsers),
    )
    for path in ("/v1/chat/completions", "/v1/audio/transcriptions", "/custom"):
        assert not default.passthrough(path)
        assert alone.passthrough(path)
    assert not both.passthrough("/v1/chat/completions?x=1") and not both.passthrough("/tokenize")
    assert both.passthrough("/v1/audio/transcriptions") and both.passthrough("/v1/foo")


async def test_passthrough_routes_a_multipart_form_unread() -> None:
    # Upstream's default parser refuses what it cannot read: so does kvgate's, without a parser config.
    async with _epp(None) as (stub, _m), Exchange(stub) as ex:
        refused = await ex.send_request(AUDIO, FORM, chunk_size=40)
    assert refused.immediate is not None and refused.immediate.status.code == 400
    assert b"not valid JSON" in refused.immediate.body
    async with _epp(BOTH) as (stub, metrics):
        async with Exchange(stub) as ex:
            out = await ex.send_request(AUDIO, FORM, chunk_size=40)  # (split across chunks, as Envoy may)
            assert out.immediate is None, out.immediate
            assert out.destination in ADDRS and out.metadata_destination == out.destination
            assert out.body == FORM  # the form goes on byte for byte
            assert "content-length" not in out.mutation.set_headers  # (its length unchanged)
            answer = orjson.dumps({"text": "hi", "usage": {"prompt_tokens": 7, "completion_tokens": 2}})
            got = await ex.send_response(200, {"content-type": "application/json"}, [answer[:9], answer[9:]])
            assert got.body == answer  # passed through unread
        assert _value(metrics, "kvgate_epp_prompt_tokens_total") == 0  # (no usage read: upstream's parser)
        assert _value(metrics, "kvgate_epp_inflight_requests") == 0  # its accounting closed
        assert _value(metrics, "kvgate_epp_picks_total") == 1
        # openai-parser keeps the paths it claims: a body it cannot read there is still its 400
        async with Exchange(stub) as ex:
            bad = await ex.send_request({":method": "POST", ":path": "/v1/chat/completions"}, b"{not json")
        assert bad.immediate is not None and bad.immediate.status.code == 400


async def test_passthrough_alone_reads_no_body_on_any_path() -> None:
    """A JSON body without ``model`` on any path, or text: routed as sent; a streamed answer passes unread
    (its model not put back even with a rewrite header: the passthrough parser rewrites nothing)."""
    async with _epp(PASSTHROUGH) as (stub, metrics):
        for path, body in (
            ("/tokenize", b'{"prompt": "x"}'),
            ("/custom", b"plain text"),
            ("/v1/chat/completions", b""),
        ):
            async with Exchange(stub) as ex:
                hdrs = {":method": "POST", ":path": path, "x-gateway-model-name-rewrite": "m2"}
                out = await ex.send_request(hdrs, body)
                assert out.immediate is None, (path, out.immediate)
                assert out.destination in ADDRS and out.body == body
                sse = b'data: {"model": "m2", "usage": {"prompt_tokens": 7}}\r\r'
                got = await ex.send_response(200, {"content-type": "text/event-stream"}, [sse])
                assert got.body == sse
        # a body-less POST to an inference path (refused 400 by openai-parser, rev-d32 F1) is routed
        async with Exchange(stub) as ex:
            bare = await ex.send_request({":method": "POST", ":path": "/v1/chat/completions"}, None)
            assert bare.immediate is None and bare.destination in ADDRS
            got = await ex.send_response(
                200, {"content-type": "application/json"}, [b'{"usage": {"prompt_tokens": 3}}']
            )
        assert _value(metrics, "kvgate_epp_prompt_tokens_total") == 0
        assert _value(metrics, "kvgate_epp_inflight_requests") == 0


async def test_kvgate_epp_process_starts_with_the_reference_config_and_routes_a_form() -> None:
    """The finding as seen: ``kvgate epp --config-text`` with llm-d-router's passthrough config (exit 2
    before), then a multipart form routed through the real process."""
    proc, ports = await _launch("--endpoints", ",".join(ADDRS), "--plaintext", "--config-text", PASSTHROUGH)
    try:
        ch = channel(f"127.0.0.1:{ports['grpc']}")
        try:
            async with Exchange(pb_grpc.ExternalProcessorStub(ch)) as ex:
                out = await ex.send_request(AUDIO, FORM, chunk_size=40)
        finally:
            await ch.close()
        assert out.immediate is None, out.immediate
        assert out.destination in ADDRS and out.body == FORM
    finally:
        assert await _stop(proc) == 0
