"""``sglang-cache-aware-picker``: SGLang Model Gateway's ``cache_aware`` policy, reproduced from its
published description, so benchmarks can compare against it inside the fleet simulator.

- One approximate radix tree over raw request characters; tenants = endpoints. After each pick the
  request text is inserted for the chosen endpoint.
- Load = the router's own in-flight request count per endpoint (``InFlight.calls`` here: a request once,
  whatever its ``n``, as sglang-router counts; ``InFlight.requests`` counts sequences).
- If (max_load - min_load) > ``balanceAbsThreshold`` AND max_load > min_load * ``balanceRelThreshold``:
  the least-loaded endpoint.
- Else if the longest match covers > ``cacheThreshold`` of the text: the endpoint holding it.
- Else: the endpoint with the smallest tree (fewest characters).
- Every ``evictionIntervalSecs`` each tenant's tree is trimmed to ``maxTreeSize`` characters, least
  recently used leaves first.

Where this is approximate (docs/scheduling.md): when several endpoints hold the deepest matched node we
take the most recently used one (SGLang takes the first its concurrent map yields); the tree is one
per picker rather than one per model (the picker serves one pool); eviction runs lazily on a pick
after the interval has passed, on the injected clock, rather than on a background thread.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import StoreChange
from kvgate.scheduling.framework import CycleState, Params, Picker, PluginHandle
from kvgate.scheduling.registry import register


class _Node:
    __slots__ = ("children", "parent", "tenants", "text")

    def __init__(self, text: str, parent: _Node | None) -> None:
        self.text = text
        self.parent = parent
        self.children: dict[str, _Node] = {}
        self.tenants: dict[str, float] = {}  # tenant -> last access time


def _common(edge: str, text: str, off: int) -> int:
    """Length of the common prefix of ``edge`` and ``text[off:]``, by binary search on C-level compares."""
    n = min(len(edge), len(text) - off)
    if text.startswith(edge[:n], off):
        return n
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text.startswith(edge[:mid], off):
            lo = mid
        else:
            hi = mid - 1
    return lo


class RadixTree:
    def __init__(self) -> None:
        self.root = _Node("", None)
        self.size: dict[str, int] = {}  # tenant -> characters held

    def insert(self, text: str, tenant: str, now: float) -> None:
        node = self.root
        node.tenants[tenant] = now
        self.size.setdefault(tenant, 0)
        i = 0
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                leaf = _Node(text[i:], node)
                leaf.tenants[tenant] = now
                node.children[text[i]] = leaf
                self.size[tenant] += len(leaf.text)
                return
            k = _common(child.text, text, i)
            if k < len(child.text):  # split the edge at k
                mid = _Node(child.text[:k], node)
                mid.tenants = dict(child.tenants)
                node.children[text[i]] = mid
                child.text = child.text[k:]
                child.parent = mid
                mid.children[child.text[0]] = child
                child = mid
            if tenant not in child.tenants:
                self.size[tenant] += len(child.text)
            child.tenants[tenant] = now
            node = child
            i += k

    def match(self, text: str) -> tuple[int, dict[str, float]]:
        """Characters of ``text`` matched from the root, and the tenants of the deepest node reached."""
        node = self.root
        i = 0
        tenants = node.tenants
        while i < len(text):
            child = node.children.get(text[i])
            if child is None:
                break
            k = _common(child.text, text, i)
            i += k
            tenants = child.tenants
            if k < len(child.text):
                break
            node = child
        return i, tenants

    def remove_tenant(self, tenant: str) -> None:
        stack = [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if node.tenants.pop(tenant, None) is not None and not node.tenants and node.parent is not None:
                node.parent.children.pop(node.text[0], None)
        self.size.pop(tenant, None)

    def evict(self, tenant: str, max_size: int) -> None:
        """Drop ``tenant``'s least recently used leaves until it holds at most ``max_size`` chars."""
        if self.size.get(tenant, 0) <= max_size:
            return
        heap: list[tuple[float, int, _Node]] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            kids = [c for c in node.children.values() if tenant in c.tenants]
            stack.extend(kids)
            if not kids and tenant in node.tenants and node.parent is not None:
                heap.append((node.tenants[tenant], id(node), node))
        heapq.heapify(heap)
        while heap and self.size[tenant] > max_size:
            _, _, node = heapq.heappop(heap)
            del node.tenants[tenant]
            self.size[tenant] -= len(node.text)
            parent = node.parent
            if not node.tenants and not node.children and parent is not None:
                parent.children.pop(node.text[0], None)
            if (
                parent is not None
                and parent.parent is not None
                and tenant in parent.tenants
                and not any(tenant in c.tenants for c in parent.children.values())
            ):
                heapq.heappush(heap, (parent.tenants[tenant], id(parent), parent))


