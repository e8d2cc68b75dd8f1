"""Review s17-qa L5: ``kvgate_gateway_client_timeouts_total`` and ``kvgate_gateway_connections_refused_total``
(and ``--clusters``' ``kvgate_multicluster_*`` pair) were exposed as ``# TYPE ... gauge``: ``promtool check
metrics`` says "non-counter metrics should not have _total suffix", and recording rules that check types
refuse them. Now counters, the exposed names unchanged, read from the fronts at scrape time; the
``--workers`` supervisor's merge keeps them counters."""

from __future__ import annotations

from collections import Counter as Tally
from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest

from kvgate.gateway.metrics import GatewayMetrics
from kvgate.gateway.workers import merge_metrics
from kvgate.multicluster.serve import _Metrics


def _front(header: int, send: int, refused: int) -> Any:
    return SimpleNamespace(timed_out=Tally(header=header, send=send), refused=refused, connections={1, 2})


def test_front_counts_are_counters_with_their_names() -> None:
    for metrics, prefix in ((GatewayMetrics(), "kvgate_gateway"), (_Metrics(), "kvgate_multicluster")):
        text = generate_latest(metrics.registry).decode()
        assert f"# TYPE {prefix}_connections_refused_total counter" in text, text
        assert f"{prefix}_connections_refused_total 0.0" in text  # before any front
        fronts = [_front(1, 2, 3), _front(4, 0, 1)]
        metrics.front.track(lambda fronts=fronts: fronts)
        text = generate_latest(metrics.registry).decode()
        assert f"# TYPE {prefix}_client_timeouts_total counter" in text, text
        assert f"# TYPE {prefix}_connections_refused_total counter" in text, text
        assert f'{prefix}_client_timeouts_total{{kind="header"}} 5.0' in text
        assert f'{prefix}_client_timeouts_total{{kind="body"}} 0.0' in text
        assert f'{prefix}_client_timeouts_total{{kind="send"}} 2.0' in text
        assert f"{prefix}_connections_refused_total 4.0" in text
        assert f"{prefix}_client_connections 4.0" in text
        assert "gauge" not in "".join(line for line in text.splitlines() if "_total" in line)
        merged = merge_metrics([text, text]).decode()  # the --workers supervisor's /metrics
        assert f"# TYPE {prefix}_client_timeouts_total counter" in merged
        assert f'{prefix}_connections_refused_total{{worker="1"}} 4.0' in merged
