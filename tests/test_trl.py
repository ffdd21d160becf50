"""TRL's DPO trainer on residual-method models (docs/design.md §4, "The original model back").

TRL 1.16, handed a PeftModel and no reference model, copies the live ``default`` adapter into
a new adapter ``ref`` (``add_adapter("ref", peft_config["default"])``) and computes the
reference log-probs through it. On a residual model that copy *is* the starting model, so:

* the live config must not carry the saved-file marker (``init_lora_weights=False``), or
  ``add_adapter`` would raise on it;
* no adapter of ours may be called ``ref`` ("already exists");
* at the first step the policy equals the reference: DPO's logged rewards and margins are 0;
* the ``ref`` adapter reproduces the model as it was when training began (for a reloaded,
  SFT-trained adapter: the SFT model, not the pre-SFT base that A0/B0 give).
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

import inilora
from inilora.bridge import INIT_ADAPTER
from inilora.models import model_output, probe_inputs, relative_drift, tiny_model

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

ARCH = "llama-gqa"
METHOD = "inilora-alpha"

WORDS = [
    "the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "rug", "quickly", "slowly", "is",
    "was", "happy", "sad", "big", "small", "red", "blue", "what", "where", "did", "do", "why",
    "run", "answer", "question", "yes", "no", "good", "bad", "it",
]

PAIRS = [
    ("what did the cat do", "the cat sat on the mat", "the dog ran under the rug"),
    ("where is the dog", "the dog is on the rug", "a cat was sad"),
    ("is the cat happy", "yes the cat is happy", "no it was bad"),
    ("why did the dog run", "the dog ran quickly", "the small red mat"),
]


def _tokenizer(vocab_limit: int):
    """A word-level tokenizer built offline: [PAD]=0, [BOS]=1, [EOS]=2 (as the tiny LLaMA's config)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)))}
    assert len(vocab) <= vocab_limit
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]",
    )


def _dataset():
    return datasets.Dataset.from_dict({
        "prompt": [p for p, _, _ in PAIRS],
        "chosen": [" " + c for _, c, _ in PAIRS],
        "rejected": [" " + r for _, _, r in PAIRS],
    })


def _config() -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])


def _lora(model, adapter: str) -> dict[str, torch.Tensor]:
    return {n.replace(f".{adapter}.", "."): p.detach().clone() for n, p in model.named_parameters()
            if ("lora_A" in n or "lora_B" in n) and f".{adapter}." in n}


def _dpo(model, tokenizer, out):
    args = trl.DPOConfig(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        beta=0.1,
        max_length=32,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return trl.DPOTrainer(model=model, args=args, train_dataset=_dataset(), processing_class=tokenizer)


def _check_dpo_run(model, tokenizer, tmp_path, start_logits, probe):
    """Shared checks: TRL builds 'ref' itself from the live config; ref = the starting model; rewards 0 at step 1."""
    assert "ref" not in model.peft_config
    assert model.peft_config["default"].init_lora_weights is False
    assert model.peft_config[INIT_ADAPTER].init_lora_weights is False
    default_before = _lora(model, "default")
    init_before = _lora(model, INIT_ADAPTER)

    trainer = _dpo(model, tokenizer, tmp_path)  # must not raise "already exists" nor "Unknown initialization"
    model = trainer.model
    assert "ref" in model.peft_config, sorted(model.peft_config)
    assert _lora(model, "ref").keys() == default_before.keys()
    trainer.train()
    assert trainer.state.global_step == 2

    # live configs stay unmarked after training
    assert model.peft_config["default"].init_lora_weights is False
    # what trained: default only; ref and A0/B0 frozen and unchanged
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n and ("lora_A" in n or "lora_B" in n) for n in trainable), trainable
    after = _lora(model, "default")
    assert any(not torch.equal(after[n], default_before[n]) for n in after)
    for n, v in _lora(model, "ref").items():
        assert torch.equal(v, default_before[n]), n
    for n, v in _lora(model, INIT_ADAPTER).items():
        assert torch.equal(v, init_before[n]), n

    # step 1: policy == reference, so DPO's log-ratios, rewards and margins are exactly 0
    logs = [h for h in trainer.state.log_history if "rewards/chosen" in h]
    assert len(logs) == 2, trainer.state.log_history
    first = logs[0]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert first[key] == 0.0, (key, first[key])
    assert first["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)  # -log σ(0)
    # after one update the policy has moved away from the reference
    assert logs[1]["rewards/margins"] != 0.0

    # the reference TRL computes through: the 'ref' adapter, which is the model as training began
    from trl.trainer.utils import use_adapter

    model.eval()
    with use_adapter(model, "ref"):
        ref_logits = model_output(model, probe)
    assert model.active_adapter == "default"
    assert relative_drift(ref_logits, start_logits) <= 1e-6
    assert relative_drift(model_output(model, probe), start_logits) > 1e-6  # the policy did move
    return model


def test_dpo_on_fresh_residual_model(tmp_path):
    base = tiny_model(ARCH)
    tokenizer = _tokenizer(base.config.vocab_size)
    probe = probe_inputs(base)
    base_logits = model_output(base, probe)
    model = inilora.get_peft_model(base, _config(), method=METHOD, seed=0)
    start = model_output(model, probe)
    # the starting model is the pretrained model (residual layout), to fp32 rounding
    assert relative_drift(start, base_logits) < 1e-4
    _check_dpo_run(model, tokenizer, tmp_path / "dpo", start, probe)


def test_dpo_on_reloaded_trained_adapter(tmp_path):
    """An 'SFT-trained' adapter reloaded with inilora.load: the DPO reference is that SFT model,
    not the pre-SFT model A0/B0 would give."""
    base = tiny_model(ARCH)
    tokenizer = _tokenizer(base.config.vocab_size)
    probe = probe_inputs(base)
    base_logits = model_output(base, probe)
    model = inilora.get_peft_model(base, _config(), method=METHOD, seed=0)
    with torch.no_grad():  # stand-in for SFT: move the trained factors
        g = torch.Generator().manual_seed(7)
        for n, p in model.named_parameters():
            if ".default." in n and "lora_B" in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    sft_logits = model_output(model, probe)
    assert relative_drift(sft_logits, base_logits) > 1e-3
    model.save_pretrained(str(tmp_path / "sft"))

    loaded = inilora.load(tiny_model(ARCH), tmp_path / "sft", is_trainable=True)
    loaded.train()
    start = model_output(loaded, probe)
    assert relative_drift(start, sft_logits) <= 1e-5
    model = _check_dpo_run(loaded, tokenizer, tmp_path / "dpo", start, probe)
    # A0/B0 still give the pre-SFT model: a different model from the DPO reference
    with inilora.original(model):
        orig = model_output(model, probe)
    assert relative_drift(orig, base_logits) < 1e-4
    assert relative_drift(orig, start) > 1e-3

    # the DPO-trained model saves and reloads through inilora (its extra 'ref' adapter does no harm)
    model.save_pretrained(str(tmp_path / "dpo-final"))
    trained = model_output(model, probe)
    again = inilora.load(tiny_model(ARCH), tmp_path / "dpo-final")
    assert relative_drift(model_output(again, probe), trained) <= 1e-5
