"""``kvgate serve --admin-tls``: the admin port (/metrics, /healthz, /v1/pool/aggregate) over HTTPS, and
mutual TLS with ``--client-ca``. A real ``kvgate serve`` process, fetched with aiohttp and real certificates
(verified against the server's CA)."""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.backend import Backend
from kvgate.config.gateway import GatewayConfigError, config_from_flags
from kvgate.gateway import cli
from kvgate.httpfront import tls


def _client_ctx(d: Path, cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(d / "server.crt"))
    if cert:
        ctx.load_cert_chain(str(d / "client.crt"), str(d / "client.key"))
    return ctx


@pytest.fixture
def pems(tmp_path: Path) -> Path:
    server, client = tls.self_signed(("localhost", "127.0.0.1")), tls.self_signed(("global-gateway",))
    for name, pem in (("server.crt", server.cert_pem), ("server.key", server.key_pem),
                      ("client.crt", client.cert_pem), ("client.key", client.key_pem)):  # fmt: skip
        (tmp_path / name).write_bytes(pem)
    return tmp_path


@pytest.fixture
async def pod() -> AsyncIterator[Backend]:
    b = Backend("pod")
    await b.start()
    yield b
    await b.stop()


async def _serve(pod: Backend, *flags: str) -> tuple[asyncio.subprocess.Process, int]:
    """A ``kvgate serve`` process; returns it and the admin port it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "serve", "--endpoints", pod.address, "--model", "m",
        "--port", "0", "--admin-port", "0", "--log-level", "WARNING", "--kv-events", "off", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line, f"kvgate serve exited: {lines}"
        lines.append(line)
        if "listening on" in line:
            break
    m = re.search(r"admin on https://127\.0\.0\.1:(\d+)", line)
    assert m, f"no https admin port announced: {line!r}"
    return proc, int(m.group(1))


async def _stop(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    await asyncio.wait_for(proc.wait(), 60)


async def test_admin_port_over_mutual_tls(pems: Path, pod: Backend) -> None:
    proc, port = await _serve(
        pod, "--admin-tls", "--cert", str(pems / "server.crt"), "--key", str(pems / "server.key"),
        "--client-ca", str(pems / "client.crt"),
    )  # fmt: skip
    base = f"https://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            # With a client certificate: the aggregate, /metrics and /healthz.
            async with s.get(f"{base}/v1/pool/aggregate", ssl=_client_ctx(pems, cert=True)) as r:
                assert r.status == 200
                agg = orjson.loads(await r.read())
            assert agg["tls"] is True and agg["mtls"] is True and agg["total_endpoints"] == 1
            async with s.get(f"{base}/metrics", ssl=_client_ctx(pems, cert=True)) as r:
                assert r.status == 200 and b"kvgate_gateway" in await r.read()
            async with s.get(f"{base}/healthz", ssl=_client_ctx(pems, cert=True)) as r:
                assert r.status == 200
            # Without one: the handshake is refused, nothing is served.
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"{base}/v1/pool/aggregate", ssl=_client_ctx(pems, cert=False)) as r:
                    await r.read()
            # Plain HTTP on the TLS port is not served either.
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"http://127.0.0.1:{port}/v1/pool/aggregate") as r:
                    await r.read()
    finally:
        await _stop(proc)


async def test_admin_tls_server_only_and_the_secret_layout(pems: Path, pod: Backend) -> None:
    secret = pems / "secret"
    secret.mkdir()
    (secret / "tls.crt").write_bytes((pems / "server.crt").read_bytes())
    (secret / "tls.key").write_bytes((pems / "server.key").read_bytes())
    proc, port = await _serve(pod, "--admin-tls", "--cert-path", str(secret))
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://127.0.0.1:{port}/v1/pool/aggregate",
                             ssl=_client_ctx(pems, cert=False)) as r:  # fmt: skip
                assert r.status == 200
                agg = orjson.loads(await r.read())
            assert agg["tls"] is True and not agg.get("mtls")  # (false fields are left out)
    finally:
        await _stop(proc)


def _args(*argv: str) -> argparse.Namespace:
    return cli._parser().parse_args(["--endpoints", "127.0.0.1:1", "--model", "m", *argv])


def test_admin_tls_flags_are_checked(pems: Path) -> None:
    cfg = config_from_flags("127.0.0.1:1", ["m"], "kvgate", "vllm", [])
    with pytest.raises(GatewayConfigError, match="--admin-port"):
        cli.admin_tls(_args("--admin-tls"), cfg)  # the admin routes would be on the plaintext data port
    cfg.admin_port = 0
    with pytest.raises(GatewayConfigError, match=r"--cert.*only with --admin-tls"):
        cli.admin_tls(_args("--cert", str(pems / "server.crt")), cfg)  # never silently ignored
    with pytest.raises(GatewayConfigError, match=r"--tls-hosts: only with --admin-tls"):
        cli.admin_tls(_args("--tls-hosts", "a.example"), cfg)  # nor --tls-hosts (review s17-docs D3)
    with pytest.raises(GatewayConfigError, match="--cert"):
        cli.admin_tls(_args("--admin-tls", "--cert", str(pems / "server.crt")), cfg)  # no --key
    with pytest.raises(GatewayConfigError, match="--cert-path"):
        cli.admin_tls(_args("--admin-tls", "--cert-path", str(pems / "missing")), cfg)
    generated = cli.admin_tls(_args("--admin-tls"), cfg)  # no certificate given: a self-signed one
    assert generated is not None and generated.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert generated.client_ca_pem is None
    assert cli.admin_tls(_args(), cfg) is None
    named = cli.admin_tls(_args("--admin-tls", "--tls-hosts", "a.example"), cfg)
    assert named is not None and named.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")


async def test_the_workers_supervisor_serves_its_admin_port_over_tls(pems: Path, pod: Backend) -> None:
    proc, port = await _serve(
        pod, "--workers", "2", "--admin-tls", "--cert", str(pems / "server.crt"), "--key",
        str(pems / "server.key"), "--client-ca", str(pems / "client.crt"),
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://127.0.0.1:{port}/healthz", ssl=_client_ctx(pems, cert=True)) as r:
                assert r.status == 200
            # The aggregate too (one worker's: they share in-flight counts), saying how it was served.
            url = f"https://127.0.0.1:{port}/v1/pool/aggregate"
            async with s.get(url, ssl=_client_ctx(pems, cert=True)) as r:
                assert r.status == 200
                agg = orjson.loads(await r.read())
            assert agg["tls"] is True and agg["mtls"] is True and agg["total_endpoints"] == 1
            async with s.get(url + "?pool=nope", ssl=_client_ctx(pems, cert=True)) as r:
                assert r.status == 404
            with pytest.raises(aiohttp.ClientError):
                async with s.get(f"https://127.0.0.1:{port}/healthz", ssl=_client_ctx(pems, cert=False)) as r:
                    await r.read()
    finally:
        await _stop(proc)
