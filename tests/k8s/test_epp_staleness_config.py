"""``kvgate epp --config`` takes the staleness keys ``kubernetes: {staleAfterSeconds,
staleNotReadyAfterSeconds}`` as ``kvgate serve``'s file does (session 16): a flag given overrides its key,
the values checked by the same rules, each error naming the exact key (or flag) the value came from, the
same words as ``kvgate serve``; refused where nothing is watched. Before, ``kvgate epp`` parsed the keys
(its ``--config`` is the gateway's format) and silently ignored them. ``kvgate epp`` reads its config at
start only (it has no reload), as ``kvgate serve`` applies these keys only at a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from k8s.test_staleness_config import STATIC, _file
from kvgate.k8s.stalepolicy import NOT_READY_KEY, StalenessPolicy


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``kvgate epp`` is not served: the KubePool it would start is recorded."""
    import kvgate.extproc.cli as epp_cli

    kubes: list[Any] = []

    async def epp_serve(*_a: Any, kube: Any = None, **_k: Any) -> None:
        kubes.append(kube)

    monkeypatch.setattr(epp_cli, "_serve", epp_serve)
    return kubes


def _epp(tmp_path: Path, kube: Any, *flags: str, started: list[Any]) -> StalenessPolicy:
    from kvgate.extproc.cli import main

    assert main(["--config", _file(tmp_path, kube), *flags]) == 0
    policy: StalenessPolicy = started.pop().opts.staleness
    return policy


def test_the_file_sets_them_and_a_flag_overrides_its_key(tmp_path: Path, started: list[Any]) -> None:
    """Fails before: the keys were ignored (the policy stayed the default, 120 s and never not-ready)."""
    both = {"staleAfterSeconds": 150, "staleNotReadyAfterSeconds": 300}
    assert _epp(tmp_path, both, started=started) == StalenessPolicy(150.0, 300.0)
    assert _epp(tmp_path, both, "--kube-stale-after", "200", started=started) == StalenessPolicy(200.0, 300.0)
    assert _epp(tmp_path, both, "--kube-stale-not-ready-after", "0", started=started) == StalenessPolicy(
        150.0
    )
    assert _epp(tmp_path, {}, started=started) == StalenessPolicy()
    assert _epp(tmp_path, {"staleAfterSeconds": 150}, started=started) == StalenessPolicy(150.0)


@pytest.mark.parametrize(
    ("kube", "flags", "key"),
    [
        ({"staleAfterSeconds": 0}, [], "kubernetes.staleAfterSeconds"),
        ({"staleAfterSeconds": float("nan")}, [], "kubernetes.staleAfterSeconds"),
        ({"staleNotReadyAfterSeconds": -1}, [], "kubernetes.staleNotReadyAfterSeconds"),
        ({"staleNotReadyAfterSeconds": 60}, [], "kubernetes.staleNotReadyAfterSeconds"),
        ({"staleAfterSeconds": 300, "staleNotReadyAfterSeconds": 200}, [], NOT_READY_KEY),
        ({"staleAfterSeconds": "2m"}, [], "kubernetes.staleAfterSeconds"),
        ({"staleAfter": 150}, [], "kubernetes.staleAfter"),
        ({"staleAfterSeconds": 300}, ["--kube-stale-not-ready-after", "200"], "--kube-stale-not-ready-after"),
        ({"staleNotReadyAfterSeconds": 200}, ["--kube-stale-after", "300"], NOT_READY_KEY),
    ],
)  # fmt: skip
def test_a_refused_value_names_its_key_in_the_words_of_kvgate_serve(
    tmp_path: Path,
    kube: Any,
    flags: list[str],
    key: str,
    started: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Both commands exit 2 on the same file and flags, naming the same key with the same reason. Fails
    before for the values (kvgate epp started with the defaults)."""
    from kvgate.extproc.cli import main as epp_main
    from kvgate.gateway.cli import main as serve_main

    path = _file(tmp_path, kube)
    assert epp_main(["--config", path, *flags]) == 2
    epp_err = capsys.readouterr().err
    assert serve_main(["--config", path, "--kv-events", "off", *flags]) == 2
    serve_err = capsys.readouterr().err
    assert started == []
    assert epp_err.startswith(f"kvgate epp: {key}: "), epp_err
    assert serve_err.startswith(f"kvgate serve: config error: {key}: "), serve_err
    assert epp_err.split(f"{key}: ", 1)[1] == serve_err.split(f"{key}: ", 1)[1]


def test_refused_on_a_static_pool_naming_the_key(
    tmp_path: Path, started: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """A pool with ``endpoints`` watches nothing: the keys are an error, not silently ignored (as in
    ``kvgate serve``)."""
    from kvgate.extproc.cli import main

    assert main(["--config", _file(tmp_path, {"staleAfterSeconds": 150}, STATIC)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvgate epp: kubernetes.staleAfterSeconds: only with an InferencePool to watch"), (
        err
    )
    assert main(["--config", _file(tmp_path, {}, STATIC)]) == 0 and started == [None]
