"""small33 (c) on ``kvgate serve --clusters``: a method other than GET or HEAD on its read-only paths
(``/metrics``, ``/v1/clusters``, ``/healthz``, ``/readyz``, ``/v1/models``, ``/v1/models/<id>``) asking
``Expect: 100-continue`` got ``100 Continue`` before ``get_only``'s 405 (late-a32 answered only a path with
no route from the head). Now the 405 comes from the head, the same answer as the request sent whole, on the
data port and on the admin port. Fails on main 24a33356: ``100 Continue`` first."""

from __future__ import annotations

import pytest

from expect_head import EXPECT, answer, check_405_from_the_head
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway


@pytest.mark.parametrize(
    ("own_admin_port", "method", "path"),
    [
        (False, b"POST", b"/metrics"),
        (False, b"PUT", b"/v1/clusters"),
        (False, b"POST", b"/v1/models/m"),
        (False, b"DELETE", b"/v1/models"),
        (True, b"POST", b"/metrics"),
        (True, b"POST", b"/readyz"),
    ],
    ids=["data-metrics", "data-clusters", "data-model", "data-models", "admin-metrics", "admin-readyz"],
)
async def test_the_hub_answers_a_read_only_path_from_the_head(
    own_admin_port: bool, method: bytes, path: bytes
) -> None:
    # (a cluster address nothing listens on: nothing here is sent to a cluster)
    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c0", gateway="127.0.0.1:9"),)), "round-robin", fetch=False
    )
    await gw.start("127.0.0.1", 0, admin_port=0 if own_admin_port else None)
    try:
        port = gw.port
        if own_admin_port:
            assert gw.admin_port is not None
            port = gw.admin_port
        await check_405_from_the_head(port, method, path)
        if not own_admin_port:  # (the control: a routed POST still gets its 100)
            routed, _ = await answer(port, EXPECT % (b"POST", b"/v1/chat/completions"))
            assert routed == b"HTTP/1.1 100 Continue\r\n\r\n", routed
    finally:
        await gw.stop()
