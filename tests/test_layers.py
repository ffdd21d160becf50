"""docs/ARCHITECTURE.md, enforced: read from the source, every import (at module level or inside a
function) and every lazy link (``_LAZY`` maps, ``import_module`` targets), so a shortcut cannot hide.

The page's table says what each module may import from the package; its rules each name a test.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "inilora"
DOC = ROOT / "docs" / "ARCHITECTURE.md"

#: cycles known when this test was written, owned by another change (strict: an entry that no longer
#: exists fails ``test_no_import_cycle`` until it is removed here)
KNOWN_CYCLES: set[frozenset[str]] = set()
#: likewise for private names read across modules: (reader, home module, name)
KNOWN_PRIVATE = {("inilora.approx", "inilora.approx.triton_engine", "_import_triton")}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _package(path: Path) -> list[str]:
    name = _name(path).split(".")
    return name if path.name == "__init__.py" else name[:-1]


def _resolve(base: str, name: str) -> str:
    """``from base import name``: the submodule when ``name`` is one, else ``base`` itself."""
    return f"{base}.{name}" if f"{base}.{name}" in MODULES else base


def _base(node: ast.ImportFrom, path: Path) -> str:
    """The module a ``from ... import`` reads from, relative levels resolved."""
    if not node.level:
        return node.module or ""
    package = _package(path)
    return ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))


def _is_import_module(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Name) and f.id in ("import_module", "__import__")) or \
        (isinstance(f, ast.Attribute) and f.attr == "import_module")


def _string_tables(tree: ast.Module) -> set[str]:
    """Every string constant of the module's top-level assignments (``_LAZY`` maps, family tuples)."""
    found = set()
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            found |= {n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return found


@cache
def imports(module: str) -> frozenset[str]:
    """What ``module`` imports: package modules by full name, other libraries by their root name
    (and their full dotted name, for rules about a submodule such as ``transformers.trainer``).

    ``import_module(...)`` with a constant target is read as written; with a computed one (a lazy
    face), the module's string tables name the targets, and a computed import nothing there names
    fails: an import this test cannot read is an import it cannot check."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = _package(path)
    found: set[str] = set()
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found |= {a.name} if a.name in MODULES else {a.name, a.name.split(".")[0]}
        elif isinstance(node, ast.ImportFrom):
            base = _base(node, path)
            if base.split(".")[0] != "inilora":
                found |= {base, base.split(".")[0]}
                continue
            found |= {_resolve(base, a.name) for a in node.names}
        elif isinstance(node, ast.Call) and _is_import_module(node) and node.args:
            target = node.args[0]
            if isinstance(target, ast.Constant) and isinstance(target.value, str):
                name = target.value
                found.add(".".join(package) + name if name.startswith(".") else name)
            else:
                dynamic = True
    if dynamic:
        lazy = {_resolve(".".join(package), s.strip(".")) for s in _string_tables(tree)} & set(MODULES)
        lazy.discard(".".join(package))
        assert lazy, f"{module}: an import_module target computed from nothing this test can read"
        found |= lazy
    found.discard(module)
    return frozenset(found)


def _internal(module: str) -> set[str]:
    return {m for m in imports(module) if m in MODULES}


def _unit(module: str) -> str:
    """The table's granularity: ``inilora.bridge.build`` → ``bridge``; the face is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


# ------------------------------------------------------------------------------------------------
# the page


@cache
def table() -> tuple[dict[str, set[str]], set[str]]:
    """unit → the units its row allows, and the bottom row of the drawing (allowed to everyone)."""
    text = DOC.read_text()
    units = {_unit(m) for m in MODULES}
    bottom_line = next(ln for ln in text.splitlines() if "bottom, imported by any of the above" in ln)
    bottom = set(re.findall(r"[a-z_]+", bottom_line.split(":", 1)[1]))
    allowed: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows = {re.sub(r"(/|\.py)$", "", m) for m in re.findall(r"`([^`]+)`", cells[0])}
        may = units if "everything above" in cells[-1] else set(re.findall(r"[a-z_]+", cells[-1])) & units
        for unit in rows:  # the modules of one row may import each other
            allowed.setdefault(unit, set()).update(may | rows)
    return allowed, bottom


def test_the_page_names_every_module():
    """A new module (or package) gets a row, or a place in the bottom row: the page stays the map."""
    allowed, bottom = table()
    missing = sorted({_unit(m) for m in MODULES} - set(allowed) - bottom)
    assert not missing, f"docs/ARCHITECTURE.md has no row for {missing}"
    assert not (set(allowed) | bottom) - {_unit(m) for m in MODULES}, "the page names a module that does not exist"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_table(module):
    allowed, bottom = table()
    unit = _unit(module)
    may = allowed.get(unit, set()) | ({"errors", "version"} if unit in bottom else bottom) | {unit}
    bad = sorted(m for m in _internal(module) if _unit(m) not in may)
    assert not bad, f"{module} imports {bad}; docs/ARCHITECTURE.md allows {unit} only {sorted(may - {unit})}"


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), over every import and lazy link."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in _internal(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(MODULES):
        if m not in index:
            visit(m)
    return out


