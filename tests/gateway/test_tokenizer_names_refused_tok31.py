"""Names the file system refuses, wherever a tokenizer is looked up (issue #16, tok31).

A ``tokenizer`` value or a model name (a config's ``tokenizersPoolConfig.modelName``, a ``token-producer``'s
``modelName``, a pool's ``models``, a name a server reports for ``--kv-events auto``) is looked up on the
file system: ``Path.is_dir`` raises ENAMETOOLONG for a segment over 255 bytes (where its parent exists: the
Hugging Face cache, the working directory), ``expanduser`` raises RuntimeError for ``~nosuchuser``. tok30
made ``tokenize.for_model`` take them as a miss; the other callers raised: ``kvgate serve`` and ``kvgate
epp`` stopped at start with a traceback (or ``kvgate epp: [Errno 36] ...`` naming no key), a reload was
refused as an unexpected error naming no key (a ``modelName`` one refused a valid picker), the ``--workers``
supervisor's check raised. Now: a ``tokenizer`` path is a config error naming its key; a model name no file
can have is a miss (one WARNING naming the key; the scorer reads ``auto``), as one not in the cache.
Each name: a NUL byte, a 300-character segment, ``..``, path separators, ``~nosuchuser``.
Every test fails on main 691110b3.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.conftest import make_config, make_pools
from kvgate.config.gateway import GatewayConfigError, PoolConfig
from kvgate.datalayer.kvdetect import KVEventsInfo
from kvgate.gateway import kv_auto, reload
from kvgate.gateway.cli import build_pools
from kvgate.gateway.reload import ConfigReloader
from kvgate.gateway.server import GatewayServer
from kvgate.scheduling import tokenize
from kvgate.sim.tokenizer import tokenizer_dir

NAMES = {
    "nul": "org/m\0x",
    "segment-300": "x" * 300,
    "org-segment-300": "org/" + "y" * 300,
    "dotdot": "..",
    "separators": "org/../../m",
    "no-such-user": "~no-such-user-tok31/m",
}
PRECISE = "precise-prefix-cache-scorer"
TOKENIZER_KEY = "pools[0].endpointPickerConfig: plugins[0].parameters.tokenizer"


@pytest.fixture(autouse=True)
def _own_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache that exists (so a long name reaches the file system's length check there) and a
    working directory of the test's own (a relative ``tokenizer`` path is read there)."""
    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    tokenize.wait_loads(60)  # (an earlier test's look-up: never into this test's dict)
    monkeypatch.setattr(tokenize, "_BY_MODEL", {})
    return hub


def _prefix(tokenizer: str) -> dict[str, Any]:
    return {"plugins": [{"type": "prefix-cache-scorer", "parameters": {"tokenizer": tokenizer}}]}


def _model_name(model: str) -> dict[str, Any]:
    params = {
        "mode": "tokens",
        "eventsBind": False,
        "indexName": f"tok31-{uuid.uuid4().hex[:8]}",
        "indexerConfig": {"tokenizersPoolConfig": {"modelName": model}},
    }
    return {"plugins": [{"type": PRECISE, "parameters": params}]}


