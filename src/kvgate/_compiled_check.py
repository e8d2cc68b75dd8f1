"""A compiled build's freshness: `make compiled` (scripts/build_compiled.py) records the sha256 of every
source it compiled in ``_compiled_manifest.json``; an extension module is imported before the ``.py``
beside it, so after a `git pull` or an edit of one of them the old compiled code would run silently.
Refuse instead, and refuse a build made with another module list than MODULES."""

from __future__ import annotations

import hashlib
import json
import os

# The modules `make compiled` compiles, relative to src/ (scripts/build_compiled.py reads them here): the
# request path's pure-Python modules (docs/benchmarks/gateway.md, Session 30).
MODULES = [
    "kvgate/scheduling/types.py",
    "kvgate/scheduling/profile.py",
    "kvgate/scheduling/blockhash.py",
    "kvgate/scheduling/plugins/kvgate_cost.py",
    "kvgate/scheduling/plugins/prefix_cache.py",
    "kvgate/scheduling/plugins/no_hit_lru.py",
    "kvgate/scheduling/plugins/scorers.py",
    "kvgate/scheduling/plugins/pickers.py",
    "kvgate/requestcontrol/director.py",
    "kvgate/httpfront/server.py",
    "kvgate/openai/request.py",
    "kvgate/openai/requeststats.py",
    "kvgate/gateway/proxy.py",
    "kvgate/gateway/upstream.py",
]
MANIFEST = "_compiled_manifest.json"  # beside this file, written only by a compiled build, git-ignored


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def stale_sources(manifest: str) -> list[str]:
    """The manifest's sources (paths relative to src/) whose text is not what was compiled."""
    src = os.path.dirname(os.path.dirname(os.path.abspath(manifest)))
    with open(manifest, encoding="utf-8") as f:
        sources: dict[str, str] = json.load(f)["sources"]
    stale = []
    for rel, sha in sorted(sources.items()):
        path = os.path.join(src, rel)
        if not os.path.exists(path) or digest(path) != sha:
            stale.append(rel)
    return stale


def list_changes(manifest: str) -> list[str]:
    """The modules this version compiles that the build did not, and the reverse (a build made before a
    `git pull` that changed MODULES: a module left interpreted beside compiled ones it subclasses)."""
    with open(manifest, encoding="utf-8") as f:
        built = set(json.load(f)["sources"])
    return sorted(set(MODULES) ^ built)


def check(manifest: str) -> None:
    stale = stale_sources(manifest)
    if stale:
        raise ImportError(
            f"kvgate's compiled build is stale: {', '.join(stale)} changed since it was compiled, and its "
            "compiled module would run the old code; run `make compiled` to rebuild, or `make pure` to go "
            "back to pure Python"
        )
    moved = list_changes(manifest)
    if moved:
        raise ImportError(
            f"kvgate's compiled build is stale: it was made with another module list ({', '.join(moved)} "
            "compiled in one and not the other); run `make compiled` to rebuild, or `make pure` to go back "
            "to pure Python"
        )
