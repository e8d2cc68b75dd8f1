"""A compiled build's freshness: `make compiled` (scripts/build_compiled.py) records the sha256 of every
source it compiled in ``_compiled_manifest.json``; an extension module is imported before the ``.py``
beside it, so after a `git pull` or an edit of one of them the old compiled code would run silently.
Refuse instead."""

from __future__ import annotations

import hashlib
import json
import os

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


def check(manifest: str) -> None:
    stale = stale_sources(manifest)
    if stale:
        raise ImportError(
            f"kvgate's compiled build is stale: {', '.join(stale)} changed since it was compiled, and its "
            "compiled module would run the old code; run `make compiled` to rebuild, or `make pure` to go "
            "back to pure Python"
        )
