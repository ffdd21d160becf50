"""On-disk cache of fitted factors: computed once per base model and settings.

Stores the *unscaled* fit (U, P) so one entry serves every ``lora_alpha`` and rsLoRA
(docs/design.md §4).  An entry is a safetensors file plus a JSON file holding the full key and
the safetensors checksum; the JSON is written last, so an entry without it is
unfinished.  Writes are atomic (temp file + ``os.replace``) under a file lock, and an
entry whose key or checksum does not match is never used: we recompute and say so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from .errors import InitError
from .fileio import (  # noqa: F401 - re-exported
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    cache_root,
    file_digest,
)

log = logging.getLogger(__name__)
FORMAT = 1


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.cpu().contiguous().view(torch.uint8).numpy()))
    return h.hexdigest()


def atomic_save_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict | None = None) -> None:
    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                                             metadata=metadata))


class FitCache:
    """Fitted (U, P) per model and settings, under ``<root>/fits``."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.dir = Path(root) if root is not None else cache_root() / "fits"

    @staticmethod
    def key(fields: Mapping[str, Any]) -> str:
        blob = json.dumps({"format": FORMAT, **fields}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:40]

    def check_writable(self) -> None:
        """Fail before any work if the cache cannot be written."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.dir, prefix=".probe-"):
                pass
        except OSError as exc:
            raise InitError(
                f"the inilora cache directory {self.dir} is not writable ({exc.strerror or exc}). "
                "Set INILORA_CACHE to a writable directory, or pass cache=False to skip caching."
            ) from None

    def resume_path(self, fields: Mapping[str, Any]) -> Path:
        """Where an unfinished fit of this entry keeps its resume state (removed when done)."""
        return self.dir / f"{self.key(fields)}.resume.pt"

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        return self.dir / f"{key}.safetensors", self.dir / f"{key}.json", self.dir / f"{key}.lock"

    def get(self, fields: Mapping[str, Any]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict] | None:
        """The cached factors and metadata, or None (missing, unfinished, mismatched or corrupt)."""
        key = self.key(fields)
        data_path, meta_path, _ = self._paths(key)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            log.warning("inilora cache entry %s has an unreadable metadata file; recomputing.", key)
            return None
        expected = json.loads(json.dumps({"format": FORMAT, **fields}, sort_keys=True))
        if meta.get("key") != expected:
            log.warning("inilora cache entry %s was made for other settings; recomputing.", key)
            return None
        if not data_path.exists() or file_digest(data_path) != meta.get("sha256"):
            log.warning("inilora cache entry %s is corrupt (checksum mismatch); recomputing.", key)
            return None
        try:
            tensors = load_file(str(data_path))
            factors = {name: (tensors[f"{name}::U"], tensors[f"{name}::P"]) for name in meta["names"]}
            if sorted(tensors) != sorted(f"{n}::{x}" for n in meta["names"] for x in ("U", "P")):
                raise KeyError("tensor names differ from the metadata's")
        except Exception as exc:  # an edited "names" list, or a file safetensors refuses
            log.warning("inilora cache entry %s does not match its metadata (%s); recomputing.", key, exc)
            return None
        return factors, meta

    def put(self, fields: Mapping[str, Any], factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
            report: Mapping[str, Any] | None = None) -> Path:
        """Store an entry atomically; concurrent writers of one key serialise on a lock."""
        key = self.key(fields)
        data_path, meta_path, lock_path = self._paths(key)
        self.dir.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, (u, p) in factors.items():
            tensors[f"{name}::U"] = u
            tensors[f"{name}::P"] = p
        with FileLock(str(lock_path)):
            atomic_save_safetensors(data_path, tensors)
            meta = {
                "key": json.loads(json.dumps({"format": FORMAT, **fields}, sort_keys=True)),
                "names": sorted(factors),
                "sha256": file_digest(data_path),
                "report": dict(report or {}),
            }
            atomic_write_json(meta_path, meta)
        return meta_path
