"""What mypyc compiles differently from the interpreter, refused in the modules the optional compiled build
compiles (scripts/build_compiled.py's MODULES), by reading their source: CI never compiles, so a pattern
that behaves one way pure and another compiled must be caught here. Session 30's three, each a 500 or an
error in tests/gateway against the compiled front and body parse (docs/benchmarks/gateway.md, Session 30):

- an ``except`` variable bound by two clauses of different types: mypyc gives a function's local one type,
  the first clause's, and the second clause's exception fails the check (``_BadRequest object expected;
  got _Refused``);
- an attribute read where mypy holds it narrowed to None (inside ``if self.x is None:``, after ``if
  self.x is not None: return``): mypy keeps the narrowing across calls, which may set it, and mypyc checks
  the read against it (``None object expected; got tuple``);
- a class of an interpreted module subclassing a native class of a compiled one: the compiled methods
  refuse its instances (``BodyError object expected; got ShareFull``, from its ``super().__init__``).
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

# The modules the checks read, imported so land.sh runs this file when one of them changes.
import kvgate.httpfront.server
import kvgate.openai.request  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def _modules() -> list[str]:
    spec = importlib.util.spec_from_file_location(
        "build_compiled_perf31", ROOT / "scripts" / "build_compiled.py"
    )
    assert spec is not None and spec.loader is not None
    mod: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return list(mod.MODULES)


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _own_nodes(fn: ast.AST) -> Iterator[ast.AST]:
    """``fn``'s nodes, not those of the functions, lambdas and classes inside it (their locals are theirs)."""
    todo = list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            todo.extend(ast.iter_child_nodes(node))


# --- an ``except`` variable of two types ------------------------------------------------------------
def _exception_type(node: ast.expr | None) -> str:
    """An except clause's type as text, a tuple's members sorted (``(A, B)`` and ``(B, A)`` are one)."""
    if node is None:
        return "BaseException"
    if isinstance(node, ast.Tuple):
        return "(" + ", ".join(sorted(ast.unparse(e) for e in node.elts)) + ")"
    return ast.unparse(node)