def _token_producer(model: str) -> dict[str, Any]:
    producer = "precise-prefix-cache-producer"
    index = {"indexName": f"tok31-{uuid.uuid4().hex[:8]}", "mode": "tokens"}
    refs = [{"pluginRef": "prefix-cache-scorer"}, {"pluginRef": "max-score-picker"}]
    return {
        "apiVersion": "llm-d.ai/v1alpha1",
        "plugins": [
            {"type": producer, "parameters": index},
            {"type": "prefix-cache-scorer", "parameters": {"prefixMatchInfoProducerName": producer}},
            {"type": "token-producer", "parameters": {"modelName": model}},
            {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [{"name": "default", "plugins": refs}],
    }


def _pools(picker: dict[str, Any] | None) -> list[dict[str, Any]]:
    pool: dict[str, Any] = {"name": "p", "endpoints": ["127.0.0.1:1001"], "models": ["m"]}
    if picker is None:
        pool["policy"] = "round-robin"
    else:
        pool["endpointPickerConfig"] = picker
    return [pool]


def _reads_auto(director: Any) -> bool:
    scorer = next(p for p in director.handle.plugins.values() if hasattr(p, "_tokenizer"))
    return bool(scorer._tokenizer.setting == tokenize.AUTO)


def test_a_tokenizer_path_the_file_system_refuses_is_a_config_error_naming_its_key_at_start() -> None:
    for label, name in NAMES.items():
        with pytest.raises(GatewayConfigError) as e:  # main: RuntimeError for ~nosuchuser
            build_pools(make_config([], extra={"pools": _pools(_prefix(name))}))
        assert str(e.value).startswith(f"{TOKENIZER_KEY}: "), (label, str(e.value))


@pytest.mark.parametrize("layout", [_model_name, _token_producer], ids=["modelName", "token-producer"])
def test_a_model_name_no_file_can_have_is_a_miss_at_start(
    layout: Any, caplog: pytest.LogCaptureFixture
) -> None:
    for label, name in NAMES.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            # main: OSError (ENAMETOOLONG) for the long names, RuntimeError for ~nosuchuser
            pools = build_pools(make_config([], extra={"pools": _pools(layout(name))}))
        assert _reads_auto(pools[0].director), label
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("modelName" in m and "tokenizer: auto" in m for m in said), (label, said)


def test_kvgate_epp_exits_2_naming_the_key_or_starts_reading_auto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kvgate.extproc.cli as epp_cli

    served: list[Any] = []

    async def serve(_args: Any, _store: Any, ctx: Any, *_a: Any, **_k: Any) -> None:
        served.append(ctx)

    monkeypatch.setattr(epp_cli, "_serve", serve)
    path = tmp_path / "epp.yaml"
    for label, name in NAMES.items():
        path.write_text(yaml.safe_dump({"pools": _pools(_prefix(name))}))
        assert epp_cli.main(["--config", str(path)]) == 2, label  # main: RuntimeError out of main
        err = capsys.readouterr().err
        assert err.startswith("kvgate epp: plugins[0].parameters.tokenizer: "), (label, err)
        assert served == []
        path.write_text(yaml.safe_dump({"pools": _pools(_model_name(name))}))
        # main: exit 2, "kvgate epp: [Errno 36] File name too long" (no key); RuntimeError for ~nosuchuser
        assert epp_cli.main(["--config", str(path)]) == 0, (label, capsys.readouterr().err)
        assert _reads_auto(served.pop().director), label


async def test_a_reload_to_a_refused_tokenizer_path_is_invalid_naming_the_key_and_keeps_the_picker(
    tmp_path: Path,
) -> None:
    cfg = make_config([], extra={"pools": _pools(None)})
    pools = make_pools(cfg)
    running = pools[0].director
    results: list[str] = []
    f = tmp_path / "gw.yaml"
    rl = ConfigReloader(str(f), cfg, pools, None)
    rl.on_result = results.append
    for label, name in NAMES.items():
        f.write_text(yaml.safe_dump({"pools": _pools(_prefix(name))}))
        assert not await rl.areload(), label
        assert pools[0].director is running, label
    # main: "failed" (an unexpected RuntimeError, or OSError in the warm step, naming no key)
    assert results == ["invalid"] * len(NAMES)


async def test_a_reload_to_a_model_name_no_file_can_have_applies_reading_auto(tmp_path: Path) -> None:
    cfg = make_config([], extra={"pools": _pools(None)})
    gw = GatewayServer(cfg, make_pools(cfg), scrape=False)  # (a precise picker's KV-event sources start)
    await gw.start()
    try:
        f = tmp_path / "gw.yaml"
        rl = ConfigReloader(str(f), gw.cfg, gw.pools, None, gw.apply_limits, server=gw)
        for label, name in NAMES.items():
            for layout in (_model_name, _token_producer):
                f.write_text(yaml.safe_dump({"pools": _pools(layout(name))}))
                assert await rl.areload(), label  # main: refused ("failed") for the long names, ~nosuchuser
                assert _reads_auto(gw.pools[0].director), label
                f.write_text(yaml.safe_dump({"pools": _pools(None)}))
                assert await rl.areload(), label
    finally:
        await gw.stop(drain_timeout=0.2)


def test_the_workers_supervisors_check_names_the_key_or_passes() -> None:
    old = make_config([], extra={"pools": _pools(None)})
    for label, name in NAMES.items():
        assert reload.warm_pickers(old, make_config([], extra={"pools": _pools(_prefix(name))})) == []
        with pytest.raises(GatewayConfigError) as e:  # main: RuntimeError for ~nosuchuser
            reload.check_pickers(old, make_config([], extra={"pools": _pools(_prefix(name))}))
        assert str(e.value).startswith(f"{TOKENIZER_KEY}: "), (label, str(e.value))
        for layout in (_model_name, _token_producer):
            new = make_config([], extra={"pools": _pools(layout(name))})
            assert reload.warm_pickers(old, new) == []  # main: OSError / RuntimeError
            assert reload.check_pickers(old, new) == ["p"], label


def test_kv_events_auto_passes_over_a_refused_name_to_the_next(tmp_path: Path) -> None:
    good = tmp_path / "served"
    good.mkdir()
    shutil.copy(tokenizer_dir() / "tokenizer.json", good / "tokenizer.json")
    for label, name in NAMES.items():
        # The server reports a name (not checked), the pool lists another and the served model's directory.
        found = {"127.0.0.1:1001": KVEventsInfo("tcp://127.0.0.1:5557", None, False, name)}
        pc = PoolConfig(name="p", endpoints=["127.0.0.1:1001"], models=[name, str(good)])
        assert kv_auto._tokenizer(pc, found) == str(good / "tokenizer.json"), label  # main: raised
