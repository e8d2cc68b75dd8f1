"""rev-a30 F1: ``check_events_bind`` (cfg30, d7863a98) refuses ``eventsBind: true`` with more than one worker
only where the file writes it. ``kvgate serve --kv-events auto`` (the default) writes it itself, after the
check: engines that *connect* to a concrete address (vLLM ``endpoint: tcp://10.0.0.1:6000``) make
``kv_auto.apply`` give the pool ``precise_policy(tok, bind=True)``, and the ``--workers`` supervisor hands
that config to every worker, each binding the same address: the failure cfg30 set out to refuse. Fails on
main aed2ebfd: ``run_workers`` gets a pool whose precise scorer binds, with 2 workers."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.datalayer.kvdetect import KVEventsInfo
from kvgate.gateway import cli, kv_auto, workers
from kvgate.sim.tokenizer import tokenizer_dir


def _binds(cfg: Any) -> list[str]:
    out = []
    for pool in cfg.pools:
        for plugin in (pool.picker_config or {}).get("plugins", []):
            if (plugin.get("parameters") or {}).get("eventsBind") is True:
                out.append(pool.name)
    return out


def test_kv_events_auto_with_workers_never_hands_workers_a_binding_scorer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connects = KVEventsInfo("tcp://127.0.0.1:6000", None, True, None)  # the engine connects: gateway binds
    monkeypatch.setattr(kv_auto, "probe_all", lambda eps, timeout, scheme: {e: connects for e in eps})
    tok = tokenizer_dir() / "tokenizer.json"  # (the simulator's; only its path is handed on here)
    monkeypatch.setattr(kv_auto, "_tokenizer", lambda pc, found: str(tok))
    handed: list[Any] = []

    def fake_run_workers(cfg: Any, n: int, *a: Any, **k: Any) -> int:
        handed.append((cfg, n))
        return 0

    monkeypatch.setattr(workers, "run_workers", fake_run_workers)
    monkeypatch.setattr(cli, "build_pools", lambda cfg, **k: [])  # (no picker built: no index held after)
    rc = cli.main(["--endpoints", "127.0.0.1:1", "--model", "sim-model", "--workers", "2", "--port", "0"])
    # Either a config error naming the key (nothing started) or the approximate index / no bind: never a
    # binding precise scorer in every one of 2 workers.
    for cfg, n in handed:
        assert n <= 1 or not _binds(cfg), (
            f"rc {rc}: {n} workers each bind the KV-event address: {_binds(cfg)}"
        )
