"""The package dependency table in docs/architecture.md is the law: every ``kvgate`` import obeys it.

The table is parsed from the doc (one source of truth), every module under ``src/kvgate`` is read with
``ast`` (all imports, including function-local and ``TYPE_CHECKING`` ones), and any import of a kvgate
package outside the importing package's row fails the test, naming file, line and edge.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "kvgate"
DOC = ROOT / "docs" / "architecture.md"
EVERYTHING = "*"
_ROW = re.compile(r"^\|\s*`([a-z0-9_]+)/`\s*\|.*\|\s*([^|]*?)\s*\|\s*$")


def dependency_table(doc: str) -> dict[str, set[str]]:
    """``package -> packages it may import`` from the doc's table (``EVERYTHING`` for "everything")."""
    table: dict[str, set[str]] = {}
    for line in doc.splitlines():
        m = _ROW.match(line)
        if m is None:
            continue
        cell = m.group(2).strip()
        if cell.startswith("everything"):
            table[m.group(1)] = {EVERYTHING}
        elif cell in ("—", "-", ""):
            table[m.group(1)] = set()
        else:
            table[m.group(1)] = {p.strip().rstrip("/") for p in cell.split(",")}
    return table


def _imports(path: Path) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            if node.module == "kvgate":  # from kvgate import config
                out.extend((node.lineno, f"kvgate.{a.name}") for a in node.names)
    return out


TOP_DISPATCH = ("__init__.py", "cli.py")


def violations(src: Path, table: dict[str, set[str]]) -> list[str]:
    """Every import of a kvgate package its importer's row does not allow (and every unlisted package)."""
    found: list[str] = []
    packages = {p.name for p in src.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    # Top-level modules: the dispatch (``cli``) imports everything, so only a package whose row says
    # "everything" may import it; any other (``aio``) sits below every package: all may import it.
    dispatch = {Path(n).stem for n in TOP_DISPATCH} - {"__init__"}
    modules = {p.stem for p in src.glob("*.py")} - {"__init__"}
    for pkg in sorted(packages - set(table)):
        found.append(f"{pkg}/: not in the dependency table")
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if len(rel.parts) < 2 and rel.name in TOP_DISPATCH:
            continue  # kvgate/__init__.py and the top-level cli dispatch over everything
        # Any other top-level module (kvgate/aio.py) is below every package: it imports none.
        pkg = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        allowed = table.get(pkg, set())
        if EVERYTHING in allowed:
            continue
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] != "kvgate" or len(parts) < 2 or parts[1] == pkg:
                continue
            if parts[1] in modules and parts[1] not in dispatch and pkg not in modules:
                continue  # (a package importing kvgate.aio)
            if parts[1] not in packages and parts[1] not in modules:
                continue  # (not a kvgate package or module: kvgate.__version__ and the like)
            if parts[1] not in allowed:
                found.append(f"{rel}:{line}: {pkg} -> {parts[1]} ({module})")
    return found


def test_src_obeys_the_dependency_table() -> None:
    table = dependency_table(DOC.read_text())
    assert {"scheduling", "requestcontrol", "openai", "config", "gateway", "extproc"} <= set(table)
    assert violations(SRC, table) == []


def test_scheduling_imports_neither_config_nor_flow_control() -> None:
    table = dependency_table(DOC.read_text())
    assert not table["scheduling"] & {"config", "flowcontrol", "requestcontrol", "openai"}
    assert "scheduling" not in table["datalayer"]


# Importing every scheduling module must load no HTTP client: the table lets scheduling import datalayer,
# but not its scraper (aiohttp, the page client) (review s28-rev-cfg28 F3: wiring.py imported the scraper
# for ``ScrapeSource``; now ``datalayer.scrape_source``; fails on ca67a4cb).
_NO_HTTP_PROBE = (
    "import importlib, pkgutil, sys\n"
    "import kvgate.scheduling as s\n"
    "for m in pkgutil.walk_packages(s.__path__, 'kvgate.scheduling.'):\n"
    "    importlib.import_module(m.name)\n"
    "print(sorted(m for m in ('aiohttp', 'kvgate.datalayer.scraper', 'kvgate.datalayer.pageclient', "
    "'kvgate.config') if m in sys.modules))\n"
)


