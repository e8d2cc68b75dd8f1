"""Filters that do not need prefix data: the conformance suite's header-based testing filter."""

from __future__ import annotations

from kvgate.datalayer.endpoint import Endpoint
from kvgate.scheduling.framework import CycleState, Filter
from kvgate.scheduling.registry import register

TEST_HEADER = "test-epp-endpoint-selection"


def _host(address: str) -> str:
    if address.startswith("["):  # [v6]:port
        return address[1 : address.find("]")]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


@register("header-based-testing-filter")
class HeaderBasedTestingFilter(Filter):
    """Keep only endpoints named in ``test-epp-endpoint-selection`` (IP or IP:port, comma separated),
    in the header's order; without the header, keep all. Used by the GIE conformance tests."""

    def filter(self, cycle: CycleState, endpoints: list[Endpoint]) -> list[Endpoint]:
        raw = cycle.request.headers.get(TEST_HEADER)
        if raw is None:
            return endpoints
        wanted = [w.strip() for w in raw.replace(" ", ",").split(",") if w.strip()]
        out: list[Endpoint] = []
        for w in wanted:
            for ep in endpoints:
                if ep not in out and (ep.address == w or _host(ep.address) == _host(w) == w):
                    out.append(ep)
        return out
