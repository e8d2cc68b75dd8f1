"""``kvgate serve``'s config file takes the staleness settings too (session 15): ``kubernetes:
{staleAfterSeconds, staleNotReadyAfterSeconds}``, a flag given overriding its key, checked by the flags'
rules (``kvgate.k8s.stalepolicy``), each error naming the exact key (or flag) the value came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kvgate.config.gateway import GatewayConfigError, load_gateway_config
from kvgate.gateway.cli import _parser, build_config, main, reload_loader
from kvgate.gateway.reload import not_applied

WATCHED = {"name": "llama", "models": ["m"], "inferencePool": {"name": "llm", "namespace": "default"}}
STATIC = {"name": "llama", "models": ["m"], "endpoints": ["127.0.0.1:1"]}


def _file(tmp_path: Path, kube: Any, pool: dict[str, Any] = WATCHED) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"pools": [pool], "kubernetes": kube}))
    return str(path)


def _build(tmp_path: Path, kube: Any, *flags: str, pool: dict[str, Any] = WATCHED) -> tuple[Any, Any]:
    cfg = build_config(_parser().parse_args(["--config", _file(tmp_path, kube, pool), *flags]))
    return cfg.kube_stale_after_s, cfg.kube_stale_not_ready_after_s


def _refused(tmp_path: Path, kube: Any, *flags: str, pool: dict[str, Any] = WATCHED) -> GatewayConfigError:
    with pytest.raises(GatewayConfigError) as e:
        _build(tmp_path, kube, *flags, pool=pool)
    return e.value


def test_the_file_sets_them_and_a_flag_overrides_its_key(tmp_path: Path) -> None:
    """Fails before: ``kubernetes`` was an unknown top-level key."""
    both = {"staleAfterSeconds": 150, "staleNotReadyAfterSeconds": 300}
    assert _build(tmp_path, both) == (150.0, 300.0)
    assert _build(tmp_path, both, "--kube-stale-after", "200") == (200.0, 300.0)
    assert _build(tmp_path, both, "--kube-stale-not-ready-after", "0") == (150.0, 0.0)
    assert _build(tmp_path, {}) == (None, 0.0)  # the defaults: 120 s, never not-ready
    assert _build(tmp_path, {"staleAfterSeconds": 150}) == (150.0, 0.0)


@pytest.mark.parametrize(
    ("kube", "key", "says"),
    [
        ({"staleAfterSeconds": 0}, "kubernetes.staleAfterSeconds", "finite number of seconds > 0"),
        ({"staleAfterSeconds": float("nan")}, "kubernetes.staleAfterSeconds", "finite"),
        ({"staleAfterSeconds": float("inf")}, "kubernetes.staleAfterSeconds", "finite"),
        ({"staleNotReadyAfterSeconds": -1}, "kubernetes.staleNotReadyAfterSeconds", ">= 0 (0: never)"),
        ({"staleNotReadyAfterSeconds": 60}, "kubernetes.staleNotReadyAfterSeconds",
         "below --kube-stale-after (120 s)"),  # (the default's name: the flag, as kvgate epp says it)
        ({"staleAfterSeconds": 300, "staleNotReadyAfterSeconds": 200}, "kubernetes.staleNotReadyAfterSeconds",
         "below kubernetes.staleAfterSeconds (300 s)"),
        ({"staleAfterSeconds": "2m"}, "kubernetes.staleAfterSeconds", "expected an integer or a number"),
        ({"staleAfterSeconds": True}, "kubernetes.staleAfterSeconds", "got a boolean"),
        ({"staleAfter": 150}, "kubernetes.staleAfter", ""),
        ([150], "kubernetes", "expected a mapping"),
    ],
)  # fmt: skip
def test_a_refused_value_names_its_key(tmp_path: Path, kube: Any, key: str, says: str) -> None:
    err = _refused(tmp_path, kube)
    assert err.key == key and says in str(err), str(err)


def test_a_flag_and_a_key_checked_together_name_each_where_it_came_from(tmp_path: Path) -> None:
    err = _refused(tmp_path, {"staleAfterSeconds": 300}, "--kube-stale-not-ready-after", "200")
    assert err.key == "--kube-stale-not-ready-after" and "below kubernetes.staleAfterSeconds (300 s)" in str(
        err
    )
    err = _refused(tmp_path, {"staleNotReadyAfterSeconds": 200}, "--kube-stale-after", "300")
    assert err.key == "kubernetes.staleNotReadyAfterSeconds" and "below --kube-stale-after (300 s)" in str(
        err
    )


def test_refused_where_nothing_is_watched_naming_the_key(tmp_path: Path) -> None:
    err = _refused(tmp_path, {"staleAfterSeconds": 150}, pool=STATIC)
    assert err.key == "kubernetes.staleAfterSeconds" and "only with an InferencePool to watch" in str(err)
    assert _build(tmp_path, {}, pool=STATIC) == (None, 0.0)


def test_kvgate_serve_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", _file(tmp_path, {"staleAfterSeconds": -5})]) == 2
    assert "kubernetes.staleAfterSeconds: must be a finite number" in capsys.readouterr().err


def test_a_reload_that_changes_them_says_restart_to_apply(tmp_path: Path) -> None:
    old = load_gateway_config(_file(tmp_path, {"staleAfterSeconds": 150}))
    new = load_gateway_config(_file(tmp_path, {"staleAfterSeconds": 200, "staleNotReadyAfterSeconds": 300}))
    assert not_applied(old, new) == ["kubernetes.staleAfterSeconds", "kubernetes.staleNotReadyAfterSeconds"]


@pytest.mark.parametrize(
    ("kube", "pool"),
    [
        ({"staleAfterSeconds": -5}, WATCHED),
        ({"staleAfterSeconds": 300, "staleNotReadyAfterSeconds": 200}, WATCHED),
        ({"staleAfterSeconds": 150}, STATIC),
    ],
)
def test_a_reload_refuses_what_the_restart_would_refuse(
    tmp_path: Path, kube: Any, pool: dict[str, Any]
) -> None:
    """Review s15-k8s F2 (its test, moved): fails before (the reload accepted each edit as "restart to
    apply", and the restart it asked for exited 2)."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"pools": [pool]}))
    args = _parser().parse_args(["--config", str(path)])
    build_config(args)  # the running config starts fine
    path.write_text(yaml.safe_dump({"pools": [pool], "kubernetes": kube}))  # the edit a reload reads
    with pytest.raises(GatewayConfigError):  # what the restart says
        build_config(args)
    with pytest.raises(GatewayConfigError):
        reload_loader(args)(str(path))
