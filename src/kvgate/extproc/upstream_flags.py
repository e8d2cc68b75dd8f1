"""The reference EPP's own flags that ``kvgate epp`` accepts and ignores (qa24 F3).

A Deployment written for the reference EPP (gateway-api-inference-extension ``pkg/epp/server/options.go``,
plus its controller-runtime zap flags ``--zap-*`` and the older ``--destination-endpoint-hint-*``; checked
against options.go at commit 0e82c621, review s24-rev-fixqa24 R3) carries
these; they must not stop a drop-in replacement, so each is logged once and ignored. Anything else that is
not a kvgate epp option is refused (exit 2, naming it): a misspelt kvgate option (``--plaintxt``) must not
start a server the operator did not ask for.
"""

from __future__ import annotations

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
        "--model-server-metrics-scheme",
        "--model-server-metrics-path",
        "--model-server-metrics-port",
        "--model-server-metrics-https-insecure-skip-verify",
        "--refresh-metrics-interval",
        "--refresh-prometheus-metrics-interval",
        "--metrics-staleness-threshold",
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
