"""What inilora may do to a user's folders (docs/design.md §8), decided before any model loads.

The rule, one place for every command that writes a folder (``init``, ``export``,
``approximate --report``, ``train``, ``compare``):

- a missing or empty folder is written;
- an existing, non-empty folder is never deleted or replaced without ``overwrite``;
- with ``overwrite``, only a folder holding nothing but what inilora itself wrote is
  replaced: an adapter (``inilora.json`` beside PEFT's adapter files) or an export (its
  ``inilora-export.json`` lists the files it wrote), each with the sha256 of every file
  recorded at write time.  A folder that also holds anything else (Trainer ``checkpoint-*``
  folders, the user's files) or a file of ours the user changed since (an edited
  ``README.md``) is refused, naming what is there;
- never the command's own input, nor a folder that contains it.

Writability is checked by creating and removing a probe file in the nearest existing
folder, so a read-only or impossible path fails before the work, not after it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import InitError

#: what ``save_pretrained`` of an inilora adapter writes (PEFT's files, our sidecar, the A0/B0 folder)
ADAPTER_ENTRIES = frozenset({"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin",
                             "inilora.json", "inilora_init", "README.md"})
#: an export's marker: ``{"layout": ..., "files": [top-level names it wrote], "digests": {path: sha256}}``
EXPORT_MARKER = "inilora-export.json"
#: the adapter's sidecar, where ``init`` records the digest of every file it wrote under ``"files"``
SIDECAR = "inilora.json"
#: text a user may well edit in place (a model card): without a recorded digest it is never presumed ours
_EDITABLE = frozenset({"README.md"})


def file_digests(folder: Path, skip: Iterable[str] = ()) -> dict[str, str]:
    """``relative path → sha256`` of every file under ``folder`` but the top-level names in ``skip``."""
    from .fileio import file_digest

    skip = set(skip)
    return {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] not in skip}


def record_adapter_files(folder: Path) -> None:
    """Write into the adapter's sidecar the digest of every file of the (finished, not yet moved) adapter
    folder, so a later ``--overwrite`` replaces only what still holds what inilora wrote."""
    from .fileio import atomic_write_json

    sidecar = folder / SIDECAR
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    meta["files"] = file_digests(folder, skip={SIDECAR})
    atomic_write_json(sidecar, meta)


def _changed(folder: Path, digests: dict[str, str], marker: str) -> set[str]:
    """Top-level names whose files differ from the digests recorded when inilora wrote them."""
    now = file_digests(folder, skip={marker})
    return {rel.split("/")[0] for rel in set(now) | set(digests) if now.get(rel) != digests.get(rel)}


def foreign_entries(folder: Path) -> list[str]:
    """The entries of ``folder`` that inilora did not write (all of them when nothing marks it as ours),
    and those it wrote whose content someone changed since (named so)."""
    names = sorted(p.name for p in folder.iterdir())
    allowed: set[str] = set()
    digests = None
    marker = folder / EXPORT_MARKER
    try:
        if marker.is_file():
            record = json.loads(marker.read_text())
            allowed, digests, own = {*record["files"], EXPORT_MARKER}, record.get("digests"), EXPORT_MARKER
        elif (folder / SIDECAR).is_file():
            digests, own = json.loads((folder / SIDECAR).read_text()).get("files"), SIDECAR
            allowed = set(ADAPTER_ENTRIES) - (_EDITABLE if digests is None else set())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        allowed, digests = set(), None
    if isinstance(digests, dict):
        allowed = {rel.split("/")[0] for rel in digests} | {own}
        changed = _changed(folder, digests, own)
        return [f"{n} (changed since inilora wrote it)" if n in changed and n in allowed else n
                for n in names if n not in allowed or n in changed]
    undigested_adapter = not marker.is_file() and (folder / SIDECAR).is_file()
    return [f"{n} (no digest recorded: it may be yours)" if undigested_adapter and n in _EDITABLE else n
            for n in names if n not in allowed]


def check_writable(path: Path, what: str) -> None:
    """Create and remove a probe file where ``path`` would be written (its nearest existing folder)."""
    path = Path(path)
    probe_dir = path if path.is_dir() else path.parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise InitError(f"{what} {path}: {probe_dir} is a file, not a folder; choose another path.")
    try:
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".inilora-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InitError(f"{what} {path} cannot be written ({exc.strerror or exc}); choose a writable path.") from None


def check_output_dir(path: Path, *, what: str, overwrite: bool = False, inputs: Iterable[Path] = ()) -> None:
    """Refuse, before any work, an output folder this command may not write (the module's rule)."""
    path = Path(path)
    here = path.resolve()
    for given in inputs:
        src = Path(given).resolve()
        if here == src or here in src.parents:
            raise InitError(f"{what} {path} is (or contains) this command's input {given}; choose another folder.")
    if path.exists() and not path.is_dir():
        raise InitError(f"{what} {path} is a file; choose a folder path.")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise InitError(f"{what} {path} exists and is not empty; choose a new folder, or pass --overwrite to "
                            "replace it (only a folder that holds nothing but inilora's own output is replaced).")
        foreign = foreign_entries(path)
        if foreign:
            shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
            raise InitError(f"{what} {path} also holds what inilora did not write ({shown}); it is not replaced, "
                            "even with --overwrite. Choose a new folder.")
    check_writable(path, what)


def check_run_folder(path: Path, *, marker: str, kind: str, error: type[InitError] = InitError) -> None:
    """A resumable run folder (``train``'s, ``compare``'s) is made by its run: an existing, non-empty
    folder without the run's ``marker`` file holds someone else's files and is refused, before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"output_dir {path} is a file; choose a folder path")
    if path.is_dir() and not (path / marker).is_file() and any(path.iterdir()):
        names = sorted(p.name for p in path.iterdir())[:5]
        raise error(f"output_dir {path} holds files that are not an inilora {kind} ({', '.join(names)}); "
                    "choose a new folder")
    check_writable(path, "output_dir")


def check_output_file(path: Path, *, what: str, overwrite: bool = False, marker: str) -> None:
    """The same rule for a single file: replaced only with ``overwrite`` and only if it is a JSON
    file inilora wrote (it holds the key ``marker``)."""
    path = Path(path)
    if path.is_dir():
        raise InitError(f"{what} {path} is a folder; give a file path.")
    if path.exists():
        if not overwrite:
            raise InitError(f"{what} {path} exists; choose a new file, or pass --overwrite to replace it.")
        try:
            ours = marker in json.loads(path.read_text())
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise InitError(f"{what} {path} was not written by inilora; it is not replaced, even with --overwrite.")
    check_writable(path, what)


def write_export_marker(folder: Path, layout: str, source: str | None, **extra) -> None:
    """Mark a finished export (called on the temp folder, before it is moved into place); ``extra``:
    more of inilora's own metadata (the base's local folder when the export names its hub name)."""
    files = sorted(p.name for p in folder.iterdir())
    (folder / EXPORT_MARKER).write_text(json.dumps({"layout": layout, "source": source, "files": files, **extra,
                                                    "digests": file_digests(folder)}, indent=2))


__all__ = ["ADAPTER_ENTRIES", "EXPORT_MARKER", "check_output_dir", "check_output_file", "check_run_folder",
           "check_writable", "file_digests", "foreign_entries", "record_adapter_files", "write_export_marker"]
