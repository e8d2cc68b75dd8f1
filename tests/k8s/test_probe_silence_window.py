"""Review s16-k8s F3: "a watch that reads nothing (no event, no bookmark) for 60 s is probed"
(docs/kubernetes.md, CHANGELOG, reflector.py's docstring) is not what ``Reflector._probes`` does: it sleeps
fixed 60 s windows from the watch's start and probes only when a whole window saw no event. An event at
t=30 s puts the first probe at t=120 s (90 s of silence), an event just after a window starts at ~120 s of
silence; a stuck server after the last event is found up to 130 s later, not "60-70 s".

Here: one event at t=30 s, then the server stalls (watch silent, lists hang). At t=91 s the watch has read
nothing for 61 s: a probe is due (the documented rule), and by t=101 s (60 + 10 s after the last event) the
stuck server is found. Fails on main: no probe until t=120 s, ``stuck`` 0 until t=130 s.

Run:
  PYTHONPATH=/work/main/src:/work/main/tests /work/main/.venv/bin/python -m pytest -q \
      /work/team/reviews/s16-k8s-tests/test_s16k8s_probe_window.py
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import pytest

from fake_time import FakeTime
from k8s.probe_kit import advance_to, probed_reflector
from k8s.reflector_kit import until
from kvgate.k8s.apiserver import ApiServerDouble

pytestmark = pytest.mark.asyncio


def _probes(double: ApiServerDouble) -> int:
    n = 0
    for line in double.requests:
        verb, target = line.split(" ", 1)
        q = parse_qs(urlsplit(target).query)
        if verb == "GET" and q == {"limit": ["1"]}:
            n += 1
    return n


async def test_a_watch_silent_for_60_s_after_an_event_is_probed_and_a_stall_found_at_70_s() -> None:
    ft = FakeTime()
    async with ApiServerDouble(bookmark_interval=0.2) as double, probed_reflector(double, ft) as r:
        await advance_to(ft, 30.0)
        double.set_pod_status("a", ip="10.0.0.1", ready=True)
        await until(lambda: r.events == 1)  # the last event, at t=30 s
        double.stall(lists=True)
        await advance_to(ft, 91.0)  # 61 s of silence
        await asyncio.sleep(0.3)
        assert _probes(double) == 1, f"no probe after 61 s of silence (probes: {_probes(double)})"
        await advance_to(ft, 101.0)  # the probe unanswered for 10 s
        await until(lambda: r.stuck == 1, within_s=30.0)
