"""Review s16-k8s F2 (regression of ae1a255): ``kvgate epp --config FILE --pool-name P`` serves one pool
of a ``kvgate serve`` config (docs/epp.md: "the EPP serves one pool of it"). ``kubernetes:
{staleAfterSeconds, ...}`` is a file-wide key; ``kvgate serve`` accepts it when ANY pool comes from an
InferencePool (gateway/cli.py ``watched = any(...)``), but ``kvgate epp`` now judges it by the one pool it
serves (extproc/cli.py ``_staleness(..., None if cfg.pool.inference_pool is not None else "static")``): the
EPP of a static pool of that same file now refuses to start (exit 2), with a message that is untrue of the
file ("no pool comes from an InferencePool"). Before ae1a255 it started (the keys were ignored).

Fails on main: exit 2, "kvgate epp: kubernetes.staleAfterSeconds: only with an InferencePool to watch; no
pool comes from an InferencePool ...". Passes on ae1a255^ (and on kvgate serve with the same file).

Run:
  PYTHONPATH=/work/main/src:/work/main/tests /work/main/.venv/bin/python -m pytest -q \
      /work/team/reviews/s16-k8s-tests/test_s16k8s_epp_shared_config_static_pool.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


def _shared(tmp_path: Path) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "pools": [
            {"name": "watched", "models": ["m"], "inferencePool": {"name": "llm", "namespace": "default"}},
            {"name": "static", "models": ["n"], "endpoints": ["127.0.0.1:1"]},
        ],
        "kubernetes": {"staleAfterSeconds": 150},
    }))  # fmt: skip
    return str(path)


def test_the_epp_of_a_static_pool_starts_on_a_file_kvgate_serve_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kvgate.extproc.cli as epp_cli
    from kvgate.gateway.cli import _parser, build_config

    path = _shared(tmp_path)
    # kvgate serve takes the file (one pool is watched: the key applies to it).
    assert build_config(_parser().parse_args(["--config", path])).kube_stale_after_s == 150.0

    served: list[Any] = []

    async def epp_serve(*_a: Any, kube: Any = None, **_k: Any) -> None:
        served.append(kube)

    monkeypatch.setattr(epp_cli, "_serve", epp_serve)
    rc = epp_cli.main(["--config", path, "--pool-name", "static"])
    err = capsys.readouterr().err
    assert rc == 0 and served == [None], f"exit {rc}: {err.strip()}"


def test_a_flag_on_the_epp_of_a_static_pool_is_refused_with_a_true_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flag is this process's own: a static pool's EPP watches nothing, so it is refused, and the error
    says why for this file (its other pool is watched)."""
    import kvgate.extproc.cli as epp_cli

    monkeypatch.setattr(epp_cli, "_serve", lambda *_a, **_k: None)
    rc = epp_cli.main(["--config", _shared(tmp_path), "--pool-name", "static", "--kube-stale-after", "150"])
    err = capsys.readouterr().err
    assert rc == 2 and "--kube-stale-after" in err and "'static'" in err, err
    assert "no pool comes from an InferencePool" not in err


def test_a_file_without_a_watched_pool_still_refuses_its_stale_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import kvgate.extproc.cli as epp_cli

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "pools": [{"name": "static", "models": ["n"], "endpoints": ["127.0.0.1:1"]}],
        "kubernetes": {"staleAfterSeconds": 150},
    }))  # fmt: skip
    assert epp_cli.main(["--config", str(path), "--pool-name", "static"]) == 2
    assert "kubernetes.staleAfterSeconds: only with an InferencePool" in capsys.readouterr().err
