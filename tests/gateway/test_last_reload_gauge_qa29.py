"""``kvgate_gateway_config_last_reload_successful`` says whether the running config is the file's
(review s29-qa29 Q4): after a refused edit ``kvgate serve`` runs the old config, and ``/metrics`` had only
``kvgate_gateway_config_reloads_total``, whose ``increase()`` alert resolves while the old config still
runs. Now the pair Prometheus and Alertmanager export for their own files: 0/1, and the Unix time of the
last successful reload (the start's load until one); with ``--workers``, per worker and, for the files
it refuses, the supervisor's.

Fails on be00955b (no such series)."""

from __future__ import annotations

import yaml

from gateway.conftest import make_config, make_pools
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.metrics import GatewayMetrics
from kvgate.gateway.reload import ConfigReloader
from kvgate.gateway.server import GatewayServer
from kvgate.gateway.workers import Supervisor, merge_metrics

OK = "kvgate_gateway_config_last_reload_successful"
AT = "kvgate_gateway_config_last_reload_success_timestamp_seconds"


def _write(path, max_body) -> None:
    pool = {"name": "p", "endpoints": ["127.0.0.1:1001"], "models": ["m"], "policy": "round-robin"}
    path.write_text(yaml.safe_dump({"pools": [pool], "limits": {"maxBodyBytes": max_body}}))


async def test_a_refused_reload_shows_until_a_good_one_on_metrics(tmp_path):
    cfg = make_config(["127.0.0.1:1001"])
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)
    await gw.start()
    try:
        value = gw.metrics.registry.get_sample_value
        assert value(OK) == 1.0 and value(AT) > 0  # (the start's load)
        f = tmp_path / "gw.yaml"
        rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        _write(f, -1)
        assert not await rl.areload()
        assert value(OK) == 0.0, f"{OK} after a refused reload: {value(OK)}"
        assert value("kvgate_gateway_config_reloads_total", {"result": "invalid"}) == 1.0
        _write(f, 4096)
        assert await rl.areload()
        assert value(OK) == 1.0
    finally:
        await gw.stop(drain_timeout=0.5)


def test_the_success_timestamp_moves_only_with_a_success():
    now = [100.0]
    m = GatewayMetrics(wall=lambda: now[0])
    value = m.registry.get_sample_value
    assert (value(OK), value(AT)) == (1.0, 100.0)
    now[0] = 200.0
    m.reload_result("failed")
    assert (value(OK), value(AT)) == (0.0, 100.0)
    now[0] = 300.0
    m.reload_result("applied")
    assert (value(OK), value(AT)) == (1.0, 300.0)


def test_the_supervisor_shows_the_files_it_refuses():
    pool = {"name": "p", "endpoints": ["127.0.0.1:1001"], "models": ["m"]}
    sup = Supervisor(parse_gateway_config({"pools": [pool], "listen": {"host": "127.0.0.1"}}), 1)

    def own() -> dict[str, float]:
        text = merge_metrics([], {"supervisor": sup._own_metrics()}).decode()
        return {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((OK, AT)) and 'worker="supervisor"' in line
        }

    assert own()[OK] == 1.0 and own()[AT] > 0
    sup.reload_result("invalid")
    assert own()[OK] == 0.0
    sup.reload_result("applied")
    assert own()[OK] == 1.0
