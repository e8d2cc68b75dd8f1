"""Where a benchmark writes its figures when no ``--out`` is given, and the line saying where it wrote.

The published figures live in the tracked ``docs/benchmarks/``. Every bench used to default to it, so a
run without ``--out`` from the repository root (any tuning run) overwrote them. The default is now the
git-ignored ``results/<bench>/`` (``results/`` in .gitignore, at any depth: a run from a subfolder writes
``<subfolder>/results/``); ``--out docs/benchmarks`` publishes.
Standard library only: ``kvgate bench``'s command line imports it before any benchmark.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

RESULTS = Path("results")  # git-ignored
PUBLISHED = Path("docs/benchmarks")  # tracked: pass --out docs/benchmarks to publish


def default_out(bench: str) -> Path:
    """The folder a bench writes to without ``--out``: ``results/<bench>``."""
    return RESULTS / bench


def out_help(bench: str, files: str) -> str:
    return f"folder for {files} (default {default_out(bench)}, git-ignored; {PUBLISHED} to publish)"


def add_out(p: argparse.ArgumentParser, bench: str, files: str) -> None:
    """``--out`` (a Path), by default ``results/<bench>``."""
    p.add_argument("--out", type=Path, default=default_out(bench), help=out_help(bench, files))


def wrote(*paths: Path | str, file: TextIO | None = None) -> None:
    """Print where a run wrote (after its figures)."""
    print("wrote " + ", ".join(str(p) for p in paths), file=file or sys.stdout, flush=True)
