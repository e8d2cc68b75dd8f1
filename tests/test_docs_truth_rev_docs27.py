"""Review s27-rev-docs27 F1, F5, F6 (its tests; F2-F4 were one-off wording checks, fixed in the docs):
the CHANGELOG's [Unreleased] sections each start after a blank line (union merges glued four);
docs/kubernetes.md names the timeout `.ci/run` gives the real API-server suite; `kvgate epp`'s refusal of
a Kubernetes flag where no InferencePool is watched says why, not "(--pool-name)" when that is given. All
fail on main 13dea945.

Runnable as is: `PYTHONPATH=<repo>/src python -m pytest -q <this file>`; the repo is found from kvgate's
own path (<repo>/src/kvgate). No ports, no timing: text checks and one refused start (exit 2 before any bind).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import kvgate

REPO = Path(kvgate.__file__).resolve().parents[2]


def _read(rel: str) -> str:
    return (REPO / rel).read_text(encoding="utf-8")


def _unreleased() -> list[str]:
    lines = _read("CHANGELOG.md").splitlines()
    start = lines.index("## [Unreleased]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def test_f1_every_changelog_section_has_a_blank_line_before_its_heading():
    lines = _unreleased()
    glued = [
        f"{i}: {lines[i][:70]}"
        for i in range(1, len(lines))
        if lines[i].startswith("### ") and lines[i - 1].strip()
    ]
    assert not glued, "### headings glued to the previous section (union merges):\n" + "\n".join(glued)


def test_f5_kubernetes_md_names_ci_runs_timeout():
    ci = _read(".ci/run")
    m = re.search(r"timeout (\d+) make test-k8s-real", ci)
    assert m, ci
    doc = _read("docs/kubernetes.md")
    said = re.findall(r"runs it after `make test-k8s-e2e` under `timeout (\d+)`", doc)
    assert said == [m.group(1)], (said, m.group(1))


def test_f6_pool_group_refusal_gives_the_reason_that_holds():
    # --pool-name IS given: the refusal must not tell the user to give it (as --pool-namespace's says why)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvgate.cli",
            "epp",
            "--endpoints",
            "127.0.0.1:1",
            "--pool-name",
            "n",
            "--pool-group",
            "inference.networking.k8s.io",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 2, p.stderr
    line = next(ln for ln in p.stderr.splitlines() if ln.startswith("kvgate epp: --pool-group"))
    assert "(--pool-name)" not in line, line