def _other_bindings(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """The names ``fn`` binds other than by ``except ... as``: its arguments, assignments, ``for`` and
    ``with`` targets (not a comprehension's variable: its own scope)."""
    a = fn.args
    out = {x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg] if x is not None}
    todo = list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        scopes = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef
        if isinstance(node, scopes | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        todo.extend(ast.iter_child_nodes(node))
    return out


def except_names(tree: ast.AST, where: str) -> list[str]:
    """Each function binding one ``except ... as NAME`` to clauses of different exception types, or to a
    clause and anything else (a loop variable, an assignment, an argument: mypyc types the local once)."""
    found = []
    for fn in _functions(tree):
        types: dict[str, set[str]] = {}
        for node in _own_nodes(fn):
            if isinstance(node, ast.ExceptHandler) and node.name is not None:
                types.setdefault(node.name, set()).add(_exception_type(node.type))
        other = _other_bindings(fn)
        for name, kinds in sorted(types.items()):
            if len(kinds) > 1:
                found.append(f"{where}: {fn.name}() binds 'except ... as {name}' to {sorted(kinds)}")
            elif name in other:
                found.append(f"{where}: {fn.name}() binds 'except ... as {name}' and '{name}' otherwise")
    return found


# --- an attribute read where mypy holds it narrowed to None --------------------------------------------
def _key(node: ast.AST) -> str | None:
    """``self.x``, ``conn.a.b``: an attribute of a name, which mypy narrows (None otherwise)."""
    if isinstance(node, ast.Attribute):
        inner = node.value
        while isinstance(inner, ast.Attribute):
            inner = inner.value
        if isinstance(inner, ast.Name):
            return ast.unparse(node)
    return None


def _none_keys(test: ast.expr) -> tuple[set[str], set[str]]:
    """The attributes ``test`` narrows to None where it is true, and where it is false."""
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        right = test.comparators[0]
        key = _key(test.left)
        if key and isinstance(right, ast.Constant) and right.value is None:
            if isinstance(test.ops[0], ast.Is):
                return {key}, set()
            if isinstance(test.ops[0], ast.IsNot):
                return set(), {key}
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        true, false = _none_keys(test.operand)
        return false, true
    if isinstance(test, ast.BoolOp):
        parts = [_none_keys(v) for v in test.values]
        if isinstance(test.op, ast.And):  # (all true: each one's; false: none known)
            return set().union(*(p[0] for p in parts)), set()
        return set(), set().union(*(p[1] for p in parts))  # (``or`` all false: each one's)
    return set(), set()


def _bound(node: ast.AST) -> set[str]:
    """What ``node`` (a statement, not the functions inside it) assigns: names and attributes."""
    out = set()
    for sub in [node, *_own_nodes(node)]:
        if isinstance(sub, ast.Name | ast.Attribute) and isinstance(sub.ctx, ast.Store | ast.Del):
            out.add(ast.unparse(sub))
    return out


def _forget(narrowed: set[str], bound: set[str]) -> set[str]:
    """``narrowed`` less what an assignment to one of ``bound`` ends (``conn = ...`` ends ``conn.x``)."""
    return {k for k in narrowed if not any(k == b or k.startswith(b + ".") for b in bound)}


def _exits(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[-1], ast.Return | ast.Raise | ast.Continue | ast.Break)


class _Narrowing:
    """Reads of attributes mypy holds narrowed to None, found in one function's statements in order.
    Conservative: a read with no call between the narrowing and it (which sees None, compiled too) is
    refused as well; write ``None`` there. Not seen: a narrowing mypy infers from types (``if not self.x``
    where the other type is always true)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.found: list[str] = []

    def expr(self, node: ast.AST | None, narrowed: set[str]) -> None:
        if node is None or isinstance(node, ast.Lambda):
            return
        if isinstance(node, ast.BoolOp):  # (``a is None and a.x``: the right operand is narrowed)
            now = set(narrowed)
            for value in node.values:
                self.expr(value, now)
                true, false = _none_keys(value)
                now |= true if isinstance(node.op, ast.And) else false
            return
        if isinstance(node, ast.IfExp):
            true, false = _none_keys(node.test)
            self.expr(node.test, narrowed)
            self.expr(node.body, narrowed | true)
            self.expr(node.orelse, narrowed | false)
            return
        key = _key(node)
        if key in narrowed and isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            self.found.append(f"{self.where}:{node.lineno}: {key} read where mypy holds it None")
        for child in ast.iter_child_nodes(node):
            self.expr(child, narrowed)

    def block(self, body: list[ast.stmt], narrowed: set[str]) -> set[str]:
        """Scan ``body`` entered with ``narrowed``; what is narrowed after it."""
        for stmt in body:
            narrowed = self.stmt(stmt, narrowed)
        return narrowed

    def stmt(self, stmt: ast.stmt, narrowed: set[str]) -> set[str]:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return narrowed  # (scanned as functions of their own)
        if isinstance(stmt, ast.If):
            true, false = _none_keys(stmt.test)
            self.expr(stmt.test, narrowed)
            after_body = self.block(stmt.body, narrowed | true)
            after_else = self.block(stmt.orelse, narrowed | false)
            if _exits(stmt.body):
                return after_else
            if stmt.orelse and _exits(stmt.orelse):
                return after_body
            return after_body & after_else
        if isinstance(stmt, ast.While | ast.For | ast.AsyncFor):
            # (what the loop assigns is not narrowed at its top: it may have run before)
            entry = _forget(narrowed, _bound(stmt))
            if isinstance(stmt, ast.While):
                self.expr(stmt.test, entry)
                true, false = _none_keys(stmt.test)
                self.block(stmt.body, entry | true)
            else:
                self.expr(stmt.iter, narrowed)
                self.block(stmt.body, entry)
            self.block(stmt.orelse, entry)
            return entry
        if isinstance(stmt, ast.Try | ast.TryStar):
            entry = _forget(narrowed, _bound(stmt))
            self.block(stmt.body, narrowed)
            for handler in stmt.handlers:
                self.block(handler.body, entry)
            self.block(stmt.orelse, entry)
            self.block(stmt.finalbody, entry)
            return entry
        if isinstance(stmt, ast.With | ast.AsyncWith):
            for item in stmt.items:
                self.expr(item.context_expr, narrowed)
            return self.block(stmt.body, _forget(narrowed, _bound(stmt)))
        if isinstance(stmt, ast.Match):
            self.expr(stmt.subject, narrowed)
            entry = _forget(narrowed, _bound(stmt))
            for case in stmt.cases:
                self.block(case.body, entry)
            return entry
        if isinstance(stmt, ast.Assert):  # (as ``if not test: raise``: what the test holds true after it)
            self.expr(stmt.test, narrowed)
            self.expr(stmt.msg, narrowed | _none_keys(stmt.test)[1])
            return _forget(narrowed, _bound(stmt)) | _none_keys(stmt.test)[0]
        if isinstance(stmt, ast.Assign | ast.AugAssign | ast.AnnAssign):
            self.expr(stmt.value, narrowed)
        else:
            for child in ast.iter_child_nodes(stmt):
                self.expr(child, narrowed)
        return _forget(narrowed, _bound(stmt))


def none_narrowed_reads(tree: ast.AST, where: str) -> list[str]:
    found = []
    for fn in _functions(tree):
        scan = _Narrowing(where)
        scan.block(fn.body, set())
        found += scan.found
    return found


# --- an interpreted subclass of a native compiled class ----------------------------------------------
def _imports(tree: ast.Module, module: str) -> dict[str, str]:
    """Local name -> the dotted name it stands for, from ``tree``'s imports."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # (relative)
                base = ".".join([*module.split(".")[: -node.level], *([base] if base else [])])
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
    return names


def _resolve(base: ast.expr, names: dict[str, str], module: str, local: set[str]) -> str:
    """``base``'s dotted name: imported, this module's own class, a builtin (``builtins.X``), or ``?X``."""
    if isinstance(base, ast.Subscript):  # (``Generic[T]``)
        base = base.value
    text = ast.unparse(base)
    head, _, rest = text.partition(".")
    if head in names:
        return names[head] + ("." + rest if rest else "")
    if text in local:
        return f"{module}.{text}"
    return f"builtins.{text}" if hasattr(builtins, text) else f"?{text}"


# mypyc compiles every class of a compiled module as a native class, whatever its bases, unless a decorator
# other than these or a metaclass other than these says otherwise, or it is a NamedTuple or a TypedDict
# (mypyc/irbuild/util.py ``is_extension_class``, ``is_implicit_extension_class``); a Protocol is a native
# trait. Each native class refuses an interpreted subclass ("interpreted classes cannot inherit from
# compiled"): a plugin class whose base is interpreted (``framework.Scorer``) too, and a Protocol.
NATIVE_DECORATORS = {"dataclass", "final", "trait", "mypyc_attr"}
NATIVE_METACLASSES = {"abc.ABCMeta", "typing.TypingMeta", "typing.GenericMeta"}
NON_NATIVE_BASES = {
    *(f"{m}.{n}" for m in ("typing", "typing_extensions") for n in ("NamedTuple", "TypedDict")),
    *(f"enum.{n}" for n in ("Enum", "IntEnum", "StrEnum", "Flag", "IntFlag")),  # (metaclass EnumMeta)
}


class _Index:
    """Every class of the kvgate modules under ``src``: its bases and metaclass by dotted name, and each
    module's imports (to follow a re-export to the class it names)."""

    def __init__(self, src: Path) -> None:
        self.imports: dict[str, dict[str, str]] = {}
        self.nodes: dict[str, ast.ClassDef] = {}
        self.bases: dict[str, list[str]] = {}
        self.metaclass: dict[str, str] = {}
        self.top: dict[str, set[str]] = {}  # (module -> its module-level classes' dotted names)
        for path in sorted((src / "kvgate").rglob("*.py")):
            module = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
            tree = ast.parse(path.read_text())
            names = self.imports[module] = _imports(tree, module)
            local = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
            self.top[module] = {f"{module}.{n.name}" for n in tree.body if isinstance(n, ast.ClassDef)}
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef) or f"{module}.{node.name}" in self.nodes:
                    continue  # (a module-level class comes before a nested one of its name)
                name = f"{module}.{node.name}"
                self.nodes[name] = node
                self.bases[name] = [_resolve(b, names, module, local) for b in node.bases]
                meta = [k.value for k in node.keywords if k.arg == "metaclass"]
                self.metaclass[name] = _resolve(meta[0], names, module, local) if meta else ""

    def canonical(self, dotted: str) -> str:
        """Where ``dotted`` is defined, following re-exports (``kvgate.httpfront.offload.ShareFull`` ->
        ``kvgate.openai.request.ShareFull``)."""
        seen = set()
        while dotted not in self.nodes and dotted not in seen:
            seen.add(dotted)
            module, _, name = dotted.rpartition(".")
            target = self.imports.get(module, {}).get(name)
            if target is None:
                break
            dotted = target
        return dotted

    def metaclass_allows_native(self, dotted: str, seen: frozenset[str] = frozenset()) -> bool:
        """Whether ``dotted``'s metaclass, its own or a base's, and its kind leave it native."""
        name = self.canonical(dotted)
        if name in NON_NATIVE_BASES:
            return False
        if name not in self.nodes or name in seen:  # (outside kvgate: ``type`` or ABCMeta, as builtins)
            return True
        meta = self.metaclass[name]
        if meta and self.canonical(meta) not in NATIVE_METACLASSES:
            return False
        return all(self.metaclass_allows_native(b, seen | {name}) for b in self.bases[name])

    def native(self, name: str) -> bool:
        """Whether mypyc compiles ``name`` (a class of a compiled module) as a native class."""
        for d in self.nodes[name].decorator_list:
            text = ast.unparse(d)
            if text.split("(")[0].split(".")[-1] not in NATIVE_DECORATORS or "native_class=False" in text:
                return False
        return self.metaclass_allows_native(name)


