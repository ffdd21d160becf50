"""Run configurations: documented dataclasses loaded strictly from YAML.

A config is the user surface of training and comparison (litgpt-style): every field has a
default and a comment, and the loader refuses what it does not understand *before* any work —
an unknown key (with a "did you mean" suggestion), a wrong type, a value out of range — naming
the key path (``lora.rank``) and the file. Typos in a config must never silently fall back to a
default.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import InitError


class ConfigError(InitError):
    """A configuration file or mapping that cannot be run as written."""


@dataclass
class LoraSettings:
    """LoRA hyper-parameters. ``alpha`` defaults to ``rank`` (s = 1), as in every released script."""

    rank: int = 8
    alpha: float | None = None  # None: alpha = rank, so the scaling s = alpha / rank is 1
    dropout: float = 0.0
    targets: list[str] | None = None  # None: the model's query/value projections
    use_rslora: bool = False

    def __post_init__(self) -> None:
        _check(self.rank >= 1, "rank", f"must be ≥ 1, got {self.rank}")
        _check(self.alpha is None or self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.targets is None or len(self.targets) > 0, "targets", "must name at least one module")
        _check(self.targets is None or all(self.targets), "targets", "module names must not be empty")

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)


@dataclass
class GenerationSettings:
    """Decoding for generative evaluation (paper: greedy for GSM8K/MATH; HumanEval n=20, T=0.1, top-p 0.95)."""

    max_new_tokens: int = 256  # a cap: an eval task's own, smaller limit wins
    batch_size: int = 16
    num_samples: int = 1  # completions per problem (HumanEval pass@k needs n ≥ k)
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, "max_new_tokens", "must be ≥ 1")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.num_samples >= 1, "num_samples", "must be ≥ 1")
        _check(self.temperature >= 0, "temperature", "must be ≥ 0")
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")


@dataclass
class CalibrationSettings:
    """Calibration data for the data-driven inits (eva, corda, lora-ga): ``examples`` seeded training
    examples of ``task``, tokenized; None: no calibration (the other methods)."""

    task: str | None = None
    examples: int = 32

    def __post_init__(self) -> None:
        _check(self.examples >= 1, "examples", "must be ≥ 1")

    @property
    def spec(self) -> str | None:
        return None if self.task is None else f"{self.task}:{self.examples}"


@dataclass
class HarnessSettings:
    """An external evaluation harness run in-process on the trained (live) model after SFT:
    lm-evaluation-harness tasks by name (``gsm8k``, ``mmlu``, …) or from ``include_path`` (a folder
    of task YAMLs). A residual adapter is scored on its own residual base, with no export."""

    harness: Literal["lm-eval"] = "lm-eval"
    tasks: list[str] = field(default_factory=list)
    include_path: str | None = None  # a folder of extra task YAMLs (lm-eval's --include_path)
    num_fewshot: int | None = None  # None: each task's own default
    limit: float | None = None  # examples per task: a count ≥ 1, or a fraction < 1 (lm-eval's --limit)
    batch_size: int = 8
    allow_code_execution: bool = False  # HumanEval & co. run model-written code: say so (lm-eval's unsafe tasks)

    def __post_init__(self) -> None:
        _check(len(self.tasks) > 0, "tasks", "must name at least one lm-eval task")
        _check(all(isinstance(t, str) and t.strip() for t in self.tasks), "tasks", "names must not be empty")
        _check(self.num_fewshot is None or self.num_fewshot >= 0, "num_fewshot", "must be ≥ 0 or null")
        _check(self.limit is None or self.limit > 0, "limit", "must be > 0 (a count, or a fraction < 1) or null")
        _check(self.limit is None or self.limit < 1 or float(self.limit).is_integer(), "limit",
               f"a count must be a whole number, got {self.limit}")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")


@dataclass
class TrainConfig:
    """One fine-tuning run: model × method × task × hyper-parameters × seed."""

    model: str = "embedded:minilm"  # hub name, local folder or embedded:minilm / embedded:smollm2
    task: str = "offline-topic"  # a task of inilora.tasks (`inilora tasks` lists them)
    method: str = "lora"  # an init method of the registry, or a training mode (train.modes): full, bitfit, houlsby, pfeiffer
    method_options: dict[str, Any] = field(default_factory=dict)  # passed to the init method
    lora: LoraSettings = field(default_factory=LoraSettings)
    seed: int = 0  # seeds the init (so inilora's fit too) and training
    output_dir: str = "runs/run"
    # data
    train_size: int | None = None  # None: the whole training split
    eval_size: int | None = None  # None: the whole evaluation split
    max_length: int | None = None  # None: the task's default
    eval_tasks: list[str] | None = None  # generative evals after SFT; None: the task's defaults
    dev_size: int = 0  # NLU: training-split rows held out (never trained on) to pick the best epoch and tune on; 0: none
    # optimisation (paper NLU: AdamW 3e-4, warmup 0.06, batch 32)
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 3e-4
    batch_size: int = 32
    grad_accum: int = 1
    warmup_ratio: float = 0.06
    scheduler: str = "linear"  # any transformers SchedulerType: linear, cosine, constant, ...
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every_epoch: bool = True  # NLU: evaluate each epoch, report the best epoch
    logging_steps: int = 10
    save_steps: int = 0  # > 0: checkpoint every N optimizer steps; 0: at the end of each epoch
    save_total_limit: int = 1  # checkpoints kept (the newest); resuming needs one
    # hardware
    device: str = "auto"  # auto: cuda when present, else cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on a GPU, fp32 on the CPU
    shared_fit: bool = False  # inilora: reuse the seed-0 fit for every training seed (paper)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings,
                                             metadata={"omit_when": {"task": None, "examples": 32}})
    # lm-evaluation-harness after SFT (pip install 'inilora[lmeval]'); omitted from the resolved config
    # when null, so run folders and grids recorded before it existed still resume
    eval: HarnessSettings | None = field(default=None, metadata={"omit_when": None})
    # a learning-rate race's rung is a *prefix* of the full run: it trains on max_steps' schedule, stops
    # after `stop_at` steps leaving its checkpoint, and the next rung continues that checkpoint
    # (`resume_from`) instead of starting over; both omitted at their defaults (older folders resume)
    stop_at: int = field(default=0, metadata={"omit_when": 0})  # > 0: stop after this many steps (< max_steps)
    resume_from: str | None = field(default=None, metadata={"omit_when": None})  # a prefix run's checkpoint

    def __post_init__(self) -> None:
        _check(self.epochs > 0 or self.max_steps > 0, "epochs", "must be > 0 (or set max_steps)")
        _check(self.stop_at >= 0, "stop_at", f"must be ≥ 0 (0: train to the end), got {self.stop_at}")
        _check(not self.stop_at or 0 < self.stop_at < self.max_steps, "stop_at",
               f"stops a run of max_steps early: set max_steps > stop_at ({self.stop_at}); got max_steps {self.max_steps}")
        _check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.grad_accum >= 1, "grad_accum", "must be ≥ 1")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        _check(self.logging_steps >= 1, "logging_steps", "must be ≥ 1")
        _check(self.save_steps >= 0, "save_steps", "must be ≥ 0")
        _check(self.save_total_limit >= 1, "save_total_limit", "must be ≥ 1 (resuming needs a checkpoint)")
        for key in ("train_size", "eval_size", "max_length"):
            value = getattr(self, key)
            _check(value is None or value >= 1, key, f"must be ≥ 1 or null, got {value}")
        _check(self.seed >= 0, "seed", "must be ≥ 0")
        _check(self.dev_size >= 0, "dev_size", f"must be ≥ 0, got {self.dev_size}")
        _check(self.epochs >= 0, "epochs", f"must be ≥ 0, got {self.epochs}")
        _check(self.max_steps >= -1, "max_steps", f"must be > 0, or -1 to train for `epochs`; got {self.max_steps}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be ≥ 0, got {self.weight_decay}")
        _check(self.max_grad_norm >= 0, "max_grad_norm", f"must be ≥ 0 (0: no clipping), got {self.max_grad_norm}")
        for key in ("model", "task", "method", "output_dir", "scheduler", "device"):
            _check(getattr(self, key).strip() != "", key, "must not be empty")


@dataclass
class Variant:
    """A named entry of a comparison: a method with its own options (``inilora`` at 0 iterations).

    ``only`` restricts the entry to part of the sweep (``only: {learning_rate: [2e-3]}``), so one
    study can sweep a few methods over a setting and add more methods at one point of it: the
    added runs pair with the swept ones there instead of being run twice in two studies.

    ``settings`` overrides training settings of ``base`` for this entry only (dotted keys:
    ``{learning_rate: 1e-4}`` for full fine-tuning beside LoRA at 2e-3), so systems that want
    different settings still pair seed by seed in one table; a swept key cannot be overridden."""

    method: str  # an init method of the registry, or a training mode (train.modes)
    options: dict[str, Any] = field(default_factory=dict)  # over base.method_options, under the sweep
    only: dict[str, list[Any]] = field(default_factory=dict)  # sweep key → the values it runs at
    settings: dict[str, Any] = field(default_factory=dict)  # dotted TrainConfig key → value, over base

    def __post_init__(self) -> None:
        # `{lora: {alpha: 4}}` (YAML nesting, or --set variants.X.settings.lora.alpha=4) means the key
        # lora.alpha: set whole, it would replace base's lora group and drop its other settings
        _check(isinstance(self.settings, dict), "settings", "must map training settings to values")
        self.settings = flatten(self.settings, keep=("method_options",))


@dataclass
class RaceSettings:
    """How ``tune: {learning_rate: ...}`` pays for each method's own best rate (see :mod:`inilora.rates`).

    Successive halving: every rate of a method trains rung 0 (``first`` of the full run's steps), the
    best ``1/eta`` by the validation metric continue to the next rung (the rungs between grow
    geometrically), the last rung is the full run, scored on test. ``rungs: 1`` trains the full grid.
    ``extend``: how many steps the grid grows past an edge when a method's pick sits on it (then the
    table says "bound"; a full grid too, once its rates have finished). The defaults — rung 0 at ⅙,
    the best third continues — train ≈ ½ of the grid's steps and kept 6 of the full grids' 7 picks in
    docs/results.md's replays ("A validation-ranked race"; rung 0 at ⅓ kept fewer); ``eta: 2`` kept
    all 7, at 0.6."""

    eta: int = 3
    rungs: int = 2
    first: float | None = 1 / 6  # rung 0's share of the full run's steps; None: 1 / eta**(rungs - 1)
    extend: int = 1
    points: int = 5  # default grids (no sweep.learning_rate): rates per method,
    step: float = 2.0  # this factor apart (5 × 2: a 16× span; inilora.race.default_grid)

    def __post_init__(self) -> None:
        _check(self.points >= 2, "points", f"must be ≥ 2, got {self.points}")
        _check(self.step > 1, "step", f"must be > 1, got {self.step}")
        _check(self.eta >= 2, "eta", f"must be ≥ 2, got {self.eta}")
        _check(self.rungs >= 1, "rungs", f"must be ≥ 1, got {self.rungs}")
        _check(self.first is None or 0 < self.first < 1, "first", f"must be between 0 and 1, got {self.first}")
        _check(self.extend >= 0, "extend", f"must be ≥ 0, got {self.extend}")


@dataclass
class CompareConfig:
    """A grid: methods × seeds × swept settings, each cell one TrainConfig.

    ``sweep`` maps a dotted TrainConfig key to a list of values (``lora.rank: [8, 16, 32]``,
    ``method_options.std: [1e-4, 1e-2, 1]``); the grid is their product. A ``method_options.X``
    key applies only to the methods that take option X (the others run once and serve as every
    value's baseline).
    """

    base: TrainConfig = field(default_factory=TrainConfig)
    methods: list[str] = field(default_factory=lambda: ["lora", "inilora", "inilora-alpha"])  # methods or variant names
    variants: dict[str, Variant] = field(default_factory=dict)  # name → method + options, used in `methods`
    seeds: list[int] = field(default_factory=lambda: [0, 11, 22])
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    baseline: str = "lora"  # the method every other is tested against (paired t-test, Holm)
    # swept key → metric to choose it on, per method (``learning_rate: offline-arith-val/accuracy``):
    # the report adds a table of each method at its own best value; use a validation metric
    tune: dict[str, str] = field(default_factory=dict)
    race: RaceSettings = field(default_factory=RaceSettings)  # tune.learning_rate: successive halving
    output_dir: str = "runs/compare"
    title: str = "inilora comparison"
    # what each run asks of a Ray cluster (`compare --backend ray`): num_cpus, num_gpus, memory (bytes),
    # any other key a custom Ray resource; the in-process backend ignores it
    resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, value in self.resources.items():
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                   f"resources.{key}", f"must be a number ≥ 0, got {value!r}")
        _check(len(self.methods) > 0, "methods", "must list at least one method")
        _check(len(self.seeds) > 0, "seeds", "must list at least one seed")
        _check(len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat a seed")
        _check(len(set(self.methods)) == len(self.methods), "methods", "must not repeat a method")
        _check(all(seed >= 0 for seed in self.seeds), "seeds", "must be ≥ 0")
        _check(all(m.strip() for m in self.methods), "methods", "names must not be empty")
        for key, values in self.sweep.items():
            _check(isinstance(values, list) and len(values) > 0, f"sweep.{key}", "must be a non-empty list")
        for key in self.tune:
            _check(key in self.sweep or key == "learning_rate", f"tune.{key}",  # the rate: default grids
                   f"not a sweep key (sweep: {', '.join(self.sweep) or 'none'})")


# ------------------------------------------------------------------------------------------------
# strict loading


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and, for dataclasses, built as) the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return _plain(value, key, 0)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1 and value is not None:  # `X | None`: X's own, more precise message
            return _convert(value, arms[0], key)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_describe(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # Python callers may pass the settings object itself
            value = to_dict(value)
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {_describe(value)}")
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        return {_convert(k, k_tp, key): _convert(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and (share := _fraction(value)) is not None:  # `first: 1/6`, as docs write it
            value = share
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {_describe(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module, not input


#: nesting allowed inside free-form values (method options, sweep values)
MAX_DEPTH = 16


def _plain(value: Any, key: str, depth: int) -> Any:
    """A free-form value as plain YAML data (what ``to_dict`` and ``yaml.safe_dump`` round-trip)."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"{key}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{key}: keys must be strings, got {_describe(k)}")
            out[k] = _plain(v, f"{key}.{k}", depth + 1)
        return out
    raise ConfigError(f"{key}: expected plain data (number, string, true/false, null, list or mapping), "
                      f"got {_describe(value)}")


def _describe(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken or very deep object: its type is enough
        text = "<unprintable>"
    return f"{type(value).__name__} {text[:60]}{'…' if len(text) > 60 else ''}"


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, refusing unknown keys and wrong types."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of settings, got {_describe(data)}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key {prefix}{key}{hint}")
        kwargs[key] = _convert(value, hints[key], f"{prefix}{key}")
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing key(s) {', '.join(prefix + m for m in missing)}: they have no default")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a range check in __post_init__: name the key's full path
        raise ConfigError(f"{prefix}{exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data form of a config (round-trips through ``from_dict``); a field marked
    ``omit_when`` is left out at that value (a setting added later: older records stay equal)."""
    data = dataclasses.asdict(config)
    for f in dataclasses.fields(config):
        if "omit_when" in f.metadata and data.get(f.name) == f.metadata["omit_when"]:
            del data[f.name]
    return data


class SetText(str):
    """The text of a ``--set key=value`` as typed: read by the type of the field it sets
    (:func:`parse_set`), never by YAML 1.1 rules first (``seed=011`` is 11, not octal 9)."""


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's numbers: ``011`` is 11 (1.1 reads octal 9), ``1e-3`` a number (1.1 a string)."""


_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_INT_TAG, re.compile(r"^[-+]?[0-9]+$|^0o[0-7]+$|^0x[0-9a-fA-F]+$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT_TAG, re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."))


def _yaml_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    return int(text, 0) if text.lower().lstrip("+-").startswith(("0x", "0o")) else int(text)


_Loader.add_constructor(_INT_TAG, _yaml_int)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with YAML 1.2's numbers (the loader of every config the tool reads)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_yaml(path: str | Path, cls: type, overrides: dict[str, Any] | None = None) -> Any:
    """Read ``path`` as ``cls`` — the one loader of every YAML the tool reads (`train`, `compare`) —
    with dotted-key ``overrides`` (``--set lora.rank=16``) applied before the strict checks, so an
    override with a typo or a wrong type is refused like the file's own keys.  An error names where it
    came from: the file, or the ``--set`` that caused it.  A file without settings is refused: an
    empty config would silently run every default."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = yaml_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        got = "nothing (the file is empty)" if data is None else type(data).__name__
        raise ConfigError(f"{path}: expected a mapping of settings, got {got}")
    if not data:
        raise ConfigError(f"{path}: holds no settings; an empty config would run every default. Write the keys "
                          "you mean (see configs/embedded/ for examples)")
    overrides = overrides or {}
    combined = copy.deepcopy(data)
    for key, value in overrides.items():
        try:
            if isinstance(value, SetText):
                value = parse_set(value, field_type(cls, key))
            apply_override(combined, key, value)
        except ConfigError as exc:
            raise ConfigError(f"--set {key}={value}: {exc}") from None
    try:
        return from_dict(cls, combined)
    except ConfigError as exc:
        if overrides:
            try:
                from_dict(cls, data)
                blame_file = False
            except ConfigError as file_exc:
                blame_file = str(file_exc) == str(exc)
            if not blame_file:
                named = [k for k in overrides if k in str(exc)] or list(overrides)
                shown = ", ".join(f"{k}={overrides[k]}" for k in named)
                raise ConfigError(f"--set {shown}: {exc}") from None
        raise ConfigError(f"{path}: {exc}") from None


_WHOLE = re.compile(r"[+-]?[0-9]+")
_FRACTION = re.compile(r"([0-9]+(?:\.[0-9]*)?)\s*/\s*([0-9]+(?:\.[0-9]*)?)")


def _fraction(text: str) -> float | None:
    """``1/6`` as a number (a share is easier to read as a fraction); None if ``text`` is not one."""
    m = _FRACTION.fullmatch(text.strip())
    return float(m[1]) / float(m[2]) if m and float(m[2]) != 0 else None


_NULLS = ("null", "none", "~")


def parse_set(text: str, tp: Any) -> Any:
    """A ``--set`` value read as the type ``tp`` of the field it sets (None: unknown, read generically).

    An int field takes decimal digits only (``011`` is 11); a float field any Python float (``1e-3``)
    or a fraction (``1/6``);
    a bool field true/false/yes/no; a list field ``[a, b]`` or ``a,b`` with each item read as the item
    type; an optional field also ``null``.  An empty value is refused: it is never "the default"."""
    text = str(text).strip()
    if not text:
        raise ConfigError("empty value; give a value, or drop this --set to keep the file's")
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(arms) < len(typing.get_args(tp)) and text.lower() in _NULLS:
            return None
        return parse_set(text, arms[0]) if len(arms) == 1 else _generic(text)
    if tp is int:
        if not _WHOLE.fullmatch(text):
            raise ConfigError(f"expected a whole number, got {text!r}")
        return int(text)
    if tp is float:
        try:
            return float(text)
        except ValueError:
            if (share := _fraction(text)) is not None:
                return share
            raise ConfigError(f"expected a number (0.25, 1e-3 or 1/6), got {text!r}") from None
    if tp is bool:
        low = text.lower()
        if low not in ("true", "false", "yes", "no"):
            raise ConfigError(f"expected true or false, got {text!r}")
        return low in ("true", "yes")
    if tp is str or origin is Literal:
        return text
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        inner = text[1:-1] if text.startswith("[") and text.endswith("]") else None if text.startswith("[") else text
        if inner is None or any(c in inner for c in "[]{}'\""):
            return _generic(text)
        parts = [p.strip() for p in inner.split(",")]
        if parts == [""]:
            return []
        if "" in parts:
            raise ConfigError(f"an empty item in {text!r}")
        return [parse_set(p, item) for p in parts]
    return _generic(text)


def _generic(text: str) -> Any:
    """A value of a free-form field (method options, a whole mapping): a Python literal, else YAML 1.2."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    if text.lower() in _NULLS:
        return None
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def field_type(cls: type, key: str) -> Any:
    """The annotation of dotted ``key`` in config class ``cls`` (None where the key is unknown): a grid's
    ``sweep.K`` and ``variants.N.only.K`` are lists of ``base``'s K, ``variants.N.settings.K`` is K."""
    parts = key.split(".")
    if cls is CompareConfig and len(parts) > 1:
        head = parts[0]
        if head == "sweep":
            inner = field_type(TrainConfig, ".".join(parts[1:]))
            return list[inner] if inner is not None else None
        if head == "variants":
            if len(parts) < 3:
                return None
            if parts[2] in ("only", "settings") and len(parts) > 3:
                inner = field_type(TrainConfig, ".".join(parts[3:]))
                return None if inner is None else list[inner] if parts[2] == "only" else inner
            return field_type(Variant, ".".join(parts[2:]))
    tp: Any = cls
    for part in parts:
        if dataclasses.is_dataclass(tp):
            hints = _type_hints(tp)
            if part not in hints:
                return None
            tp = hints[part]
        elif typing.get_origin(tp) is dict:
            tp = (typing.get_args(tp) or (Any, Any))[1]
        else:
            return None
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (Union, types.UnionType) and len(arms) == 1 and dataclasses.is_dataclass(arms[0]):
            tp = arms[0]
    return tp


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """One ``--set key=value``: a dotted path, except that a grid's sweep keys are dotted themselves
    (``sweep.lora.rank=[8,16]``) and a variant's options are a mapping (``variants.NAME.options={...}``)."""
    if key.startswith("sweep."):
        sweep = data.setdefault("sweep", {})
        if not isinstance(sweep, dict):
            raise ConfigError("sweep is not a mapping of keys to value lists")
        sweep[key.removeprefix("sweep.")] = value
    elif key.startswith("variants."):
        parts = key.split(".", 2)
        variant = data.setdefault("variants", {}).setdefault(parts[1], {})
        if len(parts) > 2:
            set_dotted(variant, parts[2], value)
        else:
            data["variants"][parts[1]] = value
    else:
        set_dotted(data, key, value)


def flatten(data: Mapping[str, Any], keep: tuple[str, ...] = (), prefix: str = "") -> dict[str, Any]:
    """``{'lora': {'rank': 8}}`` → ``{'lora.rank': 8}``, the inverse of :func:`set_dotted`; mappings
    under a dotted key in ``keep`` (free-form ones, like ``method_options``) stay whole."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and f"{prefix}{key}" not in keep:
            out.update(flatten(value, keep, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data['lora']['rank'] = value`` for ``key='lora.rank'`` (creating sub-mappings)."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"sweep key {key}: {part} is not a group of settings")
    node[parts[-1]] = value
