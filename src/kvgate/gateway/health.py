"""``kvgate serve``'s passive health: the data layer's (``kvgate.datalayer.ejection``), which ``kvgate
epp`` shares (review s30-qa30 Q2)."""

from kvgate.datalayer.ejection import PRUNE_MIN, HealthTracker

__all__ = ["PRUNE_MIN", "HealthTracker"]
