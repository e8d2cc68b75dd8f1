"""The before/after runs the tree-against-tree cost scripts share (``gateway_path_cost.py``,
``prompt_hash_cost.py``, ``prompt_tokenize_cost.py``, ``parse_body_cost.py``, ``sse_scanner_cost.py``,
``usage_scanner_cost.py``): the script runs itself in a fresh process on one tree's ``src/`` and prints
its figures as JSON on its last line; each repeat runs the base tree, then this one; ``compare`` prints
the runs, the medians and the ratios."""

from __future__ import annotations

import argparse
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


def add_rounds_repeats(p: argparse.ArgumentParser, rounds: str = "rounds") -> None:
    """``--rounds`` (5; its help names them ``rounds``) and ``--repeats`` (3), as every such script
    takes them."""
    p.add_argument("--rounds", type=int, default=5, help=f"{rounds} per process (its fastest counts)")
    p.add_argument("--repeats", type=int, default=3, help="processes per tree, alternating")


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


def compare_runs(
    script: str, argv: Sequence[str], timeout: float, base_src: Path, repeats: int, *, unit: str,
    places: int, width: int, what: str,
) -> int:  # fmt: skip
    """``compare`` of ``script argv`` run by ``run_in_tree`` (``timeout`` seconds) in each tree."""
    return compare(
        base_src, repeats, lambda src: run_in_tree(script, src, argv, timeout),
        unit=unit, places=places, width=width, what=what,
    )  # fmt: skip


def requests_rounds_main(
    script: str, doc: str, measure: Callable[[int, int], dict[str, Any]], *, per: str, unit: str,
    places: int, width: int, what: str,
) -> int:  # fmt: skip
    """The ``main`` of a script whose figures are ``measure(requests, rounds)``: run as ``--_measure
    REQUESTS ROUNDS`` it prints them as JSON; else it takes ``--base-src``, ``--requests`` (``per`` per
    round; ``doc``'s first line describes the script), ``--rounds`` and ``--repeats``, and
    ``compare_runs`` itself (``unit``, ``places``, ``width``, ``what``: as ``compare`` prints them)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--_measure":
        print(json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]))))
        return 0
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--base-src", type=Path, required=True, help="the other tree's src/ (the baseline)")
    p.add_argument("--requests", type=int, default=2000, help=f"{per} per round")
    add_rounds_repeats(p)
    args = p.parse_args()
    argv = ["--_measure", str(args.requests), str(args.rounds)]
    return compare_runs(
        script, argv, 900, args.base_src, args.repeats, unit=unit, places=places, width=width, what=what
    )
