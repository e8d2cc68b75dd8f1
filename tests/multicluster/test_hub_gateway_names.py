"""hub33: the hub EPP named each cluster's ``gateway:`` exactly as the clusters file writes it, and a host
name is routable by neither Envoy policy (``ORIGINAL_DST`` parses one ``ip:port``; Override Host matches its
cluster's endpoint addresses): every request to such a cluster failed in Envoy. Now a host name is resolved
to ``ip:port`` off the hot path (at the feed's start, then every ``RESOLVE_EVERY_S``, and at once for a name
a reload brings), and the address is what the destination names; a name not resolved yet leaves its cluster
out of the picks, one that stops resolving keeps its last address, each logged once at WARNING naming the
cluster and its gateway.

Over real ext_proc gRPC (``hub_epp``), with the hub's own ``HubFeed`` started and stopped; the name server is
``socket.getaddrinfo`` replaced for the ``.hub33.test`` names (answers changed at will). The start-up line
through the real ``kvgate epp --clusters`` subprocess with ``localhost``."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.test_cli import _launch, _stop
from kvgate.extproc.testing import Exchange
from kvgate.multicluster import hub
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.hub import ClusterDirector, HubFeed
from kvgate.scheduling.types import InferenceRequest
from multicluster.hub_pick import pick_once
from multicluster.test_hub_request_timeout import BODY, HEADERS, _until, hub_epp

LOGGER = "kvgate.multicluster.hub"


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str | None]]:
    """name -> the IPv4 address it answers (None: "Name or service not known"); other names as before."""
    real = socket.getaddrinfo
    answers: dict[str, str | None] = {}

    def fake(host: Any, port: Any, *a: Any, **k: Any) -> Any:
        if isinstance(host, str) and host.endswith(".hub33.test"):
            ip = answers.get(host)
            if ip is None:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return real(ip, port, socket.AF_INET, *a[1:], **k)
        return real(host, port, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    hub._LOOKUPS.forget()
    yield answers
    hub._LOOKUPS.forget()


@asynccontextmanager
async def _hub(*specs: ClusterSpec) -> AsyncIterator[tuple[ClusterDirector, HubFeed, Any]]:
    """An active-passive hub EPP (the first cluster first) with its feed started: (director, feed, stub)."""
    director = ClusterDirector(ClustersConfig(specs), "active-passive", seed=0)
    feed = HubFeed(director)
    if hasattr(feed, "names"):  # (before hub33 none: the test then fails on what the hub names)
        feed.names.every_s = 3600.0  # (only the start's round and the wake-ups: no timed refresh in a test)
    await feed.start()
    try:
        async with hub_epp(director) as ch:
            yield director, feed, pb_grpc.ExternalProcessorStub(ch)
    finally:
        await feed.stop()


async def _destination(stub: Any) -> str:
    async with Exchange(stub, timeout=30) as ex:
        out = await ex.send_request(HEADERS, BODY)
        await ex.send_response(200, {"content-type": "application/json"}, [b"{}"])
    assert out.metadata_destination == out.destination
    return out.destination


async def test_a_host_name_is_named_by_the_address_it_resolves_to(names: dict[str, str | None]) -> None:
    names["east.hub33.test"] = "127.0.0.7"
    east = ClusterSpec("east", gateway="east.hub33.test:8080")
    async with _hub(east, ClusterSpec("west", gateway="127.0.0.9:8080", priority=1)) as (_d, _f, stub):
        assert await _destination(stub) == "127.0.0.7:8080"


async def test_a_name_that_does_not_resolve_leaves_its_cluster_out_until_it_does(
    names: dict[str, str | None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    east = ClusterSpec("east", gateway="late.hub33.test:8080")
    async with _hub(east, ClusterSpec("west", gateway="127.0.0.9:8080", priority=1)) as (
        director,
        feed,
        stub,
    ):
        assert await _destination(stub) == "127.0.0.9:8080"  # (east first, but nothing to name for it)
        await feed.names.refresh()  # (still failing: said once)
        said = [r for r in caplog.records if "late.hub33.test:8080 did not resolve" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.WARNING, caplog.text
        assert (
            "cluster east" in said[0].getMessage() and "not picked until it resolves" in said[0].getMessage()
        )
        names["late.hub33.test"] = "127.0.0.8"
        await feed.names.refresh()
        assert await _destination(stub) == "127.0.0.8:8080"
        assert director.states["east"].backoff_s == 0


async def test_a_hub_whose_only_gateway_is_not_resolved_is_not_ready_and_answers_503(
    names: dict[str, str | None],
) -> None:
    async with _hub(ClusterSpec("east", gateway="never.hub33.test:8080")) as (director, _feed, stub):
        assert not director.ready()
        async with Exchange(stub, timeout=30) as ex:
            out = await ex.send_request(HEADERS, BODY)
        assert out.immediate is not None and out.immediate.status.code == 503, out


async def test_a_name_that_stops_resolving_keeps_its_address_and_a_moved_one_follows(
    names: dict[str, str | None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    names["moving.hub33.test"] = "127.0.0.7"
    async with _hub(ClusterSpec("east", gateway="moving.hub33.test:8080")) as (_director, feed, stub):
        assert await _destination(stub) == "127.0.0.7:8080"
        names["moving.hub33.test"] = None  # (the name server fails)
        hub._LOOKUPS.forget()
        await feed.names.refresh()
        await feed.names.refresh()
        assert await _destination(stub) == "127.0.0.7:8080"  # (kept)
        kept = [r for r in caplog.records if "its last address 127.0.0.7:8080 kept" in r.getMessage()]
        assert len(kept) == 1 and kept[0].levelno == logging.WARNING, caplog.text
        names["moving.hub33.test"] = "127.0.0.8"  # (answers again, elsewhere)
        await feed.names.refresh()
        assert await _destination(stub) == "127.0.0.8:8080"
        assert "resolved to 127.0.0.8:8080 (was 127.0.0.7:8080)" in caplog.text


async def test_a_name_a_reload_brings_is_resolved_at_once(names: dict[str, str | None]) -> None:
    names["new.hub33.test"] = "127.0.0.6"
    west = ClusterSpec("west", gateway="127.0.0.9:8080", priority=1)
    async with _hub(west) as (director, feed, stub):
        feed.reload(ClustersConfig((ClusterSpec("east", gateway="new.hub33.test:8080"), west)))
        # (the timed refresh is an hour away: only the reload's wake-up resolves it)
        await _until(lambda: "east" in {e.labels[hub.CLUSTER_LABEL] for e in director.store.all()},
                     "the new name was not resolved after the reload")  # fmt: skip
        assert await _destination(stub) == "127.0.0.6:8080"


async def test_kvgate_epp_names_localhost_by_its_address(tmp_path: Path) -> None:
    f = tmp_path / "clusters.yaml"
    f.write_text("clusters:\n- {name: a, gateway: 'localhost:9'}\n")
    proc, ports = await _launch("--clusters", str(f), "--plaintext")
    try:
        out = await pick_once(ports["grpc"])
        assert out.destination in ("127.0.0.1:9", "[::1]:9"), out.destination
    finally:
        assert await _stop(proc) == 0


# rev-c33: edges of the names above (each test fails before its fix; F4 before c7ec03e2).


async def _feed(policy: str, *specs: ClusterSpec) -> tuple[ClusterDirector, HubFeed]:
    director = ClusterDirector(ClustersConfig(specs), policy, seed=0)
    feed = HubFeed(director)
    feed.names.every_s = 3600.0  # (only the start's round and the wake-ups)
    await feed.start()
    return director, feed


async def test_round_robin_turns_go_only_to_routable_clusters(names: dict[str, str | None]) -> None:
    """rev-c33-F1: the unresolved cluster a was ordered, then dropped: its turns went to b (b 200, c 100)."""
    director, feed = await _feed(
        "round-robin",
        ClusterSpec("a", gateway="never.hub33.test:8080"),
        ClusterSpec("b", gateway="127.0.0.2:8080"),
        ClusterSpec("c", gateway="127.0.0.3:8080"),
    )
    try:
        got: dict[str, int] = {}
        for i in range(300):
            ep = director.pick(InferenceRequest(f"r{i}", "m")).endpoints[0]
            got[ep.labels[hub.CLUSTER_LABEL]] = got.get(ep.labels[hub.CLUSTER_LABEL], 0) + 1
        assert got == {"b": 150, "c": 150}
    finally:
        await feed.stop()


async def test_a_lookup_that_could_not_start_is_logged_once_at_warning(
    names: dict[str, str | None], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """rev-c33-F2: no lookup slot (MAX_LOOKUPS=0 stands for the probe's and fetcher's hung lookups): the
    cluster was left out with nothing logged."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    names["east.hub33.test"] = "127.0.0.7"
    monkeypatch.setattr(hub, "MAX_LOOKUPS", 0)
    director, feed = await _feed("active-passive", ClusterSpec("east", gateway="east.hub33.test:8080"))
    try:
        await feed.names.refresh()  # (a second failing round: still one line)
        assert not director.ready()
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        said = [m for m in said if "east.hub33.test" in m]
        assert len(said) == 1 and "no lookup could start" in said[0], said
    finally:
        await feed.stop()


