"""rev-c36 F1: the ``llm-d-session`` token of an endpoint without a reference name was ``kvgate-`` + the
unkeyed xxh3 of ``ip:port``: one /16 of pod addresses on the usual port (65,536 hashes) gave the address
back, where docs/scheduling.md says no internal address is handed to clients. It is now a BLAKE2b digest
keyed by ``KVGATE_SESSION_COOKIE_KEY`` (else a random key put in the environment, which ``--workers``'
spawned workers inherit: every worker names an endpoint alike)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

import kvgate
from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.plugins import session
from kvgate.scheduling.plugins.session import COOKIE_KEY_ENV, endpoint_token


@pytest.fixture
def fresh_key(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(session, "_key", None)
    monkeypatch.delenv(COOKIE_KEY_ENV, raising=False)
    return monkeypatch


def test_the_token_does_not_give_the_address_back(fresh_key: pytest.MonkeyPatch) -> None:
    token = endpoint_token(Endpoint(address="10.244.3.7:8000"))
    found = None
    for i in range(1 << 16):  # (the reviewer's search: the unkeyed digest of each address of the /16)
        guess = f"10.244.{i >> 8}.{i & 255}:8000"
        if f"kvgate-{xxhash.xxh3_64_hexdigest(guess.encode())}" == token:
            found = guess
            break
    assert found is None, f"the cookie's token gives the internal address back: {found}"
    assert "10.244" not in token and token.startswith("kvgate-")
    assert endpoint_token(Endpoint(address="10.0.0.1:8000", name="pod-rank-0")) == "pod-rank-0"


def test_replicas_sharing_the_key_agree_and_others_do_not(fresh_key: pytest.MonkeyPatch) -> None:
    ep = Endpoint(address="10.244.3.7:8000")
    fresh_key.setenv(COOKIE_KEY_ENV, "shared-secret")
    a = endpoint_token(ep)
    fresh_key.setattr(session, "_key", None)  # (another process, the same Secret)
    assert endpoint_token(ep) == a
    fresh_key.setattr(session, "_key", None)
    fresh_key.setenv(COOKIE_KEY_ENV, "another-secret")
    assert endpoint_token(ep) != a


def test_a_spawned_worker_names_an_endpoint_alike(fresh_key: pytest.MonkeyPatch) -> None:
    """No key configured: the first process draws one into its environment; a process it starts (as
    ``--workers`` spawns its workers, after the supervisor called ``cookie_key``) inherits it."""
    mine = endpoint_token(Endpoint(address="10.244.3.7:8000"))
    assert os.environ.get(COOKIE_KEY_ENV)
    src = str(Path(kvgate.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = (
        "from kvgate.datalayer.endpoint import Endpoint\n"
        "from kvgate.scheduling.plugins.session import endpoint_token\n"
        "print(endpoint_token(Endpoint(address='10.244.3.7:8000')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == mine
