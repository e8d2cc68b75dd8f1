"""The optional compiled hot path (`make compiled`, scripts/build_compiled.py): every module it compiles stays
compilable by mypyc, and what mypyc does differently from the interpreter is kept out of their behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Every module the build compiles, imported by name: land.sh runs the test files importing a changed module,
# so an edit to one of them runs this file's mypyc check too.
import kvgate.gateway.proxy
import kvgate.gateway.upstream
import kvgate.httpfront.server
import kvgate.openai.request
import kvgate.openai.requeststats
import kvgate.requestcontrol.director
import kvgate.scheduling.blockhash
import kvgate.scheduling.plugins.kvgate_cost
import kvgate.scheduling.plugins.no_hit_lru
import kvgate.scheduling.plugins.pickers
import kvgate.scheduling.plugins.prefix_cache
import kvgate.scheduling.plugins.scorers
import kvgate.scheduling.profile
import kvgate.scheduling.types
from kvgate.openai.request import BodyError
from kvgate.scheduling import types

IMPORTED = [
    kvgate.scheduling.types,
    kvgate.scheduling.profile,
    kvgate.scheduling.blockhash,
    kvgate.scheduling.plugins.kvgate_cost,
    kvgate.scheduling.plugins.prefix_cache,
    kvgate.scheduling.plugins.no_hit_lru,
    kvgate.scheduling.plugins.scorers,
    kvgate.scheduling.plugins.pickers,
    kvgate.requestcontrol.director,
    kvgate.httpfront.server,
    kvgate.openai.request,
    kvgate.openai.requeststats,
    kvgate.gateway.proxy,
    kvgate.gateway.upstream,
]

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build_compiled.py"


@pytest.mark.timeout(660)
def test_every_module_of_the_compiled_build_compiles() -> None:
    """mypyc's front and middle end (type check, IR, C source; no C compiler). Fails on 6d96a979: plugin
    classes registered by decorator (mypyc compiles no decorated class, and they subclass compiled ones),
    ints assigned to float locals (mypyc holds a float unboxed)."""
    pytest.importorskip("mypyc")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--src", str(ROOT / "src")],
        capture_output=True,
        text=True,
        # (with gateway/proxy.py in the build (perf32) mypy reads most of the package: ~14 s of CPU, 4x
        # before; under CI's load a minute or more of wall time)
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]


def test_the_compiled_modules_are_source_files() -> None:
    """``--list`` names the modules the build compiles, each a source file of this checkout, and the ones
    this file imports."""
    cmd = [sys.executable, str(SCRIPT), "--list"]
    listed = subprocess.run(cmd, capture_output=True, text=True, check=True)
    modules = listed.stdout.split()
    assert modules and all((ROOT / "src" / m).is_file() for m in modules)
    # (the imports above name the same modules: keep them in step with the build's list)
    assert [m.removesuffix(".py").replace("/", ".") for m in modules] == [m.__name__ for m in IMPORTED]


def test_error_classes_answer_their_status_as_class_attributes() -> None:
    """Compiled, a class-body default of an exception subclass is an instance slot its ``__init__`` never
    fills (the gateway answered 500 for every picker error and bad body): the codes are ``ClassVar``s, on
    the class itself. Fails on 6d96a979 (plain class-body assignments, not ``ClassVar``)."""
    for cls in (types.SchedulingError, types.NoCapacityError, types.ShedError, types.PoolBusyError):
        assert "status" in vars(cls) and "code" in vars(cls)
    if types.__file__.endswith(".py"):  # (a compiled class keeps no ``__annotations__``)
        for cls in (types.SchedulingError, types.ShedError, BodyError):
            assert "ClassVar" in cls.__annotations__.get("status", "")
    assert types.DrainEvictedError("x").retry_after == "1" and types.ShedError("x").status == 429
