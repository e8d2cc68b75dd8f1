"""Review s28-rev-b28 N2: ``kvgate epp --config gw.yaml --pool-name p --pool-namespace prod`` is refused where
the file's pool names its InferencePool in another namespace (fixk8s28), but where the file gives no
namespace the words said "the namespace the config names for pool 'p''s InferencePool ('default')": the
config names none; the parse fills in ``default``, as ``kvgate serve`` reads the same file. The refusal
stands; its words now say where ``default`` comes from. Fails on main 80d4cd38 (the old words)."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvgate.extproc.cli as epp_cli


@pytest.mark.parametrize("namespace", ["", ", namespace: default"])
def test_the_refusal_says_where_default_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], namespace: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(f"pools:\n- name: p\n  models: [m]\n  inferencePool: {{name: llm{namespace}}}\n")
    argv = ["--config", str(path), "--pool-name", "p", "--pool-namespace", "prod",
            "--kube-server", "http://127.0.0.1:9"]  # fmt: skip
    assert epp_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "the config names" not in err, err
    said = (
        "kvgate epp: --pool-namespace: 'prod' is not the namespace of pool 'p''s InferencePool in the config "
        "('default': its inferencePool.namespace, 'default' where the file leaves it out, as kvgate serve "
        "reads it); drop the flag, or set the pool's inferencePool.namespace"
    )
    assert said in err, err
