"""The pipeline's parts without a training run: refusals before work, trainable sets, SFT labels."""

from __future__ import annotations

import dataclasses

import datasets
import pytest
import torch

from inilora.config import ConfigError, TrainConfig, from_dict
from inilora.errors import InitError
from inilora.models import tiny_model
from inilora.tasks import ClassificationTask, TaskError, register_task
from inilora.tasks.base import _TASKS
from inilora.train import modes, plan, run, sft


@dataclasses.dataclass(frozen=True)
class _NoLabel(ClassificationTask):
    """A classification task whose data lacks the ``label`` column."""

    def load(self, split, limit=None, seed=0):
        return datasets.Dataset.from_dict({"sentence": ["a", "b"], "target": [0, 1]})


if "test-no-label" not in _TASKS:
    register_task(_NoLabel(name="test-no-label", description="missing label", source="test"))


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path / "run"), **kw)


@pytest.mark.parametrize("kw, error, match", [
    ({"task": "no-such-task"}, TaskError, "unknown task"),
    ({"method": "no-such-method"}, InitError, "no-such-method"),
    ({"task": "test-no-label"}, TaskError, "missing column.*label"),
    ({"task": "offline-arith-test"}, TaskError, "is an evaluation"),
    ({"scheduler": "wavy"}, ConfigError, "unknown schedule"),
    ({"eval_tasks": ["offline-arith-test"]}, ConfigError, "eval_tasks"),
    ({"model": "embedded:minilm", "task": "offline-arith"}, InitError, "causal LM"),
    ({"model": "embedded:smollm2", "task": "offline-arith", "eval_tasks": ["offline-topic"]}, TaskError, "not an evaluation"),
])
def test_bad_input_refused_before_work(tmp_path, kw, error, match):
    cfg = _cfg(tmp_path, **kw)
    with pytest.raises(error, match=match):
        run(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # nothing written: the refusal came first


def test_nlu_task_on_a_model_without_classifier_class(tmp_path, monkeypatch):
    from transformers import AutoConfig

    from inilora.train import pipeline

    gpt_like = AutoConfig.for_model("mamba")  # a causal-only architecture: no sequence classifier
    monkeypatch.setattr(pipeline, "_check_model_kind", pipeline._check_model_kind)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", lambda *a, **k: gpt_like)
    with pytest.raises(InitError, match="no sequence-classification head"):
        plan(_cfg(tmp_path, model="some/causal-model"))


def test_config_typo_is_refused():
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        from_dict(TrainConfig, {"learning_rte": 1e-3})


# ------------------------------------------------------------------------------------------------
# what trains


def _names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_nlu_trains_factors_and_head_only():
    cfg = TrainConfig(method="inilora-alpha", lora=from_dict(type(TrainConfig().lora), {"rank": 4}))
    model, info = modes.apply_mode(tiny_model("roberta"), cfg, "nlu")
    names = _names(model)
    assert info["residual"]
    lora = {n for n in names if "lora_" in n}
    head = names - lora
    assert lora and all(".default." in n and "inilora_init" not in n for n in lora)
    assert head and all("classifier" in n and ".modules_to_save.default." in n for n in head)
    # 2 layers × (query, value) × (A, B); RoBERTa's head: dense + out_proj (weight, bias)
    assert len(lora) == 8 and len(head) == 4


def test_lora_nlg_trains_factors_only():
    model, _ = modes.apply_mode(tiny_model("llama-gqa"), TrainConfig(method="lora"), "nlg")
    names = _names(model)
    assert len(names) == 8 and all("lora_" in n for n in names)


def test_full_trains_everything():
    model, _ = modes.apply_mode(tiny_model("roberta"), TrainConfig(method="full"), "nlu")
    assert _names(model) == {n for n, _ in model.named_parameters()}


def test_bitfit_trains_biases_and_head():
    model, _ = modes.apply_mode(tiny_model("roberta"), TrainConfig(method="bitfit"), "nlu")
    names = _names(model)
    assert any(n.startswith("roberta.") for n in names)
    for n in names:
        assert n.endswith("bias") or n.startswith("classifier."), n
    assert {n for n, _ in model.named_parameters() if n.startswith("classifier.")} <= names


def test_bitfit_refuses_a_bias_free_model():
    with pytest.raises(InitError, match="no(ne)? .*bias|has none"):
        modes.apply_mode(tiny_model("llama-gqa"), TrainConfig(method="bitfit"), "nlg")


def test_training_modes_take_no_method_options():
    with pytest.raises(InitError, match="takes no method_options"):
        modes.apply_mode(tiny_model("roberta"), TrainConfig(method="full", method_options={"std": 1.0}), "nlu")


def test_lora_defaults_alpha_to_rank_and_targets_to_peft_defaults():
    cfg = modes.lora_config(TrainConfig(lora=from_dict(type(TrainConfig().lora), {"rank": 16})), "nlu")
    assert cfg.r == 16 and cfg.lora_alpha == 16 and cfg.target_modules is None and cfg.task_type == "SEQ_CLS"


def test_the_method_is_looked_up_once_per_run(tmp_path, monkeypatch):
    """plan() resolves the method; applying it and the bridge are handed the registry entry."""
    import inilora.bridge.build as build
    import inilora.bridge.targeting as targeting
    from inilora.train import pipeline

    calls = []
    resolve = modes.resolve
    monkeypatch.setattr(modes, "resolve", lambda name: calls.append(name) or resolve(name))

    def no_lookup(name):
        raise AssertionError(f"the bridge looked {name!r} up again")

    monkeypatch.setattr(build, "get_method", no_lookup)
    monkeypatch.setattr(targeting, "get_method", no_lookup)
    cfg = _cfg(tmp_path, method="inilora-alpha", train_size=8, eval_size=8,
               lora=from_dict(type(TrainConfig().lora), {"rank": 4}))
    p = plan(cfg)
    model, _, info = pipeline.load(p)
    assert calls == ["inilora-alpha"] and p.method.name == "inilora-alpha" and p.is_lora
    assert info["residual"] and model.inilora_report.method == "inilora-alpha"


def test_a_training_mode_registered_from_outside_is_resolved_and_applied(tmp_path):
    """Like an init method, a training mode is one registered entry: resolve, options, the kinds it
    trains (refused before any model loads), the trainable guard — no other file touched."""
    from inilora.train import pipeline

    def head_only(model, options, kind):
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(tuple(f"{h}." for h in modes.head_names(model))))
        return {"scale": options["scale"]}

    mode = modes.Mode("test-head-only", "only the classifier head trains", head_only, options={"scale": 1},
                      kinds=("nlu",), kinds_reason="a head needs a classifier.", trains=lambda n: False)
    modes.register_mode(mode)
    try:
        assert modes.resolve("test-head-only") is mode and "test-head-only" in modes.available_modes()
        with pytest.raises(InitError, match="does not take option.*sise.*scale"):
            plan(_cfg(tmp_path, method="test-head-only", method_options={"sise": 2}))
        with pytest.raises(InitError, match="test-head-only: a head needs a classifier"):
            plan(_cfg(tmp_path, model="embedded:smollm2", task="offline-arith", method="test-head-only"))
        cfg = _cfg(tmp_path, method="test-head-only", method_options={"scale": 2})
        model, info = modes.apply_mode(tiny_model("roberta"), cfg, "nlu", mode)
        assert info == {"mode": "test-head-only", "residual": False, "scale": 2}
        assert _names(model) and all(n.startswith("classifier.") for n in _names(model))
        pipeline._check_trainable(model, mode, "nlu")  # the head is allowed beside the mode's own
        next(p for n, p in model.named_parameters() if n.startswith("roberta.")).requires_grad_(True)
        with pytest.raises(RuntimeError, match="would train beside the test-head-only mode"):
            pipeline._check_trainable(model, mode, "nlu")
    finally:
        modes._MODES.pop("test-head-only")


