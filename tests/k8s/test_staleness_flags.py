"""``--kube-stale-after`` / ``--kube-stale-not-ready-after``: the values refused or warned about, the same
way by ``kvgate epp`` and ``kvgate serve`` in every mode (review s14-k8s M2, L1, L2)."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest

from k8s.reflector_kit import until
from kvgate.k8s.stalepolicy import (
    QUIET_WATCH_AGE_S,
    StalenessFlagError,
    StalenessPolicy,
    refuse_unused,
    staleness_policy,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md"
STALE, NOT_READY = "--kube-stale-after", "--kube-stale-not-ready-after"


@pytest.mark.parametrize("bad", [(math.nan, 0.0), (120.0, math.nan), (math.inf, 0.0), (120.0, math.inf)])
def test_nan_and_inf_are_refused(bad: tuple[float, float]) -> None:
    """Review s14-k8s L1: argparse's type=float takes "nan" and "inf". ``nan <= 0`` is False, so
    ``--kube-stale-after nan`` was accepted and no age is ever > nan: never stale; ``nan or None`` is nan:
    never not-ready; inf is "off" in disguise."""
    with pytest.raises(StalenessFlagError) as e:
        staleness_policy(*bad)
    assert e.value.flag == (STALE if not math.isfinite(bad[0]) else NOT_READY)
    assert str(e.value).startswith(e.value.flag + ": ")


def test_a_not_ready_limit_below_the_stale_limit_is_refused_and_a_quiet_watch_age_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review s14-k8s M2: 60 (the docs' example) was accepted under the 120 s stale limit: the replica
    turned not-ready before any WARNING said why, and every ~90 s cycle of a healthy quiet watch on a
    server without bookmarks. Now refused, naming the flag; limits a quiet watch can reach are warned."""
    with pytest.raises(StalenessFlagError) as e:
        staleness_policy(None, 60.0)
    assert e.value.flag == NOT_READY and "below --kube-stale-after (120 s)" in str(e.value)
    with pytest.raises(StalenessFlagError):
        staleness_policy(300.0, 200.0)
    caplog.set_level(logging.WARNING, logger="kvgate.k8s.stalepolicy")
    assert staleness_policy(30.0, 60.0) == StalenessPolicy(30.0, 60.0)
    warned = [r.getMessage() for r in caplog.records]
    assert (
        len(warned) == 2 and warned[0].startswith(f"{STALE} 30 s") and warned[1].startswith(f"{NOT_READY} 60")
    )
    caplog.clear()
    assert staleness_policy(None, 300.0) == StalenessPolicy(120.0, 300.0) and not caplog.records
    assert staleness_policy(None, 0.0, warn=True) == StalenessPolicy(120.0, None) and not caplog.records


def _documented_not_ready_limit() -> float:
    found = re.findall(r"kube-stale-not-ready-after=(\d+)", DOCS.read_text())
    assert found, "docs/kubernetes.md shows no --kube-stale-not-ready-after example"
    return float(found[0])