def test_no_import_cycle():
    cycles = _cycles()
    unknown = [c for c in cycles if frozenset(c) not in KNOWN_CYCLES]
    assert not unknown, f"import cycles: {unknown}"
    gone = [sorted(k) for k in KNOWN_CYCLES if list(sorted(k)) not in cycles]
    assert not gone, f"{gone} no longer a cycle: remove it from KNOWN_CYCLES"


def test_the_reader_sees_lazy_links_and_hidden_cycles(tmp_path, monkeypatch):
    """The reader itself, on the shape ``tasks/`` had: a face that imports its families lazily and a
    ``base`` (imported by every family) that imports the face back — a cycle, though no line says so."""
    pkg = tmp_path / "inilora"
    (pkg / "fam").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "fam" / "__init__.py").write_text(
        "import importlib\nfrom .base import get\n_FAMILIES = ('glue',)\n"
        "def load():\n    for f in _FAMILIES:\n        importlib.import_module(f'{__name__}.{f}')\n")
    (pkg / "fam" / "base.py").write_text("def get():\n    from . import load\n    load()\n")
    (pkg / "fam" / "glue.py").write_text("from .base import get\n")
    monkeypatch.setitem(globals(), "PKG", pkg)
    monkeypatch.setitem(globals(), "MODULES", {_name(p): p for p in sorted(pkg.rglob("*.py"))})
    imports.cache_clear()
    try:
        assert _internal("inilora.fam") == {"inilora.fam.base", "inilora.fam.glue"}
        assert _cycles() == [["inilora.fam", "inilora.fam.base", "inilora.fam.glue"]]
        (pkg / "fam" / "base.py").write_text("def get():\n    pass\n")  # the fix: base no longer imports the face
        imports.cache_clear()
        assert _cycles() == []
    finally:
        imports.cache_clear()


# ------------------------------------------------------------------------------------------------
# the rules


def _documented_internal_api(package: str) -> set[str]:
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text())) or ""
    return set(re.findall(r"``(_[A-Za-z]\w*)``", doc.split("Internal API", 1)[1])) if "Internal API" in doc else set()


def test_no_module_imports_anothers_private_names():
    """Private names stay in their module — imported by name or read as ``module._name`` — unless
    their package's docstring lists them as its internal API (``bridge/__init__.py``): then they
    stay in that package."""
    offenders = []
    for module, path in MODULES.items():
        package = ".".join(_package(path))
        tree = ast.parse(path.read_text())
        reached: list[tuple[str, str]] = []  # (home module, private name)
        bound: dict[str, str] = {}  # local name → package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _base(node, path).split(".")[0] == "inilora":
                base = _base(node, path)
                for a in node.names:
                    if _resolve(base, a.name) != base:
                        bound[a.asname or a.name] = _resolve(base, a.name)
                    elif a.name.startswith("_") and not a.name.startswith("__"):
                        reached.append((base, a.name))
            elif isinstance(node, ast.Import):
                bound.update({a.asname: a.name for a in node.names if a.asname and a.name in MODULES})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                reached.append((bound[node.value.id], node.attr))
        for home, name in reached:
            home_package = home if MODULES[home].name == "__init__.py" else home.rsplit(".", 1)[0]
            shared = home_package == package and name in _documented_internal_api(package)
            if home != module and not shared:
                offenders.append((module, home, name))
    assert not set(offenders) - KNOWN_PRIVATE, sorted(set(offenders) - KNOWN_PRIVATE)
    assert KNOWN_PRIVATE <= set(offenders), f"{KNOWN_PRIVATE - set(offenders)} fixed: remove it from KNOWN_PRIVATE"


