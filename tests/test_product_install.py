"""`pip install kvgate` without extras runs `kvgate serve` and `kvgate epp` (issue 11).

A fresh venv per test run would need the package index; instead this reproduces what such an install can
import: a fresh interpreter in which every installed distribution that is *not* a product dependency of
kvgate (``[project].dependencies`` in pyproject.toml, with their own dependencies, no extras) cannot be
imported. There it runs ``kvgate serve --help`` and ``kvgate epp --help`` and imports every module of the
packages those commands are built from; and every import statement in those packages (function-local ones
too, which only run later) must name the standard library, a product dependency or kvgate itself.
``make check-install`` does the real thing: a fresh venv, ``pip install .``, both ``--help``s.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# What `kvgate serve` and `kvgate epp` are built from (docs/architecture.md); sim/, bench/ and realvllm/
# are tooling behind extras.
PRODUCT_PACKAGES = [
    "datalayer",
    "scheduling",
    "flowcontrol",
    "requestcontrol",
    "openai",
    "config",
    "gateway",
    "extproc",
    "k8s",
    "multicluster",
]


def product_closure() -> set[str]:
    """Canonical names of the product's dependencies and theirs, as pip would resolve them (no extras)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [Requirement(d) for d in deps]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        # A dependency not installed here: nothing of it can be imported anyway.
        with contextlib.suppress(metadata.PackageNotFoundError):
            todo.extend(Requirement(r) for r in metadata.requires(req.name) or [])
    return seen


def blocked_modules() -> list[str]:
    """Top-level modules that only distributions outside the product's closure provide."""
    allowed = product_closure() | {"kvgate"}
    out = []
    for module, dists in metadata.packages_distributions().items():
        if module.isidentifier() and not any(canonicalize_name(d) in allowed for d in dists):
            out.append(module)
    return sorted(out)


CHILD = """
import importlib, json, pkgutil, sys
# As if not installed: `import X` raises ModuleNotFoundError, importlib.util.find_spec("X") answers None.
for m in json.loads(sys.argv[1]):
    sys.modules[m] = None
from kvgate.cli import main
for cmd in ("serve", "epp"):
    try:
        main([cmd, "--help"])
    except SystemExit as e:
        if e.code not in (0, None):
            raise
failed = {}
import kvgate
for pkg in json.loads(sys.argv[2]):
    mod = importlib.import_module("kvgate." + pkg)
    for info in pkgutil.walk_packages(mod.__path__, mod.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except Exception as e:
            failed[info.name] = repr(e)
print("RESULT " + json.dumps(failed))
"""


def test_blocking_is_real() -> None:
    # The closure is not "everything installed": dev, sim and bench tools are outside it.
    blocked = set(blocked_modules())
    assert {"pytest", "numpy", "matplotlib", "rich", "hypothesis", "openai"} <= blocked
    assert not {"aiohttp", "zmq", "yaml", "grpc", "msgspec", "multidict"} & blocked  # product deps (+ theirs)


def test_serve_and_epp_run_on_the_product_dependencies_alone() -> None:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(blocked_modules()), json.dumps(PRODUCT_PACKAGES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "usage: kvgate serve" in res.stdout and "usage: kvgate epp" in res.stdout
    failed = json.loads(res.stdout.rpartition("RESULT ")[2])
    assert failed == {}, failed


def test_no_import_in_the_product_packages_needs_an_extra() -> None:
    import ast

    blocked = set(blocked_modules())
    found = []
    for pkg in PRODUCT_PACKAGES:
        for path in sorted((ROOT / "src" / "kvgate" / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    if name.partition(".")[0] in blocked:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert found == []
