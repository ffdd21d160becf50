"""Helpers shared by the benchmark scripts (run as ``python bench/NAME.py``)."""

from __future__ import annotations

import platform

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


#: LLaMA-2-7B's dimensions (q/v 4096², r = 8 in the benches); ``layers`` is the caller's
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                 vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)


def make_llama_checkpoint(path, layers: int, *, dtype=torch.bfloat16, device: str = "cpu", **overrides) -> str:
    """A LLaMA-2-7B-shaped checkpoint with ``layers`` layers and random weights, saved at ``path``
    (safetensors), as a hub download would be: the benches load it with ``inilora.models.load_model``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**LLAMA2_7B, **overrides}, num_hidden_layers=layers, torch_dtype=str(dtype).split(".")[-1])
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: no fp32 copy of a large model on the way
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    model.save_pretrained(str(path), safe_serialization=True)
    del model
    return str(path)
