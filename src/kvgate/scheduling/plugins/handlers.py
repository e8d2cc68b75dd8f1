"""Profile handlers: which scheduling profiles run for a request."""

from __future__ import annotations

from collections.abc import Sequence

from kvgate.scheduling.framework import CycleState, ProfileHandler
from kvgate.scheduling.registry import register


@register("single-profile-handler")
class SingleProfileHandler(ProfileHandler):
    """Run the one profile (the config loader rejects several profiles with this handler)."""

    def select(self, cycle: CycleState, profiles: Sequence[str]) -> list[str]:
        return [profiles[0]]
