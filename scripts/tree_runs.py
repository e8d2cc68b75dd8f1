"""The before/after runs the tree-against-tree cost scripts share (``gateway_path_cost.py``,
``prompt_hash_cost.py``): the script runs itself in a fresh process on one tree's ``src/`` and prints
its figures as JSON on its last line; each repeat runs the base tree, then this one."""

from __future__ import annotations

import json
import os
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
