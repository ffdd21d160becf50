"""inilora.models: embedded models, loading, probe batch, drift metrics, tiny random models."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import (
    BertForSequenceClassification,
    BertModel,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    RobertaForSequenceClassification,
)
from transformers.pytorch_utils import Conv1D

from inilora import models as M
from inilora.models import embedded as E
from inilora.models import (
    DEFAULT_CAUSAL_LM,
    DEFAULT_ENCODER,
    PROBE_TEXT,
    load_model,
    load_tokenizer,
    model_output,
    probe_inputs,
    relative_drift,
    resolve,
    tiny_model,
    top1_agreement,
)

# ---------------------------------------------------------------------------------------------
# names and the cache
# ---------------------------------------------------------------------------------------------


def test_aliases_resolve_to_existing_folders(smollm2):
    minilm_dir = Path(resolve("embedded:minilm"))
    assert (minilm_dir / "config.json").is_file() and (minilm_dir / "model.safetensors").is_file()
    smol_dir = Path(resolve("embedded:smollm2"))
    assert smol_dir.parent == Path(os.environ["INILORA_CACHE"]) / "models"
    assert smol_dir.name.startswith("smollm2-135m-instruct-")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "inilora-manifest.json"):
        assert (smol_dir / f).is_file(), f
    assert resolve(" Embedded:MiniLM ") == str(minilm_dir)


def test_other_names_pass_through():
    for name in (DEFAULT_CAUSAL_LM, DEFAULT_ENCODER, "gpt2", "./some/local/dir", "/abs/path"):
        assert resolve(name) == name
    with pytest.raises(ValueError, match="embedded:smollm2"):
        resolve("embedded:gpt5")
    assert M.embedded_name(DEFAULT_CAUSAL_LM) == "embedded:smollm2"
    assert M.embedded_name(DEFAULT_ENCODER) == "embedded:minilm"
    assert M.embedded_name("gpt2") is None
    assert M.is_embedded("embedded:minilm") and not M.is_embedded(DEFAULT_ENCODER)


def test_smollm2_copy_manifest(smollm2):
    meta = json.loads((Path(resolve("embedded:smollm2")) / "inilora-manifest.json").read_text())
    assert meta["dtype"] == "float32"
    assert meta["verified"].startswith("bit-identical logits")  # checked against the GGUF model
    assert meta["files"]["model.safetensors"] > 500e6  # fp32, not re-quantised
    cfg = json.loads((Path(resolve("embedded:smollm2")) / "config.json").read_text())
    assert "quantization_config" not in cfg


@pytest.mark.parametrize("name, alias", [(DEFAULT_ENCODER, "embedded:minilm"), (DEFAULT_CAUSAL_LM, "embedded:smollm2")])
def test_hub_names_offline_error_names_the_alias(name, alias):
    # local_files_only makes the offline failure immediate (no network retries)
    with pytest.raises(OSError, match=alias):
        load_model(name, local_files_only=True)
    with pytest.raises(OSError, match=alias):
        load_tokenizer(name, local_files_only=True)


def test_unknown_hub_name_offline_error_lists_aliases():
    with pytest.raises(OSError, match="embedded:minilm"):
        load_model("someone/some-model-that-is-not-cached", local_files_only=True)


# ---------------------------------------------------------------------------------------------
# SmolLM2
# ---------------------------------------------------------------------------------------------


def test_smollm2_is_fp32_llama(smollm2):
    assert isinstance(smollm2, LlamaForCausalLM)
    assert not smollm2.training
    assert {p.dtype for p in smollm2.parameters()} == {torch.float32}
    assert getattr(smollm2, "hf_quantizer", None) is None
    assert getattr(smollm2.config, "quantization_config", None) is None
    assert smollm2.config.num_key_value_heads < smollm2.config.num_attention_heads  # GQA
    assert sum(p.numel() for p in smollm2.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_smollm2_knows_paris(smollm2, smollm2_tokenizer):
    enc = smollm2_tokenizer("The capital of France is", return_tensors="pt")
    out = smollm2.generate(**enc, max_new_tokens=4, do_sample=False)
    completion = smollm2_tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert completion.strip().startswith("Paris"), completion


def test_smollm2_chat_template(smollm2_tokenizer):
    text = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>user" in text and text.rstrip().endswith("<|im_start|>assistant")


def test_second_load_is_fast_and_identical(smollm2, smollm2_tokenizer):
    t0 = time.perf_counter()
    again = load_model("embedded:smollm2")
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, f"second load took {elapsed:.2f} s"
    assert isinstance(again, LlamaForCausalLM) and again.dtype == torch.float32
    x = probe_inputs(smollm2, smollm2_tokenizer)
    assert torch.equal(model_output(again, x), model_output(smollm2, x))


def test_explicit_dtype_for_embedded():
    m = load_model("embedded:minilm", dtype="bfloat16")
    assert m.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_model("embedded:minilm", dtype="float33")


@pytest.mark.slow
def test_copy_matches_gguf_model(smollm2):
    """Independent of the build's own check: dequantise the GGUF again and compare logits."""
    from transformers import AutoModelForCausalLM

    gguf = E._smollm2_gguf_path()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    assert ref.dtype == torch.float32
    x = probe_inputs(smollm2)
    assert torch.equal(model_output(smollm2, x), model_output(ref, x))