def test_an_unknown_method_names_both_registries():
    with pytest.raises(InitError, match=r"Did you mean the training mode 'bitfit'.*Training modes: full, bitfit"):
        modes.resolve("bitfitt")


# ------------------------------------------------------------------------------------------------
# SFT: loss on the response only


def test_sft_labels_mask_the_prompt(smollm2_tokenizer):
    tok = smollm2_tokenizer
    prompt, response = "### Instruction:\nAdd 2 and 3.\n\n### Response:\n", "2 + 3 = 5.\nThe answer is: 5"
    row = sft.encode_example(prompt, response, tok, max_length=512)
    n_prompt = len(tok(prompt)["input_ids"])
    ids, labels = row["input_ids"], row["labels"]
    assert len(ids) == len(labels) == len(row["attention_mask"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]  # every response token (and EOS) counts
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]) == response
    # truncation keeps the prompt mask aligned
    short = sft.encode_example(prompt, response, tok, max_length=n_prompt + 2)
    assert len(short["input_ids"]) == n_prompt + 2 and short["labels"][:n_prompt] == [-100] * n_prompt


def test_sft_collator_pads_labels_with_ignore_and_drops_prompt_only_rows(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ds = datasets.Dataset.from_dict({"prompt": ["Q: 1+1?\nA:", "a very long prompt " * 40],
                                     "response": [" 2", " x"]})
    enc = sft.tokenize(ds, tok, max_length=32)
    assert len(enc) == 1  # the second prompt fills max_length: nothing left to learn from it
    rows = [sft.encode_example("Q: 1+1?\nA:", " 2", tok, 64), sft.encode_example("Q: 12+13?\nA:", " 25", tok, 64)]
    tok.padding_side = "right"
    batch = sft.collator(tok)(rows)
    assert batch["labels"].shape == batch["input_ids"].shape
    short = min(range(2), key=lambda i: len(rows[i]["input_ids"]))
    n = len(rows[short]["input_ids"])
    assert torch.all(batch["labels"][short, n:] == -100) and torch.all(batch["attention_mask"][short, n:] == 0)


def test_cli_lists_tasks():
    from typer.testing import CliRunner

    from inilora.cli import app

    res = CliRunner().invoke(app, ["tasks"])
    assert res.exit_code == 0, res.output
    assert "offline-topic" in res.output and "offline-arith" in res.output


def test_load_config_overrides(tmp_path):
    from inilora.train import load_config

    path = tmp_path / "c.yaml"
    path.write_text("task: offline-topic\nlora:\n  rank: 4\n")
    cfg = load_config(path, {"lora.rank": 16, "method": "inilora"})
    assert cfg.lora.rank == 16 and cfg.method == "inilora" and cfg.task == "offline-topic"
    with pytest.raises(ConfigError, match=r"^--set epochs=three: epochs"):  # the override's mistake, not the file's
        load_config(path, {"epochs": "three"})
    path.write_text("task: offline-topic\nepochs: three\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: epochs"):
        load_config(path, {"lora.rank": 16})


def test_a_cpu_row_names_the_kernels_torch_dispatches_to_and_the_cpu_family(monkeypatch, tmp_path):
    """A VM may name its CPU only "AMD EPYC"; Zen 3 and Zen 4 differ in the last digits (AVX2 vs AVX-512)."""
    import builtins

    import torch

    from inilora.train.pipeline import _device_name

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                       "model name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: other\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(cpuinfo if f == "/proc/cpuinfo" else f, *a, **k))
    assert _device_name("cpu") == f"cpu (AMD EPYC, family 25 model 17, {torch.backends.cpu.get_cpu_capability()})"