def test_the_engine_imports_no_model_library():
    bad = {m: sorted(imports(m) & {"transformers", "peft", "trl", "bitsandbytes"}) for m in MODULES
           if _unit(m) == "approx"}
    assert not any(bad.values()), bad


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _unit(m) in ("bridge", "peft_bridge")))
def test_the_bridge_knows_no_training(module):
    """The PEFT glue knows no training and no experiments (and its files no command line)."""
    bad = sorted(m for m in imports(module) if (m in MODULES and _unit(m) in ("train", "runner", "report", "demo",
                                                                               "tasks", "cli"))
                 or m == "trl" or m.startswith("transformers.trainer"))
    assert not bad, f"{module} imports {bad}"


def test_tasks_know_no_lora_and_no_models():
    bad = {m: sorted(i for i in imports(m) if i in ("peft", "trl") or _unit(i) in
                     ("bridge", "peft_bridge", "methods", "models", "train", "exports", "quantized", "approx"))
           for m in MODULES if _unit(m) == "tasks"}
    assert not any(bad.values()), bad


def test_the_runner_knows_training_only_through_its_face():
    """``train.run``, ``train.resolve``, ``train.eval_tasks`` and ``train.check_all`` only: no submodule of train, and no layer below it that
    training owns (init methods, the bridge, tasks, models)."""
    tree = ast.parse(MODULES["inilora.runner"].read_text())
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("train", "inilora"):
            mod = node.module if node.level == 0 else f"inilora.{node.module}"
            if mod == "inilora.train":
                used |= {a.name for a in node.names}
    assert used <= {"run", "resolve", "eval_tasks", "check_all"}, used
    below = sorted(m for m in _internal("inilora.runner")
                   if m.startswith("inilora.train.") or _unit(m) in ("methods", "bridge", "peft_bridge", "tasks",
                                                                     "models", "approx"))
    assert not below, below


@pytest.mark.parametrize("module,forbidden", [
    ("inilora.results", ("report", "runner", "plots", "demo", "train", "torch", "transformers", "peft")),
    ("inilora.stats", ("report", "runner", "plots", "demo", "train", "results", "torch", "transformers", "peft")),
    ("inilora.report", ("runner", "demo", "train")),
    ("inilora.plots", ("runner", "demo", "train", "report")),
    ("inilora.fileio", ("torch", "transformers", "peft", "cache", "models")),
    ("inilora.checks", ("transformers", "peft", "bridge", "peft_bridge", "models")),
    ("inilora.outdir", ("torch", "transformers", "peft")),
])
def test_lower_layers_never_import_upwards(module, forbidden):
    bad = sorted(m for m in imports(module) if m in forbidden or (m in MODULES and _unit(m) in forbidden))
    assert not bad, f"{module} imports {bad}"


def test_every_rule_names_a_test_that_exists():
    """The rules at the end of the page each cite ``tests/...py[::test_name]``; each must exist."""
    rules = DOC.read_text().split("Rules that keep it this way", 1)[1]
    bullets = [b for b in re.split(r"\n- ", rules)[1:]]
    assert bullets
    for bullet in bullets:
        cited = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", bullet)
        assert cited, f"a rule names no test: {bullet[:80]!r}"
        for path, test in cited:
            text = (ROOT / path).read_text() if (ROOT / path).is_file() else None
            assert text is not None, f"{path} (cited by docs/ARCHITECTURE.md) does not exist"
            assert not test or re.search(rf"^def {test}\(", text, re.M), f"{path}::{test} does not exist"
