"""rev-f35-F1: the shared in-flight table never gives a slot back. Each (pool, address) ever seen takes one
of the 1,024 slots for the gateway's life (f992e5b0's drop_unlisted zeroes a gone entry's counts but keeps
its slot), so pod churn (a new pod IP at each rollout/restart) fills it, and from then on a NEW pod's
requests stay per worker, silently: each worker's picker/gates see 1/N of the load there.
Shown at slots=4 (the same code path as 1,024)."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

from kvgate.datalayer.store import EndpointStore
from kvgate.gateway.shared_inflight import SharedInFlight
from kvgate.gateway.workers import _sync_pass


def test_a_new_pod_after_churn_is_still_shared() -> None:
    lock = multiprocessing.get_context("spawn").Lock()
    owner = SharedInFlight.create(2, lock, 4)
    w0 = SharedInFlight.attach(owner.name, lock, 2, 0, 4)
    w1 = SharedInFlight.attach(owner.name, lock, 2, 1, 4)
    s0, s1 = EndpointStore(), EndpointStore()
    p0, p1 = (
        [SimpleNamespace(name="p", endpoints=s0.all, store=s0)],
        [SimpleNamespace(name="p", endpoints=s1.all, store=s1)],
    )
    try:
        # four rollouts: one pod replaced by a new IP each time, idle when it goes
        for gen in range(4):
            addr = f"10.0.0.{gen}:8000"
            for s in (s0, s1):
                s.sync(EndpointStore.from_addresses([addr]).all())
            _sync_pass(w0, p0)
            _sync_pass(w1, p1)
        new = "10.0.0.99:8000"
        for s in (s0, s1):
            s.sync(EndpointStore.from_addresses([new]).all())  # the old pods are gone from both stores
        for _ in range(3):
            _sync_pass(w0, p0)
            _sync_pass(w1, p1)
        mine = s0.get(new)
        assert mine is not None
        mine.inflight.requests = 1  # a request on worker 0 at the only live pod
        for _ in range(3):
            _sync_pass(w0, p0)
            _sync_pass(w1, p1)
        theirs = s1.get(new)
        assert theirs is not None
        assert theirs.inflight.requests == 1, (
            "worker 1 does not see worker 0's request at the only live pod: the table is full of "
            "departed pods' slots"
        )
    finally:
        for v in (w0, w1, owner):
            v.close()
