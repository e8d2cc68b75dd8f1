"""Fault injection for one simulated replica (set through ``POST /sim/faults``).

- ``error_rate``: that fraction of generation requests fail with ``error_status`` (500) before the first byte;
- ``slow_factor``: every engine step takes that many times longer (a slow or throttled GPU);
- ``cut_rate`` / ``cut_after_tokens``: that fraction of streams is cut mid-stream (the connection is dropped
  without a final chunk) once ``cut_after_tokens`` tokens went out; non-streaming responses are dropped too.
Crash/stop and restart are replica operations (``POST /sim/stop``, ``POST /sim/start``), not flags here.
Draws come from a seeded RNG so a test or benchmark run is repeatable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


class FaultError(ValueError):
    """An invalid fault setting (the admin endpoint answers 400)."""


# What ``Faults.clear`` resets (the rest, ``cut_after_tokens`` and ``seed``, keep their values).
_CLEARED: dict[str, Any] = {"error_rate": 0.0, "slow_factor": 1.0, "cut_rate": 0.0, "error_status": 500}


@dataclass(slots=True)
class Faults:
    error_rate: float = 0.0
    error_status: int = 500
    slow_factor: float = 1.0
    cut_rate: float = 0.0
    cut_after_tokens: int = 1
    seed: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)

    def update(self, body: dict[str, Any]) -> None:
        """Apply the given keys (others keep their values); validates everything before changing anything."""
        known = {"error_rate", "error_status", "slow_factor", "cut_rate", "cut_after_tokens", "seed"}
        unknown = set(body) - known
        if unknown:
            raise FaultError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        new = {k: body.get(k, getattr(self, k)) for k in known}
        for k in ("error_rate", "cut_rate"):
            v = new[k]
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
                raise FaultError(f"{k} must be a number in [0, 1]")
        sf = new["slow_factor"]
        if not isinstance(sf, int | float) or isinstance(sf, bool) or not 0.0 < sf <= 1000.0:
            raise FaultError("slow_factor must be a number in (0, 1000]")
        st = new["error_status"]
        if not isinstance(st, int) or isinstance(st, bool) or not 400 <= st <= 599:
            raise FaultError("error_status must be an HTTP error status (400-599)")
        for k in ("cut_after_tokens", "seed"):
            if not isinstance(new[k], int) or isinstance(new[k], bool) or new[k] < 0:
                raise FaultError(f"{k} must be a non-negative integer")
        reseed = "seed" in body
        self.error_rate = float(new["error_rate"])
        self.error_status = st
        self.slow_factor = float(sf)
        self.cut_rate = float(new["cut_rate"])
        self.cut_after_tokens = new["cut_after_tokens"]
        self.seed = new["seed"]
        if reseed:
            self._rng.seed(self.seed)

    def clear(self) -> None:
        self.update(_CLEARED)

    def apply(self, body: dict[str, Any]) -> None:
        """An admin body, as the replica's ``/sim/faults`` and the fleet's control port take it (one
        handling for both: review s17-qa L2): the fault keys of ``update``, and ``"clear": true`` to reset
        the faults first (the body's other keys then applied over the reset), validated as a whole before
        anything changes."""
        rest = {k: v for k, v in body.items() if k != "clear"}
        clear = body.get("clear", False)
        if not isinstance(clear, bool):
            raise FaultError("clear must be true or false")
        self.update({**_CLEARED, **rest} if clear else rest)

    def should_fail(self) -> bool:
        return self.error_rate > 0.0 and self._rng.random() < self.error_rate

    def should_cut(self) -> bool:
        return self.cut_rate > 0.0 and self._rng.random() < self.cut_rate

    def as_dict(self) -> dict[str, Any]:
        keys = ("error_rate", "error_status", "slow_factor", "cut_rate", "cut_after_tokens", "seed")
        return {k: getattr(self, k) for k in keys}
