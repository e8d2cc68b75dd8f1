"""Filters that need no prefix data: the conformance tests' header-based filter, llm-d's role filters."""

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


# llm-d's P/D role label on a pod and its values (llm-d-router's filter/bylabel/roles.go); "both" is the
# deprecated alias of "prefill-decode", still kept by both filters there.
ROLE_LABEL = "llm-d.ai/role"
DECODE_ROLES = frozenset({"decode", "prefill-decode", "both", "encode-prefill-decode"})
PREFILL_ROLES = frozenset({"prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"})


class _RoleFilter(Filter):
    """Keep endpoints whose ``llm-d.ai/role`` label is one of ``roles`` (or, with ``unlabelled``, that have
    none). As the reference, no parameters; an endpoint's labels are its pod's (Kubernetes discovery)."""

    roles: frozenset[str] = frozenset()
    unlabelled = False

    def filter(self, cycle: CycleState, endpoints: list[Endpoint]) -> list[Endpoint]:
        out = []
        for ep in endpoints:
            role = ep.labels.get(ROLE_LABEL)
            if role in self.roles or (role is None and self.unlabelled):
                out.append(ep)
        return out


@register("decode-filter")
class DecodeFilter(_RoleFilter):
    """llm-d's ``decode-filter``: endpoints labelled decode, prefill-decode, both or encode-prefill-decode,
    or not labelled (a pool without P/D)."""

    roles = DECODE_ROLES
    unlabelled = True


@register("prefill-filter")
class PrefillFilter(_RoleFilter):
    """llm-d's ``prefill-filter``: endpoints labelled prefill, encode-prefill, prefill-decode, both or
    encode-prefill-decode (not unlabelled ones)."""

    roles = PREFILL_ROLES