def native_classes(modules: list[str]) -> set[str]:
    """The dotted names of the classes mypyc compiles as native classes in ``modules`` (dotted): each
    module-level class but a decorated one, one with a metaclass other than ABCMeta (its own or a base's:
    an Enum), a NamedTuple or a TypedDict. Bases do not decide: a class of an interpreted base is native."""
    index = _Index(SRC)
    return {name for module in modules for name in index.top.get(module, ()) if index.native(name)}


def interpreted_subclasses(modules: list[str]) -> dict[str, str]:
    """Each class of an interpreted kvgate module (under SRC) with a native class of ``modules`` as base
    (named where it is defined, through re-exports): ``module.Class(base)`` (no line number: a line added
    above it must not change the key) -> where it is."""
    index = _Index(SRC)
    native = {name for module in modules for name in index.top.get(module, ()) if index.native(name)}
    found = {}
    for name, bases in index.bases.items():
        module = name.rpartition(".")[0]
        if module in modules:
            continue
        for b in map(index.canonical, bases):
            if b in native:
                path = SRC / (module.replace(".", "/") + ".py")
                if not path.exists():
                    path = path.with_suffix("") / "__init__.py"
                found[f"{name}({b})"] = f"{path.relative_to(ROOT)}:{index.nodes[name].lineno}"
    return found


