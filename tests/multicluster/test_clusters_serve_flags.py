"""Review s17-qa M2: ``kvgate serve --clusters`` returned into ``multicluster.serve.run`` before reading
``--admin-port``, ``--admin-tls``, ``--client-ca``, ``--cert*``, ``--workers``, ``--endpoints``, ``--model``,
``--policy``, ...: it started, nothing listened on the admin port, and ``/metrics`` and ``/v1/clusters``
(every cluster's address, load and back-off) were served in plain HTTP on the client port. The project's
rule (docs/hardening.md): an option parsed and not used is an error naming it. Now ``--admin-port`` (with
its TLS flags) moves the admin routes there, and the flags for a gateway in front of model servers are
refused (exit 2, the flag named)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest

from gateway.backend import free_port
from kvgate.gateway.cli import main
from kvgate.httpfront import tls
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


def _clusters_file(tmp_path: Path) -> str:
    dead = free_port()
    f = tmp_path / "clusters.yaml"
    f.write_text(
        "local: east\nclusters:\n- name: east\n"
        f"  aggregate: http://127.0.0.1:{dead}/v1/pool/aggregate\n  gateway: 127.0.0.1:{dead}\n"
    )
    return str(f)


async def _get(port: int, path: str, ctx: ssl.SSLContext | None = None) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    w.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), 30)
    w.close()
    return data


async def _listening(port: int) -> bool:
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    w.close()
    return True


@pytest.mark.parametrize(
    "flags",
    [["--workers", "4"], ["--endpoints", "http://127.0.0.1:9"], ["--model", "m"], ["--policy", "kvgate"],
     ["--engine", "sglang"], ["--kv-events", "off"], ["--session-header", "x-s"], ["--adapter", "a"],
     ["--min-ready-workers", "1"], ["--pool-name", "p"], ["--kubeconfig", "k"], ["--kube-server", "http://k"],
     ["--pool-namespace", "default"]],
    ids=lambda f: f[0],
)  # fmt: skip
def test_flags_for_model_servers_are_refused_naming_the_flag(
    tmp_path: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["--clusters", _clusters_file(tmp_path), *flags])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"config error: {flags[0]}: not with --clusters" in err, err


def test_admin_tls_flags_without_admin_tls_or_port_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = _clusters_file(tmp_path)
    assert main(["--clusters", c, "--admin-tls"]) == 2
    assert "--admin-tls: needs --admin-port" in capsys.readouterr().err
    assert main(["--clusters", c, "--admin-port", "0", "--client-ca", "ca.pem"]) == 2
    assert "--client-ca: only with --admin-tls" in capsys.readouterr().err
    assert main(["--clusters", c, "--admin-port", "0", "--tls-hosts", "a"]) == 2  # (review s17-docs D3)
    assert "--tls-hosts: only with --admin-tls" in capsys.readouterr().err


async def test_admin_port_takes_the_admin_routes_off_the_data_port() -> None:
    spec = ClusterSpec(name="east", aggregate="http://127.0.0.1:9/a", gateway="127.0.0.1:9")
    cfg = ClustersConfig(clusters=(spec,))
    pair = tls.self_signed(("127.0.0.1",))
    gw = GlobalGateway(cfg, fetch=False)
    port = await gw.start(admin_port=0, admin_ssl=tls.https_context(pair))
    try:
        assert gw.admin_port is not None
        ctx = ssl.create_default_context(cadata=pair.cert_pem.decode())
        for path in ("/metrics", "/v1/clusters", "/healthz", "/readyz"):
            data = await _get(port, path)
            assert data.startswith(b"HTTP/1.1 404"), (path, data[:200])
            data = await _get(gw.admin_port, path, ctx)
            assert not data.startswith(b"HTTP/1.1 404"), (path, data[:200])
        assert b"kvgate_multicluster" in await _get(gw.admin_port, "/metrics", ctx)
    finally:
        await gw.stop()
    assert not await _listening(gw.admin_port)


@pytest.mark.parametrize("tls_flag", [False, True], ids=["admin-port", "admin-port+admin-tls"])
async def test_clusters_serve_listens_on_its_admin_port(tmp_path: Path, tls_flag: bool) -> None:
    """The reviewer's black-box test (s17-qa-tests/test_qa17_clusters_ignored_flags.py): the process.
    It binds port 0 for both and says which it got (review s17-fixes-a M1: ports picked here and bound
    by the process seconds later could be taken meanwhile on a shared machine)."""
    args = ["--clusters", _clusters_file(tmp_path), "--port", "0", "--admin-port", "0"]
    if tls_flag:
        args.append("--admin-tls")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "serve", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        scheme = "https" if tls_flag else "http"
        m = re.search(rb"global gateway on http://127\.0\.0\.1:(\d+), admin on " + scheme.encode()
                      + rb"://127\.0\.0\.1:(\d+)", line)  # fmt: skip
        assert m, (line, b"" if line else (await proc.stderr.read())[-500:])
        port, admin = int(m[1]), int(m[2])
        assert port != admin
        deadline = time.monotonic() + 60
        while not await _listening(admin):
            assert time.monotonic() < deadline, f"nothing listens on --admin-port {admin}"
            await asyncio.sleep(0.1)
        data = await _get(port, "/v1/clusters")
        assert data.startswith(b"HTTP/1.1 404"), data[:200]
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.mark.parametrize("taken", ["--port", "--admin-port"])
async def test_a_taken_port_is_a_one_line_error(tmp_path: Path, taken: str) -> None:
    """Review s17-fixes-a L3: a port taken was a traceback and "Unclosed client session", exit 1; now one
    line naming it, as plain ``kvgate serve`` says, and the same exit code (1)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        args = ["--clusters", _clusters_file(tmp_path), "--port", "0", "--admin-port", "0", "--admin-tls"]
        args[args.index(taken) + 1] = port
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kvgate.cli", "serve", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = err.decode()
    assert proc.returncode == 1, (out, text)
    said = [ln for ln in text.splitlines() if ln.startswith("kvgate serve: cannot listen on 127.0.0.1:")]
    assert len(said) == 1 and port in said[0], text
    assert "Traceback" not in text and "Unclosed" not in text, text


async def test_a_reload_applies_its_limits_to_the_admin_front_too() -> None:
    """Review s17-qafix-bc L2: a clusters-file reload applied its ``limits`` to the client port's front
    only; the admin port's front kept the ones it started with (``kvgate serve``'s gets them)."""
    from dataclasses import replace

    spec = ClusterSpec(name="east", aggregate="http://127.0.0.1:9/a", gateway="127.0.0.1:9")
    cfg = ClustersConfig(clusters=(spec,))
    gw = GlobalGateway(cfg, fetch=False)
    await gw.start(admin_port=0)
    try:
        assert gw.front is not None and gw._admin_front is not None
        limits = replace(cfg.limits, header_timeout_s=3.0, max_connections=77)
        gw.reload(replace(cfg, limits=limits))
        assert gw.front.header_timeout_s == 3.0
        assert gw._admin_front.header_timeout_s == 3.0, "the admin front kept its start limits"
        assert gw._admin_front.max_connections == gw.front.max_connections
    finally:
        await gw.stop()
