"""Review qa36a F5 and F10: a pool's ``endpointPickerConfigFile`` at a reload.

F5: a picker file read empty (truncated before its write, a ConfigMap key emptied) or holding only
comments was APPLIED: the pool swapped to the default ``kvgate`` policy and dropped its prefix index,
counted ``applied``. Now refused (``invalid``), the running picker kept.

F10: the reload read and parsed the files (gateway file and picker files) on the event loop: an 8.3 MB
picker file held every request 8.7 s (1.0 MB: 0.40 s vs 0.12 s). Now on a thread (and files over 1 MiB
are refused: tests/config/test_picker_compat_qa36a.py). The test records, without timing, whether the
YAML was parsed on the thread running the event loop.

Both fail on main 8cfcc4d7."""

from __future__ import annotations

import threading

from gateway.conftest import make_pools
from kvgate import yamlload
from kvgate.config.gateway import load_gateway_config
from kvgate.gateway.reload import ConfigReloader
from kvgate.gateway.server import GatewayServer

HEAD = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
GOOD = HEAD + "plugins:\n- type: queue-scorer\n- type: prefix-cache-scorer\n"
OTHER = HEAD + "plugins:\n- type: queue-scorer\n"


def _files(tmp_path):
    (tmp_path / "epc.yaml").write_text(GOOD)
    gw = tmp_path / "gw.yaml"
    gw.write_text(
        "listen: {host: 127.0.0.1, port: 0}\npools:\n- name: p\n  endpoints: [127.0.0.1:1001]\n"
        "  models: [m]\n  endpointPickerConfigFile: epc.yaml\n"
    )
    return gw, tmp_path / "epc.yaml"


async def test_f5_an_empty_picker_file_is_refused_on_reload_and_the_picker_kept(tmp_path):
    gw_file, epc = _files(tmp_path)
    cfg = load_gateway_config(str(gw_file))
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    await gw.start()
    try:
        value = gw.metrics.registry.get_sample_value
        rl = ConfigReloader(str(gw_file), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        running = gw.pools[0].director
        for content in ("", "# the picker, being rewritten\n"):
            epc.write_text(content)
            assert not await rl.areload(), f"{content!r} applied"
            assert gw.pools[0].director is running
        assert value("kvgate_gateway_config_reloads_total", {"result": "invalid"}) == 2.0
        assert value("kvgate_gateway_config_last_reload_successful") == 0.0
        epc.write_text(OTHER)  # (the control: a real change is swapped in)
        assert await rl.areload()
        assert gw.pools[0].director is not running
    finally:
        await gw.stop(drain_timeout=0.5)


async def test_f10_a_reload_parses_the_files_off_the_event_loop(tmp_path, monkeypatch):
    gw_file, epc = _files(tmp_path)
    cfg = load_gateway_config(str(gw_file))
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    await gw.start()
    try:
        loop_thread = threading.get_ident()
        parsed_on: list[bool] = []
        real = yamlload.safe_load

        def recording(stream):
            parsed_on.append(threading.get_ident() == loop_thread)
            return real(stream)

        monkeypatch.setattr(yamlload, "safe_load", recording)
        rl = ConfigReloader(str(gw_file), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        epc.write_text(OTHER)
        assert await rl.areload()
        assert len(parsed_on) >= 2, parsed_on  # (the gateway file and the picker file)
        assert not any(parsed_on), f"YAML parsed on the event loop's thread during the reload ({parsed_on})"
    finally:
        await gw.stop(drain_timeout=0.5)
