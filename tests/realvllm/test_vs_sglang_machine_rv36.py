"""``scripts/realvllm/vs_sglang.py``'s whole-machine CPU records (rv36): no vLLM needed."""

from __future__ import annotations

import math
import time

from realvllm.test_vs_sglang_target import _script

STAT = "cpu  1000 50 300 5000 20 7 3 2 40 0\ncpu0 500 25 150 2500 10 3 1 1 20 0\nintr 123 4 5\n"
PSI = "some avg10=1.00 avg60=0.50 avg300=0.10 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


def test_busy_idle_and_pressure_from_the_machines_counters() -> None:
    vs = _script()
    tick = 1000 / vs._TICK  # ms a USER_HZ tick
    busy, idle, psi = vs.machine_cpu(STAT, PSI)
    # user + nice + system + irq + softirq + steal (guest is inside user); idle + iowait.
    assert busy == (1000 + 50 + 300 + 7 + 3 + 2) * tick
    assert idle == (5000 + 20) * tick
    assert psi == 2500.0  # "some" total, us -> ms ("full" is not read)
    assert math.isnan(vs.machine_cpu(STAT, None)[2])


def test_the_live_counters_cover_the_wall_time_on_every_cpu() -> None:
    """Busy + idle over an interval is the interval times the CPUs (in 10 ms ticks): 0.2 s of wall on
    at least one CPU is at least 100 ms, whatever else runs."""
    vs = _script()
    a = vs.machine_now()
    time.sleep(0.2)  # (the interval measured, not a wait for some state)
    b = vs.machine_now()
    assert b[0] >= a[0] and b[1] >= a[1]
    assert (b[0] - a[0]) + (b[1] - a[1]) >= 100
