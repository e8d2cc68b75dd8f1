"""InferenceModelRewrite-like rules: weighted random choice of the model a request is sent as.

The first rule whose ``matches`` contain the requested model (or that has no matches) applies. The
response's ``model`` field is rewritten back to the client's name (see ``stream.ModelRewriteBack``).
"""

from __future__ import annotations

import bisect
import random

from kvgate.config.gateway import RewriteRule


class ModelRewriter:
    def __init__(self, rules: list[RewriteRule], seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        # Per rule: the target names and their cumulative weights, for an O(log targets) draw.
        self._rules: list[tuple[frozenset[str], list[str], list[int]]] = []
        for rule in rules:
            names, cum, total = [], [], 0
            for t in rule.targets:
                total += t.weight
                names.append(t.model)
                cum.append(total)
            self._rules.append((frozenset(rule.matches), names, cum))

    def __bool__(self) -> bool:
        return bool(self._rules)

    def rewrite(self, model: str) -> str:
        """The model to send upstream (``model`` itself when no rule matches)."""
        for matches, names, cum in self._rules:
            if not matches or model in matches:
                if len(names) == 1:
                    return names[0]
                draw = self._rng.randrange(cum[-1])
                return names[bisect.bisect_right(cum, draw)]
        return model
