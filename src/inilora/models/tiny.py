"""Tiny random models (< 1 M parameters) for tests and docs: one per architecture family the
bridge must handle (GPT-2's Conv1D, LLaMA with GQA, RoBERTa with a classifier head, a bare BERT)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

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
