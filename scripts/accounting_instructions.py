"""Instructions a request through the gateway's own code, per tree: a count, not a time (other work on the
machine moves it only through the loop's clock, which the run reads: about 1 % run to run).

    PYTHONPATH=src python scripts/accounting_instructions.py --src <tree>/src [--src <other>/src ...]

Each tree runs ``scripts/accounting_digest.py metrics`` (this checkout's copy, the same for every tree:
the in-memory gateway of ``_costkit``, every 37th upstream answer a 500 and its retry) under
``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``, once with ``--requests`` ``--short`` and once
with ``--long``; the difference of the two totals (``Ir``: instructions executed) over the difference in
requests is the per-request cost with the process's start-up and imports cancelled out. Needs valgrind
(3.19 gave the figures in docs/benchmarks/gateway.md). The digest script also hashes each answer (sha256,
a regex) and renders ``/metrics`` once, so these figures carry some fixed per-request work of its own:
compare trees, not against other harnesses' figures. A run takes minutes (callgrind runs Python ~50x
slower); ``--jobs`` runs that many at once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kvgate import lifeline

SCRIPTS = Path(__file__).resolve().parent


def instructions(src: str, requests: int, policy: str) -> int:
    """Callgrind's total instruction count for one ``accounting_digest.py metrics`` process."""
    with tempfile.TemporaryDirectory(prefix="kvgate-callgrind-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONPATH=f"{src}{os.pathsep}{SCRIPTS}")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(SCRIPTS / "accounting_digest.py"),
            "metrics",
            "--requests",
            str(requests),
            "--policy",
            policy,
        ]
        subprocess.run(
            lifeline.die_with_parent_argv(cmd, waited=True),
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for line in Path(out).read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no total in callgrind's output for {src}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", action="append", required=True, help="a tree's src (repeat for each tree)")
    ap.add_argument("--short", type=int, default=1000, help="requests in the shorter run")
    ap.add_argument("--long", type=int, default=3000, help="requests in the longer run")
    ap.add_argument("--policy", default="kvgate")
    ap.add_argument("--jobs", type=int, default=2, help="callgrind processes at once")
    args = ap.parse_args()
    runs = [(src, n) for src in args.src for n in (args.short, args.long)]
    with ThreadPoolExecutor(args.jobs) as pool:
        totals = list(pool.map(lambda r: instructions(r[0], r[1], args.policy), runs))
    base = None
    for i, src in enumerate(args.src):
        short, long = totals[2 * i], totals[2 * i + 1]
        per = (long - short) / (args.long - args.short)
        base = per if base is None else base
        print(
            f"{src}: {short:,} / {long:,} instructions ({args.short} / {args.long} requests, "
            f"policy {args.policy}): {per:,.0f} a request, {per / base:.3f}x the first tree"
        )


if __name__ == "__main__":
    main()
