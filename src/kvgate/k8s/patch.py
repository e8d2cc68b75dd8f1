"""The patch formats an API server accepts: JSON merge patch (RFC 7386), the subset of strategic
merge patch kubectl sends (lists of objects merged by their merge key, ``$patch`` directives), JSON patch
(RFC 6902)."""

from __future__ import annotations

import copy
from typing import Any

# Lists merged element-wise by key in strategic merge patch (those kubectl touches on the objects served).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "conditions": "type",
    "ports": "containerPort",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "targetPorts": "number",
}


class PatchError(ValueError):
    pass


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge_patch(target: Any, patch: Any, key: str | None = None) -> Any:
    if not isinstance(patch, dict):
        if isinstance(patch, list) and key in MERGE_KEYS and isinstance(target, list):
            return _merge_list(target, patch, MERGE_KEYS[key])
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = dict(target) if isinstance(target, dict) else {}
    for k, value in patch.items():
        if k.startswith("$"):  # $retainKeys, $setElementOrder/...: ordering hints we can ignore
            continue
        if value is None:
            out.pop(k, None)
        else:
            out[k] = strategic_merge_patch(out.get(k), value, k)
    return out


def _merge_list(target: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    out = [copy.deepcopy(x) for x in target]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            out.append(copy.deepcopy(item))
            continue
        idx = next(
            (i for i, x in enumerate(out) if isinstance(x, dict) and x.get(merge_key) == item[merge_key]),
            None,
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
        elif idx is None:
            out.append({k: v for k, v in item.items() if not k.startswith("$")})
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    return cur


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add / remove / replace / test (move and copy are not used by kubectl or our clients)."""
    out = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op.get("path", ""))
        kind = op.get("op")
        try:
            if kind == "test":
                cur = out
                for p in parts:
                    cur = cur[int(p)] if isinstance(cur, list) else cur[p]
                if cur != op.get("value"):
                    raise PatchError(f"test failed at {op.get('path')}")
                continue
            if not parts:
                out = copy.deepcopy(op.get("value"))
                continue
            parent = _parent(out, parts)
            last = parts[-1]
            if kind in ("add", "replace"):
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(copy.deepcopy(op["value"]))
                    elif kind == "add":
                        parent.insert(int(last), copy.deepcopy(op["value"]))
                    else:
                        parent[int(last)] = copy.deepcopy(op["value"])
                else:
                    if kind == "replace" and last not in parent:
                        raise PatchError(f"replace: no {op.get('path')}")
                    parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                if isinstance(parent, list):
                    parent.pop(int(last))
                else:
                    del parent[last]
            else:
                raise PatchError(f"unsupported JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            if isinstance(e, PatchError):
                raise
            raise PatchError(f"{kind} {op.get('path')}: {e}") from e
    return out
