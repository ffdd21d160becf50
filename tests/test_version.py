"""The source digest rows carry: it must change with the package's code, and only with it."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import inilora.version as version

PACKAGE = Path(version.__file__).resolve().parent


def _digest_of(tree: Path) -> str:
    spec = importlib.util.spec_from_file_location("copied_version", tree / "version.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_digest()


def test_the_digest_follows_the_source_and_nothing_else(tmp_path):
    tree = tmp_path / "inilora"
    shutil.copytree(PACKAGE, tree, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    assert _digest_of(tree) == version.source_digest()
    (tree / "notes.txt").write_text("not code")
    (tree / "__pycache__").mkdir(exist_ok=True)
    (tree / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert _digest_of(tree) == version.source_digest()
    with open(tree / "rates.py", "a") as f:
        f.write("\n# an edit\n")
    assert _digest_of(tree) != version.source_digest()


def test_rows_record_it():
    from inilora.train.outputs import environment

    assert environment()["inilora_source"] == version.source_digest()
