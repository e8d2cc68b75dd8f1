"""Every bench's default output folder is the git-ignored results/<bench>, never the tracked docs/benchmarks.

Each bench used to default ``--out`` to docs/benchmarks, so a run without ``--out`` from the repository
root (any tuning run) overwrote the published figures. Running every bench costs minutes (live ones start
processes), so this resolves each entry point's output folder and stops there: the parsed ``--out`` of a
bench with its own parser, or the folder ``kvgate bench`` hands to the scenario runner.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvgate.bench import cli, inference_perf, live, outdir, sweep

REPO = Path(__file__).resolve().parents[2]


class _Out(Exception):
    def __init__(self, out: Any) -> None:
        self.out = out


def _kvgate_bench(*argv: str) -> Callable[[], object]:
    return lambda: cli.main(list(argv))


CASES: list[tuple[str, Callable[[], object], str]] = [
    ("bench sharegpt", _kvgate_bench("sharegpt"), "sharegpt"),
    ("bench shared-prefix", _kvgate_bench("shared-prefix", "--quick"), "shared-prefix"),
    ("bench live", _kvgate_bench("live"), "live"),
    ("bench inference-perf", _kvgate_bench("inference-perf"), "inference-perf"),
    ("bench flowcontrol", _kvgate_bench("flowcontrol"), "flowcontrol"),
    ("bench flowcontrol --live", _kvgate_bench("flowcontrol", "--live"), "flowcontrol"),
    ("bench multiturn", _kvgate_bench("multiturn"), "multiturn"),
    ("bench multiturn --live", _kvgate_bench("multiturn", "--live"), "multiturn"),
    ("bench multicluster", _kvgate_bench("multicluster"), "multicluster"),
    ("bench multicluster --live", _kvgate_bench("multicluster", "--live"), "multicluster"),
    ("bench workers", _kvgate_bench("workers"), "workers"),
    ("bench precise", _kvgate_bench("precise"), "precise"),
    ("python -m kvgate.bench.live", lambda: live.main([]), "live"),
    ("python -m kvgate.bench.inference_perf", lambda: inference_perf.main([]), "inference-perf"),
]


@pytest.mark.parametrize(("entry", "call", "bench"), CASES, ids=[c[0] for c in CASES])
def test_default_out_is_the_git_ignored_results_folder(
    entry: str, call: Callable[[], object], bench: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # (nothing is written; if it were, not into the checkout)
    real_parse = argparse.ArgumentParser.parse_args

    def parse_and_stop(self: argparse.ArgumentParser, *a: Any, **kw: Any) -> Any:
        ns = real_parse(self, *a, **kw)
        if self.prog != "kvgate bench":  # a bench's own parser; kvgate bench's resolves --out below
            raise _Out(ns.out)
        return ns

    def stop(*a: Any, **kw: Any) -> Any:
        raise _Out(kw["out"] if "out" in kw else a[0].out)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sweep, "run_scenario", stop)
    monkeypatch.setattr(live, "main_from_args", stop)
    monkeypatch.setattr(inference_perf, "run", stop)
    with pytest.raises(_Out) as got:
        call()
    out = Path(got.value.out)
    assert out == Path("results") / bench == outdir.default_out(bench), entry
    assert "docs" not in out.parts


def test_results_is_git_ignored() -> None:
    """Unanchored (review s13-tidy N2): a bench run from a subfolder writes ``<subfolder>/results/``."""
    assert "results/" in (REPO / ".gitignore").read_text().splitlines()


def test_wrote_names_every_file(capsys: pytest.CaptureFixture[str]) -> None:
    outdir.wrote(Path("results/x/a.json"), "results/x/a.md")
    assert capsys.readouterr().out == "wrote results/x/a.json, results/x/a.md\n"


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        (["--out", "docs/benchmarks", "--quick"], "docs/benchmarks"),  # documented (review s13-tidy L1)
        (["docs/benchmarks", "--quick"], "docs/benchmarks"),  # the older bare folder still works
        (["--quick"], "results/inference-perf"),
    ],
)
def test_python_m_inference_perf_takes_out_like_every_other_bench(
    argv: list[str],
    want: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m kvgate.bench.inference_perf --out DIR`` exited 2 (its parser took the folder only as a
    positional), the one entry point where docs/benchmarks.md's ``--out docs/benchmarks`` failed."""
    monkeypatch.chdir(tmp_path)
    got: dict[str, Any] = {}

    def fake_run(out: Path, quick: bool = False, seed: int = 0) -> int:
        got.update(out=Path(out), quick=quick, seed=seed)
        return 0

    monkeypatch.setattr(inference_perf, "run", fake_run)
    try:
        rc = inference_perf.main(argv)
    except SystemExit as e:
        pytest.fail(f"python -m kvgate.bench.inference_perf {' '.join(argv)}: exit {e.code}")
    assert rc == 0 and got == {"out": Path(want), "quick": True, "seed": 0}
    with pytest.raises(SystemExit):
        inference_perf.main(["--help"])
    help_text = capsys.readouterr().out
    assert "--out" in help_text and "legacy" not in help_text


def test_precise_records_a_runnable_command_for_a_folder_with_a_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """precise-fleet.md's ``Command:`` put ``--out {args.out}`` in unquoted (review s13-tidy N2): a folder
    with a space split into two arguments when the command was run again."""
    from kvgate.bench import precise

    monkeypatch.setattr(precise, "run", lambda quick, seed, qps: [])
    out = tmp_path / "my results"
    assert precise.main(["--quick", "--qps", "20, 40", "--out", str(out)]) == 0
    cmd = re.search(r"Command: `(.*)`", (out / "precise-fleet.md").read_text())
    assert cmd is not None
    argv = shlex.split(cmd.group(1))
    assert argv[:3] == ["kvgate", "bench", "precise"]
    ns = argparse.ArgumentParser(add_help=False)
    ns.add_argument("--out")
    ns.add_argument("--qps")
    got, _ = ns.parse_known_args(argv[3:])
    assert (got.out, got.qps) == (str(out), "20, 40")
