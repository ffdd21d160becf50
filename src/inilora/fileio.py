"""Writing files the way a user expects: atomically, and readable by others as the umask says.

One place for the three things every writer here needs (issue 14/15, docs/design.md §8):
``atomic_*`` write to a temp file beside the target, fsync and rename, so a kill leaves the old
file or the new one, never half of one; :func:`temp_dir` / :func:`replace_dir` do the same for
folders.  ``tempfile`` creates files 0600 and folders 0700; both are widened to what the umask
allows (0644 / 0755 typically), as PEFT's own ``save_pretrained`` leaves them, so a colleague, a
container running as another user or a serving process can read an adapter or export.
:func:`cache_root` is ``$INILORA_CACHE``, read at every call.  Torch-free.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """``$INILORA_CACHE`` or ``~/.cache/inilora`` (read at every call: tests and users change it)."""
    return Path(os.environ.get("INILORA_CACHE") or Path.home() / ".cache" / "inilora").expanduser()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """0o666 less the umask: what ``open(path, "w")`` would have given."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """0o777 less the umask: what ``mkdir`` would have given."""
    return 0o777 & ~_umask()


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` beside ``path``, fsync, set the umask's mode, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def temp_dir(parent: Path, name: str) -> Path:
    """A fresh folder beside ``parent / name`` to build an output in, with the umask's mode."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-"))
    os.chmod(tmp, dir_mode())
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished folder into place; an existing one is swapped out, then removed.

    Every file and folder in it first gets the umask's mode: some writers (safetensors ≥ 0.5,
    ``tempfile``) create files 0600, which nobody else could read.
    """
    fmode, dmode = file_mode(), dir_mode()
    for p in [tmp, *tmp.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, dmode if p.is_dir() else fmode)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "cache_root", "dir_mode", "file_digest", "file_mode",
           "replace_dir", "temp_dir"]