def test_the_scheduling_modules_load_no_http_client() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    probe = [sys.executable, "-c", _NO_HTTP_PROBE]
    out = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_table_has_no_cycles() -> None:
    table = dependency_table(DOC.read_text())
    graph = {p: {d for d in deps if d != EVERYTHING} for p, deps in table.items() if EVERYTHING not in deps}
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(p: str, trail: tuple[str, ...]) -> None:
        assert p not in visiting, f"cycle: {' -> '.join((*trail, p))}"
        if p in done:
            return
        visiting.add(p)
        for d in graph.get(p, ()):
            visit(d, (*trail, p))
        visiting.discard(p)
        done.add(p)

    for p in graph:
        visit(p, ())


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "kvgate"
    for name, text in files.items():
        f = src / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    for d in {p.parent for p in src.rglob("*.py")}:
        (d / "__init__.py").touch()
    return src


TABLE = "| `low/` | x | — |\n| `high/` | y | low |\n| `tools/` | z | everything |\n"


def test_checker_passes_a_tree_that_obeys(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"low/a.py": "import os\n", "high/b.py": "from kvgate.low.a import x\n",
                           "tools/c.py": "from kvgate.high import b\n"})  # fmt: skip
    assert violations(src, dependency_table(TABLE)) == []


@pytest.mark.parametrize(
    "code",
    [
        "from kvgate.high.b import y\n",
        "import kvgate.high.b\n",
        "from kvgate import high\n",
        "def f():\n    from kvgate.high import b\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from kvgate.high.b import y\n",
    ],
    ids=["from", "import", "from-package", "function-local", "type-checking"],
)
def test_checker_fails_when_a_forbidden_import_is_added(tmp_path: Path, code: str) -> None:
    src = _tree(tmp_path, {"low/a.py": code, "high/b.py": "from kvgate.low.a import x\n"})
    found = violations(src, dependency_table(TABLE))
    assert len(found) == 1 and "low -> high" in found[0] and found[0].startswith("low/a.py:")


def test_a_top_level_module_imports_no_package(tmp_path: Path) -> None:
    """``kvgate/aio.py`` (task helpers every package uses) sits below every package."""
    files = {"low/a.py": "", "aio.py": "from kvgate.low import a\n", "cli.py": "import kvgate.low\n"}
    src = _tree(tmp_path, files)
    assert violations(src, dependency_table(TABLE)) == ["aio.py:1: aio -> low (kvgate.low)"]
    # Nor the dispatch (which imports every package), by either spelling (review s11-hard L3); a package
    # may import aio, only one whose row says "everything" the dispatch.
    files = {
        "low/a.py": "import kvgate.aio\n",
        "high/b.py": "from kvgate import cli\n",
        "tools/c.py": "import kvgate.cli\n",
        "aio.py": "import kvgate.cli\nfrom kvgate import cli\n",
        "cli.py": "",
    }
    src = _tree(tmp_path / "2", files)
    assert violations(src, dependency_table(TABLE)) == [
        "aio.py:1: aio -> cli (kvgate.cli)",
        "aio.py:2: aio -> cli (kvgate.cli)",
        "high/b.py:1: high -> cli (kvgate.cli)",
    ]


def test_checker_fails_on_a_package_missing_from_the_table(tmp_path: Path) -> None:
    src = _tree(tmp_path, {"low/a.py": "", "stray/s.py": ""})
    assert violations(src, dependency_table(TABLE)) == ["stray/: not in the dependency table"]


def test_checker_fails_on_the_real_tree_with_a_forbidden_import(tmp_path: Path) -> None:
    """The real table and a copy of the real source, plus scheduling importing config: caught."""
    import shutil

    copy = tmp_path / "kvgate"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    table = dependency_table(DOC.read_text())
    assert violations(copy, table) == []
    (copy / "scheduling" / "sneaky.py").write_text("from kvgate.config.picker import load_config\n")
    assert violations(copy, table) == ["scheduling/sneaky.py:1: scheduling -> config (kvgate.config.picker)"]
