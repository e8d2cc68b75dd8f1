"""rev-c29 F2: ``inference_extension_prefix_indexer_size``'s collector iterates ``_PREFIX_INDEXES`` (a
WeakSet) with ``list(...)``, a Python-level iteration; since 8a072adb a reload's ``warm_pickers`` builds
the changed pickers (``parse_config`` -> ``validate`` -> a ``PrefixCacheScorer`` -> ``prefix_index``) on a
thread while the event loop serves /metrics. An add during the scrape's iteration raises
"RuntimeError: Set changed size during iteration": the scrape fails. A stress repro (probabilistic: the
switch interval is lowered to make the interleaving likely; fails on main 22c8a4f2 in every run here).
Any exception a scrape raises fails it (a /metrics scrape that raises is a failed scrape, whatever its type),
reported with its formatted traceback: by collection order, this test is the one that ended session 33's
cc4 with an error pytest could not format (a traceback entry without a line number; tests/conftest.py now
reports such entries)."""

from __future__ import annotations

import sys
import threading
import traceback

from prometheus_client import REGISTRY

from kvgate.config.picker import parse_config

NAME = "inference_extension_prefix_indexer_size"
CFG = {
    "plugins": [{"type": "prefix-cache-scorer"}],
    "schedulingProfiles": [{"name": "default", "plugins": [{"pluginRef": "prefix-cache-scorer"}]}],
}


def test_a_scrape_during_a_reloads_threaded_check_does_not_fail() -> None:
    stop = threading.Event()

    def warm() -> None:  # (what warm_pickers does on its thread, over and over)
        while not stop.is_set():
            parse_config(CFG, announce=False)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    t = threading.Thread(target=warm, daemon=True)
    t.start()
    errors: list[str] = []
    try:
        for _ in range(3000):
            try:
                REGISTRY.get_sample_value(NAME)
            except Exception as e:  # (every kind of failed scrape is the finding)
                errors.append("".join(traceback.format_exception(e)))
    finally:
        stop.set()
        t.join(30)
        sys.setswitchinterval(old)
    assert not errors, f"{len(errors)} scrapes failed; the first:\n{errors[0]}"
