"""small35 (a): the clusters a hub EPP takes from Kubernetes (the InferencePoolImport its ``kubernetes:``
section follows) are checked for one literal gateway address twice, as its clusters file is (small34 a,
rev-a34 F3: ``hub.hub_check`` refuses such a file). The import's exporters come from other people's
annotations, not one file to refuse, so the check follows what the import does for its other bad
addresses (kvhub17): the later exporter's (by name) ``kvgate.io/gateway`` is ignored, one WARNING per
value naming both members, and the followed import's ``ResolvedRefs`` is False naming them. Before, both
were fed to the hub: one spelling twice kept the first with the director's WARNING, other spellings were
two endpoints at one gateway, both picked. Each case fails on the commit before this one."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from kvgate.multicluster.clusters import ParentRef
from kvgate.multicluster.imports import EXPORT_ANNOTATION, ImportController, Member

KEY = ("default", "llama")


def _pool(gateway: str) -> dict[str, Any]:
    annotations = {EXPORT_ANNOTATION: "ClusterSet", "kvgate.io/gateway": gateway}
    return {"metadata": {"name": "llama", "namespace": "default", "annotations": annotations}}


def _controller(*gateways: str, parent_mode_only: bool = True) -> ImportController:
    names = ("east", "north", "west")
    members = [Member(n, None) for n in names]  # type: ignore[arg-type]  # (no I/O here)
    ctl = ImportController(None, members, follow=KEY, parent=ParentRef("gateways", "global"),
                           parent_mode_only=parent_mode_only, writes=False)  # fmt: skip
    ctl.exported[KEY] = {n: _pool(g) for n, g in zip(names, gateways, strict=False)}
    return ctl


SAME = [  # (north's, west's): one address to the hub however spelt (as test_hub_literal_* refuse in a file)
    ("10.1.0.2:8080", "10.1.0.2:8080"),
    ("10.1.0.2:8080", "http://10.1.0.2:8080/"),
    ("10.1.0.2:8080", "10.1.0.2:08080"),
    ("[::1]:8080", "[0:0::1]:8080"),
    ("10.1.0.2:8080", "[::ffff:10.1.0.2]:8080"),
    ("127.0.0.1:8080", "127.1:8080"),
    ("gw.example:8080", "GW.example:8080"),
    ("bücher.example:8080", "xn--bcher-kva.example:8080"),
]


@pytest.mark.parametrize(("a", "b"), SAME)
def test_the_later_exporter_at_one_gateway_address_is_ignored_said_and_unresolved(
    a: str, b: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.multicluster.imports")
    ctl = _controller("10.9.9.9:1", a, b)
    got = [(c.name, c.gateway) for c in ctl.clusters_for(KEY)]
    assert got == [("east", "10.9.9.9:1"), ("north", a.removeprefix("http://").rstrip("/"))], got
    said = [r.getMessage() for r in caplog.records if "west" in r.getMessage()]
    assert len(said) == 1 and "north" in said[0] and "kvgate.io/gateway" in said[0], said
    ctl.clusters_for(KEY)  # (fed again, the same value: not said again)
    assert len([r for r in caplog.records if "west" in r.getMessage()]) == 1
    state = ctl._parent_state(KEY)
    assert state is not None and state[0] == "False", state
    assert "west is north's" in state[1] and "east" not in state[1], state[1]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("10.1.0.2:8080", "10.1.0.2:8081"),
        ("127.1:8080", "127.0.0.2:8080"),
        ("gw.example:8080", "gw.example.:8080"),
    ],
)
def test_distinct_addresses_are_each_taken(a: str, b: str) -> None:
    ctl = _controller("10.9.9.9:1", a, b)
    assert [c.name for c in ctl.clusters_for(KEY)] == ["east", "north", "west"]
    assert ctl._parent_state(KEY) == ("True", "every exporting cluster's gateway address is known")


def test_a_fixed_annotation_is_taken_again_and_a_new_clash_said_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kvgate.multicluster.imports")
    ctl = _controller("10.1.0.2:8080", "10.1.0.2:8080")
    assert [c.name for c in ctl.clusters_for(KEY)] == ["east"]
    ctl.exported[KEY]["north"] = _pool("10.1.0.3:8080")
    assert [c.name for c in ctl.clusters_for(KEY)] == ["east", "north"]
    ctl.exported[KEY]["north"] = _pool("10.1.0.2:08080")
    assert [c.name for c in ctl.clusters_for(KEY)] == ["east"]
    assert len([r for r in caplog.records if "north" in r.getMessage()]) == 2


def test_endpoint_mode_keeps_both() -> None:
    """``kvgate serve --clusters`` (Endpoint mode too) sends each request itself by cluster name: two
    clusters behind one gateway are both routed (its clusters file takes them too: ``serve_check``)."""
    ctl = _controller("10.1.0.2:8080", "10.1.0.2:8080", parent_mode_only=False)
    assert [c.name for c in ctl.clusters_for(KEY)] == ["east", "north"]
    state = ctl._parent_state(KEY)
    assert state is not None and state[0] == "True", state


def test_the_hub_epp_follows_its_import_in_parent_mode_only() -> None:
    """What makes the check the hub EPP's: its ``ClusterSource`` runs the import controller in Parent mode
    only whatever the file's ``kubernetes.parent_mode_only`` says."""
    from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
    from kvgate.multicluster.hub import ClusterDirector, HubFeed

    feed = HubFeed(ClusterDirector(ClustersConfig((ClusterSpec("east", gateway="10.1.0.2:8080"),))))
    assert feed.source.parent_mode_only is True
