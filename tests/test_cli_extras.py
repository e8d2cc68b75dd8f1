"""`kvgate sim` / `bench` / `demo` without their extras: one line naming the extra, exit 2, no traceback.

Each runs in a fresh interpreter where numpy, matplotlib and rich cannot be imported (as in a product
install, ``pip install kvgate`` without extras); ``kvgate serve --help`` still works there.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK = "import sys\nfor m in ('numpy', 'matplotlib', 'rich'): sys.modules[m] = None\n"


def _kvgate(*args: str) -> subprocess.CompletedProcess[str]:
    code = BLOCK + f"from kvgate.cli import main\nsys.exit(main({list(args)!r}))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("command", "extra"), [("sim", "sim"), ("bench", "bench"), ("demo", "bench")])
def test_missing_extra_names_the_extra(command: str, extra: str) -> None:
    args = ["list"] if command == "bench" else ["--help"] if command == "demo" else ["--replicas", "1"]
    res = _kvgate(command, *args)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"kvgate[{extra}]" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("command", ["serve", "epp"])
def test_product_commands_need_no_extra(command: str) -> None:
    res = _kvgate(command, "--help")
    assert res.returncode == 0, res.stderr[-2000:]


def test_every_benchmark_module_has_a_kvgate_bench_entry() -> None:
    """One entry point: each benchmark module with its own ``main`` is reachable as ``kvgate bench NAME``."""
    import ast
    from pathlib import Path

    from kvgate.bench.cli import DELEGATED

    bench = Path(__file__).resolve().parent.parent / "src" / "kvgate" / "bench"
    with_main = set()
    for f in bench.glob("*.py"):
        tree = ast.parse(f.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body) and any(
            isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body
        ):
            with_main.add(f"kvgate.bench.{f.stem}")
    # live and inference_perf are `kvgate bench live|inference-perf`, demo is `kvgate demo`; simproc (the
    # replica process) and delay_relay (the cross-cluster RTT relay of `kvgate bench multicluster --live`)
    # are processes the live benchmarks launch, not benchmarks.
    others = {
        "kvgate.bench.live",
        "kvgate.bench.inference_perf",
        "kvgate.bench.demo",
        "kvgate.bench.simproc",
        "kvgate.bench.delay_relay",
    }
    assert with_main - set(DELEGATED.values()) <= others
