"""TLS on the ext_proc port: certificate validation by the gateway, and mutual TLS."""

from __future__ import annotations

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from kvgate.extproc import tls
from kvgate.extproc.testing import Exchange, channel

ADDRS = ["127.0.0.1:18101", "127.0.0.1:18102"]
HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}
BODY = orjson.dumps({"model": "m", "prompt": "hi"})


async def _pick(target: str, **kw: object) -> str:
    ch = channel(target, **kw)  # type: ignore[arg-type]
    try:
        async with Exchange(pb_grpc.ExternalProcessorStub(ch), timeout=10) as ex:
            out = await ex.send_request(HEADERS, BODY)
        return out.destination
    finally:
        await ch.close()


async def test_tls_with_validated_certificate(start_epp) -> None:
    server_pair = tls.self_signed(("localhost", "127.0.0.1"))
    epp = await start_epp(ADDRS, tls=server_pair)
    assert await _pick(epp.target, root_cert=server_pair.cert_pem) in ADDRS


async def test_tls_wrong_ca_fails(start_epp) -> None:
    epp = await start_epp(ADDRS, tls=tls.self_signed(("localhost", "127.0.0.1")))
    other_ca = tls.self_signed(("localhost", "127.0.0.1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _pick(epp.target, root_cert=other_ca.cert_pem)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_plaintext_client_cannot_talk_to_tls_server(start_epp) -> None:
    epp = await start_epp(ADDRS, tls=tls.self_signed(("localhost", "127.0.0.1")))
    with pytest.raises(grpc.aio.AioRpcError):
        await _pick(epp.target)


async def test_mutual_tls(start_epp) -> None:
    server_pair = tls.self_signed(("localhost", "127.0.0.1"))
    client_pair = tls.self_signed(("gateway",))
    epp = await start_epp(ADDRS, tls=server_pair, client_ca=client_pair.cert_pem)
    good = await _pick(epp.target, root_cert=server_pair.cert_pem,
                       client_pair=(client_pair.cert_pem, client_pair.key_pem))  # fmt: skip
    assert good in ADDRS
    # No client certificate, or one the client CA did not sign: refused.
    with pytest.raises(grpc.aio.AioRpcError):
        await _pick(epp.target, root_cert=server_pair.cert_pem)
    stranger = tls.self_signed(("gateway",))
    with pytest.raises(grpc.aio.AioRpcError):
        await _pick(
            epp.target, root_cert=server_pair.cert_pem, client_pair=(stranger.cert_pem, stranger.key_pem)
        )


def test_openssl_fallback_makes_a_usable_certificate() -> None:
    from kvgate.httpfront.tls import _self_signed_openssl

    pair = _self_signed_openssl(("localhost", "127.0.0.1"), 1)
    assert pair.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in pair.key_pem
    tls.server_credentials(pair)  # grpc accepts the pair


def test_load_from_cert_path(tmp_path) -> None:
    pair = tls.self_signed()
    (tmp_path / "tls.crt").write_bytes(pair.cert_pem)
    (tmp_path / "tls.key").write_bytes(pair.key_pem)
    assert tls.load(str(tmp_path), None, None) == pair
    with pytest.raises(ValueError):
        tls.load(None, str(tmp_path / "tls.crt"), None)
