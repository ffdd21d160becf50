"""transformers.Trainer on a residual-method model (docs/design.md §4: training, saving, resuming, reloading).

One uninterrupted 6-step run (checkpoints at steps 3 and 6) is shared by the tests of this
module; a second run resumes from checkpoint-3 and must end exactly where the first did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel

import inilora
from inilora.bridge import INIT_ADAPTER, SIDECAR, is_marked, targets
from inilora.models import model_output, probe_inputs, relative_drift, tiny_model

transformers = pytest.importorskip("transformers")

ARCH = "llama-gqa"
METHOD = "inilora-alpha"
SEED = 0
MAX_STEPS = 6
SAVE_STEPS = 3


def _config() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])


def _new_model():
    return inilora.get_peft_model(tiny_model(ARCH), _config(), method=METHOD, seed=SEED)


class _TokenDataset(torch.utils.data.Dataset):
    """Random token ids (seeded), labels = input_ids: a tiny causal-LM dataset."""

    def __init__(self, n: int = 16, seq_len: int = 16, vocab: int = 256):
        g = torch.Generator().manual_seed(123)
        self.ids = torch.randint(3, vocab, (n, seq_len), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _trainer(model, output_dir: Path):
    args = transformers.TrainingArguments(
        output_dir=str(output_dir),
        max_steps=MAX_STEPS,
        save_steps=SAVE_STEPS,
        save_strategy="steps",
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        report_to=[],
        use_cpu=True,
        seed=SEED,
        data_seed=SEED,
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return transformers.Trainer(model=model, args=args, train_dataset=_TokenDataset())


def _lora_state(model, adapter: str) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if ("lora_A" in n or "lora_B" in n) and f".{adapter}." in n
    }


def _rho(model) -> float:
    """ρ = max over targeted matrices of s·‖B0A0‖_F / ‖W0‖_F, from the init adapter's factors."""
    rho = 0.0
    for t in targets(model, INIT_ADAPTER).values():
        a0 = t.layer.lora_A[INIT_ADAPTER].weight.detach().double()
        b0 = t.layer.lora_B[INIT_ADAPTER].weight.detach().double()
        s = float(t.layer.scaling[INIT_ADAPTER])
        delta = s * (b0 @ a0)
        w0 = t.base_weight().detach().double() + delta  # R + s·B0A0
        rho = max(rho, float(delta.norm() / w0.norm()))
    return rho


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The uninterrupted run: model, its init factors, the untouched base's logits, the output dir."""
    out = tmp_path_factory.mktemp("trainer")
    base = tiny_model(ARCH)
    probe = probe_inputs(base)
    base_logits = model_output(base, probe)
    model = _new_model()
    init_default = _lora_state(model, "default")
    init_factors = _lora_state(model, INIT_ADAPTER)
    flags_at_init = {n: p.requires_grad for n, p in model.named_parameters()}
    trainer = _trainer(model, out)
    trainer.train()
    model.eval()
    return {
        "model": model,
        "out": out,
        "probe": probe,
        "base_logits": base_logits,
        "init_default": init_default,
        "init_factors": init_factors,
        "flags_at_init": flags_at_init,
        "log_history": trainer.state.log_history,
    }