# Open, outside this build's area (flowcontrol, fc31's): works compiled only because the compiled
# ``SchedulingError.__init__`` it reaches checks ``self`` with ``PyObject_TypeCheck`` (mypyc checks exact
# types where a class has at most three compiled concrete classes, and ``SchedulingError`` has more); a
# compiled cast to ``PredictedMissError`` itself would refuse it. Moving it into ``scheduling/types.py``
# (re-exported from ``sloadmission``) closes it.
# Keyed by module and class, not line (a line added above it failed the check: review rev-b31 F1).
KNOWN = {"kvgate.flowcontrol.sloadmission.PredictedSLOMissError(kvgate.scheduling.types.PredictedMissError)"}


def _dotted(rel: str) -> str:
    return rel.removesuffix(".py").replace("/", ".")


def _trees() -> Iterator[tuple[ast.Module, str]]:
    for rel in _modules():
        yield ast.parse((SRC / rel).read_text()), f"src/{rel}"


# --- the tests ------------------------------------------------------------------------------------
def test_the_checks_read_the_front_and_the_body_parse() -> None:
    """The front and the body parse are in the build again (left out after session 30's differences)."""
    assert {"kvgate/httpfront/server.py", "kvgate/openai/request.py"} <= set(_modules())


def test_no_except_variable_is_bound_to_clauses_of_two_types() -> None:
    """Fails on 691110b3 with the front back in the build (``FrontProtocol.data_received``'s ``e``:
    ``_BadRequest``, ``_Refused``, ``(ValueError, UnicodeError)``)."""
    sample = "def f():\n try:\n  g()\n except A as e:\n  h(e)\n except B as e:\n  h(e)\n"
    assert except_names(ast.parse(sample), "sample") == ["sample: f() binds 'except ... as e' to ['A', 'B']"]
    found = [f for tree, where in _trees() for f in except_names(tree, where)]
    assert found == []


