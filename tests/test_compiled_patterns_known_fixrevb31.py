"""Review rev-b31 F1: the compiled-patterns check (tests/test_compiled_patterns_perf31.py) keyed its one
allowed interpreted subclass by line number (``sloadmission.py:35``), so a line added above it in
flowcontrol/sloadmission.py -- a module that test never imports, so land.sh did not run it -- failed the
final CI run. Keyed by module and class now. Fails on ad2c0cca (``sloadmission.py:36: ...``)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _check() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "compiled_patterns_fixrevb31", ROOT / "tests" / "test_compiled_patterns_perf31.py"
    )
    assert spec is not None and spec.loader is not None
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    return check


def test_a_line_added_above_the_known_subclass_does_not_fail_the_check(tmp_path: Path) -> None:
    check = _check()  # (a module of its own: SRC and ROOT changed here change nothing elsewhere)
    shutil.copytree(
        ROOT / "src" / "kvgate",
        tmp_path / "src" / "kvgate",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"),
    )
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "build_compiled.py", tmp_path / "scripts" / "build_compiled.py")
    path = tmp_path / "src" / "kvgate" / "flowcontrol" / "sloadmission.py"
    path.write_text("# a comment\n# and another\n" + path.read_text())
    check.SRC = tmp_path / "src"
    check.ROOT = tmp_path
    check.test_no_interpreted_module_subclasses_a_compiled_class()
