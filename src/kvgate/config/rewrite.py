"""InferenceModelRewrite rules as a weighted random draw, shared by both front doors.

Upstream's precedence (GIE's datastore ``modelRewriteStore.getRule``): a rule that names the requested
model exactly wins over a generic rule (no ``matches``: "all requests not matched by previous rules"),
wherever each stands; among the rules that name it, and among the generic ones, the first in the list
applies (Kubernetes discovery lists its objects' rules oldest object first: ``k8s.discovery``). Its
target is drawn by weight. The gateway (``kvgate serve``) and the ext_proc EPP (``kvgate epp``) both
use this class so one config rewrites the same way behind either; each puts the response's ``model``
back to the client's name itself.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Collection, Iterable, Mapping, Sequence

from kvgate.config.gateway import RewriteRule


class ModelRewriter:
    def __init__(self, rules: Sequence[RewriteRule], seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        # Per rule: the target names and their cumulative weights, for an O(log targets) draw.
        self._rules: list[tuple[list[str], list[int]]] = [
            (
                [t.model for t in rule.targets],
                list(itertools.accumulate(t.weight for t in rule.targets)),
            )
            for rule in rules
        ]
        # model -> its first exact rule; the first generic rule: one dict lookup per request.
        self._exact: dict[str, int] = {}
        self._generic: int | None = None
        for i, rule in enumerate(rules):
            if not rule.matches and self._generic is None:
                self._generic = i
            for name in rule.matches:
                self._exact.setdefault(name, i)
        # Any rule at all (an attribute: the proxy reads it on every request).
        self.active = bool(self._rules)
        self.rules: tuple[RewriteRule, ...] = tuple(rules)

    def __bool__(self) -> bool:
        return self.active

    def rewrite(self, model: str) -> str:
        """The model to send upstream (``model`` itself when no rule matches)."""
        i = self._exact.get(model, self._generic)
        if i is None:
            return model
        names, cum = self._rules[i]
        if len(names) == 1:
            return names[0]
        return names[bisect.bisect_right(cum, self._rng.randrange(cum[-1]))]

    def __call__(self, model: str) -> str | None:
        """The EPP's hook shape: the new model, or None to leave the request as it is."""
        target = self.rewrite(model)
        return target if target != model else None


def rule_names(rules: Iterable[RewriteRule]) -> list[str]:
    """The model names rewrite rules name, sources and targets (labels of their own)."""
    return [name for rule in rules for name in (*rule.matches, *(t.model for t in rule.targets))]


def client_names(rules: Sequence[RewriteRule], served: Collection[str]) -> list[tuple[str, str]]:
    """The names a client may send that ``rules`` rewrite to one of ``served``: (name, that target), in the
    rules' order. A name counts by the first rule that names it, as ``ModelRewriter.rewrite`` reads them
    (an exact name wins over a generic rule wherever it stands; a generic rule lists no name itself)."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for rule in rules:
        target = next((t.model for t in rule.targets if t.model in served), None)
        for name in rule.matches:
            if name not in seen:
                seen.add(name)
                if target is not None:
                    out.append((name, target))
    return out


class PoolScopedRewriter(ModelRewriter):
    """``kvgate serve``'s rewrite over several pools, some watched (``inferencePool``): upstream scopes an
    InferenceModelRewrite to the pool its ``poolRef`` names (each pool's EPP holds its own), so one
    pool's rules never rewrite a model another pool serves (review s31-qa31 Q3: pool A's generic
    fallback took pool B's requests). A model a pool serves takes that pool's live rules, or, while it
    has none, the file's; a name no pool serves (an alias) takes the file's rules and every pool's live
    rules that name it exactly, then the first generic one. The file's rules (``rewrites:``, global) stay
    in force except those whose every target is served by a pool with live rules: those the pool's
    objects replace (review s31-qa31 Q1: they were all dropped, a static pool's alias too). As a
    ``ModelRewriter`` it is the alias rewriter: ``rules`` are the rules in force for aliases (what
    ``/v1/models`` lists), ``active`` whether any rule is in force anywhere."""

    def __init__(
        self,
        file_rules: Sequence[RewriteRule],
        served: Mapping[str, str],
        live: Mapping[str, Sequence[RewriteRule]],
        seed: int | None = None,
    ) -> None:
        """``served``: model or adapter name -> the pool serving it; ``live``: pool -> its live rules
        (a pool with none keeps the file's)."""
        self._served = served
        # (the pools in the order they serve, config order: the first generic alias rule is deterministic)
        pools = [p for p in dict.fromkeys(served.values()) if live.get(p)]
        in_force = [r for r in file_rules if not all(served.get(t.model) in pools for t in r.targets)]
        self.file_rules = tuple(in_force)
        self._file = ModelRewriter(in_force, seed)
        self._pools = {p: ModelRewriter(live[p], seed) for p in pools}
        aliases = list(in_force)
        for p in pools:
            for rule in live[p]:
                if not rule.matches:
                    aliases.append(rule)
                elif names := [m for m in rule.matches if m not in served]:
                    aliases.append(RewriteRule(names, rule.targets))
        super().__init__(aliases, seed)
        self.active = self.active or bool(self._pools) or self._file.active

    def rewrite(self, model: str) -> str:
        pool = self._served.get(model)
        if pool is None:
            return super().rewrite(model)
        return self._pools.get(pool, self._file).rewrite(model)
