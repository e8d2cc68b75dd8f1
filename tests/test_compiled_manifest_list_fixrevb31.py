"""Review rev-b31 F8: the stale-build guard compared only the sources its manifest lists, so a build made
with an older module list (session 30's: no no_hit_lru, front, body parse) imported after a `git pull`:
no_hit_lru stayed interpreted beside the compiled prefix_cache, and the no-hit-lru-scorer could not be made
("interpreted classes cannot inherit from compiled"). The list lives in kvgate/_compiled_check.py now
(scripts/build_compiled.py reads it there) and a manifest of another set is refused. Fails on daf73f98."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvgate import _compiled_check

ROOT = Path(__file__).resolve().parent.parent
NEW = ("no_hit_lru.py", "httpfront/server.py", "openai/request.py")  # (not in session 30's build)


def _tree(tmp_path: Path, built: list[str]) -> Path:
    """A src/ with the package top and the compiled modules' sources, and a manifest of ``built``."""
    src = tmp_path / "src"
    for rel in ["kvgate/__init__.py", "kvgate/_compiled_check.py", *_compiled_check.MODULES]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "src" / rel, src / rel)
    sources = {rel: hashlib.sha256((src / rel).read_bytes()).hexdigest() for rel in built}
    (src / "kvgate" / "_compiled_manifest.json").write_text(json.dumps({"sources": sources}))
    return src


def test_a_build_made_with_an_older_module_list_is_refused(tmp_path: Path) -> None:
    old = [rel for rel in _compiled_check.MODULES if not rel.endswith(NEW)]
    src = _tree(tmp_path, old)
    with pytest.raises(ImportError, match="another module list") as got:
        _compiled_check.check(str(src / "kvgate" / "_compiled_manifest.json"))
    assert "kvgate/scheduling/plugins/no_hit_lru.py" in str(got.value)
    # (and as `import kvgate` meets it)
    code = "import kvgate"
    env = dict(os.environ, PYTHONPATH=str(src))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode != 0 and "another module list" in run.stderr, run.stderr[-2000:]
    assert "make compiled" in run.stderr and "make pure" in run.stderr


def test_a_build_of_a_module_no_longer_listed_is_refused_and_the_same_list_is_not(tmp_path: Path) -> None:
    extra = "kvgate/scheduling/prefix.py"
    assert extra not in _compiled_check.MODULES
    src = _tree(tmp_path, list(_compiled_check.MODULES))
    _compiled_check.check(str(src / "kvgate" / "_compiled_manifest.json"))  # (the same list: fresh)
    (src / extra).write_text("")
    manifest = json.loads((src / "kvgate" / "_compiled_manifest.json").read_text())
    manifest["sources"][extra] = hashlib.sha256(b"").hexdigest()
    (src / "kvgate" / "_compiled_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ImportError, match=extra):
        _compiled_check.check(str(src / "kvgate" / "_compiled_manifest.json"))


def test_the_build_script_compiles_the_packaged_list() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_compiled.py"), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == _compiled_check.MODULES
