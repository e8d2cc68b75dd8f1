"""KV-event subscriptions are the data layer's job: started beside the scraper, never on a pick."""

from __future__ import annotations

from kvgate.config.director import build_director
from kvgate.datalayer.kvevents import KVEventSources
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
