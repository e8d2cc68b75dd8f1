"""The reference EPP's own flags that ``kvgate epp`` accepts and ignores (qa24 F3).

A Deployment written for the reference EPP (gateway-api-inference-extension ``pkg/epp/server/options.go``,
plus its controller-runtime zap flags ``--zap-*`` and the older ``--destination-endpoint-hint-*``; checked
against options.go at commit 0e82c621, review s24-rev-fixqa24 R3) carries
these; they must not stop a drop-in replacement, so each is logged once and ignored. Anything else that is
not a kvgate epp option is refused (exit 2, naming it): a misspelt kvgate option (``--plaintxt``) must not
start a server the operator did not ask for.
"""

from __future__ import annotations

import argparse
import math
import re

# (those the reference shares with kvgate, ``--grpc-port``, ``--pool-name``, ``--pool-group``, ... are
# kvgate options: ``--pool-group`` was ignored here before qa26 F8, so kvgate watched the v1 group, and
# ``--engine-label-key`` before qa33a F6, so a pod labelled only with that key was scraped as vLLM)
REFERENCE_ONLY = frozenset(
    {
        "-v",
        "--v",
        "--endpoint-selector",
        "--endpoint-target-ports",
        "--disable-endpoint-subset-filter",
        # (``--model-server-metrics-*``, ``--refresh-metrics-interval`` and ``--metrics-staleness-threshold``
        # are kvgate epp options since qa36a F6: kvgate has each setting, so ignoring them scraped the
        # wrong port)
        "--refresh-prometheus-metrics-interval",
        "--total-queued-requests-metric",
        "--total-running-requests-metric",
        "--kv-cache-usage-percentage-metric",
        "--lora-info-metric",
        "--cache-info-metric",
        "--tracing",
        "--health-checking",
        "--enable-pprof",
        "--enable-cert-reload",
        "--metrics-endpoint-auth",
        "--custom-parser",
        "--destination-endpoint-hint-metadata-namespace",
        "--destination-endpoint-hint-key",
        # (multi-engine metric collection: review s24-rev-fixqa24 R3)
        "--enable-multi-engine",
    }
)


def _reference(flag: str) -> bool:
    # ``-v`` is a pflag shorthand there (``IntVarP("v", "v", ...)``): ``-v3`` is ``-v=3`` (R3)
    return (
        flag in REFERENCE_ONLY or flag.startswith("--zap-") or (flag.startswith("-v") and flag[2:].isdigit())
    )


def split_unknown(unknown: list[str]) -> tuple[list[str], list[str]]:
    """``parse_known_args``'s leftovers -> (reference flags to ignore, with their values; the refused).

    A bare word is taken as the value of the reference flag just before it (``--v 3``); any other bare
    word, and any option that is not a reference flag, is refused."""
    ignored: list[str] = []
    refused: list[str] = []
    value_ok = False  # the previous word was a reference flag without ``=value``
    for word in unknown:
        if word.startswith("-") and len(word) > 1:
            name, eq, _ = word.partition("=")
            if _reference(name):
                ignored.append(word)
                value_ok = not eq
                continue
            refused.append(word)
        elif value_ok:
            ignored.append(word)
        else:
            refused.append(word)
        value_ok = False
    return ignored, refused


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"([0-9]*\.?[0-9]+|[0-9]+\.)(ns|us|µs|μs|ms|s|m|h)")


def go_duration(text: str) -> float:
    """An argparse type for the reference's ``DurationVar`` flags: Go's ``time.ParseDuration`` spelling
    (``50ms``, ``2s``, ``1m30s``; ``0`` alone needs no unit), as seconds > 0 and finite (qa36a F6)."""
    t = text.strip()
    body = t[1:] if t[:1] in "+-" else t
    total = 0.0
    if body != "0":
        pos = 0
        for m in _GO_PART.finditer(body):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _GO_UNITS[m.group(2)]
            pos = m.end()
        if not body or pos != len(body):
            raise argparse.ArgumentTypeError(f"expected a duration like 50ms, 2s or 1m30s, got {text!r}")
    if t.startswith("-"):
        total = -total
    if not 0 < total < math.inf:
        raise argparse.ArgumentTypeError(f"must be a duration > 0, got {text!r}")
    return total
