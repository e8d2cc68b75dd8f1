"""The rules behind the ``--workers`` supervisor's ``/healthz``, ``/readyz`` and restart backoff
(``kvgate.gateway.worker_health``), pure: the process tests are ``test_workers_health.py``."""

from __future__ import annotations

import pytest

from kvgate.gateway import worker_health


@pytest.mark.parametrize(
    "streak, served, delay",
    [(0, 0.0, 0.0), (1, 5.0, 1.0), (2, 0.0, 2.0), (3, 59.9, 4.0), (7, 0.0, 60.0), (40, 0.0, 60.0),
     (9, 60.0, 0.0)],
)  # fmt: skip
def test_restart_backoff_schedule(streak: int, served: float, delay: float) -> None:
    """The first restart of a slot at once, then 1 s doubling to 60 s while its workers end before
    serving 60 s; one that served 60 s starts the count again."""
    assert worker_health.restart_delay(worker_health.next_streak(streak, served)) == delay


def test_readyz_tells_busy_from_wedged_by_the_heartbeat() -> None:
    """No answer within the bound: busy (heartbeat within the wedge bound) counts as its last answer,
    wedged as not ready; the text names both."""
    slots = [
        worker_health.Slot(0, 10, True, True, beat_age=0.1),
        worker_health.Slot(1, 11, True, True, beat_age=4.0),
        worker_health.Slot(2, 12, True, True, beat_age=11.0),
        worker_health.Slot(
            3, None, False, False, beat_age=30.0, restart_in=2.0, why="exit code 1 after 3.0s"
        ),
    ]
    assert worker_health.asked(slots, 10.0) == [True, True, False, False]
    status, text = worker_health.readyz(slots, [200, None, None, None], [True, True, True, True], 10.0, 2)
    assert status == 200 and text.splitlines()[0] == "ready (2/4 workers)", text
    assert "worker 1 (pid 11) busy: no answer in time" in text
    assert "worker 2 (pid 12) wedged: no heartbeat for 11.0s (bound 10s)" in text
    assert "worker 3 restarting in 2.0s (after: exit code 1 after 3.0s)" in text
    status, text = worker_health.readyz(slots, [200, None, None, None], [True, True, True, True], 10.0, 3)
    assert status == 503 and text.splitlines()[0] == "2/4 workers ready, 3 needed", text
