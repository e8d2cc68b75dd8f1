"""Review s19-gw L3 (4a89e95, pre-existing for the flag alone): ``kvgate epp --config`` now takes the file's
``limits.maxBodyBytes`` and ``limits.maxBufferedBytes`` (the pair ``kvgate serve`` and the file parser refuse
when maxBufferedBytes < maxBodyBytes: "a body between the two could never be held, and would be told to retry
(503) forever", s17-qafix-bc L1), but ``--max-buffered-bytes`` overriding the file's budget is not checked
against the file's body cap: here 500 < 1000 starts (exit 0).

Fails before the fix (903ccbe: it started), passes after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``kvgate epp`` does not serve here: a start that gets past the checks is recorded, not run."""
    import kvgate.extproc.cli as epp_cli

    started: list[Any] = []

    async def fake(*a: Any, **_k: Any) -> None:
        started.append(a)

    monkeypatch.setattr(epp_cli, "_serve", fake)
    return started


def test_a_flag_budget_below_the_files_body_cap_is_refused(
    tmp_path: Path, served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    import kvgate.extproc.cli as epp_cli

    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({
        "pools": [{"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}],
        "limits": {"maxBodyBytes": 1000},
    }))  # fmt: skip
    rc = epp_cli.main(["--config", str(path), "--max-buffered-bytes", "500"])
    err = capsys.readouterr().err
    assert rc == 2 and not served, f"started with a 500-byte budget under a 1000-byte body cap: {err}"
    assert "--max-buffered-bytes must be >= --config's limits.maxBodyBytes (1000), got 500" in err, err


def test_a_flag_budget_at_the_files_body_cap_starts(
    tmp_path: Path, served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """The control: the same file with a budget equal to its body cap starts."""
    import kvgate.extproc.cli as epp_cli

    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump({
        "pools": [{"name": "p", "endpoints": ["127.0.0.1:9"], "models": ["m"]}],
        "limits": {"maxBodyBytes": 1000},
    }))  # fmt: skip
    assert epp_cli.main(["--config", str(path), "--max-buffered-bytes", "1000"]) == 0 and served


def test_a_flag_budget_below_the_body_cap_is_refused_without_a_file_too(
    served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Review s19-fixes-c L1: with ``--endpoints`` only, the body cap is 64 MiB; a 1 MiB budget started and
    told every body between the two to retry (503) forever (``kvgate serve`` refuses the same flag)."""
    import kvgate.extproc.cli as epp_cli

    argv = ["--endpoints", "127.0.0.1:9", "--model", "m", "--max-buffered-bytes", str(1 << 20)]
    rc = epp_cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and not served, err
    assert f"--max-buffered-bytes must be >= the body cap ({64 << 20}), got {1 << 20}" in err, err
