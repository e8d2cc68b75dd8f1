"""Review s31-qa31 Q6: one pod whose ``inference.networking.k8s.io/active-ports`` annotation holds an item
``str.isdigit`` accepts and ``int`` refuses (``"8000,\u00b2"``) raised ``ValueError`` out of
``pod_endpoints`` and aborted ``PoolDiscovery._resync`` after it had cleared its maps and before
``store.sync``: the other pods' endpoints never came (or, after a pool change, the old ones stayed). The
reference parses each item with ``strconv.Atoi`` and skips what does not parse.
Both tests fail on 691110b3."""

from __future__ import annotations

from k8s.pool_scope_kit import add_pod, pool_obj, until
from kvgate.datalayer.store import EndpointStore
from kvgate.k8s import resources as R
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.discovery import ACTIVE_PORTS, active_ports
from kvgate.k8s.runtime import KubeOptions, KubePool
from kvgate.k8s.stalepolicy import StalenessPolicy


def test_items_go_s_atoi_refuses_are_skipped() -> None:
    assert active_ports("8000,\u00b2") == {8000}  # superscript two: isdigit, not int
    assert active_ports("8001, \u0668\u0660\u0660\u0660") == {8001}  # Arabic-Indic digits: int, not Atoi
    assert active_ports("8000,x,,+8002") == {8000, 8002}


async def test_a_pods_unparsable_active_port_does_not_take_the_other_pods_out() -> None:
    async with ApiServerDouble(bookmark_interval=0.2) as d:
        d.create(pool_obj("fixq6", ports=(8000, 8001)))
        add_pod(d, "good", "10.0.0.1")
        add_pod(d, "odd", "10.0.0.2", annotations={ACTIVE_PORTS: "8000,\u00b2"})
        store = EndpointStore()
        opts = KubeOptions("fixq6", "default", server=d.url, staleness=StalenessPolicy())
        kp = KubePool(opts, store, store_pool="fixq6")
        await kp.start()
        try:
            await until(lambda: kp.discovery is not None and kp.discovery.pool is not None, what="pool read")
            want = {"10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.2:8000"}  # (the odd pod keeps its good item)
            await until(lambda: {e.address for e in store.all()} == want, what="every pod's endpoints")
            # A pool change recomputes every pod: each follows it (the odd pod's 8000 is no target now).
            d.replace(R.INFERENCE_POOL, "fixq6", "default", pool_obj("fixq6", ports=(8002,)))
            await until(
                lambda: {e.address for e in store.all()} == {"10.0.0.1:8002"}, what="the pool's new port"
            )
        finally:
            await kp.stop()
