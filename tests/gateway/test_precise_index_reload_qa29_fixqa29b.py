"""qa29 Q5: the precise-prefix-cache-scorer's process-wide index table (``precise_prefix._INDEXES``, by
``indexName``) is written by every picker *built*, never cleaned: a reload refused for any reason still
registers the indexes of the pickers it built, so a later, valid file is refused until a restart.

Repro (``kvgate serve --config``, pools a and b): an edit gives pool a a precise scorer with a new
``indexName`` in ``mode: tokens`` and pool b an invalid picker: refused (b named), as it should be. The
operator fixes b and, reading the docs again, writes ``mode: engine`` for a: refused, "KV-event index
'...' already exists in mode 'tokens', not 'engine'": no running picker uses that index; the refused
build left it. Only a restart clears it (under ``--workers`` the supervisor's ``check_pickers`` builds
the same way, so its own table is poisoned alike). The same table also makes a reload that only changes a
scorer's ``mode`` (same ``indexName``) impossible: refused as a clash with the very picker it replaces
(second test), and keeps a changed ``capacityPerEndpoint`` out silently (the old index object is reused;
third test, L).

Expected: an index is the table's only while a running picker (or one being swapped in) uses it; a
refused build's entries go with it; a name whose only user is the picker being replaced may take the
new mode / capacity (a new index). Fails on main 11cbef01 (all three). Added by fixqa29b, failing on
main too: a name another pool's running picker holds keeps its mode (refused, the key named) and both
pools changing it at once take a new index; the ``--workers`` supervisor's check (qa29's e12) takes a
mode change."""

from __future__ import annotations

import uuid

import yaml

from gateway.conftest import make_config, make_pools
from kvgate.gateway.reload import ConfigReloader, check_pickers
from kvgate.gateway.server import GatewayServer
from kvgate.scheduling.plugins import precise_prefix

SCORER = "precise-prefix-cache-scorer"


def _precise(mode: str, index: str, capacity: int = 65_536) -> dict:
    params = {
        "mode": mode,
        "eventsBind": False,
        "indexName": index,
        "capacityPerEndpoint": capacity,
    }
    return {
        "plugins": [{"type": SCORER, "parameters": params}, {"type": "queue-scorer"}],
        "schedulingProfiles": [
            {
                "name": "default",
                "plugins": [{"pluginRef": SCORER}, {"pluginRef": "queue-scorer"}],
            }
        ],
    }


def _plain(bad: bool = False) -> dict:
    kind = "no-such-plugin" if bad else "queue-scorer"
    return {
        "plugins": [{"type": kind}],
        "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": kind}]}],
    }


def _doc(pa: dict, pb: dict) -> dict:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "pools": [
            {
                "name": "a",
                "endpoints": ["127.0.0.1:1001"],
                "models": ["ma"],
                "endpointPickerConfig": pa,
            },
            {
                "name": "b",
                "endpoints": ["127.0.0.1:1002"],
                "models": ["mb"],
                "endpointPickerConfig": pb,
            },
        ],
    }


def _name() -> str:
    return f"qa29-{uuid.uuid4().hex[:8]}"  # (the table is process-wide: a name no other test uses)


async def _gateway(pa: dict, pb: dict) -> GatewayServer:
    cfg = make_config([], extra={"pools": _doc(pa, pb)["pools"]})
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    await gw.start()
    return gw


async def test_a_refused_reload_does_not_keep_a_later_valid_file_out(tmp_path):
    gw = await _gateway(_plain(), _plain())
    try:
        f = tmp_path / "gw.yaml"
        rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        name = _name()
        f.write_text(yaml.safe_dump(_doc(_precise("tokens", name), _plain(bad=True))))
        assert not await rl.areload()  # refused: pool b's picker
        f.write_text(yaml.safe_dump(_doc(_precise("engine", name), _plain())))
        assert await rl.areload(), (
            "the valid file was refused: the refused reload's index is still registered"
        )
    finally:
        await gw.stop(drain_timeout=0.2)


async def test_a_reload_may_change_the_mode_of_an_index_only_the_replaced_picker_uses(
    tmp_path,
):
    name = _name()
    gw = await _gateway(_precise("engine", name), _plain())
    try:
        f = tmp_path / "gw.yaml"
        rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        f.write_text(yaml.safe_dump(_doc(_precise("tokens", name), _plain())))
        assert await rl.areload(), "refused: a clash with the picker this reload replaces"
    finally:
        await gw.stop(drain_timeout=0.2)


async def test_a_reload_that_lowers_capacity_per_endpoint_applies_it(tmp_path):
    name = _name()
    gw = await _gateway(_precise("engine", name), _plain())
    try:
        f = tmp_path / "gw.yaml"
        rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        f.write_text(yaml.safe_dump(_doc(_precise("engine", name, capacity=1024), _plain())))
        assert await rl.areload()  # "picker swapped"
        index = gw.pools[0].director.handle.plugins[SCORER].index
        assert index.default_capacity == 1024, f"the reloaded scorer's index keeps {index.default_capacity}"
    finally:
        await gw.stop(drain_timeout=0.2)


async def test_a_name_another_running_picker_holds_keeps_its_mode_and_the_error_names_the_key(
    tmp_path,
):
    name = _name()
    gw = await _gateway(_precise("engine", name), _precise("engine", name))
    try:
        f = tmp_path / "gw.yaml"
        rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        f.write_text(yaml.safe_dump(_doc(_precise("tokens", name), _precise("engine", name))))
        assert not await rl.areload()  # pool b keeps running with that index in engine mode
        assert rl.failures == 1
        # Both pools changing it together replace every holder: a new index, shared by both.
        f.write_text(yaml.safe_dump(_doc(_precise("tokens", name), _precise("tokens", name))))
        assert await rl.areload()
        a, b = (p.director.handle.plugins[SCORER].index for p in gw.pools)
        assert a is b and a.mode == "tokens"
    finally:
        await gw.stop(drain_timeout=0.2)


def test_the_workers_supervisors_check_takes_a_mode_change_under_the_running_name():
    """qa29's e12 (``kvgate serve --workers 2``): the supervisor's ``check_pickers`` refused a reload
    changing only ``mode`` under the running ``indexName`` (a clash with its own start-up build); and each
    check's build held its names after."""
    name = _name()
    old = make_config([], extra={"pools": _doc(_precise("engine", name), _plain())["pools"]})
    running = make_pools(old)  # (the supervisor's start-up build: it holds the name in engine mode)
    new = make_config([], extra={"pools": _doc(_precise("tokens", name), _plain())["pools"]})
    for _ in range(2):  # (the first check holds nothing after it)
        assert "a" in check_pickers(old, new)
    index = precise_prefix.index_named(name)
    assert index is not None and index.mode == "engine"  # the running one's, untouched
    assert running[0].director.handle.plugins[SCORER].index is index
