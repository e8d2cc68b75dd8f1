"""The hub EPP's cluster gateways given as host names, resolved to ``ip:port`` off the hot path.

Envoy routes on ``x-gateway-destination-endpoint`` to IP addresses only: the ``ORIGINAL_DST`` cluster
parses the value as one ``ip:port`` (``parseInternetAddressAndPortNoThrow``), the Override Host policy
matches it against its cluster's endpoint addresses. A ``gateway: gw.east.example:8080`` named as written is
routed by neither (503), so the hub names the address its name resolves to. A cloud load balancer's
gateway is often a name only (its addresses change), so names are taken and kept resolved, not refused.

Each name is looked up at the feed's start (bounded: ``RESOLVE_TIMEOUT_S``, all names at once) and again
every ``RESOLVE_EVERY_S``, on the hub probe's lookups (``hub._lookup``: bounded threads, answers kept
``LOOKUP_TTL_S``); a pick only reads the store. A name not resolved yet leaves its cluster out of the picks
(nothing routable to name); one that stops resolving keeps its last address (a name server's outage does
not take a live cluster away; the hub's probes and charges judge the address itself). Both are logged once
per streak at WARNING, naming the cluster and its ``gateway``. An address still among a name's answers is
kept (a round-robin name does not move the cluster, its Responses homes with it, at every refresh).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kvgate.aio import cancel_all_and_wait
from kvgate.multicluster.clusters import idna_host
from kvgate.multicluster.hub import _lookup, _NotTried

log = logging.getLogger("kvgate.multicluster.hub")

RESOLVE_EVERY_S = 10.0  # how often every name is looked up again (the lookups' answers are kept this long)
RESOLVE_TIMEOUT_S = 5.0  # one lookup's wait (glibc's default resolver timeout)


def is_address(gateway: str) -> bool:
    """Whether ``gateway`` (``host:port``, an IPv6 host in brackets) names an IP address, not a host name."""
    host = gateway.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _format(family: Any, addr: Any) -> str:
    return f"[{addr[0]}]:{addr[1]}" if family == socket.AF_INET6 else f"{addr[0]}:{addr[1]}"


class GatewayNames:
    """gateway as written (``host:port``) -> the ``ip:port`` it resolved to last; ``on_change`` runs when
    an address is learnt or changes (the director re-syncs its store)."""

    def __init__(
        self,
        on_change: Callable[[], None],
        *,
        every_s: float = RESOLVE_EVERY_S,
        timeout_s: float = RESOLVE_TIMEOUT_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.on_change = on_change
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.sleep = sleep
        self.addresses: dict[str, str] = {}
        self._wanted: dict[str, str] = {}  # gateway -> its cluster's name (the logs')
        self._failing: set[str] = set()  # names whose last lookup failed (logged once per streak)
        self._wake = asyncio.Event()

    def address(self, gateway: str) -> str | None:
        """What to name for ``gateway``: itself when an IP address, else its resolved address (None: not
        resolved yet)."""
        return gateway if is_address(gateway) else self.addresses.get(gateway)

    def want(self, gateways: Mapping[str, str]) -> None:
        """The host-name gateways of the clusters in force (gateway -> cluster): names gone are dropped;
        a new one wakes the refresh loop (looked up now, not at the next round; a name already wanted and
        failing waits for its round: an apply per watch event must not become a lookup each)."""
        before = self._wanted
        self._wanted = {g: c for g, c in gateways.items() if not is_address(g)}
        for gone in [g for g in self.addresses if g not in self._wanted]:
            del self.addresses[gone]
        self._failing &= set(self._wanted)
        if any(g not in before for g in self._wanted):
            self._wake.set()

    async def refresh(self) -> None:
        """Every wanted name looked up once, at once; ``on_change`` when an address was learnt or moved."""
        self._wake.clear()  # (a name wanted from here on wakes the next round)
        names = list(self._wanted)
        if not names:
            return
        answers = await asyncio.gather(*(self._resolve(g) for g in names))
        changed = False
        for gateway, answer in zip(names, answers, strict=True):
            if gateway not in self._wanted:  # (removed by a reload meanwhile)
                continue
            changed |= self._learn(gateway, answer)
        if changed:
            self.on_change()

    async def _resolve(self, gateway: str) -> list[str] | BaseException | None:
        """The name's addresses at its port; the lookup's error; None when it told nothing (no lookup
        could start: ``_NotTried``)."""
        host, _, port = gateway.rpartition(":")
        try:
            targets, _took = await _lookup(
                asyncio.get_running_loop(), idna_host(host), int(port), self.timeout_s
            )
        except _NotTried:
            return None
        except (OSError, TimeoutError, ValueError) as e:  # (gaierror; UnicodeError: a name IDNA refuses)
            return e
        return list(dict.fromkeys(_format(family, addr) for family, addr in targets)) or OSError("no address")

    def _learn(self, gateway: str, answer: list[str] | BaseException | None) -> bool:
        cluster = self._wanted[gateway]
        last = self.addresses.get(gateway)
        if answer is None:  # (no lookup could start: as a failure, else the cluster is left out unsaid)
            answer = OSError("no lookup could start: the hub's lookup threads are busy")
        if isinstance(answer, BaseException):
            if gateway not in self._failing:
                self._failing.add(gateway)
                then = (
                    f"its last address {last} kept"
                    if last is not None
                    else "the cluster is not picked until it resolves (Envoy routes to IP addresses only)"
                )
                log.warning("cluster %s: its gateway %s did not resolve (%s: %s): %s", cluster, gateway,
                            type(answer).__name__, str(answer) or "timed out", then)  # fmt: skip
            return False
        self._failing.discard(gateway)
        if last in answer:
            return False
        self.addresses[gateway] = answer[0]
        log.info("cluster %s: its gateway %s resolved to %s%s", cluster, gateway, answer[0],
                 "" if last is None else f" (was {last})")  # fmt: skip
        return True

    async def run(self) -> None:
        """Refreshes every ``every_s``, and at once when a new name is wanted (``want``); the first round
        is the caller's (``HubFeed.start``)."""
        while True:
            nap = asyncio.ensure_future(self.sleep(self.every_s))
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((nap, woken), return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_all_and_wait([nap, woken], "the gateway names' wait", log)
            await self.refresh()
