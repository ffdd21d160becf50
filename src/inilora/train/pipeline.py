"""One run: check everything, load, apply the method, train with transformers' Trainer, evaluate, record.

Every check that can fail (task, method, eval tasks, model kind, data columns, scheduler) runs
before the model is loaded, so a typo costs seconds, not a training run.  The method is looked up
once, in :func:`plan`: ``Plan.method`` is its registry entry (a training mode or an init method),
and everything after — applying it, the trainable guard, saving — is handed that entry.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..chatter import import_peft

import_peft()  # first: transformers' trainer imports PEFT, and PEFT's first import probes bitsandbytes' kernels

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from ..config import ConfigError, TrainConfig, to_dict  # noqa: E402
from ..errors import InitError  # noqa: E402
from ..tasks import ClassificationTask, SFTTask, Task, TaskError, get_task  # noqa: E402
from . import evaluate, modes, nlu, outputs, sft  # noqa: E402
from .modes import Mode, Trained  # noqa: E402


@dataclass
class Plan:
    """What a run will do, resolved and checked before any model is loaded."""

    config: TrainConfig
    kind: str  # "nlu" or "nlg"
    task: Task
    train_rows: Any
    eval_rows: Any = None  # NLU: a Dataset (the reported rows)
    dev_rows: Any = None  # NLU with dev_size > 0: training-split rows never trained on, that pick the best epoch
    evals: list[tuple[Task, list[dict[str, Any]]]] = field(default_factory=list)  # NLG: (task, examples)
    device: str = "cpu"
    bf16: bool = False
    method: Trained | None = None  # config.method's registry entry, resolved once

    @property
    def is_lora(self) -> bool:
        return modes.is_lora(self.method)

    @property
    def max_length(self) -> int:
        return self.config.max_length or self.task.max_length


def check(config: TrainConfig) -> tuple[Task, str, str, Trained]:
    """Everything about ``config`` that is knowable without its data or weights: the method (the one
    lookup, its options, its calibration block), the task (and its kind), the eval tasks, the schedule,
    the model's config against the task, the device. Returns (task, "nlu" | "nlg", device, method);
    raises TaskError / InitError / ConfigError naming the problem."""
    method = modes.resolve(config.method)  # the one lookup; unknown: InitError with the known names
    if not getattr(method, "peft_backed", False) or getattr(method, "options", None):
        method.resolve_options(config.method_options)  # PEFT's own inits without options: the bridge refuses any
    _check_calibration(config, method)
    task = get_task(config.task)
    if isinstance(task, ClassificationTask):
        kind = "nlu"
    elif isinstance(task, SFTTask):
        kind = "nlg"
    else:
        raise TaskError(f"task {task.name!r} is an evaluation ({type(task).__name__}); train on a classification "
                        "or SFT task and list this one in eval_tasks")
    if kind == "nlu" and config.eval_tasks:
        raise ConfigError(f"eval_tasks: task {task.name!r} is a classification task, evaluated on its own "
                          "validation split; eval_tasks apply to SFT tasks only")
    for name in config.eval_tasks or []:
        get_task(name)
    if isinstance(method, Mode):
        method.check_kind(kind)
    if config.eval is not None:
        if kind == "nlu":
            raise ConfigError(f"eval: the lm-eval harness scores causal LMs after SFT; task {task.name!r} is a "
                              "classification task, evaluated on its own validation split")
        from . import harness

        harness.task_manager(config.eval)  # lm-eval installed, every task known: before the model loads
    _check_scheduler(config.scheduler)
    _check_model_kind(config.model, kind, task.name)
    return task, kind, _device(config.device), method


def plan(config: TrainConfig) -> Plan:
    """Resolve and check ``config`` (:func:`check`), then read its data."""
    task, kind, device, method = check(config)
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.startswith("cuda"))
    p = Plan(config, kind, task, None, device=device, bf16=bf16, method=method)
    if kind == "nlu":
        p.train_rows, p.dev_rows = nlu.load_train_dev(task, config.train_size, config.dev_size)
        p.eval_rows = nlu.load_split(task, task.eval_split, config.eval_size)
    else:
        if config.dev_size:
            raise ConfigError(f"dev_size: task {task.name!r} is an SFT task; its validation sets are eval_tasks "
                              "(e.g. offline-arith-dev), dev_size applies to classification tasks only")
        p.train_rows = sft.load_split(task, config.train_size)
        names = task.eval_tasks if config.eval_tasks is None else config.eval_tasks
        for name in names:
            ev = get_task(name)
            p.evals.append((ev, evaluate.load_examples(ev, config.eval_size)))
    return p


def _check_calibration(config: TrainConfig, method: Trained) -> None:
    """A data-driven method needs a calibration block; a block is checked whoever reads it."""
    calibration = config.calibration.spec
    if getattr(method, "calibration", None) and calibration is None:
        raise ConfigError(f"method {config.method!r} is data-driven ({method.calibration}): add a calibration: block "
                          "(task: TASK, examples: N).")
    if calibration is not None:  # a compare's shared block: the methods without data ignore it
        from .calibration import check_spec

        check_spec(calibration)


def _check_scheduler(name: str) -> None:
    from transformers import SchedulerType

    known = [s.value for s in SchedulerType]
    if name not in known:
        raise ConfigError(f"scheduler: unknown schedule {name!r}; known: {', '.join(known)}")


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but no CUDA device is available")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError(f"device: expected auto, cpu or cuda[:N], got {name!r}")
    return name


def _check_model_kind(model: str, kind: str, task: str) -> None:
    """An NLU task needs a model with a sequence-classification class, an SFT task a causal LM."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    from ..models import SMOLLM2_ALIAS, embedded_name, is_causal_config, model_config

    if embedded_name(model) == SMOLLM2_ALIAS:
        return  # a LLaMA causal LM (with a classifier head in transformers); its plain copy is built by the load
    cfg = model_config(model)
    causal = is_causal_config(cfg) or bool(getattr(cfg, "is_decoder", False))
    if kind == "nlu" and cfg.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise InitError(f"task {task!r} is a classification task, but {model!r} ({cfg.model_type}) has no "
                        "sequence-classification head in transformers; use an encoder such as embedded:minilm")
    if kind == "nlg" and not causal:
        raise InitError(f"task {task!r} fine-tunes a causal LM, but {model!r} ({cfg.model_type}) is an encoder; "
                        "use a causal LM such as embedded:smollm2")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A TrainConfig from YAML with dotted-key ``overrides`` (``{"lora.rank": 16}``), through the one
    loader every command uses (:func:`inilora.config.load_yaml`)."""
    from ..config import load_yaml

    return load_yaml(path, TrainConfig, overrides)


# ------------------------------------------------------------------------------------------------
# model and Trainer


def load(p: Plan) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Tokenizer, the model with the method applied (seeded: the head's init and the LoRA init)."""
    from ..models import load_model, load_tokenizer

    cfg = p.config
    tokenizer = load_tokenizer(cfg.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    transformers.set_seed(cfg.seed)
    if p.kind == "nlu":
        model = load_model(cfg.model, kind="sequence-classification", num_labels=p.task.num_labels,
                           dtype=torch.float32)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model = load_model(cfg.model, kind="causal-lm", dtype=torch.float32)
    model, info = modes.apply_mode(model, cfg, p.kind, p.method)
    _check_trainable(model, p.method, p.kind)
    return model, tokenizer, info


def _check_trainable(model: torch.nn.Module, spec: Trained, kind: str) -> None:
    """LoRA runs train only the adapter's factors (and the classifier head for NLU), a mode with a
    ``trains`` guard only what it names: against a base weight left trainable, which would silently
    turn LoRA (or adapters) into full fine-tuning."""
    names = modes.trainable_parameters(model)
    if not names:
        raise InitError(f"method {spec.name!r} left nothing to train")
    if modes.is_lora(spec):
        bad = [n for n in names if "lora_" not in n and not (kind == "nlu" and ".modules_to_save." in n)]
        if bad:
            raise RuntimeError(f"base parameters would train under LoRA: {bad[:5]}")
    elif spec.trains is not None:
        heads = tuple(f"{h}." for h in modes.head_names(model))
        bad = [n for n in names if not spec.trains(n) and not n.startswith(heads)]
        if bad:
            raise RuntimeError(f"base parameters would train beside the {spec.name} mode's own: {bad[:5]}")


def training_args(p: Plan, out: Path, progress: bool) -> TrainingArguments:
    cfg = p.config
    evaluate_epochs = p.kind == "nlu" and cfg.eval_every_epoch
    return TrainingArguments(
        output_dir=str(out),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=cfg.scheduler,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        optim="adamw_torch",
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        seed=cfg.seed,
        data_seed=cfg.seed,
        eval_strategy="epoch" if evaluate_epochs else "no",
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        report_to=[],
        disable_tqdm=not progress,
        use_cpu=p.device == "cpu",
        bf16=p.bf16,
        remove_unused_columns=False,  # the datasets hold exactly the model's inputs
        label_names=["labels"],
        dataloader_num_workers=0,
    )


def eval_sets(p: Plan) -> tuple[str, ...]:
    """NLU eval sets as Trainer logs them: ``("",)`` for the reported rows alone (``eval_<metric>``),
    ``("dev", "test")`` with a dev split (``eval_dev_<metric>``, ``eval_test_<metric>``)."""
    return ("dev", "test") if p.dev_rows is not None else ("",)


def trainer(p: Plan, model, tokenizer, out: Path, progress: bool, callbacks: Sequence[TrainerCallback]) -> Trainer:
    record = None
    if p.kind == "nlu":
        train = nlu.tokenize(p.train_rows, p.task, tokenizer, p.max_length)
        evalset = nlu.tokenize(p.eval_rows, p.task, tokenizer, p.max_length)
        if p.dev_rows is not None:
            evalset = {"dev": nlu.tokenize(p.dev_rows, p.task, tokenizer, p.max_length), "test": evalset}
        record = nlu.Predictions([n or "test" for n in eval_sets(p)])
        kw = {"eval_dataset": evalset, "data_collator": nlu.collator(tokenizer),
              "compute_metrics": nlu.metrics_fn(p.task, record)}
    else:
        train = sft.tokenize(p.train_rows, tokenizer, p.max_length)
        kw = {"data_collator": sft.collator(tokenizer)}
    cls = nlu.DevNeutralTrainer if p.dev_rows is not None else Trainer
    t = cls(model=model, args=training_args(p, out, progress), train_dataset=train, processing_class=tokenizer,
            callbacks=list(callbacks), **kw)
    if record is not None:
        record.step = lambda: int(t.state.global_step)
        t.predictions = record  # read back by _nlu_results
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        t.remove_callback(PrinterCallback)  # with tqdm off, Trainer would print every log dict instead
    return t


# ------------------------------------------------------------------------------------------------
# the run


def run(config: TrainConfig, *, progress: bool = True, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Train and evaluate one configuration; see :mod:`inilora.train`."""
    start, cpu_start = time.perf_counter(), time.process_time()
    out = Path(config.output_dir)
    resolved = to_dict(config)
    done = outputs.finished(out, resolved)
    if done is not None:
        return done
    outputs.check_folder(out)
    with _quiet(not progress):
        p = plan(config)
        model, tokenizer, info = load(p)
        # only now, with the config's every setting accepted, does the folder become this run's
        outputs.write_config(out, resolved)
        trainable = modes.trainable_parameters(model)
        factor_rms = _factor_rms(model) if p.is_lora else {}
        stop = [StopAt(config.stop_at)] if config.stop_at else []
        t = trainer(p, model, tokenizer, out, progress, [*callbacks, *stop])
        resume = outputs.last_checkpoint(out) or outputs.prefix_checkpoint(config, resolved)
        _train(t, resume, config.stop_at)
        history = t.state.log_history
        if p.kind == "nlu":
            metrics, headline, extra, records = _nlu_results(p, t, history)
        else:
            metrics, headline, extra, records = _nlg_results(p, model, tokenizer, history)
    adapter_dir = None
    if p.is_lora:
        adapter_dir = out / "adapter"
        model.save_pretrained(str(adapter_dir))
    elif p.method.save is not None:  # e.g. bottleneck adapters: what trained, and how to rebuild it
        adapter_dir = out / "adapter"
        p.method.save(model, adapter_dir, p.method.resolve_options(config.method_options))
    train_loss = [[int(h["step"]), float(h["loss"])] for h in history if "loss" in h]
    outputs.write_log(out, {"train_loss": train_loss, "eval": extra.get("epochs", []), "log_history": history,
                            "eval_records": records})
    result = {
        "metrics": metrics,
        "headline": headline,
        **extra,
        "train_loss": train_loss,
        **({"items": items} if (items := _items(records)) else {}),
        **({"init_factor_rms": factor_rms} if factor_rms else {}),
        "trainable_params": int(sum(trainable.values())),
        "trainable_tensors": len(trainable),
        "total_params": int(sum(q.numel() for q in model.parameters())),
        "global_step": int(t.state.global_step),
        "resumed_from": resume.name if resume else None,
        **({"continued_from": config.resume_from} if config.resume_from else {}),
        "wall_s": round(time.perf_counter() - start, 2),
        "cpu_s": round(time.process_time() - cpu_start, 2),  # all threads; on a shared machine wall_s swells
        "device": _device_name(p.device),
        "threads": torch.get_num_threads(),
        "precision": "bf16" if p.bf16 else "fp32",
        "mode": info["mode"],
        **({"approx_loss": info["approx_loss"]} if "approx_loss" in info else {}),
        "method": config.method,
        "task": config.task,
        "model": config.model,
        "seed": config.seed,
        "adapter_dir": str(adapter_dir) if adapter_dir else None,
        "output_dir": str(out),
        "versions": {**outputs.environment(), **({"lm_eval": extra["harness"]["version"]} if "harness" in extra else {})},
    }
    outputs.write_metrics(out, result)  # last: its presence marks the run finished
    return result


class StopAt(TrainerCallback):
    """Stop after ``step`` optimizer steps of a longer schedule, checkpointing there: a race's rung is
    the full run's first ``step`` steps, and the next rung continues this checkpoint bit for bit."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kw):
        # the (partial) epoch's end after the stop grades the run; a save there (save_strategy "epoch")
        # would rewrite the checkpoint with that evaluation in its history, which the straight run lacks
        if state.global_step >= self.step:
            control.should_save = False
        return control


def _train(t: Trainer, resume: Path | None, stop_at: int = 0) -> None:
    """Train, resuming from ``resume``. A checkpoint that already holds the last step (killed during
    evaluation) only has its weights and state loaded: Trainer's own resume would fast-forward into
    a partial epoch and could take one step too many. The last step is ``stop_at`` when set."""
    from transformers import TrainerState

    if resume is not None:
        state = TrainerState.load_from_json(str(resume / outputs.TRAINER_STATE))
        last = stop_at or state.max_steps
        if last > 0 and state.global_step >= last:
            t._load_from_checkpoint(str(resume))  # the same loader Trainer's resume uses (PEFT or full)
            t.state = state
            return
    t.train(resume_from_checkpoint=str(resume) if resume else None)


@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """progress=False: no datasets bars, no transformers load reports (warnings still show)."""
    if not quiet:
        yield
        return
    import datasets

    bars = datasets.utils.logging.is_progress_bar_enabled()
    level = transformers.logging.get_verbosity()
    datasets.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            datasets.utils.logging.enable_progress_bar()


def _nlu_results(p: Plan, t: Trainer, history: list[dict]):
    """The reported rows' metrics at the best epoch — chosen on the dev split when there is one, else
    on the reported rows themselves — plus the dev metrics (``dev/<metric>``, for ``tune``) and each
    set's per-example record at that epoch."""
    task = p.task
    sets = eval_sets(p)
    epochs = nlu.epoch_metrics(history, task, sets)
    if not epochs:  # eval_every_epoch off: one evaluation at the end
        final = t.evaluate()
        epochs = nlu.epoch_metrics([{**final, "epoch": t.state.epoch, "step": t.state.global_step}], task, sets)
    headline = task.metrics[0]
    if p.dev_rows is not None:  # reported as `accuracy` etc. as without a dev split; dev as `dev/accuracy`
        epochs = [{k.removeprefix("test/"): v for k, v in e.items()} for e in epochs]
    best = nlu.best_epoch(epochs, f"dev/{headline}" if p.dev_rows is not None else headline)
    metrics = {m: best[m] for m in task.metrics if m in best}
    metrics.update({f"dev/{m}": best[f"dev/{m}"] for m in task.metrics if f"dev/{m}" in best})
    extra = {"best_epoch": best["epoch"], "best_step": best["step"], "epochs": epochs,
             "eval_examples": {task.name: len(p.eval_rows)},  # what a report's "n=" says
             "final": {m: epochs[-1][m] for m in task.metrics if m in epochs[-1]},
             "selected_on": "dev" if p.dev_rows is not None else "reported rows"}
    correct = t.predictions.correct(int(best["step"])) if hasattr(t, "predictions") else {}
    records = {name: [{"correct": c == "1"} for c in bits] for name, bits in correct.items() if bits}
    return metrics, headline, extra, records


def _factor_rms(model: torch.nn.Module) -> dict[str, float]:
    """RMS of all LoRA A and all B entries at init: with Adam each entry moves ≈ lr per step, so one
    step moves B·A in proportion to the factors' size — the number a rate comparison has to know."""
    out = {}
    for part in ("A", "B"):
        tensors = [p.detach().float() for n, p in model.named_parameters() if f".lora_{part}." in n]
        if tensors:
            total = sum(float(x.pow(2).sum()) for x in tensors)
            out[part] = (total / sum(x.numel() for x in tensors)) ** 0.5
    return out


def _items(records: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Per eval set, one character per example ("1" right, "0" wrong) in the set's fixed order: a
    compact per-example record for item-level paired tests across methods (the completions and
    picks themselves stay in the run folder's train_log.json)."""
    return {name: "".join("1" if r["correct"] else "0" for r in recs)
            for name, recs in records.items() if recs and all("correct" in r for r in recs)}


def _nlg_results(p: Plan, model, tokenizer, history: list[dict]):
    metrics: dict[str, float] = {}
    records: dict[str, list] = {}
    for task, examples in p.evals:
        scores, recs = evaluate.run_eval(task, examples, model, tokenizer, p.config.generation, bf16=p.bf16)
        metrics.update({f"{task.name}/{k}": v for k, v in scores.items()})
        records[task.name] = recs
    extra: dict[str, Any] = {}
    if p.config.eval is not None:  # lm-eval on the live model; our own graders' metrics stay first
        from . import harness

        scores, extra["harness"] = harness.evaluate(model, tokenizer, p.config.eval, bf16=p.bf16)
        metrics.update(scores)
    losses = [float(h["loss"]) for h in history if "loss" in h]
    if not metrics:  # eval_tasks: [] — training only
        metrics["train_loss"] = losses[-1] if losses else float("nan")
    headline = next(iter(metrics))
    return metrics, headline, {"best_epoch": None, "eval_examples": {t.name: len(e) for t, e in p.evals}, **extra}, records


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    model = platform.processor() or platform.machine()
    try:  # Linux: the CPU's own name ("AMD EPYC 7B13"), which is what makes a wall time comparable; a VM
        # may show only "AMD EPYC", so family and model (Zen 3 is 25/1, Zen 4 25/17) are added when known
        with open("/proc/cpuinfo") as f:
            fields = dict(ln.split(":", 1) for ln in itertools.takewhile(str.strip, f) if ":" in ln)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        model = fields.get("model name", model)
        if "cpu family" in fields and "model" in fields:
            model += f", family {fields['cpu family']} model {fields['model']}"
    except OSError:
        pass
    # the kernels torch dispatches to on this CPU: what decides the last digits of a CPU number
    return f"cpu ({model}, {torch.backends.cpu.get_cpu_capability()})"
