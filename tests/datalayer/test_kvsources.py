"""KV-event subscriptions are the data layer's job: started beside the scraper, never on a pick."""

from __future__ import annotations

import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.kvevents import (
    BlockIndex,
    BlockStored,
    KVEventsManager,
    KVEventSources,
    KVEventSubscriber,
)
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.types import InferenceRequest

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: precise-prefix-cache-scorer
  parameters: {indexName: kvsources-test, eventsPortOffset: 1000, replayPortOffset: 2000}
"""


async def test_sources_start_with_the_data_layer_and_follow_the_store() -> None:
    store = EndpointStore.from_addresses(["127.0.0.1:18300", "127.0.0.1:18301"])
    director = build_director(CONFIG, store)
    (source,) = director.data_sources()
    assert isinstance(source, KVEventSources)
    manager = source.manager
    director.pick(InferenceRequest("r0", "m", token_ids=list(range(64))))
    assert manager.subscribers == {}  # a pick subscribes nothing
    await source.start()
    try:
        assert set(manager.subscribers) == {"127.0.0.1:18300", "127.0.0.1:18301"}
        assert manager.subscribers["127.0.0.1:18300"].zmq_endpoint == "tcp://127.0.0.1:19300"
        store.add(make_endpoint("127.0.0.1:18302"))
        assert "127.0.0.1:18302" in manager.subscribers
        store.remove("127.0.0.1:18300")
        assert "127.0.0.1:18300" not in manager.subscribers
    finally:
        await source.stop()
    assert manager.subscribers == {}


def test_a_director_without_event_plugins_has_no_sources() -> None:
    assert build_director("kvgate", EndpointStore.from_addresses(["127.0.0.1:18310"])).data_sources() == []


async def test_a_source_stopping_leaves_other_owners_subscriptions() -> None:
    # The real-vLLM suite's failure: a fixture subscribes the servers into a named index, gateways over
    # the same index start and stop; the first gateway to stop ended the fixture's subscriptions and
    # purged the index, so later "precise" runs routed without KV events.
    store = EndpointStore.from_addresses(["127.0.0.1:18320", "127.0.0.1:18321"])
    director = build_director(CONFIG.replace("kvsources-test", "kvsources-shared"), store)
    (source,) = director.data_sources()
    manager = source.manager
    mine = await manager.add("127.0.0.1:18320", "tcp://127.0.0.1:19320")  # the fixture's own
    try:
        manager.index.apply("127.0.0.1:18320", [BlockStored([1], None, [0] * 16, 16, None)])
        await source.start()
        assert manager.subscribers["127.0.0.1:18320"] is mine and manager.owners("127.0.0.1:18320") == 2
        store.remove("127.0.0.1:18320")  # the source lets go of its share; the fixture keeps its own
        assert manager.subscribers["127.0.0.1:18320"] is mine
        await source.stop()
        assert set(manager.subscribers) == {"127.0.0.1:18320"} and manager.owners("127.0.0.1:18320") == 1
        assert manager.index.num_blocks("127.0.0.1:18320") == 1  # nothing purged under the fixture
        # A second source over the same manager, started and stopped: still the fixture's.
        (again,) = build_director(CONFIG.replace("kvsources-test", "kvsources-shared"), store).data_sources()
        await again.start()
        await again.stop()
        assert manager.subscribers == {"127.0.0.1:18320": mine}
        await manager.remove("127.0.0.1:18320")  # the last owner: stopped and purged
        assert manager.subscribers == {} and manager.index.num_blocks("127.0.0.1:18320") == 0
    finally:
        await manager.close()


def _stop_fails(sub: KVEventSubscriber) -> None:
    """The subscriber's stop stops it, then raises."""
    real_stop = sub.stop

    async def failing_stop() -> None:
        await real_stop()
        raise RuntimeError("stop failed")

    sub.stop = failing_stop  # type: ignore[method-assign]


async def test_an_endpoint_whose_subscriber_fails_to_stop_is_still_purged(caplog) -> None:
    """``KVEventsManager.remove`` at the last owner: the subscriber's stop raises (here an injected error).
    Failed before: the error skipped ``index.remove_endpoint``, so the endpoint, no longer followed, kept
    its entries for good (over-report). Now purged; the error reaches the caller (a source logs it once)."""
    manager = KVEventsManager(BlockIndex())
    try:
        sub = await manager.add("127.0.0.1:18330", "tcp://127.0.0.1:19330")
        manager.index.apply("127.0.0.1:18330", [BlockStored([1], None, [0] * 16, 16, None)])
        _stop_fails(sub)
        with pytest.raises(RuntimeError, match="stop failed"):
            await manager.remove("127.0.0.1:18330")
        assert manager.subscribers == {} and manager.index.num_blocks("127.0.0.1:18330") == 0

        store = EndpointStore.from_addresses(["127.0.0.1:18331"])
        source = KVEventSources(store, manager, lambda ep: ("tcp://127.0.0.1:19331", None))
        await source.start()
        manager.index.apply("127.0.0.1:18331", [BlockStored([2], None, [0] * 16, 16, None)])
        _stop_fails(manager.subscribers["127.0.0.1:18331"])
        with caplog.at_level("ERROR"):
            await source.stop()
        assert manager.subscribers == {} and manager.index.num_blocks("127.0.0.1:18331") == 0
        logged = [r for r in caplog.records if r.exc_info and "stop failed" in str(r.exc_info[1])]
        assert len(logged) == 1, caplog.text
    finally:
        await manager.close()
