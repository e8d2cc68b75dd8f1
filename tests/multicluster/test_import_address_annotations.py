"""closing-s16 "Noticed and left undone" (Hub): the addresses of an exported pool's annotations
(``kvgate.io/gateway``, ``/epp``, ``/health``) were passed on as read: a port outside 1-65535 (which
glibc's getaddrinfo cuts to 16 bits for a host name: 73616 reaches port 8080) or a malformed host (a
space, a path, an IPv6 address without brackets) reached the gateway's router and the hub's probe, and
the import's ResolvedRefs said True. The clusters file refuses them (review s16-hard L2).

Now they are checked by the clusters file's rules (``clusters._hostport``): an unusable one is ignored
(as an absent one), logged once per value with a WARNING naming the annotation and why, and ResolvedRefs
says False naming the cluster and the reason. Each case failed before (kvhub17): the address was passed
on, ResolvedRefs True, nothing logged.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from kvgate.multicluster.clusters import ClustersError, ParentRef, parse
from kvgate.multicluster.imports import EXPORT_ANNOTATION, ImportController, Member

KEY = ("default", "llama")


def _pool_with(ann: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "llama", "namespace": "default",
                         "annotations": {EXPORT_ANNOTATION: "ClusterSet", **ann}}}  # fmt: skip


def _controller(parent_mode_only: bool) -> ImportController:
    members = [Member("east", None), Member("west", None)]  # type: ignore[arg-type]  # (no I/O here)
    return ImportController(None, members, follow=KEY, parent=ParentRef("gateways", "global"),
                            parent_mode_only=parent_mode_only, writes=False)  # fmt: skip


BAD = [
    ("10.2.0.2:73616", "expected a port from 1 to 65535"),  # (getaddrinfo: 73616 & 0xffff = 8080)
    ("10.2.0.2:0", "expected a port from 1 to 65535"),
    ("gw.west:http", "expected a port from 1 to 65535"),
    ("gw west:8080", "expected a host name"),
    ("gw.west/pool:8080", "expected a host name"),
    ("fd00::2:8080", "expected a host name"),  # (an IPv6 address without brackets)
]


@pytest.mark.parametrize(("value", "why"), BAD)
def test_an_unusable_gateway_annotation_is_ignored_logged_and_unresolved(
    value: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.multicluster.imports")
    ctl = _controller(parent_mode_only=True)
    ctl.exported[KEY] = {
        "east": _pool_with({"kvgate.io/gateway": "10.1.0.2:8080"}),
        "west": _pool_with({"kvgate.io/gateway": value, "kvgate.io/health": "10.2.0.3:9003"}),
    }
    assert [c.name for c in ctl.clusters_for(KEY)] == ["east"], "west's unusable gateway was passed on"
    said = [r.getMessage() for r in caplog.records if "west" in r.getMessage()]
    assert len(said) == 1 and "kvgate.io/gateway" in said[0] and why in said[0] and value in said[0], said
    ctl.clusters_for(KEY)  # (fed again, the same value: not logged again)
    assert len([r for r in caplog.records if "west" in r.getMessage()]) == 1
    state = ctl._parent_state(KEY)
    assert state is not None and state[0] == "False", state
    assert "west" in state[1] and "kvgate.io/gateway" in state[1] and why in state[1], state[1]


def test_an_unusable_epp_or_health_annotation_is_ignored() -> None:
    """Endpoint mode (``kvgate serve --clusters``): west's EPP port is past 65535, so west has no address
    (not routed, not resolved); east's health port is, so east keeps its gateway without a health check."""
    ctl = _controller(parent_mode_only=False)
    ctl.exported[KEY] = {
        "east": _pool_with({"kvgate.io/gateway": "10.1.0.2:8080", "kvgate.io/health": "10.1.0.3:90030"}),
        "west": _pool_with({"kvgate.io/epp": "10.2.0.3:90020"}),
    }
    clusters = ctl.clusters_for(KEY)
    assert [(c.name, c.gateway, c.health) for c in clusters] == [("east", "10.1.0.2:8080", None)]
    state = ctl._parent_state(KEY)
    assert state is not None and state[0] == "False" and "west" in state[1] and "kvgate.io/epp" in state[1]


def test_a_value_fixed_later_is_used_and_a_new_bad_one_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.multicluster.imports")
    ctl = _controller(parent_mode_only=True)
    ctl.exported[KEY] = {"west": _pool_with({"kvgate.io/gateway": "10.2.0.2:70000"})}
    assert ctl.clusters_for(KEY) == ()
    ctl.exported[KEY] = {"west": _pool_with({"kvgate.io/gateway": "10.2.0.2:7000"})}
    assert [c.gateway for c in ctl.clusters_for(KEY)] == ["10.2.0.2:7000"]
    ctl.exported[KEY] = {"west": _pool_with({"kvgate.io/gateway": "10.2.0.2:70000"})}
    assert ctl.clusters_for(KEY) == ()
    assert len([r for r in caplog.records if "70000" in r.getMessage()]) == 2


@pytest.mark.parametrize(("value", "why"), BAD[3:])
def test_the_clusters_file_refuses_a_malformed_host_naming_the_key(value: str, why: str) -> None:
    with pytest.raises(ClustersError, match=why) as e:
        parse({"clusters": [{"name": "west", "gateway": value}]})
    assert e.value.key == "clusters[0].gateway"


@pytest.mark.parametrize("value", ["gw.west:8080", "http://gw.west.svc:8080/", "[fd00::2]:8080", "10.2.0.2:1",
                                   "gw_1.west.:65535"])  # fmt: skip
def test_usable_addresses_pass(value: str) -> None:
    ctl = _controller(parent_mode_only=True)
    ctl.exported[KEY] = {"west": _pool_with({"kvgate.io/gateway": value})}
    assert [c.name for c in ctl.clusters_for(KEY)] == ["west"]
    assert parse({"clusters": [{"name": "west", "gateway": value}]}).clusters[0].gateway