def test_only_default_factors_train(run):
    model = run["model"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing is trainable"
    for n in trainable:
        parts = n.split(".")
        assert ("lora_A" in parts or "lora_B" in parts) and "default" in parts, n
        assert INIT_ADAPTER not in parts, n
    # 2 layers × (q, v) × (A, B)
    assert len(trainable) == 8
    assert all(not p.requires_grad for n, p in model.named_parameters() if INIT_ADAPTER in n)
    assert trainable == {n for n, f in run["flags_at_init"].items() if f}
    # training actually moved the adapter (the loss was finite and decreased the usual way)
    moved = _lora_state(model, "default")
    assert any(not torch.equal(moved[n], run["init_default"][n]) for n in moved)
    losses = [h["loss"] for h in run["log_history"] if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("step", [SAVE_STEPS, MAX_STEPS])
def test_checkpoint_is_marked_with_sidecar_and_init_subfolder(run, step):
    ckpt = run["out"] / f"checkpoint-{step}"
    assert ckpt.is_dir(), sorted(p.name for p in run["out"].iterdir())
    cfg = json.loads((ckpt / "adapter_config.json").read_text())
    assert is_marked(cfg["init_lora_weights"]), cfg["init_lora_weights"]
    assert (ckpt / "adapter_model.safetensors").is_file()
    meta = json.loads((ckpt / SIDECAR).read_text())
    assert meta["method"] == METHOD and meta["seed"] == SEED
    assert meta["fingerprint"]["names"]
    sub = ckpt / INIT_ADAPTER
    assert sub.is_dir()
    sub_cfg = json.loads((sub / "adapter_config.json").read_text())
    assert is_marked(sub_cfg["init_lora_weights"]), sub_cfg["init_lora_weights"]
    assert (sub / "adapter_model.safetensors").is_file()
    # the saved A0/B0 are the init factors
    from peft.utils import load_peft_weights

    saved = load_peft_weights(str(sub))
    assert len(saved) == len(run["init_factors"]) == 8
    by_suffix = {n.split("base_model.model.", 1)[1].replace(f".{INIT_ADAPTER}", ""): v
                 for n, v in run["init_factors"].items()}
    for key, value in saved.items():
        k = key.split("base_model.model.", 1)[1]
        assert torch.equal(value, by_suffix[k]), key
    # the live configs stay unmarked (TRL builds adapters from them)
    assert run["model"].peft_config["default"].init_lora_weights is False
    assert run["model"].peft_config[INIT_ADAPTER].init_lora_weights is False


def test_vanilla_peft_refuses_the_checkpoint(run):
    ckpt = run["out"] / f"checkpoint-{MAX_STEPS}"
    with pytest.raises(ValueError, match="Unknown initialization"):
        PeftModel.from_pretrained(tiny_model(ARCH), str(ckpt))


def test_init_adapter_unchanged_by_training(run):
    now = _lora_state(run["model"], INIT_ADAPTER)
    assert now.keys() == run["init_factors"].keys()
    for n, v in now.items():
        assert torch.equal(v, run["init_factors"][n]), n


def test_resume_matches_uninterrupted_run(run, tmp_path):
    import shutil

    # resume in a fresh output dir holding a copy of checkpoint-3, so the first run's files stay intact
    src = run["out"] / f"checkpoint-{SAVE_STEPS}"
    shutil.copytree(src, tmp_path / src.name)
    model = _new_model()
    trainer = _trainer(model, tmp_path)
    trainer.train(resume_from_checkpoint=str(tmp_path / src.name))
    assert trainer.state.global_step == MAX_STEPS
    resumed = _lora_state(model, "default")
    reference = _lora_state(run["model"], "default")
    assert resumed.keys() == reference.keys() and len(resumed) == 8
    for n in resumed:
        assert torch.allclose(resumed[n], reference[n], atol=1e-6, rtol=0), (n, (resumed[n] - reference[n]).abs().max())
    # resuming neither unfroze nor altered A0/B0
    assert all(not p.requires_grad for n, p in model.named_parameters() if INIT_ADAPTER in n)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(resumed)
    for n, v in _lora_state(model, INIT_ADAPTER).items():
        assert torch.equal(v, run["init_factors"][n]), n


def test_load_final_checkpoint_reproduces_trained_model(run):
    model = run["model"]
    ckpt = run["out"] / f"checkpoint-{MAX_STEPS}"
    trained = model_output(model, run["probe"])
    loaded = inilora.load(tiny_model(ARCH), ckpt)
    assert not loaded.training
    assert relative_drift(model_output(loaded, run["probe"]), trained) <= 1e-5
    # and the trained model really differs from the base (so the check above means something)
    assert relative_drift(trained, run["base_logits"]) > 1e-3


def test_original_gives_untouched_base_and_restores_flags(run):
    model = run["model"]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    rho = _rho(model)
    assert rho > 0.1  # IniLoRA-α moves a lot: the bound must scale with it
    trained = model_output(model, run["probe"])
    with inilora.original(model):
        orig = model_output(model, run["probe"])
    assert relative_drift(orig, run["base_logits"]) <= 2e-5 * (1 + rho)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert model.active_adapter == "default"
    # back to the trained model after the block
    assert torch.equal(model_output(model, run["probe"]), trained)