def test_no_attribute_is_read_where_mypy_holds_it_none() -> None:
    """Fails on 691110b3 with the front back in the build (``data_received`` read ``self._pending`` inside
    ``if ... self._pending is None:`` after ``self._parse_first(data)`` had set it: compiled, a 500 for a
    request whose head came without all of its body)."""
    sample = (
        "def f(self):\n"
        "    if self.p is None:\n"
        "        self.fill()\n"
        "        if self.p is not None:\n"  # (flagged: mypy still says None)
        "            use(self.p)\n"
        "    if self.q is not None:\n"
        "        return\n"
        "    self.fill()\n"
        "    use(self.q)\n"  # (flagged: narrowed by the early return)
        "    self.q = 1\n"
        "    use(self.q)\n"  # (not: assigned since)
        "    if self.r is None and other:\n"
        "        self.r = 2\n"
        "        use(self.r)\n"  # (not)
    )
    got = none_narrowed_reads(ast.parse(sample), "s")
    assert got == [
        f"s:{n}: self.{x} read where mypy holds it None" for n, x in [(4, "p"), (5, "p"), (9, "q")]
    ]
    found = [f for tree, where in _trees() for f in none_narrowed_reads(tree, where)]
    assert found == []


def test_no_interpreted_module_subclasses_a_compiled_class() -> None:
    """Fails on 691110b3 with the body parse back in the build (``httpfront/offload.py``'s ``ShareFull``
    subclassed ``openai.request.BodyError``: defined beside it now), and on 691110b3 as it is:
    ``no_hit_lru.NoHitLRUScorer`` subclassed the compiled ``prefix_cache.UsesPrefixPlugin`` (compiled, the
    ``no-hit-lru-scorer`` could not be made: "interpreted classes cannot inherit from compiled";
    ``no_hit_lru`` is compiled with them now)."""
    modules = [_dotted(rel) for rel in _modules()]
    native = native_classes(modules)
    # (the check knows them: the body parse's errors, the picker's, the Director, the plugin classes,
    # whose bases come from framework.py, interpreted, the front's Protocol; not a decorated class)
    assert {"kvgate.openai.request.BodyError", "kvgate.openai.request.ShareFull"} <= native
    assert {"kvgate.scheduling.types.ShedError", "kvgate.requestcontrol.director.Director"} <= native
    assert {
        "kvgate.scheduling.plugins.scorers.QueueScorer",
        "kvgate.httpfront.server.FrontProtocol",
    } <= native
    assert {"kvgate.httpfront.server.WriteWaits", "kvgate.httpfront.server.LimitsLike"} <= native
    found = interpreted_subclasses(modules)
    assert {f"{where}: {key}" for key, where in found.items() if key not in KNOWN} == set()
