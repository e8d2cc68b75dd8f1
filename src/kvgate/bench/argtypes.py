"""argparse types for the benchmarks' structured flags (policy lists, capacities per family): each value
is read when the flags are parsed, so a typo is one exit-2 line naming the flag (docs/hardening.md, the CLI
row), never a traceback after a capacity search (review qa36c F5)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kvgate.entry import comma_list, positive_number


def fleet_policy(text: str) -> str:
    """A fleet-simulator policy: a named one (``kvgate.config.policies``, the precise variants) or a path
    to an EndpointPickerConfig YAML (a tuned profile, ``fleetsim._make_director``)."""
    from kvgate.bench.precise import PRECISE_POLICIES
    from kvgate.config.policies import POLICIES

    if text in POLICIES or text in PRECISE_POLICIES or Path(text).is_file():
        return text
    known = ", ".join([*POLICIES, *PRECISE_POLICIES])
    raise argparse.ArgumentTypeError(f"unknown policy {text!r} (not a file either); known: {known}")


fleet_policies = comma_list(fleet_policy)


def family_capacities(text: str) -> dict[str, float]:
    """``a=11.77,b=10.96``: req/s > 0 per multi-turn family (``kvgate.bench.mixed.FAMILIES``)."""
    from kvgate.bench.mixed import FAMILIES

    caps: dict[str, float] = {}
    for item in text.split(","):
        name, eq, val = item.partition("=")
        if not eq or name not in FAMILIES:
            raise argparse.ArgumentTypeError(
                f"expected FAMILY=REQ_PER_S,... with FAMILY one of {', '.join(FAMILIES)}, got {item!r}"
            )
        try:
            caps[name] = positive_number(val)
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{name}: {e}") from None
    return caps
