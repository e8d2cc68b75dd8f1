"""Review s28-rev-a28 F4 (fixa28): ``kvgate.bench.simproc``'s fallback claimed a group's spare ports one by
one (``all(p not in spare or claim(p) for p in group)``): when a later member was held by another process,
the members already claimed stayed claimed (their flock fds in ``kvgate.bench.ports._claims``) for the
simulator's whole life, ports handed to no server and refused to every other process. So did a group whose
server's bind then failed, in ``start_replica``'s retry loop. Both now let go of them. Both cases fail on
main b7c0d430. No server, no timing: a claim is made to fail once, a bind is made to fail once."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest

from kvgate.bench import ports, simproc


@pytest.fixture
def every_port_spare(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The fallback (no spare group from ``free_port_group``), every member of a group spare (claimed)."""
    monkeypatch.setattr(simproc, "free_port_group", lambda spread, size=3, spare=None: 0)
    monkeypatch.setattr(simproc, "spare_ports", lambda: list(range(1024, 65536)))
    before = set(ports._claims)
    yield before
    for port in set(ports._claims) - before:
        ports._release(port)


def test_a_group_refused_half_way_leaves_no_claim_behind(monkeypatch: pytest.MonkeyPatch,
                                                          every_port_spare: set[int]) -> None:  # fmt: skip
    calls: list[int] = []

    def claim(port: int) -> bool:
        calls.append(port)
        if len(calls) == 2:  # (the first group's second member: held by another process)
            return False
        return ports.claim(port)

    monkeypatch.setattr(simproc, "claim", claim)
    p = simproc._replica_port(1000)
    kept = set(ports._claims) - every_port_spare
    assert kept <= {p, p + 1000, p + 2000}, f"claims kept outside the group handed out: {sorted(kept)}"


class _Replica:
    """A replica whose first start finds its port taken (another process bound it first)."""

    ports: list[int] = []

    def __init__(self, cfg: Any, index: int) -> None:
        self.port = cfg.port
        _Replica.ports.append(cfg.port)

    async def start(self) -> None:
        if len(_Replica.ports) == 1:
            raise OSError("address in use")

    async def close(self) -> None:
        pass


def test_a_group_whose_bind_failed_leaves_no_claim_behind(monkeypatch: pytest.MonkeyPatch,
                                                          every_port_spare: set[int]) -> None:  # fmt: skip
    import kvgate.sim.server

    monkeypatch.setattr(kvgate.sim.server, "Replica", _Replica)
    monkeypatch.setattr(_Replica, "ports", [])
    args = argparse.Namespace(kv_events_offset=1000, model="sim-model", profile="llama3-8b-h100",
                              time_scale=1.0, num_gpu_blocks=0, max_num_seqs=0, seed=0)  # fmt: skip
    rep = asyncio.run(simproc.start_replica(args, 0))
    first, second = _Replica.ports
    assert rep.port == second
    kept = set(ports._claims) - every_port_spare
    assert kept <= {second, second + 1000, second + 2000}, f"group {first}'s claims kept: {sorted(kept)}"
