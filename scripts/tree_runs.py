"""The before/after runs the tree-against-tree cost scripts share (``gateway_path_cost.py``,
``prompt_hash_cost.py``, ``prompt_tokenize_cost.py``): the script runs itself in a fresh process on one
tree's ``src/`` and prints its figures as JSON on its last line; each repeat runs the base tree, then
this one; ``compare`` prints the runs, the medians and the ratios."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kvgate import lifeline

HERE_SRC = Path(__file__).resolve().parent.parent / "src"


def run_in_tree(script: str, src: Path, argv: Sequence[str], timeout: float) -> dict[str, Any]:
    """``script argv`` in a fresh process on ``src`` (``PYTHONPATH``; ``PYTHONHASHSEED=0``): the JSON
    object on its last line of output."""
    out = subprocess.run(
        lifeline.die_with_parent_argv([sys.executable, script, *argv]),
        env={**os.environ, "PYTHONPATH": str(src), "PYTHONHASHSEED": "0"},
        capture_output=True,
        check=True,
        timeout=timeout,
    )
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def trees(base_src: Path) -> dict[str, Path]:
    """``base`` (``base_src``, resolved) and ``this`` (this checkout's ``src/``), in the order they run."""
    return {"base": base_src.resolve(), "this": HERE_SRC}


def alternate(
    base_src: Path, repeats: int, run: Callable[[Path], dict[str, Any]]
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """``repeats`` times, ``run`` on the base tree then on this one: (repeat from 1, tree name, figures)."""
    for rep in range(repeats):
        for name, src in trees(base_src).items():
            yield rep + 1, name, run(src)


def compare(
    base_src: Path, repeats: int, run: Callable[[Path], dict[str, Any]], *, unit: str, places: int,
    width: int, what: str,
) -> int:  # fmt: skip
    """``alternate``'s runs, each printed as its figures per ``unit`` (``places`` decimals) and its
    ``what`` digest; then each figure's median in both trees and their ratio (names ``width`` wide).
    1 (``WHAT DIFFER``) where the runs' digests differ (the trees computed different ``what``), else 0."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in trees(base_src)}
    for rep, name, r in alternate(base_src, repeats, run):
        runs[name].append(r)
        cells = "; ".join(f"{k} {v:.{places}f}" for k, v in r.items() if k != "digest")
        print(f"repeat {rep} {name:<4} us/{unit}: {cells}; {what} digest {r['digest']}", flush=True)
    print()
    for cell in (k for k in runs["this"][0] if k != "digest"):
        base, this = (statistics.median(r[cell] for r in runs[n]) for n in runs)
        print(
            f"{cell:<{width}} median base {base:8.{places}f} us/{unit}, this {this:8.{places}f}: "
            f"ratio {this / base:.3f}"
        )
    digests = {r["digest"] for rs in runs.values() for r in rs}
    if len(digests) != 1:
        print(f"{what.upper()} DIFFER: {sorted(digests)}")
        return 1
    print(f"same {what} in both trees (digest {digests.pop()})")
    return 0
