"""``kvgate`` run with its main thread's CPU split by stage (``gateway_cpu.py --stages``; issue #16).

    python gateway_stages.py OUT.json <kvgate cli arguments...>

Wraps the synchronous functions of the request path (and of the background work that shares the event
loop: KV-event intake, scrapes) listed in ``STAGES`` so that each call's CPU time (``time.thread_time``,
the main thread's clock: the event loop) is charged to its stage, *exclusive* of the wrapped calls it
makes itself (a pick's tokenizing is charged to "tokenize", not to "pick"). What no wrapped call covers
(the event loop, coroutine steps, the proxy's async glue, unwrapped helpers) is "other": the main
thread's CPU minus the stages'. Calls on other threads are not wrapped (their CPU is the process total
minus the main thread's, which ``gateway_cpu.py`` prints).

Accounting starts at SIGUSR1. Each SIGUSR2 appends a snapshot (the main thread's CPU and every stage's
total so far); ``gateway_cpu.py`` sends one before and one after each request, so a request window's
CPU by stage is the difference of its two snapshots. At exit the snapshots are written to OUT.json.
A wrapper costs two ``thread_time`` calls (~0.3 us): the figures carry that, a few us per request.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import signal
import sys
import threading
import time
from typing import Any

# (stage, module, attribute path): every one a plain (synchronous) function or method.
STAGES: list[tuple[str, str, str]] = [
    ("front: read, parse head", "kvgate.httpfront.server", "FrontProtocol.data_received"),
    ("front: write", "kvgate.httpfront.server", "FrontProtocol.send"),
    ("body: JSON parse, chat render", "kvgate.gateway.proxy", "parse_body"),
    ("prepare (rest)", "kvgate.gateway.proxy", "Proxy._prepare"),
    ("pick: tokenize (cache, pieces)", "kvgate.scheduling.tokenize", "PromptTokenizer.encode"),
    ("pick: tokenize (library calls)", "kvgate.scheduling.tokenize", "_ids"),
    ("pick: block keys", "kvgate.scheduling.plugins.precise_prefix", "PrecisePrefixCacheScorer.keys_for"),
    ("pick: index match", "kvgate.datalayer.kvindex", "BlockIndex.longest_prefix"),
    ("pick: approximate prefix", "kvgate.scheduling.plugins.prefix_cache", "PrefixCacheScorer.prepare"),
    ("pick (rest)", "kvgate.requestcontrol.director", "Director.pick"),
    ("accounting", "kvgate.requestcontrol.director", "Director.on_dispatched"),
    ("accounting", "kvgate.requestcontrol.director", "Director.on_first_token"),
    ("accounting", "kvgate.requestcontrol.director", "Director.on_finished"),
    ("accounting", "kvgate.requestcontrol.director", "Director.on_usage"),
    ("upstream: read, parse", "kvgate.gateway.upstream", "_Conn.data_received"),
    ("relay: SSE", "kvgate.gateway.stream", "StreamRelay.feed"),
    ("relay: SSE", "kvgate.gateway.stream", "StreamRelay.finish"),
    ("KV events", "kvgate.datalayer.kvsubscriber", "KVEventSubscriber._drain"),
    ("KV events", "kvgate.datalayer.kvsubscriber", "KVEventSubscriber.handle"),
    ("scrapes", "kvgate.datalayer.pageclient", "_Reader.data_received"),
]

_MAIN = threading.main_thread().ident
_on = False
_totals: dict[str, float] = {}
_calls: dict[str, int] = {}
_stack: list[float] = []  # children's CPU of each open wrapped call
_snaps: list[dict[str, Any]] = []
_clock = time.thread_time


def _wrap(stage: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def w(*a: Any, **k: Any) -> Any:
        if not _on or threading.get_ident() != _MAIN:
            return fn(*a, **k)
        t0 = _clock()
        _stack.append(0.0)
        try:
            return fn(*a, **k)
        finally:
            el = _clock() - t0
            child = _stack.pop()
            _totals[stage] += el - child
            _calls[stage] += 1
            if _stack:
                _stack[-1] += el

    return w


def resolve() -> tuple[list[tuple[str, Any, str, Any]], list[str]]:
    """Every stage's (stage, owner, attribute name, function) in this tree, and the targets it lacks.
    ``SystemExit`` if a target is a coroutine function, a static or class method (not wrappable so)."""
    found, missing = [], []
    for stage, mod_name, path in STAGES:
        try:
            mod = importlib.import_module(mod_name)
            *owners, name = path.split(".")
            owner: Any = mod
            for o in owners:
                owner = getattr(owner, o)
            fn = inspect.getattr_static(owner, name)
        except (ImportError, AttributeError):
            missing.append(f"{mod_name}:{path}")
            continue
        if isinstance(fn, staticmethod | classmethod) or inspect.iscoroutinefunction(fn):
            raise SystemExit(f"gateway_stages: {mod_name}:{path} is not a plain function")
        found.append((stage, owner, name, fn))
    return found, missing


def install() -> list[str]:
    """Wrap every stage's function; returns the ones missing in this tree (not wrapped)."""
    for stage, _, _ in STAGES:
        _totals.setdefault(stage, 0.0)
        _calls.setdefault(stage, 0)
    found, missing = resolve()
    for stage, owner, name, fn in found:
        setattr(owner, name, _wrap(stage, fn))
    return missing


def _start(*_: Any) -> None:
    global _on
    _on = True
    _snap()


def _snap(*_: Any) -> None:
    _snaps.append({"main_s": _clock(), "stages": dict(_totals), "calls": dict(_calls)})


def main() -> None:
    out = sys.argv[1]
    missing = install()
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _snap)
    from kvgate.cli import main as cli

    try:
        cli(sys.argv[2:])
    finally:
        _snap()
        with open(out, "w") as f:
            json.dump({"missing": missing, "snapshots": _snaps}, f)


if __name__ == "__main__":
    main()
