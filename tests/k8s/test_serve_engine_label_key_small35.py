"""small35 (c): ``kvgate serve`` applies the EndpointPickerConfig's ``engineLabelKey`` (a metrics
extractor's parameter: the one pod label the reference reads for a pod's engine) to the pods it discovers
from Kubernetes, as ``kvgate epp`` does since small34 (``kvgate serve`` has no ``--engine-label-key``
flag); two extractors naming different labels are refused, at the start (exit 2) and at a reload (the last
good config kept). A pool of listed endpoints has no pod labels: the key names nothing there (its engine
is ``pools[].engine``), said with a WARNING. Before, serve read llm-d's then GIE's label and warned that
the key was not applied: a pod labelled only under the configured key was scraped with vLLM's names. The
discovery and refusal tests fail on the commit before this one."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from k8s.pool_scope_kit import add_pod, pool_obj, serving, until
from k8s.test_epp_engine_label_key_config_small34 import picker
from kvgate.config.gateway import PoolConfig
from kvgate.gateway.pools import build_pool, picker_spec
from kvgate.k8s.apiserver import ApiServerDouble


def _config(tmp_path: Path, pool: dict[str, Any]) -> Path:
    f = tmp_path / "gw.yaml"
    f.write_text(yaml.safe_dump({"pools": [{"name": "llm", "models": ["m"], **pool}]}))
    return f


async def test_a_discovered_pods_engine_is_its_configured_label(
    double: ApiServerDouble, tmp_path: Path
) -> None:
    double.create(pool_obj(ports=(9,)))
    # (llm-d's label says vllm, GIE's trtllm-serve: only the configured key names sglang)
    labels = {"app": "sim", "example.com/engine": "sglang", "llm-d.ai/engine-type": "vllm",
              "inference.networking.k8s.io/engine-type": "trtllm-serve"}  # fmt: skip
    add_pod(double, "p0", "127.0.0.1", labels=labels)
    add_pod(double, "p1", "127.0.0.2", labels={"app": "sim", "llm-d.ai/engine-type": "sglang"})
    f = _config(
        tmp_path, {"inferencePool": {"name": "llm"}, "endpointPickerConfig": picker("example.com/engine")}
    )
    async with serving(double, "--config", str(f)) as (gw, _url):
        store = gw.pools[0].store
        await until(lambda: len(store) == 2, what="both pods")
        engines = {ep.address: ep.engine for ep in store.all()}
        # p1 carries no example.com/engine label: the reference reads that one label only, so vLLM.
        assert engines == {"127.0.0.1:9": "sglang", "127.0.0.2:9": "vllm"}, engines


def test_two_extractors_naming_different_labels_are_refused_naming_both() -> None:
    cfg = PoolConfig("p", [], ["m"], picker_config=picker("example.com/a", "example.com/b"))
    with pytest.raises(Exception, match=r"pools\[0\]\.endpointPickerConfig: plugins\[3\]\.parameters\."
                                        r"engineLabelKey: 'example.com/b', but plugins\[2\]"):  # fmt: skip
        build_pool(cfg, announce=False)
    build_pool(PoolConfig("p", [], ["m"], picker_config=picker("example.com/a", None, "example.com/a")))


async def test_kvgate_serve_refuses_them_at_the_start(tmp_path: Path) -> None:
    f = _config(tmp_path, {"endpoints": ["127.0.0.1:9"],
                           "endpointPickerConfig": picker("example.com/a", "example.com/b")})  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvgate.cli", "serve", "--config", str(f), "--host", "127.0.0.1", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    finally:
        if proc.returncode is None:  # (it started: not left running past the test)
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2, out
    assert "plugins[3].parameters.engineLabelKey: 'example.com/b'" in out and "Traceback" not in out, out


def test_what_kvgate_serve_says_of_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kvgate.gateway.pools")

    def said(pool: PoolConfig) -> list[str]:
        caplog.clear()
        picker_spec(pool, announce=True)
        return [
            r.levelname + " " + r.getMessage() for r in caplog.records if "engineLabelKey" in r.getMessage()
        ]

    listed = PoolConfig("p", ["127.0.0.1:9"], ["m"], engine="sglang", picker_config=picker("example.com/e"))
    [line] = said(listed)
    assert line.startswith("WARNING pool p: endpointPickerConfig.plugins[2].parameters.engineLabelKey"), line
    assert "listed" in line and "'sglang'" in line, line
    from kvgate.config.gateway import InferencePoolRef

    found = PoolConfig(
        "p", [], ["m"], picker_config=picker("example.com/e"), inference_pool=InferencePoolRef("p")
    )
    [line] = said(found)
    assert line.startswith("INFO pool p: ") and "'example.com/e'" in line and "not applied" not in line, line


def _gateway_config(picker_config: dict[str, Any]) -> Any:
    from kvgate.config.gateway import parse_gateway_config

    pool = {
        "name": "llm",
        "models": ["m"],
        "inferencePool": {"name": "llm"},
        "endpointPickerConfig": picker_config,
    }
    return parse_gateway_config({"pools": [pool]})


def test_a_reload_naming_two_labels_is_refused_and_a_changed_one_said_not_applied() -> None:
    """A reload checks the new pickers before any is swapped (``check_pickers``: refused, the last good
    config kept); a new label is said not applied in one process (its store keeps the label it started
    with until a restart), refused under ``--workers`` (the supervisor's ``check_pickers``)."""
    from kvgate.config.gateway import GatewayConfigError
    from kvgate.gateway.reload import check_pickers, not_applied

    old = _gateway_config(picker("example.com/a"))
    with pytest.raises(GatewayConfigError, match=r"pools\[0\]\.endpointPickerConfig: plugins\[3\]"):
        check_pickers(old, _gateway_config(picker("example.com/a", "example.com/b")))
    new = _gateway_config(picker("example.com/b"))
    # (--workers: the supervisor's check refuses it, so no restarted worker reads another label: rev-a35 F5)
    with pytest.raises(GatewayConfigError, match=r"engineLabelKey: changed .* restart kvgate serve"):
        check_pickers(old, new)
    assert not_applied(old, new, pickers=["llm"]) == ["pools[llm].endpointPickerConfig engineLabelKey"]
    assert not_applied(old, _gateway_config(picker(None, "example.com/a")), pickers=["llm"]) == []
