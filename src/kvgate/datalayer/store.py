"""The set of endpoints the picker may choose from, by address and pool, with change listeners.

Sources (a static list today; Kubernetes or multi-cluster watchers later) call ``add``/``remove`` or
``sync`` with their full view; consumers (the director, the prefix index, the scraper) subscribe to
changes instead of polling. Re-adding a known address updates it in place so its scraped metrics and
in-flight accounting survive a relabel. An address that leaves (NotReady, out of the selector, its pool
deleted) while this picker's requests still run there keeps their ``InFlight`` until they finish: back in
the meantime, its new endpoint takes that ``InFlight`` over, so the requests still running there count
against it (review qa35a F1: a readiness flap under load let flow control's gate dispatch past
``maxConcurrency``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.mappings import MAPPINGS

log = logging.getLogger(__name__)

# The pod labels that name its engine, read in this order (qa33a F6): llm-d's, the reference EPP's default
# ``engineLabelKey`` now, then GIE's older key. The reference reads one key (``--engine-label-key``).
LLMD_ENGINE_LABEL = "llm-d.ai/engine-type"
ENGINE_LABEL = "inference.networking.k8s.io/engine-type"
ENGINE_LABELS = (LLMD_ENGINE_LABEL, ENGINE_LABEL)
# The engines kvgate can read: exactly those with a metric mapping.
ENGINES = tuple(MAPPINGS)

ChangeKind = Literal["added", "removed", "updated"]


@dataclass(frozen=True, slots=True)
class StoreChange:
    kind: ChangeKind
    endpoint: Endpoint


Listener = Callable[[StoreChange], None]


def engine_of(labels: Mapping[str, str], keys: tuple[str, ...] = ENGINE_LABELS) -> str | None:
    """The engine the first of ``keys`` present in ``labels`` names (None: no such label)."""
    for key in keys:
        value = labels.get(key)
        if value:
            return value
    return None


def make_endpoint(
    address: str,
    *,
    pool: str = "default",
    labels: Mapping[str, str] | None = None,
    engine: str | None = None,
    name: str = "",
) -> Endpoint:
    """An endpoint whose engine comes from ``engine``, else the engine-type labels, else vLLM."""
    lab = dict(labels or {})
    eng = engine or engine_of(lab) or "vllm"
    return Endpoint(address=address, pool=pool, engine=eng, labels=lab, name=name)


class EndpointStore:
    def __init__(self, endpoints: Iterable[Endpoint] = ()) -> None:
        self._by_addr: dict[str, Endpoint] = {}
        # Removed endpoints whose ``InFlight`` still counts requests (qa35a F1). Bounded: each remove drops
        # the idle ones before it keeps one, so at most one per address with requests running at a remove.
        self._departed: dict[str, Endpoint] = {}
        # The labels that name an endpoint's engine (``kvgate epp --engine-label-key``: that one only).
        self.engine_labels: tuple[str, ...] = ENGINE_LABELS
        self._listeners: list[Listener] = []
        # Bumped on every change so readers can cache derived lists (the director's candidate list).
        self.version = 0
        self._snapshot: tuple[Endpoint, ...] = ()
        self._snapshot_version = -1
        for ep in endpoints:
            self.add(ep)

    @classmethod
    def from_addresses(
        cls, addresses: Iterable[str], *, pool: str = "default", engine: str = "vllm"
    ) -> EndpointStore:
        return cls(make_endpoint(a, pool=pool, engine=engine) for a in addresses)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """The listeners now registered (a config reload removes those of a picker it discards)."""
        return tuple(self._listeners)

    def _emit(self, kind: ChangeKind, ep: Endpoint) -> None:
        self.version += 1
        change = StoreChange(kind, ep)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # a broken listener must not stop the others or the source
                log.exception("endpoint store listener failed on %s %s", kind, ep.address)

    def add(self, ep: Endpoint) -> Endpoint:
        """Add ``ep``, or update the known endpoint with its address in place; returns the stored one."""
        if ep.engine == "vllm" and (labelled := engine_of(ep.labels, self.engine_labels)) is not None:
            ep.engine = labelled
        cur = self._by_addr.get(ep.address)
        if cur is None:
            old = self._departed.pop(ep.address, None) if self._departed else None
            if old is not None and old.inflight.busy and not ep.inflight.busy:
                ep.inflight = old.inflight  # (its requests' finishes, on the old object, count down here)
            self._by_addr[ep.address] = ep
            self._emit("added", ep)
            return ep
        if (cur.pool, cur.engine, cur.labels, cur.name) != (ep.pool, ep.engine, ep.labels, ep.name):
            cur.pool, cur.engine, cur.labels, cur.name = ep.pool, ep.engine, dict(ep.labels), ep.name
            self._emit("updated", cur)
        return cur

    def remove(self, address: str) -> Endpoint | None:
        ep = self._by_addr.pop(address, None)
        if ep is not None:
            if self._departed:
                self._prune()
            if ep.inflight.busy:
                self._departed[address] = ep
            self._emit("removed", ep)
        return ep

    def _prune(self) -> None:
        for addr in [a for a, ep in self._departed.items() if not ep.inflight.busy]:
            del self._departed[addr]

    def departed(self, address: str | None = None) -> tuple[Endpoint, ...]:
        """Endpoints gone from the store (``address``'s only, if given) whose requests may still run:
        their ``InFlight`` is counted until they finish (the ``--workers`` shared table syncs them too).
        All of them: those gone idle are dropped first (review rev-a36 F2: they stayed until the next
        ``remove``, and the shared table kept their entries listed)."""
        if address is not None:
            ep = self._departed.get(address)
            return (ep,) if ep is not None else ()
        if self._departed:
            self._prune()
        return tuple(self._departed.values())

    def sync(self, endpoints: Iterable[Endpoint], *, pool: str | None = None) -> None:
        """Make the store (or one pool of it) hold exactly ``endpoints``: a source's full view."""
        wanted = {ep.address: ep for ep in endpoints}
        for addr, ep in list(self._by_addr.items()):
            if (pool is None or ep.pool == pool) and addr not in wanted:
                self.remove(addr)
        for ep in wanted.values():
            self.add(ep)

    def get(self, address: str) -> Endpoint | None:
        return self._by_addr.get(address)

    def __len__(self) -> int:
        return len(self._by_addr)

    def __contains__(self, address: object) -> bool:
        return address in self._by_addr

    def all(self) -> tuple[Endpoint, ...]:
        """Every endpoint, as a tuple cached until the next change (cheap to call per pick)."""
        if self._snapshot_version != self.version:
            self._snapshot = tuple(self._by_addr.values())
            self._snapshot_version = self.version
        return self._snapshot

    def endpoints(self, pool: str | None = None) -> list[Endpoint]:
        return [ep for ep in self.all() if pool is None or ep.pool == pool]

    def pools(self) -> set[str]:
        return {ep.pool for ep in self._by_addr.values()}
