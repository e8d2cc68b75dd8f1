"""Review rev-b31 F2-F7: gaps in the compiled-patterns check (tests/test_compiled_patterns_perf31.py), each
a sample mypy --strict accepts that the check judged wrong. Every test fails on d35e62a9.

F2: mypyc makes every class of a compiled module native whatever its bases (decorators and metaclass
decide: mypyc/irbuild/util.py ``is_implicit_extension_class``); compiled, ``class X(QueueScorer)`` in an
interpreted module raises "interpreted classes cannot inherit from compiled", and the check held
QueueScorer non-native. F3: an except variable also bound by a loop is typed once (the loop's ``int``),
and the clause's exception fails the check compiled. F4: ``assert self.p is None`` narrows as an ``if``
does. F5: a native class imported through a re-export. F6: ``metaclass=ABCMeta`` stays native. F7: one
tuple of exception types in two orders is one type."""

from __future__ import annotations

import ast
import importlib.util
import textwrap
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _check() -> ModuleType:
    """The check as a module of its own: SRC and ROOT changed here change nothing elsewhere."""
    spec = importlib.util.spec_from_file_location(
        "compiled_patterns_gaps_fixrevb31", ROOT / "tests" / "test_compiled_patterns_perf31.py"
    )
    assert spec is not None and spec.loader is not None
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    return check


def _tree(src: str) -> ast.Module:
    return ast.parse(textwrap.dedent(src))


def _package(tmp_path: Path, files: dict[str, str]) -> ModuleType:
    """The check pointed at a kvgate package of ``files`` (path under kvgate/ -> source)."""
    for rel, text in files.items():
        path = tmp_path / "src" / "kvgate" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    check = _check()
    check.SRC = tmp_path / "src"
    check.ROOT = tmp_path
    return check


def test_the_plugin_classes_and_the_front_protocol_are_native() -> None:
    check = _check()
    native = check.native_classes([check._dotted(r) for r in check._modules()])
    for name in [
        "kvgate.scheduling.plugins.scorers.QueueScorer",
        "kvgate.scheduling.plugins.prefix_cache.PrefixCacheScorer",
        "kvgate.scheduling.plugins.pickers.MaxScorePicker",
        "kvgate.httpfront.server.FrontProtocol",
    ]:
        assert name in native, name


def test_decorators_and_metaclasses_decide_native(tmp_path: Path) -> None:
    check = _package(
        tmp_path,
        {
            "__init__.py": "",
            "framework.py": "from abc import ABC\n\nclass Base(ABC):\n    pass\n",
            "comp.py": """
            import enum
            import functools
            from abc import ABCMeta
            from dataclasses import dataclass
            from typing import NamedTuple, Protocol

            from kvgate.framework import Base

            class Plugin(Base):
                pass

            class Meta(metaclass=ABCMeta):
                pass

            @dataclass(slots=True)
            class Data:
                x: int

            class Proto(Protocol):
                pass

            @functools.total_ordering
            class Decorated:
                pass

            class Color(enum.Enum):
                RED = 1

            class Pair(NamedTuple):
                a: int

            class Other(metaclass=type("M", (type,), {})):
                pass
            """,
        },
    )
    got = {n.rpartition(".")[2] for n in check.native_classes(["kvgate.comp"])}
    assert got == {"Plugin", "Meta", "Data", "Proto"}


def test_a_subclass_of_a_reexported_native_class_is_flagged(tmp_path: Path) -> None:
    check = _package(
        tmp_path,
        {
            "__init__.py": "",
            "comp.py": "class Native:\n    pass\n",
            "reexport.py": "from kvgate.comp import Native\n\n__all__ = ['Native']\n",
            "user.py": "from kvgate.reexport import Native\n\n\nclass Mine(Native):\n    pass\n",
        },
    )
    assert check.interpreted_subclasses(["kvgate.comp"]) == {
        "kvgate.user.Mine(kvgate.comp.Native)": "src/kvgate/user.py:4"
    }
    # (the build's own: offload re-exports the body parse's ShareFull)
    index = _check()._Index(ROOT / "src")
    assert index.canonical("kvgate.httpfront.offload.ShareFull") == "kvgate.openai.request.ShareFull"


def test_an_except_name_also_bound_by_a_loop_or_an_assignment_is_flagged() -> None:
    check = _check()
    loop = """
    def f(items: list[int]) -> None:
        for e in items:
            print(e + 1)
        try:
            g()
        except ValueError as e:
            print(e)
    """
    assert check.except_names(_tree(loop), "s") == ["s: f() binds 'except ... as e' and 'e' otherwise"]
    assigned = "def f():\n    e = 1\n    try:\n        g()\n    except ValueError as e:\n        h(e)\n"
    assert check.except_names(_tree(assigned), "s") != []
    own_scope = (
        "def f(x):\n    y = [e for e in x]\n"
        "    try:\n        g()\n    except ValueError as e:\n        h(y)\n"
    )
    assert check.except_names(_tree(own_scope), "s") == []


def test_one_tuple_of_exception_types_in_two_orders_is_one_type() -> None:
    src = """
    def f() -> None:
        try:
            g()
        except (KeyError, IndexError) as e:
            print(e)
        try:
            g()
        except (IndexError, KeyError) as e:
            print(e)
    """
    assert _check().except_names(_tree(src), "s") == []


def test_assert_is_none_narrows() -> None:
    src = """
    def f(self):
        assert self.p is None
        self.fill()
        if self.buf or self.p is not None:
            use(self.p)
        assert self.q is not None, self.q
    """
    assert _check().none_narrowed_reads(_tree(src), "s") == [
        f"s:{n}: self.{x} read where mypy holds it None" for n, x in [(5, "p"), (6, "p"), (7, "q")]
    ]
