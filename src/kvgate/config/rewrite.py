"""InferenceModelRewrite rules as a weighted random draw, shared by both front doors.

The first rule whose ``matches`` contain the requested model (or that has no matches) applies; its
target is drawn by weight. The gateway (``kvgate serve``) and the ext_proc EPP (``kvgate epp``) both
use this class so one config rewrites the same way behind either; each puts the response's ``model``
back to the client's name itself.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Collection, Sequence

from kvgate.config.gateway import RewriteRule


class ModelRewriter:
    def __init__(self, rules: Sequence[RewriteRule], seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        # Per rule: the target names and their cumulative weights, for an O(log targets) draw.
        self._rules: list[tuple[frozenset[str], list[str], list[int]]] = [
            (
                frozenset(rule.matches),
                [t.model for t in rule.targets],
                list(itertools.accumulate(t.weight for t in rule.targets)),
            )
            for rule in rules
        ]
        # Any rule at all (an attribute: the proxy reads it on every request).
        self.active = bool(self._rules)
        self.rules: tuple[RewriteRule, ...] = tuple(rules)

    def __bool__(self) -> bool:
        return self.active

    def rewrite(self, model: str) -> str:
        """The model to send upstream (``model`` itself when no rule matches)."""
        for matches, names, cum in self._rules:
            if not matches or model in matches:
                if len(names) == 1:
                    return names[0]
                return names[bisect.bisect_right(cum, self._rng.randrange(cum[-1]))]
        return model

    def __call__(self, model: str) -> str | None:
        """The EPP's hook shape: the new model, or None to leave the request as it is."""
        target = self.rewrite(model)
        return target if target != model else None


def client_names(rules: Sequence[RewriteRule], served: Collection[str]) -> list[tuple[str, str]]:
    """The names a client may send that ``rules`` rewrite to one of ``served``: (name, that target), in the
    rules' order. A name counts by the first rule that takes it, as ``ModelRewriter.rewrite`` reads them
    (a catch-all rule takes every name after it, and lists none itself)."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for rule in rules:
        if not rule.matches:
            break
        target = next((t.model for t in rule.targets if t.model in served), None)
        for name in rule.matches:
            if name not in seen:
                seen.add(name)
                if target is not None:
                    out.append((name, target))
    return out
