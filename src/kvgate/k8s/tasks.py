"""Stopping background tasks: re-exported from ``kvgate.aio`` (moved there, a module importing no kvgate
package, so that every package, the data layer and the simulator too, can use it)."""

from __future__ import annotations

from kvgate.aio import (
    RECANCELS,
    STUCK_S,
    cancel_all_and_wait,
    cancel_and_wait,
    finish_shielded,
    wait_event,
)

__all__ = [
    "RECANCELS",
    "STUCK_S",
    "cancel_all_and_wait",
    "cancel_and_wait",
    "finish_shielded",
    "wait_event",
]