@register("sglang-cache-aware-picker")
class SGLangCacheAwarePicker(Picker):
    def __init__(
        self,
        name: str,
        handle: PluginHandle,
        *,
        cache_threshold: float = 0.3,
        balance_abs_threshold: int = 64,
        balance_rel_threshold: float = 1.5,
        eviction_interval: float = 60.0,
        max_tree_size: int = 1 << 26,
    ) -> None:
        super().__init__(name, handle)
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.eviction_interval = eviction_interval
        self.max_tree_size = max_tree_size
        self.tree = RadixTree()
        self._last_eviction: float | None = None
        if handle.store is not None:
            handle.store.add_listener(self._on_store_change)

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> SGLangCacheAwarePicker:
        p = cls(
            name,
            handle,
            cache_threshold=params.get_float("cacheThreshold", 0.3, min=0.0, max=1.0),
            balance_abs_threshold=params.get_int("balanceAbsThreshold", 64, min=0),
            balance_rel_threshold=params.get_float("balanceRelThreshold", 1.5, min=0.0),
            eviction_interval=params.get_duration("evictionIntervalSecs", 60.0),
            max_tree_size=params.get_int("maxTreeSize", 1 << 26, min=1),
        )
        params.finish()
        return p

    def _on_store_change(self, change: StoreChange) -> None:
        if change.kind == "removed":
            self.tree.remove_tenant(change.endpoint.address)

    def pick(
        self, cycle: CycleState, endpoints: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        now = cycle.now
        self._maybe_evict(now)
        text = cycle.request.prompt_text
        rng = self.handle.rng
        loads = [ep.inflight.calls for ep in endpoints]
        lo, hi = min(loads), max(loads)
        chosen: Endpoint
        if hi - lo > self.balance_abs_threshold and hi > lo * self.balance_rel_threshold:
            chosen = endpoints[loads.index(lo)]
            reason = "imbalanced: shortest queue"
        else:
            matched, tenants = self.tree.match(text) if text else (0, {})
            by_addr = {ep.address: ep for ep in endpoints}
            holders = [(t, a) for a, t in tenants.items() if a in by_addr]
            if text and matched / len(text) > self.cache_threshold and holders:
                chosen = by_addr[max(holders)[1]]
                reason = f"cache hit {matched / len(text):.2f}"
            else:
                sizes = [self.tree.size.get(ep.address, 0) for ep in endpoints]
                small = min(sizes)
                idx = [i for i, s in enumerate(sizes) if s == small]
                chosen = endpoints[idx[0] if len(idx) == 1 else rng.choice(idx)]
                reason = "miss: smallest tree"
        if text:
            self.tree.insert(text, chosen.address, now)
        if cycle.explain:
            cycle.data["sglang-cache-aware"] = {
                "reason": reason,
                "loads": dict(zip([e.address for e in endpoints], loads, strict=True)),
            }
        return [chosen]

    def _maybe_evict(self, now: float) -> None:
        if self._last_eviction is None:
            self._last_eviction = now
        elif now - self._last_eviction >= self.eviction_interval:
            self._last_eviction = now
            for tenant in list(self.tree.size):
                self.tree.evict(tenant, self.max_tree_size)
