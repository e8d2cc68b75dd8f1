"""rev-e35 F3: committedKv keeps requests that failed before their first token for a resend without a
new pick; at most ``MAX_PARKED`` (256, the newest) of them, their keys 8 bytes each. Before, up to 4,096
were kept as Python lists (~46 MiB at 256 keys each, per worker)."""

from __future__ import annotations

from kvgate.scheduling.plugins import kv_commit
from kvgate.scheduling.plugins.kv_commit import KVCommitLedger


def test_parked_requests_are_few_and_compact() -> None:
    led = KVCommitLedger()
    n = 300
    for i in range(n):
        keys = [i * 1000 + k for k in range(256)]
        led.picked(f"r{i}", "a", keys, 16.0, 5.0, 10.0)
        led.finished(f"r{i}", 1.0, ok=False)  # (no first token: parked)
    parked = led._parked
    assert len(parked) == kv_commit.MAX_PARKED == 256
    assert all(r.keys.itemsize == 8 for r in parked.values())  # type: ignore[attr-defined]
    assert led.peak("a", 0.0) == 0.0
    # The oldest parked is forgotten; the newest, resent without a pick, is counted again where it runs.
    led.first_token("r0", 2.0, "b")
    assert led.peak("b", 2.0) == 0.0
    led.first_token(f"r{n - 1}", 2.0, "b")
    assert led.peak("b", 2.0) == 256 * 16.0 + 5.0 + 10.0
    led.finished(f"r{n - 1}", 3.0)
    assert len(led) == 0 and led.peak("b", 3.0) == 0.0
