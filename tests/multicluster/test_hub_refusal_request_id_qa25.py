"""qa25 F3: ``kvgate serve --clusters`` (the global gateway) answers its own refusals (a bad body's 400, the
503 when every cluster failed) without ``x-request-id``, not even the one the client sent; ``kvgate serve``
echoes the client's id (or makes one) on every refusal (docs/gateway.md "Errors": "All gateway refusals
are OpenAI-style JSON ... with an ``x-request-id`` header"), and the hub's own 2xx carry the id (passed
through from the cluster's gateway). An operator cannot tie a client's failed request to anything.

The test starts the real ``kvgate serve --clusters`` on loopback (ports 0: the ones it bound read from its
start line; a clusters file whose one cluster is a port this test holds bound and never listens on) and
kills it."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

import start_lines
from kvgate.lifeline import die_with_parent_argv


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[int]:
    """The hub's data port."""
    with socket.socket() as dead:  # (bound, never listening: a connect is refused, no other process binds it)
        dead.bind(("127.0.0.1", 0))
        gone = dead.getsockname()[1]
        f = tmp_path / "clusters.yaml"
        f.write_text(
            "ttl_s: 3.0\nrefresh_s: 0.5\nclusters:\n"
            f"- name: gone\n  aggregate: http://127.0.0.1:{gone}/v1/pool/aggregate\n"
            f"  gateway: 127.0.0.1:{gone}\n"
        )
        argv = [sys.executable, "-m", "kvgate.cli", "serve", "--clusters", str(f), "--port", "0",
                "--admin-port", "0"]  # fmt: skip
        out = tmp_path / "hub.log"
        with out.open("wb") as stdout:
            proc = subprocess.Popen(die_with_parent_argv(argv), stdout=stdout, stderr=subprocess.STDOUT)
        try:
            yield start_lines.ports(out, start_lines.HUB, proc)[0]
        finally:
            proc.kill()
            proc.wait(30)


def _post(port: int, body: bytes) -> tuple[int, str | None]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
        headers={"content-type": "application/json", "x-request-id": "qa25-trace-1"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("x-request-id")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-request-id")


@pytest.mark.parametrize(
    "body, status",
    [
        (b'{"model":"m1",', 400),
        (b'{"model":"m1","messages":[{"role":"user","content":"hi"}],"max_tokens":2}', 503),
    ],
    ids=["bad_json_400", "every_cluster_failed_503"],
)
def test_hub_refusal_carries_the_clients_request_id(hub: int, body: bytes, status: int) -> None:
    got, rid = _post(hub, body)
    assert got == status
    assert rid == "qa25-trace-1", f"{status} without the client's x-request-id (got {rid!r})"


# --- fixqa25: in process, real HTTP on loopback (a cluster gateway that is a loopback pod) ---------------
async def test_an_id_is_made_when_the_client_sends_none_and_the_cluster_is_sent_it(pods, gateway) -> None:
    """No ``x-request-id`` from the client: the hub makes one, sends it to the cluster and answers with it
    (a cluster that echoes none, as this pod: the hub's id still comes back)."""
    pod = await pods()
    gw = await gateway([pod.address])
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        async with http.post(url, data=b'{"model":"m","prompt":"x"}') as r:
            assert r.status == 200, await r.text()
            rid = r.headers.get("x-request-id")
        async with http.get(url, headers={"x-request-id": "x" * 300}) as r:  # over the bound: replaced
            assert r.status == 405
            made = r.headers.get("x-request-id")
    assert rid, "a 200 through the hub without x-request-id"
    assert pod.received[-1][1].get("x-request-id") == rid
    assert made and made != "x" * 300 and made != rid
