from __future__ import annotations

from kvgate.datalayer.store import ENGINE_LABEL, EndpointStore, StoreChange, make_endpoint


def test_add_update_remove_and_listeners() -> None:
    store = EndpointStore()
    seen: list[tuple[str, str]] = []
    store.add_listener(lambda c: seen.append((c.kind, c.endpoint.address)))
    a = store.add(make_endpoint("10.0.0.1:8000", labels={ENGINE_LABEL: "sglang"}))
    assert a.engine == "sglang"
    a.inflight.requests = 3
    b = store.add(make_endpoint("10.0.0.1:8000", pool="p2", labels={ENGINE_LABEL: "sglang"}))
    assert b is a and a.pool == "p2" and a.inflight.requests == 3  # updated in place, state kept
    store.add(make_endpoint("10.0.0.2:8000"))
    assert store.remove("10.0.0.1:8000") is a
    assert store.remove("nope") is None
    assert seen == [
        ("added", "10.0.0.1:8000"),
        ("updated", "10.0.0.1:8000"),
        ("added", "10.0.0.2:8000"),
        ("removed", "10.0.0.1:8000"),
    ]


def test_sync_per_pool_and_snapshot_cache() -> None:
    store = EndpointStore(
        [make_endpoint("a:1", pool="x"), make_endpoint("b:1", pool="x"), make_endpoint("c:1", pool="y")]
    )
    snap = store.all()
    assert store.all() is snap  # cached until a change
    store.sync([make_endpoint("b:1", pool="x"), make_endpoint("d:1", pool="x")], pool="x")
    assert sorted(e.address for e in store.endpoints("x")) == ["b:1", "d:1"]
    assert [e.address for e in store.endpoints("y")] == ["c:1"]
    assert store.all() is not snap


def test_broken_listener_does_not_stop_others() -> None:
    store = EndpointStore()
    got: list[StoreChange] = []

    def bad(c: StoreChange) -> None:
        raise RuntimeError("boom")

    store.add_listener(bad)
    store.add_listener(got.append)
    store.add(make_endpoint("a:1"))
    assert len(got) == 1