async def test_the_documented_not_ready_limit_does_not_fail_a_healthy_quiet_watch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review s14-k8s M2: docs/kubernetes.md recommended ``kube-stale-not-ready-after=60``; a healthy
    quiet watch (no bookmark from the server, no error, no silence yet) then reported not-ready at 61 s.
    The documented value now is accepted without a warning and keeps such a watch ready for as long as
    it can legitimately stay quiet (the silence limit and a re-open)."""
    from kvgate.datalayer.store import EndpointStore
    from kvgate.k8s.apiserver import ApiServerDouble
    from kvgate.k8s.runtime import KubeOptions, KubePool

    ns = "s14flags"
    caplog.set_level(logging.WARNING, logger="kvgate.k8s.stalepolicy")
    policy = staleness_policy(None, _documented_not_ready_limit())
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    async with ApiServerDouble(bookmark_interval=1000.0) as double:
        double.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        double.create({"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                       "metadata": {"name": "llm", "namespace": ns},
                       "spec": {"selector": {"matchLabels": {"app": "vllm"}},
                                "targetPorts": [{"number": 8000}]}})  # fmt: skip
        double.create({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "a", "namespace": ns, "labels": {"app": "vllm"}},
                       "spec": {"containers": [{"name": "c", "image": "x"}]}})  # fmt: skip
        double.set_pod_status("a", ip="10.0.0.1", ready=True, namespace=ns)
        now = [0.0]
        kp = KubePool(KubeOptions("llm", ns, server=double.url, staleness=policy), EndpointStore(),
                      clock=lambda: now[0])  # fmt: skip
        await kp.start()
        try:
            await until(lambda: kp.problem() is None)
            assert kp.discovery is not None
            pool = kp.discovery.pool_reflector
            await until(lambda: pool.watches >= 1)
            await asyncio.sleep(0.2)
            now[0] += QUIET_WATCH_AGE_S  # quiet: no event, no bookmark yet, the watch open and well
            assert pool.error is None and pool.lists == 1
            assert kp.problem() is None, kp.problem()
        finally:
            await kp.stop()


# Review s14-k8s L2: kvgate epp checked the flags only for an InferencePool (a static pool or --clusters
# took -1 without a word, and ignored any value), kvgate serve always but naming --kube-stale-after for
# a bad --kube-stale-not-ready-after. Now both refuse the same values in every mode, naming the flag.
KUBE_EPP, KUBE_SERVE = ["--pool-name", "llm"], ["--pool-name", "llm", "--model", "m"]
STATIC = ["--endpoints", "127.0.0.1:9", "--model", "m"]
HUB = ["--clusters", "/nonexistent/clusters.yaml"]
BAD = [
    ([STALE, "-1"], STALE),
    ([STALE, "nan"], STALE),
    ([NOT_READY, "-1"], NOT_READY),
    ([NOT_READY, "inf"], NOT_READY),
    ([NOT_READY, "60"], NOT_READY),  # below the default 120 s stale limit
    ([STALE, "200", NOT_READY, "150"], NOT_READY),
]
UNUSED = [([STALE, "300"], STALE), ([NOT_READY, "300"], NOT_READY)]  # fine values, nothing to watch
# With --clusters only the not-ready limit is refused (the stale limit sets the members' watches': session 16,
# tests/multicluster/test_hub_stale_after.py).
CASES = (
    [(mode, *bad) for mode in ("kube", "static", "hub") for bad in BAD]
    + [("static", *unused) for unused in UNUSED]
    + [("hub", *UNUSED[1])]
)


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Neither command serves in these tests: a start that gets past the checks is recorded, not run."""
    import kvgate.extproc.cli as epp_cli
    import kvgate.gateway.cli as serve_cli
    import kvgate.multicluster.serve as hub_serve

    served: list[str] = []

    async def epp_serve(*_a: Any, **_k: Any) -> None:
        served.append("epp")

    async def gw_serve(*_a: Any, **_k: Any) -> None:
        served.append("serve")

    def hub_run(*_a: Any, **_k: Any) -> int:
        served.append("serve --clusters")
        return 0

    monkeypatch.setattr(epp_cli, "_serve", epp_serve)
    monkeypatch.setattr(serve_cli, "serve", gw_serve)
    monkeypatch.setattr(hub_serve, "run", hub_run)
    return served


@pytest.mark.parametrize(("mode", "flags", "flag"), CASES)
def test_both_commands_refuse_the_same_settings_in_every_mode_naming_the_flag(
    mode: str, flags: list[str], flag: str, no_serving: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from kvgate.extproc.cli import main as epp_main
    from kvgate.gateway.cli import main as serve_main

    epp_base = {"kube": KUBE_EPP, "static": STATIC, "hub": HUB}[mode]
    serve_base = {"kube": KUBE_SERVE, "static": STATIC, "hub": HUB}[mode]
    assert epp_main([*epp_base, *flags]) == 2
    epp_err = capsys.readouterr().err
    # (--kv-events off: no probe of the endpoints; refused with --clusters, review s17-qa M2)
    kv_off = [] if mode == "hub" else ["--kv-events", "off"]
    assert serve_main([*serve_base, *kv_off, *flags]) == 2
    serve_err = capsys.readouterr().err
    assert no_serving == []
    assert epp_err.startswith(f"kvgate epp: {flag}: "), epp_err
    assert serve_err.startswith(f"kvgate serve: config error: {flag}: "), serve_err
    # The same reason after the prefix (one check, kvgate.k8s.stalepolicy).
    assert epp_err.split(f"{flag}: ", 1)[1] == serve_err.split(f"{flag}: ", 1)[1]


def test_the_hub_refusal_of_the_not_ready_limit_says_the_stale_limit_applies(
    no_serving: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Review s15-k8s F3: the members' watches are logged stale, by --kube-stale-after since session 16
    (before, at a fixed 120 s, the flag refused); the not-ready limit is refused with why."""
    from kvgate.extproc.cli import main as epp_main

    assert epp_main([*HUB, NOT_READY, "300"]) == 2
    err = capsys.readouterr().err
    assert "the candidates are clusters" in err and "--kube-stale-after applies" in err, err


def test_refuse_unused_takes_the_defaults() -> None:
    refuse_unused(None, 0.0, "static")  # nothing given: nothing refused
    with pytest.raises(StalenessFlagError, match=f"^{NOT_READY}: only with an InferencePool"):
        refuse_unused(None, 300.0, "static")
