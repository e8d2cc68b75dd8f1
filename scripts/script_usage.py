"""The usage check the positional-argument scripts share (``knee_checks.py``, ``cold_bursts.py``,
``burst_oracles.py``, ``cold_spread_trace.py``, ``rollout_oracle.py``, ``best_of_policies.py``,
``luck_band.py``, ``pick_divergence.py``, ``tie_reseed.py``, ``session_moves.py``,
``burst_survival.py``, ``cold_work_homes.py``): they take bare arguments, so argparse would change their
documented usage."""

from __future__ import annotations

import sys


def usage_or_exit(doc: str | None, least: int) -> None:
    """``-h`` / ``--help``: the usage (the script's docstring) on stdout, exit 0; fewer than ``least``
    arguments: on stderr, exit 2."""
    asked = len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help")
    if asked or len(sys.argv) - 1 < least:
        print(doc, file=sys.stdout if asked else sys.stderr)
        sys.exit(0 if asked else 2)
