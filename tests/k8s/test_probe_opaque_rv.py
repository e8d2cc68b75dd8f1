"""Review s17-k8s F5 (fixk8s17): the probe's catch-up check compares resourceVersions as etcd's integers,
which the API contract makes opaque strings (an aggregated API server's may not be integers). Such a
resourceVersion turns the check off for that watch: no crash, no relist, the probe credited as before
k8s17, and (new) one INFO per reflector naming the resource, where before the check went off silently.
Against the API-server double over real HTTP, its list resourceVersions made opaque (``opaque-<n>``, the
watch's mapped back), the probe's period and deadlines on injected time."""

from __future__ import annotations

import logging

import orjson
import pytest
from aiohttp import web

from fake_time import FakeTime
from k8s.probe_kit import advance_to, probed_reflector
from k8s.reflector_kit import until
from kvgate.k8s.apiserver import ApiServerDouble

PREFIX = "opaque-"


class _OpaqueLists(ApiServerDouble):
    """A double whose pods lists answer an opaque list resourceVersion (``opaque-<n>``): only the probe's
    (``limit=1``) with ``probe_only``, else every list (so the watch's resourceVersion is opaque too, and a
    watch from one is served from ``<n>``)."""

    probe_only = True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        watch = q.get("watch") == "true"
        if watch and (q.get("resourceVersion") or "").startswith(PREFIX):
            query = {**q, "resourceVersion": q["resourceVersion"][len(PREFIX) :]}
            request = request.clone(rel_url=request.rel_url.with_query(query))
        resp = await super()._handle(request)
        pods = request.method == "GET" and request.path.endswith("/pods") and not watch
        if pods and (q.get("limit") == "1" or not self.probe_only) and isinstance(resp, web.Response):
            doc = orjson.loads(resp.body)  # type: ignore[arg-type]
            if resp.status == 200 and "resourceVersion" in (doc.get("metadata") or {}):
                doc["metadata"]["resourceVersion"] = PREFIX + doc["metadata"]["resourceVersion"]
                return web.json_response(doc)
        return resp


def _pod(name: str) -> dict:  # type: ignore[type-arg]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip


@pytest.mark.parametrize("probe_only", [True, False], ids=["probe-list-rv", "every-list-rv"])
async def test_a_non_numeric_resource_version_neither_crashes_nor_relists(
    probe_only: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy holds the watch and pod b is created (with integer resourceVersions the catch-up check would
    relist at 70 s: ``test_probe_catch_up``). With an opaque list resourceVersion the check is off: each
    probe credited, no catch-up watch, no relist, no error; one INFO naming pods for both probes. Fails
    before on the INFO only (the check went off silently)."""
    caplog.set_level(logging.INFO, logger="kvgate.k8s.reflector")
    ft = FakeTime()
    double = _OpaqueLists(bookmark_interval=0.2)
    double.probe_only = probe_only
    async with double, probed_reflector(double, ft) as r:
        assert (r.resource_version or "").startswith(PREFIX) != probe_only
        double.hold_watches()
        double.create(_pod("b"))
        await advance_to(ft, 60.0)
        await until(lambda: r.probes == 1)
        await advance_to(ft, 120.0)
        await until(lambda: r.probes == 2)
        assert r.catch_ups == 0 and r.missed == 0 and r.lists == 1 and r.watches == 1 and r.error is None
        assert r.last_sync == 120.0
    said = [rec.getMessage() for rec in caplog.records if "is not an integer" in rec.getMessage()]
    assert len(said) == 1, said
    assert "catch-up check" in said[0] and "pods" in said[0] and PREFIX in said[0]
