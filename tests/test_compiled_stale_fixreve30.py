"""A compiled build's sources changed since it was built (a `git pull`, an edit): `import kvgate` refuses,
naming the source and `make compiled` / `make pure`, instead of running the old .so silently (review
s30-rev-e30 F1). Nothing is compiled here: the manifest the build writes is what kvgate checks."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build_compiled.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_compiled_fixreve30", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tree(tmp_path: Path) -> Path:
    """A src/ with kvgate's package top and the compiled modules' sources (text only: none is imported)."""
    src = tmp_path / "src"
    for rel in ["kvgate/__init__.py", "kvgate/_compiled_check.py", *_script().MODULES]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "src" / rel, src / rel)
    return src


def _import_kvgate(src: Path) -> subprocess.CompletedProcess[str]:
    code = "import sys, kvgate; print('checked' if 'kvgate._compiled_check' in sys.modules else 'unchecked')"
    env = dict(os.environ, PYTHONPATH=str(src))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_a_source_changed_since_the_build_is_refused_naming_the_rebuild(tmp_path: Path) -> None:
    """Fails before this change (the manifest is neither written nor read: kvgate imports)."""
    script = _script()
    src = _tree(tmp_path)
    manifest = script.write_manifest(src, script.digests(src))
    assert manifest == src / "kvgate" / "_compiled_manifest.json"
    fresh = _import_kvgate(src)
    assert fresh.returncode == 0 and fresh.stdout.split() == ["checked"], fresh.stderr[-2000:]

    types_py = src / "kvgate" / "scheduling" / "types.py"
    types_py.write_text(types_py.read_text() + "\n# pulled\n")  # (as a `git pull` would)
    stale = _import_kvgate(src)
    err = stale.stderr[-2000:]
    assert stale.returncode != 0
    assert "ImportError" in err and "kvgate/scheduling/types.py" in err, err
    assert "make compiled" in err and "make pure" in err, err
    assert "kvgate/scheduling/profile.py" not in err  # (only what changed is named)


def test_a_wrong_hash_in_the_manifest_is_refused(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    digests = _script().digests(src)
    digests["kvgate/requestcontrol/director.py"] = "0" * 64
    (src / "kvgate" / "_compiled_manifest.json").write_text(json.dumps({"sources": digests}))
    got = _import_kvgate(src)
    assert got.returncode != 0 and "kvgate/requestcontrol/director.py" in got.stderr, got.stderr[-2000:]


def test_pure_python_has_no_manifest_and_checks_nothing(tmp_path: Path) -> None:
    """Without a manifest (pure Python, CI) `import kvgate` loads no checker; `--clean` (`make pure`) removes
    the manifest a build wrote."""
    script = _script()
    src = _tree(tmp_path)
    got = _import_kvgate(src)
    assert got.returncode == 0 and got.stdout.split() == ["unchecked"], got.stderr[-2000:]

    script.write_manifest(src, script.digests(src))
    script.clean(src)
    assert not (src / "kvgate" / "_compiled_manifest.json").exists()
    got = _import_kvgate(src)
    assert got.returncode == 0 and got.stdout.split() == ["unchecked"], got.stderr[-2000:]


def test_the_manifest_is_git_ignored() -> None:
    ignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "/src/kvgate/_compiled_manifest.json" in ignore


def test_the_dev_extra_brings_what_make_compiled_imports() -> None:
    """Review s30-rev-e30 F2: scripts/build_compiled.py (and mypyc.build) import setuptools, which a Python
    >= 3.12 venv lacks; mypy's ``mypyc`` extra brings it. Fails before this change (``mypy==2.4.1``)."""
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dev = [d.replace(" ", "").lower() for d in doc["project"]["optional-dependencies"]["dev"]]
    assert any(d.startswith(("setuptools", "mypy[mypyc]")) for d in dev), dev
