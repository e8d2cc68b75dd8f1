"""Label and field selectors as the API server parses them (the subset clients send: equality,
inequality, set membership and existence)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Matcher = Callable[[Mapping[str, str]], bool]


class SelectorError(ValueError):
    pass


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b=c``)."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur:
        parts.append("".join(cur).strip())
    return [p for p in parts if p]


def _requirement(req: str) -> Matcher:
    for op in (" notin ", " in "):
        if op in req:
            key, _, rest = req.partition(op)
            rest = rest.strip()
            if not (rest.startswith("(") and rest.endswith(")")):
                raise SelectorError(f"bad set in selector {req!r}")
            values = {v.strip() for v in rest[1:-1].split(",") if v.strip()}
            k = key.strip()
            if op == " in ":
                return lambda labels: labels.get(k) in values
            return lambda labels: labels.get(k) not in values
    if "!=" in req:
        k, _, v = req.partition("!=")
        k, v = k.strip(), v.strip()
        return lambda labels: labels.get(k) != v
    if "=" in req:
        k, _, v = req.replace("==", "=").partition("=")
        k, v = k.strip(), v.strip()
        return lambda labels: labels.get(k) == v
    if req.startswith("!"):
        k = req[1:].strip()
        return lambda labels: k not in labels
    k = req.strip()
    if not k or " " in k:
        raise SelectorError(f"bad selector requirement {req!r}")
    return lambda labels: k in labels


def label_selector(text: str | None) -> Matcher:
    reqs = [_requirement(r) for r in _split(text or "")]
    return lambda labels: all(r(labels) for r in reqs)


def match_labels_selector(match_labels: Mapping[str, str]) -> str:
    """``{"app": "x", "tier": "y"}`` -> ``app=x,tier=y`` (what a client puts in ``labelSelector``)."""
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


def _field(obj: Mapping[str, Any], path: str) -> str | None:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return None if cur is None else str(cur)


def field_selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """``metadata.name=x,status.phase!=Failed``: equality on dotted paths of the object."""
    checks: list[tuple[str, str, bool]] = []
    for req in _split(text or ""):
        neg = "!=" in req
        k, _, v = req.partition("!=" if neg else "=")
        checks.append((k.strip(), v.strip().lstrip("="), neg))
    return lambda obj: all((_field(obj, k) == v) != neg for k, v, neg in checks)
