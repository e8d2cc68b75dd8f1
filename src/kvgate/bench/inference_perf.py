"""Compatibility run: kubernetes-sigs ``inference-perf`` against kvgate in front of a simulated fleet.

inference-perf needs Python >= 3.12 (kvgate supports 3.11), so it gets its own cached venv built from
a 3.12 interpreter found on this machine (``python3.12`` on PATH or a pyenv version). It loads the
simulator's tokenizer directory (``HF_HUB_OFFLINE=1``: nothing is downloaded) and runs its own
``shared_prefix`` data generator with a Poisson ladder, as the reference's prefix-cache benchmarks do.
Its ``summary_lifecycle_metrics.json`` is summarised into ``inference-perf.{json,md}`` under ``--out``
(by default the git-ignored ``results/inference-perf``; ``--out docs/benchmarks`` publishes).

Usage: ``kvgate bench inference-perf [--quick]`` or ``python -m kvgate.bench.inference_perf``.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import yaml

from kvgate import lifeline
from kvgate.bench import live, procs, report
from kvgate.bench.outdir import add_out, wrote
from kvgate.entry import ArgumentParser

VERSION = "0.7.0"


def venv_dir() -> Path:
    from kvgate.sim.tokenizer import cache_root

    return cache_root() / "inference-perf-venv"


def find_python312() -> str | None:
    for cand in ("python3.12", "python3.13"):
        path = shutil.which(cand)
        if path and _works(path):
            return path
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for pattern in (f"{pyenv}/versions/3.12*/bin/python3", f"{pyenv}/versions/3.13*/bin/python3"):
        for path in sorted(glob.glob(pattern)):
            if _works(path):
                return path
    return None


def _works(python: str) -> bool:
    # (``waited``, as in ``ensure_installed``: ``_run`` calls them in a worker thread, ``asyncio.to_thread``)
    try:
        out = subprocess.run(
            lifeline.die_with_parent_argv(
                [python, "-c", "import sys; print(sys.version_info >= (3, 12))"], waited=True
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "True"


def ensure_installed() -> Path:
    """The ``inference-perf`` executable, installing ``inference-perf==VERSION`` on first use."""
    venv = venv_dir()
    exe = venv / "bin" / "inference-perf"
    marker = venv / f".installed-{VERSION}"
    if marker.exists() and exe.exists():
        return exe
    python = find_python312()
    if python is None:
        raise RuntimeError("inference-perf needs Python >= 3.12 and none was found (python3.12, pyenv)")
    shutil.rmtree(venv, ignore_errors=True)
    try:
        subprocess.run(
            lifeline.die_with_parent_argv([python, "-m", "venv", str(venv)], waited=True),
            check=True,
            timeout=300,
        )
        subprocess.run(
            lifeline.die_with_parent_argv(
                [str(venv / "bin" / "pip"), "install", "-q", f"inference-perf=={VERSION}"], waited=True
            ),
            check=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as e:
        shutil.rmtree(venv, ignore_errors=True)  # never leave a half-built venv that looks usable
        raise RuntimeError(f"installing inference-perf=={VERSION} failed: {e}") from e
    marker.touch()
    return exe


def make_config(base_url: str, tokenizer: Path, out_dir: Path, quick: bool) -> dict[str, Any]:
    stages = [{"rate": 4, "duration": 20}, {"rate": 8, "duration": 20}]
    if not quick:
        stages = [{"rate": r, "duration": 40} for r in (4, 8, 12, 16)]
    return {
        "api": {"type": "completion", "streaming": True},
        "server": {"type": "vllm", "model_name": live.MODEL, "base_url": base_url, "ignore_eos": True},
        "tokenizer": {"pretrained_model_name_or_path": str(tokenizer)},
        "load": {"type": "poisson", "stages": stages, "num_workers": 1},
        "data": {
            "type": "shared_prefix",
            "shared_prefix": {
                "num_groups": 16,
                "num_prompts_per_group": 16,
                "system_prompt_len": 1024,
                "question_len": 128,
                "output_len": 64,
            },
        },
        "storage": {"local_storage": {"path": str(out_dir)}},
    }


async def _run(out: Path, quick: bool, seed: int) -> dict[str, Any]:
    from kvgate.sim.tokenizer import tokenizer_dir

    exe = await asyncio.to_thread(ensure_installed)
    tok = tokenizer_dir()
    spec = live.FleetSpec(replicas=4, time_scale=1.0)
    sim, urls = await live.start_sim(spec)
    gw: procs.Proc | None = None
    try:
        gw, base = await live.start_kvgate("kvgate", urls)
        with tempfile.TemporaryDirectory(prefix="kvgate-ip-") as tmpd:
            work = Path(tmpd)
            cfg = make_config(base, tok, work / "reports", quick)
            (work / "config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
            cmd = [str(exe), "-c", str(work / "config.yml")]
            p, _ = await procs.start("inference-perf", cmd, None, env=env)
            try:
                rc = await procs.exit_code(p, 300.0 if quick else 900.0)
            finally:
                await p.stop()
            log_tail = p.tail(40)
            summaries = sorted((work / "reports").rglob("summary_lifecycle_metrics.json"))
            stages = sorted((work / "reports").rglob("stage_*_lifecycle_metrics.json"))
            if not summaries:
                raise RuntimeError(f"inference-perf wrote no summary (rc {rc}); last output:\n{log_tail}")
            summary = orjson.loads(summaries[0].read_bytes())
            stage_data = {s.name: orjson.loads(s.read_bytes()) for s in stages}
    finally:
        if gw is not None:
            await gw.stop()
        await sim.stop()
    return {"config": cfg, "summary": summary, "stages": stage_data, "seed": seed}


def run(out: Path, quick: bool = False, seed: int = 0) -> int:
    try:
        result = asyncio.run(_run(out, quick, seed))
    except RuntimeError as e:
        print(f"inference-perf: {e}", file=sys.stderr)
        report.write_json(out / "inference-perf-error.json", {"error": str(e)})
        return 1
    report.write_json(out / "inference-perf.json", result)
    (out / "inference-perf.md").write_text(summarise(result))
    print(summarise(result))
    wrote(out / "inference-perf.json", out / "inference-perf.md")
    return 0


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def summarise(result: dict[str, Any]) -> str:
    """A markdown table of inference-perf's own per-stage figures (its names, its units)."""
    lines = [
        "| stage | rate (QPS) | requests | TTFT p50 ms | TTFT p90 ms | ITL p50 ms | out tok/s | failures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    stages = result["config"]["load"]["stages"]
    for i, st in enumerate(stages):
        s = result["stages"].get(f"stage_{i}_lifecycle_metrics.json", {})
        succ = _get(s, "successes") or {}
        lat = _get(succ, "latency") or {}

        def ms(metric: str, q: str, _lat: dict[str, Any] = lat) -> str:
            v = _get(_lat, metric, q)
            return f"{v * 1000:.0f}" if isinstance(v, (int, float)) else "-"

        tput = _get(succ, "throughput", "output_tokens_per_sec")
        lines.append(
            f"| {i} | {st['rate']} | {_get(succ, 'count') or '-'} | {ms('time_to_first_token', 'median')} | "
            f"{ms('time_to_first_token', 'p90')} | {ms('inter_token_latency', 'median')} | "
            f"{tput:.0f} | {_get(s, 'failures', 'count') or 0} |"
            if isinstance(tput, (int, float))
            else f"| {i} | {st['rate']} | - | - | - | - | - | - |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m kvgate.bench.inference_perf [--out DIR] [--quick] [--seed N]``, as ``kvgate bench`` runs
    it. ``--out`` like every other bench; a bare folder (``... inference_perf DIR``, the older form) still
    works but is not advertised."""
    doc = (__doc__ or "").splitlines()[0]
    p = ArgumentParser(prog="python -m kvgate.bench.inference_perf", description=doc)
    add_out(p, "inference-perf", "inference-perf.json/.md")
    p.add_argument("legacy_out", nargs="?", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return run(args.legacy_out if args.legacy_out is not None else args.out, args.quick, args.seed)


if __name__ == "__main__":
    from kvgate.bench import reaper

    reaper.install()  # (python -m: its children end with it, as under kvgate bench)
    sys.exit(main())
