"""Review s16-k8s F4: "answered (2xx) within 10 s, the watch goes on ... and the copy counts as in sync as
of the probe" (docs/kubernetes.md; ``Reflector._probes`` sets ``last_sync`` to the probe's send time). A 2xx
proves the API server and its storage answer new requests, not that this watch delivers: kube-apiserver
serves watches from its watch cache (cacher) and a ``limit=1`` consistent list from etcd (1.31/1.32
``shouldDelegateList``: ``hasLimit``), so a stuck cacher or a proxy holding the watch connection gives a
silent watch and 2xx probes. Here the probe's own answer shows the copy is behind (the object it returns
has a newer resourceVersion than the copy's), yet it is credited as a proof of sync, the watch kept, the
copy left wrong until the client deadline (5-10 min + 15 s).

Double: watches stalled (open, silent), lists answered; pod "a" changes on the server. At t=60 s the probe
returns pod "a" at its new resourceVersion. Fails on main: no relist, ``last_sync`` == 60 (credited), the
copy still holds the old pod. (A fix: compare the probe's item with the copy -- exact for a reflector
without selector and for one keyed by ``metadata.name`` -- and relist when it differs; at least do not
credit ``last_sync``.)

Run:
  PYTHONPATH=/work/main/src:/work/main/tests /work/main/.venv/bin/python -m pytest -q \
      /work/team/reviews/s16-k8s-tests/test_s16k8s_probe_credits_a_stale_copy.py
"""

from __future__ import annotations

import asyncio

import pytest

from fake_time import FakeTime
from k8s.probe_kit import probed_reflector
from k8s.reflector_kit import until
from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.resources import POD

pytestmark = pytest.mark.asyncio


def _rv(obj: dict) -> str:  # type: ignore[type-arg]
    return str(obj["metadata"]["resourceVersion"])


async def test_a_probe_whose_answer_shows_the_copy_behind_is_not_a_proof_of_sync() -> None:
    ft = FakeTime()
    async with ApiServerDouble(bookmark_interval=0.2) as double, probed_reflector(double, ft) as r:
        double.stall(lists=False)  # the watch stream stuck; new requests answered
        double.set_pod_status("a", ip="10.0.0.9", ready=True)  # never delivered on the stuck watch
        server_rv = _rv(double.get(POD, "a", "default"))
        await asyncio.sleep(0.3)
        old_rv = _rv(r.items[("default", "a")])
        assert old_rv != server_rv
        ft.advance(60.0)
        await until(lambda: r.probes >= 1 or r.lists >= 2 or r.stuck >= 1, within_s=30.0)
        await asyncio.sleep(0.5)
        credited = r.lists == 1 and r.last_sync == 60.0
        assert not credited, (
            f"the probe's answer has pod a at rv {server_rv}, the copy at rv {old_rv}: yet credited "
            f"in sync (last_sync {r.last_sync}, lists {r.lists}, probes {r.probes}, age {r.age()})"
        )
        await until(lambda: r.lists == 2)  # relisted: the copy caught up
        assert r.behind == 1 and _rv(r.items[("default", "a")]) == server_rv
