"""Review s16-k8s F6 (low; adjacent to ae1a255/a3f120e): with ``--clusters`` both ``kvgate epp`` and
``kvgate serve`` still drop ``--config`` silently -- its ``kubernetes.staleAfterSeconds`` included -- while
ae1a255 says the keys are no longer "parsed and silently ignored" and a3f120e makes the stale limit apply
to the hub's member watches (flag only). The project's rule is "refused, not silently ignored": either
the key sets the members' limit (as the flag does) or ``--config`` with ``--clusters`` is an error.

Fails on main: both exit 0 with the default 120 s, the file's 150 s unused and nothing said.

Run:
  PYTHONPATH=/work/main/src:/work/main/tests /work/main/.venv/bin/python -m pytest -q \
      /work/team/reviews/s16-k8s-tests/test_s16k8s_clusters_ignores_config_keys.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


def _files(tmp_path: Path) -> tuple[str, str]:
    g = tmp_path / "gateway.yaml"
    g.write_text(yaml.safe_dump({
        "pools": [{"name": "p", "models": ["m"], "inferencePool": {"name": "llm", "namespace": "default"}}],
        "kubernetes": {"staleAfterSeconds": 150},
    }))  # fmt: skip
    c = tmp_path / "clusters.yaml"
    c.write_text("kubernetes:\n  server: http://127.0.0.1:9\n  import: default/llama\n  controller: false\n"
                 "  members:\n  - {name: east, server: 'http://127.0.0.1:9', rtt_ms: 5}\n")  # fmt: skip
    return str(g), str(c)


def test_epp_clusters_with_config_does_not_drop_its_stale_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kvgate.extproc.cli as epp_cli

    g, c = _files(tmp_path)
    got: list[Any] = []

    async def epp_serve(*_a: Any, feed: Any = None, **_k: Any) -> None:
        got.append(feed.source.staleness)

    monkeypatch.setattr(epp_cli, "_serve", epp_serve)
    rc = epp_cli.main(["--clusters", c, "--config", g])
    assert rc == 2 or got[0].stale_after_s == 150.0, f"exit {rc}, policy {got}: the file's key dropped"
    assert got == [] and "--config: not with --clusters" in capsys.readouterr().err


def test_serve_clusters_with_config_does_not_drop_its_stale_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kvgate.multicluster.serve as hub_serve
    from kvgate.gateway.cli import main

    g, c = _files(tmp_path)
    got: list[Any] = []

    def hub_run(args: Any) -> int:
        got.append(args.stale_after_s)
        return 0

    monkeypatch.setattr(hub_serve, "run", hub_run)
    rc = main(["--clusters", c, "--config", g])
    assert rc == 2 or got[0] == 150.0, f"exit {rc}, stale_after_s {got}: the file's key dropped"
    assert got == [] and "--config: not with --clusters" in capsys.readouterr().err
