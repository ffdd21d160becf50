"""The package's layers import downwards only (SPEC §9, docs/ARCHITECTURE.md): read from the
source, every import, at module level or inside a function, so a shortcut cannot hide."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "inilora"


def _imports(path: Path) -> set[str]:
    """Modules of the package imported by ``path`` (relative imports resolved), plus third-party roots."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                found.add(mod)
                if not node.module:
                    found |= {f"{mod}.{a.name}" for a in node.names}
            elif node.module:
                found.add(node.module)
    return found


def _module(name: str) -> Path:
    p = PKG.parent / Path(*name.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


@pytest.mark.parametrize("module,forbidden", [
    ("inilora.results", ("inilora.report", "inilora.runner", "inilora.plots", "inilora.demo", "inilora.train",
                         "torch", "transformers", "peft")),
    ("inilora.stats", ("inilora.report", "inilora.runner", "inilora.plots", "inilora.demo", "inilora.train",
                       "inilora.results", "torch", "transformers", "peft")),
    ("inilora.report", ("inilora.runner", "inilora.demo", "inilora.train")),
    ("inilora.plots", ("inilora.runner", "inilora.demo", "inilora.train", "inilora.report")),
    ("inilora.fileio", ("torch", "transformers", "peft", "inilora.cache", "inilora.models")),
    ("inilora.checks", ("transformers", "peft", "inilora.bridge", "inilora.peft_bridge", "inilora.models")),
    ("inilora.outdir", ("torch", "transformers", "peft")),
])
def test_lower_layers_never_import_upwards(module, forbidden):
    found = _imports(_module(module))
    bad = sorted(m for m in found for f in forbidden if m == f or m.startswith(f + "."))
    assert not bad, f"{module} imports {bad}"


def test_no_module_reaches_into_anothers_private_names():
    """plots used report's ``_matches``/``_sweep_keys``: private names stay in their module."""
    offenders = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module in ("report", "stats", "results"):
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not offenders, offenders


@pytest.mark.parametrize("path", sorted((PKG / "bridge").glob("*.py")), ids=lambda p: p.name)
def test_the_bridge_knows_no_training(path):
    """SPEC §9: the PEFT glue knows no training and no experiments (and its files no command line)."""
    found = _imports(path)
    bad = sorted(m for m in found for f in ("inilora.train", "inilora.runner", "inilora.report", "inilora.demo",
                                           "inilora.tasks", "inilora.cli", "transformers.trainer", "trl")
                 if m == f or m.startswith(f + "."))
    assert not bad, f"{path.name} imports {bad}"
