"""``scripts/realvllm/gateway_marks.py --split``: which calls count as the measured requests'. No server:
``kvgate serve`` is replaced by a fake that makes the calls a run makes. Review s15-rv L2."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "realvllm" / "gateway_marks.py"


def _script() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))  # (it imports vs_sglang from its own folder)
    spec = importlib.util.spec_from_file_location("gateway_marks_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_split_drops_the_load_time_and_warm_up_calls_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tokenizer's load-time probe (31 library calls) and the warm-up requests' new tenant pieces (5
    calls each) are not the measured requests' (2 calls each): a pro-rata cut (the first WARMUP / (WARMUP
    + requests) of the calls) kept some of them, and read 5.0 calls per request instead of 2."""
    from kvgate import cli
    from kvgate.requestcontrol.director import Director
    from kvgate.scheduling import tokenize
    from kvgate.scheduling.plugins.precise_prefix import PrecisePrefixCacheScorer
    from kvgate.scheduling.profile import SchedulerProfile

    mod = _script()
    requests = 10
    clock = [0]
    monkeypatch.setattr(mod, "time", SimpleNamespace(perf_counter_ns=lambda: clock[0]))  # injected time
    registered: list[Any] = []
    monkeypatch.setattr(mod.atexit, "register", registered.append)
    # (the script wraps these in place: put them back after the test)
    for owner, name in ((SchedulerProfile, "run"), (PrecisePrefixCacheScorer, "prepare"),
                        (tokenize.PromptTokenizer, "encode"), (Director, "on_dispatched"),
                        (Director, "on_first_token"), (Director, "on_finished")):  # fmt: skip
        monkeypatch.setattr(owner, name, getattr(owner, name))

    def library_call(us: int) -> None:
        clock[0] += us * 1000

    monkeypatch.setattr(tokenize, "_ids", lambda us: library_call(us))

    def pick(self: Any, calls: int, us: int) -> None:
        for _ in range(calls):
            tokenize._ids(us)  # (looked up at call time: the wrapped one)
        clock[0] += 7000

    monkeypatch.setattr(Director, "pick", pick)

    def serve(argv: list[str]) -> int:
        for _ in range(31):  # the tokenizer's load-time probe
            tokenize._ids(300)
        for _ in range(mod.WARMUP):
            Director.pick(None, 5, 200)
        for _ in range(requests):
            Director.pick(None, 2, 10)
        return 0

    monkeypatch.setattr(cli, "main", serve)
    out = tmp_path / "split.json"
    assert mod._serve_split(str(out), []) == 0
    for write in registered:
        write()
    mod._print_split(json.loads(out.read_text()), requests)
    printed = capsys.readouterr().out

    def row(label: str) -> tuple[float, float, float]:
        line = next(s for s in printed.splitlines() if label in s)
        got = re.search(r"([\d.]+) calls/request\s+median\s+([\d.]+)\s+mean\s+([\d.]+) us", line)
        assert got is not None, line
        return float(got[1]), float(got[2]), float(got[3])

    assert row("tokenizer library call") == (2.0, 10.0, 10.0)
    assert row("Director.pick") == (1.0, 27.0, 27.0)  # 2 x 10 us + 7 us