# ---------------------------------------------------------------------------------------------
# atomic, locked cache building (fake builder: no 30 s rebuild)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_builder(smollm2, monkeypatch, tmp_path):
    """Point INILORA_CACHE at an empty folder; 'building' links the session's real copy."""
    real = Path(resolve("embedded:smollm2"))
    calls = []

    def build(folder: Path):
        calls.append(folder)
        time.sleep(0.2)  # long enough for a concurrent caller to find the lock held
        for f in real.iterdir():
            if f.name not in ("inilora-manifest.json", E._VERIFIED_STAMP):
                os.symlink(f, folder / f.name)
        return {"dtype": "float32"}

    monkeypatch.setenv("INILORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(E, "_build_smollm2_copy", build)
    return calls


def test_half_built_copy_is_never_used(fake_builder):
    final = E._smollm2_copy_dir()
    final.mkdir(parents=True)
    (final / "config.json").write_text("{ half written")  # no manifest: unfinished
    stale_tmp = final.parent / f".tmp-{final.name}-crashed"
    stale_tmp.mkdir()
    path = resolve("embedded:smollm2")
    assert path == str(final) and len(fake_builder) == 1
    assert (final / "inilora-manifest.json").is_file()
    assert json.loads((final / "config.json").read_text())["model_type"] == "llama"
    assert not stale_tmp.exists()
    assert not list(final.parent.glob(".tmp-*"))
    assert isinstance(load_model("embedded:smollm2"), LlamaForCausalLM)
    # a finished copy is reused, not rebuilt
    assert resolve("embedded:smollm2") == str(final) and len(fake_builder) == 1


def test_copy_with_missing_or_truncated_file_is_rebuilt(fake_builder):
    final = Path(resolve("embedded:smollm2"))
    meta = json.loads((final / "inilora-manifest.json").read_text())
    meta["files"]["extra.bin"] = 10  # listed but absent
    (final / "inilora-manifest.json").write_text(json.dumps(meta))
    assert not E._copy_is_complete(final)
    resolve("embedded:smollm2")
    assert len(fake_builder) == 2 and E._copy_is_complete(final)


def test_concurrent_resolve_builds_once(fake_builder):
    results, errors = [], []

    def worker():
        try:
            results.append(resolve("embedded:smollm2"))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(set(results)) == 1 and len(results) == 3
    assert len(fake_builder) == 1


def test_cache_folder_name_depends_on_gguf_content(smollm2):
    name = E._smollm2_copy_dir().name
    assert name == Path(resolve("embedded:smollm2")).name
    assert len(name.rsplit("-", 1)[1]) == 16


# ---------------------------------------------------------------------------------------------
# MiniLM and load_model kinds
# ---------------------------------------------------------------------------------------------


def test_minilm_is_bert_encoder(minilm):
    assert isinstance(minilm, BertModel) and not minilm.training
    assert minilm.dtype == torch.float32
    assert minilm.config.num_hidden_layers == 6 and len(minilm.encoder.layer) == 6
    linear = {n.rsplit(".", 1)[-1] for n, m in minilm.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {"query", "value"} <= linear
    q = minilm.encoder.layer[0].attention.self.query
    assert q.weight.shape == (384, 384)


def test_minilm_as_classifier():
    m = load_model("embedded:minilm", kind="sequence-classification", num_labels=3)
    assert isinstance(m, BertForSequenceClassification) and m.config.num_labels == 3
    m2 = load_model("embedded:minilm", num_labels=2)  # auto + num_labels -> classifier
    assert isinstance(m2, BertForSequenceClassification)


def test_unknown_kind_and_misused_num_labels():
    with pytest.raises(ValueError, match="kind"):
        load_model("embedded:minilm", kind="decoder")
    with pytest.raises(ValueError, match="num_labels"):
        load_model("embedded:minilm", kind="encoder", num_labels=2)


@pytest.mark.parametrize(
    "arch, cls", [("gpt2", GPT2LMHeadModel), ("llama-gqa", LlamaForCausalLM),
                  ("roberta", RobertaForSequenceClassification), ("bert", BertModel)],
)
def test_auto_kind_on_saved_tiny_models(arch, cls, tmp_path):
    model = tiny_model(arch, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert type(loaded) is cls
    assert loaded.dtype == torch.bfloat16  # transformers 5: the stored dtype by default
    assert load_model(str(tmp_path), dtype=torch.float32).dtype == torch.float32
    x = probe_inputs(model)
    assert torch.equal(model_output(loaded, x), model_output(model, x))


# ---------------------------------------------------------------------------------------------
# probe batch and metrics
# ---------------------------------------------------------------------------------------------


def test_probe_text_is_fixed_english():
    assert len(PROBE_TEXT) == 2 and all(len(t.split()) >= 40 for t in PROBE_TEXT)


def test_probe_inputs_with_tokenizers(smollm2, smollm2_tokenizer, minilm, minilm_tokenizer):
    shapes = {}
    for model, tok in ((smollm2, smollm2_tokenizer), (minilm, minilm_tokenizer)):
        x = probe_inputs(model, tok)
        assert set(x) == {"input_ids", "attention_mask"}
        assert x["input_ids"].shape == (2, 32) and x["input_ids"].dtype == torch.long
        assert bool((x["attention_mask"] == 1).all())  # long enough: no padding
        assert not torch.equal(x["input_ids"][0], x["input_ids"][1])
        y = probe_inputs(model, tok)
        assert all(torch.equal(x[k], y[k]) for k in x)
        assert tok.decode(x["input_ids"][0], skip_special_tokens=True).lower().startswith("the old lighthouse")
        out = model_output(model, x)
        assert out.dtype == torch.float32 and not out.requires_grad
        shapes[type(model).__name__] = tuple(out.shape)
    assert shapes == {"LlamaForCausalLM": (2, 32, 49152), "BertModel": (2, 32, 384)}


def test_probe_inputs_other_sizes(minilm, minilm_tokenizer, tiny):
    x = probe_inputs(minilm, minilm_tokenizer, seq_len=200, batch=3)
    assert x["input_ids"].shape == (3, 200)
    assert 0 < int(x["attention_mask"][0].sum()) < 200  # padded past the text's end
    assert torch.equal(x["input_ids"][0], x["input_ids"][2])
    y = probe_inputs(tiny("gpt2"), seq_len=8, batch=4)
    assert y["input_ids"].shape == (4, 8)


def test_probe_inputs_random_ids(tiny):
    model = tiny("llama-gqa")
    state = torch.random.get_rng_state()
    x = probe_inputs(model)
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched
    expected = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    assert torch.equal(x["input_ids"], expected)
    assert bool((x["attention_mask"] == 1).all()) and x["attention_mask"].shape == (2, 32)
    assert int(x["input_ids"].max()) < model.config.vocab_size
    assert torch.equal(probe_inputs(tiny("gpt2"))["input_ids"], probe_inputs(model)["input_ids"])


def test_relative_drift_known_values():
    ref = torch.tensor([[1.0, -4.0], [2.0, 0.5]])
    out = ref.clone()
    out[1, 1] += 0.5
    assert relative_drift(out, ref) == pytest.approx(0.125, abs=1e-15)
    assert relative_drift(ref, ref) == 0.0
    # computed in float64: a 1e-7 difference on fp32 tensors is not lost
    a = torch.tensor([1.0], dtype=torch.float32)
    b = torch.tensor([1.0 + 2**-22], dtype=torch.float32)
    assert relative_drift(b, a) == 2**-22
    assert relative_drift(ref.to(torch.bfloat16), ref) == 0.0
    assert relative_drift(torch.ones(2), torch.zeros(2)) == float("inf")
    with pytest.raises(ValueError):
        relative_drift(torch.ones(2), torch.ones(3))


def test_top1_agreement_known_values():
    ref = torch.tensor([[[0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    out = ref.clone()
    out[1, 1] = torch.tensor([0.0, 2.0])
    assert top1_agreement(ref, ref) == 1.0
    assert top1_agreement(out, ref) == 0.75
    assert top1_agreement(out, ref, mask=torch.tensor([[1, 1], [1, 0]])) == 1.0


def test_model_output_keeps_dtype_and_picks_field(tiny):
    m = tiny("llama-gqa", dtype=torch.bfloat16)
    out = model_output(m, probe_inputs(m))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 32, 256)
    b = tiny("bert")
    assert model_output(b, probe_inputs(b)).shape == (2, 32, 64)  # last_hidden_state
    r = tiny("roberta")
    assert model_output(r, probe_inputs(r)).shape == (2, 2)  # classifier logits


# ---------------------------------------------------------------------------------------------
# tiny random models
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, cls", [("gpt2", GPT2LMHeadModel), ("llama-gqa", LlamaForCausalLM),
                  ("roberta", RobertaForSequenceClassification), ("bert", BertModel)],
)
def test_tiny_models(arch, cls, tiny):
    m = tiny(arch)
    assert type(m) is cls and not m.training
    assert sum(p.numel() for p in m.parameters()) < 1_000_000
    assert m.name_or_path == f"tiny-random-{arch}" == m.config.name_or_path
    assert {p.dtype for p in m.parameters()} == {torch.float32}
    weights = [p for n, p in m.named_parameters() if p.dim() == 2 and "embed" not in n and "wte" not in n]
    assert all(0.02 < float(w.detach().std()) < 0.2 for w in weights)
    out = model_output(m, probe_inputs(m))
    assert torch.isfinite(out).all() and float(out.abs().max()) > 0.1


def test_tiny_gpt2_uses_conv1d(tiny):
    m = tiny("gpt2")
    c_attn = m.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, Conv1D)
    assert c_attn.weight.shape == (64, 192)  # (in, out): fan_in_fan_out


def test_tiny_llama_is_gqa(tiny):
    attn = tiny("llama-gqa").model.layers[0].self_attn
    assert attn.q_proj.weight.shape == (64, 64)
    assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (32, 64)


def test_tiny_models_are_seeded(tiny):
    state = torch.random.get_rng_state()
    a, b, c = tiny("roberta", seed=0), tiny("roberta", seed=0), tiny("roberta", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["classifier.dense.weight"], sc["classifier.dense.weight"])
    assert a.config.num_labels == 2
    assert tiny("bert", dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="gpt2"):
        tiny("t5")


def test_copy_with_flipped_bytes_is_rebuilt_not_loaded(fake_builder):
    """A file of the same size but other content (a flipped byte loads and gives NaN logits) is caught
    by the manifest's content hash; an unchanged copy is hashed once, then trusted by size and mtime."""
    final = Path(resolve("embedded:smollm2"))
    assert E._copy_is_complete(final)
    stamp = final / E._VERIFIED_STAMP
    assert stamp.is_file()  # the successful hash is remembered...
    before = stamp.stat().st_mtime_ns
    assert E._copy_is_complete(final) and stamp.stat().st_mtime_ns == before  # ...so it is not redone
    config = final / "config.json"
    data = bytearray(config.read_bytes())
    data[data.index(b"llama")] = ord("L")  # one byte, same size
    config.unlink()  # the fixture's copy is a symlink to the session's copy: write a file of our own
    config.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="content hash"):
        assert not E._copy_is_complete(final)
    resolve("embedded:smollm2")
    assert len(fake_builder) == 2 and E._copy_is_complete(final)
    assert json.loads((final / "config.json").read_text())["model_type"] == "llama"
