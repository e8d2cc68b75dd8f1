"""rev-c29 F2: ``inference_extension_prefix_indexer_size``'s collector iterates ``_PREFIX_INDEXES`` (a
WeakSet) with ``list(...)``, a Python-level iteration; since 8a072adb a reload's ``warm_pickers`` builds
the changed pickers (``parse_config`` -> ``validate`` -> a ``PrefixCacheScorer`` -> ``prefix_index``) on a
thread while the event loop serves /metrics. An add during the scrape's iteration raises
"RuntimeError: Set changed size during iteration": the scrape fails. A stress repro (probabilistic: the
switch interval is lowered to make the interleaving likely; fails on main 22c8a4f2 in every run here).
Any exception a scrape raises fails it (a /metrics scrape that raises is a failed scrape, whatever its type),
reported with its formatted traceback. It scrapes the collector itself, bounded in time: scraping the whole
registry, in a full suite's run (thousands of series), took past pytest-timeout's 120 s in CI; the timeout's
SIGALRM then raised inside a gc callback (session 34's cc4: an unraisable-exception warning) or at an
instruction without a line number (session 33's cc4: pytest's INTERNALERROR; tests/conftest.py now reports
such entries)."""

from __future__ import annotations

import sys
import threading
import time
import traceback

from kvgate.config.picker import parse_config
from kvgate.scheduling import metrics

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
    # This collector alone, not the whole registry: in a full suite's run the registry holds thousands of
    # series, and 3000 scrapes of it at a 1 us switch interval ran past pytest-timeout's 120 s in CI (its
    # SIGALRM then raised inside a gc callback: session 34's cc4 warning; session 33's cc4 INTERNALERROR).
    collector = metrics._PrefixIndexSize()
    errors: list[str] = []
    scrapes = 0
    deadline = time.monotonic() + 5.0
    try:
        while scrapes < 20_000 and time.monotonic() < deadline:
            scrapes += 1
            try:
                list(collector.collect())
            except Exception as e:  # (every kind of failed scrape is the finding)
                errors.append("".join(traceback.format_exception(e)))
    finally:
        stop.set()
        t.join(30)
        sys.setswitchinterval(old)
    assert not errors, f"{len(errors)} of {scrapes} scrapes failed; the first:\n{errors[0]}"
