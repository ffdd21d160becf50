"""The package version, in a module of its own: code that records it imports this, never the package
face (``inilora/__init__``), whose lazy names reach down into everything."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """12 hex digits of a SHA-256 over the package's own source (every ``.py`` and C/C++ file, by
    relative path and content). The version string stays 0.1.0 across commits, so this is what tells
    two rows measured by different code apart (``compare --reuse`` takes runs across sessions)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in {".py", ".c", ".cpp", ".h"} and p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]
