"""Build (or remove) the optional compiled hot path: the request path's hottest pure-Python modules
compiled with mypyc into C extension modules, placed next to their sources.

    python scripts/build_compiled.py [--src SRC] [--clean | --check | --list]

Pure Python stays the default and what CI tests; `make compiled` runs this into the checkout's ``src/``
(which the editable install imports), `make pure` removes what it built. Python's import system prefers an
extension module (``profile.cpython-311-x86_64-linux-gnu.so``) over the ``.py`` beside it, so once built
the compiled modules are the ones imported, and an edited ``.py`` is NOT picked up until the next build:
the build records each source's sha256 in ``kvgate/_compiled_manifest.json`` (git-ignored; ``--clean``
removes it) and ``import kvgate`` refuses (ImportError naming the source) once one changed: run `make
compiled` again (or `make pure`). The modules share one library, ``kvgate/_compiled__mypyc*.so``. Needs mypy
(the ``dev`` extra, which ships mypyc) and a C compiler.
``--check``: mypyc's front and middle end only (type check, IR, C source into a temporary folder, no C
compiler): fails where a module stopped being compilable (tests/test_compiled_build_perf30.py runs it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def _modules() -> list[str]:
    """The list kvgate/_compiled_check.py holds (read by path: ``import kvgate`` refuses a stale build)."""
    path = Path(__file__).resolve().parent.parent / "src" / "kvgate" / "_compiled_check.py"
    spec = importlib.util.spec_from_file_location("kvgate_compiled_check_build", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return list(mod.MODULES)


# The request path's pure-Python modules, relative to src/ (docs/benchmarks/gateway.md, Session 30): kept in
# the package, so that a build made with another list is refused as stale too (review rev-b31 F8).
MODULES = _modules()
# What mypyc compiles differently from the interpreter (an ``except`` variable typed by its first clause,
# an attribute read while mypy holds it narrowed to None, an interpreted subclass of a compiled class:
# the front's and the body parse's 500s of session 30) is refused in these modules by
# tests/test_compiled_patterns_perf31.py.
GROUP = "kvgate._compiled"  # the shared library's module: kvgate/_compiled__mypyc*.so
# The sha256 of each compiled source, written after a build: kvgate/__init__.py refuses to import when one
# changed since (kvgate/_compiled_check.py), so a `git pull` cannot leave an old .so running silently.
MANIFEST = "kvgate/_compiled_manifest.json"


def built(src: Path) -> list[Path]:
    """The extension files a build left in ``src``: one per module and the shared library."""
    return sorted((src / "kvgate").glob("**/*.cpython-*.so"))  # (kvgate ships no other extension)


def clean(src: Path) -> None:
    for path in [*built(src), src / MANIFEST]:
        if path.exists():
            path.unlink()
            print(f"removed {path}")


def digests(src: Path) -> dict[str, str]:
    """Each of MODULES' sha256, by its path relative to ``src``."""
    return {rel: hashlib.sha256((src / rel).read_bytes()).hexdigest() for rel in MODULES}


def write_manifest(src: Path, sources: dict[str, str]) -> Path:
    path = src / MANIFEST
    path.write_text(json.dumps({"sources": sources}, indent=1, sort_keys=True) + "\n")
    return path


def check(src: Path) -> int:
    """mypyc up to C source, no compiler: 0 where every module compiles, else 1 (errors printed)."""
    from mypyc.build import mypyc_build
    from mypyc.options import CompilerOptions

    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="kvgate-mypyc-check-") as work:
        os.environ["MYPY_CACHE_DIR"] = os.path.join(work, "cache")  # (the checkout's own cache left alone)
        try:
            os.chdir(src.parent)
            paths = [os.path.join(src.name, rel) for rel in MODULES]
            mypyc_build(paths, CompilerOptions(target_dir=work, group_name=GROUP))
        except SystemExit as e:  # (mypyc prints its errors, then exits)
            return 1 if e.code else 0
        finally:
            os.chdir(here)
    return 0


def build(src: Path) -> None:
    from mypyc.build import mypycify  # (the dev extra: only this build needs it)
    from setuptools import setup

    clean(src)
    sources = digests(src)  # (read before compiling: an edit during the build shows as stale)
    root = src.parent
    work = Path(tempfile.mkdtemp(prefix="kvgate-mypyc-"))
    here = os.getcwd()
    try:
        os.chdir(root)  # mypy reads pyproject.toml's [tool.mypy] (mypy_path = src) from here
        paths = [os.path.join(src.name, rel) for rel in MODULES]
        extensions = mypycify(paths, group_name=GROUP, target_dir=str(work / "c"), opt_level="3")
        setup(
            name="kvgate-compiled",
            package_dir={"": src.name},
            ext_modules=extensions,
            script_args=["build_ext", "--inplace", "--build-temp", str(work / "o")],
        )
    finally:
        os.chdir(here)
        shutil.rmtree(work, ignore_errors=True)
    for path in built(src):
        print(f"built {path}")
    print(f"wrote {write_manifest(src, sources)}")


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parent.parent / "src")
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules: pure Python")
    parser.add_argument("--check", action="store_true", help="mypyc without the C compiler: compilable?")
    parser.add_argument("--list", action="store_true", help="print the modules this builds and exit")
    args = parser.parse_args()
    src = args.src.resolve()
    if args.list:
        print("\n".join(MODULES))
    elif args.check:
        return check(src)
    elif args.clean:
        clean(src)
    else:
        build(src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
