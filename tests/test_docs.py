"""The repository explains itself: no citation leads outside it, and every citation of the design
page names a section that exists there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = "../" + "shared"  # spelled so this file does not match itself
CITE = re.compile(r"design\.md §(\d+)")


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "src", "tests", "bench", "configs", "scripts", "docs", "README.md"],
                            cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:  # not a git checkout (an sdist): read the folders
        paths = [p for d in ("src", "tests", "bench", "configs", "scripts", "docs") for p in (ROOT / d).rglob("*")]
        paths.append(ROOT / "README.md")
    else:
        paths = [ROOT / f for f in listed.stdout.split()]
    out = []
    for p in paths:
        if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".yml", ".sh", ".cpp", ".txt", ""}:
            out.append(p)
    return out


def test_nothing_points_outside_the_repository():
    offenders = [str(p.relative_to(ROOT)) for p in _tracked_text_files() if OUTSIDE in p.read_text(errors="replace")]
    assert not offenders, f"{OUTSIDE} is not in a clone; cite docs/design.md instead: {offenders}"


def test_every_design_citation_names_an_existing_section():
    sections = {int(n) for n in re.findall(r"^## (\d+)\.", (ROOT / "docs" / "design.md").read_text(), re.M)}
    assert sections >= set(range(1, 11))
    bad = [(str(p.relative_to(ROOT)), n) for p in _tracked_text_files()
           for n in CITE.findall(p.read_text(errors="replace")) if int(n) not in sections]
    assert not bad, f"citations of sections docs/design.md does not have: {bad}"