async def test_two_clusters_at_one_address_are_warned_once_naming_both(
    names: dict[str, str | None], caplog: pytest.LogCaptureFixture
) -> None:
    """rev-c33-F3: the store is keyed by address, so one of them was silently never picked."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    names["lb-a.hub33.test"] = "127.0.0.7"
    names["lb-b.hub33.test"] = "127.0.0.7"
    director, feed = await _feed(
        "active-passive",
        ClusterSpec("east", gateway="lb-a.hub33.test:8080"),
        ClusterSpec("west", gateway="lb-b.hub33.test:8080", priority=1),
    )
    try:
        director.apply(director.cfg)  # (a watch event: the same collision, not warned again)
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        said = [m for m in said if "127.0.0.7:8080" in m]
        assert len(said) == 1 and "east" in said[0] and "west" in said[0], said
        assert {ep.labels[hub.CLUSTER_LABEL] for ep in director.store.all()} == {"east"}
    finally:
        await feed.stop()


async def test_an_apply_per_watch_event_does_not_wake_a_failing_names_lookup(
    names: dict[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """rev-c33-F4 (c7ec03e2): a name already wanted and failing waits for its round; before, each apply
    (each watch event) woke a lookup of it."""
    calls: list[str] = []
    lookup = hub._lookup

    async def counted(loop: Any, host: str, *a: Any) -> Any:
        calls.append(host)
        return await lookup(loop, host, *a)

    monkeypatch.setattr("kvgate.multicluster.gateway_names._lookup", counted)
    director, feed = await _feed(
        "active-passive",
        ClusterSpec("east", gateway="down.hub33.test:8080"),
        ClusterSpec("west", gateway="127.0.0.9:8080"),
    )
    try:
        assert calls == ["down.hub33.test"]  # (the start's round)
        for _ in range(5):
            director.apply(director.cfg)  # (what ClusterSource does per watch event)
            assert not feed.names._wake.is_set(), "an apply woke a lookup of a name already failing"
        assert calls == ["down.hub33.test"]
    finally:
        await feed.stop()
