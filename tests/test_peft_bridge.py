"""The bridge: output preservation, trainable set, determinism, markers, load, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from _util import TINY_TARGETS, bound, perturb, rho
from peft import LoraConfig, PeftModel
from peft import get_peft_model as peft_get_peft_model

import inilora
from inilora.bridge import INIT_ADAPTER, is_marked, targets
from inilora.errors import FingerprintMismatch, InitError
from inilora.models import model_output, probe_inputs, relative_drift, tiny_model

RESIDUAL = [
    ("inilora", {"steps": 30}), ("inilora-alpha", {}), ("inilora-beta-kn", {}), ("inilora-beta-ku", {}),
    ("milora", {}), ("pissa", {}), ("olora", {}), ("normal", {"std": 0.1}), ("uniform", {"bound": 0.1}),
    ("kaiming_normal", {}), ("kaiming_uniform", {}), ("xavier_normal", {}), ("xavier_uniform", {}),
    ("orthogonal", {}),
]


def _init(arch, method, opts, r=4, alpha=4, seed=0, **kw):
    base = tiny_model(arch)
    ref_model = copy.deepcopy(base)
    x = probe_inputs(base)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=TINY_TARGETS[arch], **kw)
    model = inilora.get_peft_model(base, config, method, seed=seed, cache=False, **opts)
    return model, ref_model, x


@pytest.mark.parametrize("arch", ["llama-gqa", "gpt2", "roberta"])
@pytest.mark.parametrize("method,opts", RESIDUAL, ids=[m for m, _ in RESIDUAL])
@pytest.mark.parametrize("scale", [1, 4])
def test_output_preserved_at_init(arch, method, opts, scale):
    if arch == "gpt2" and method == "olora":
        pytest.skip("PEFT's OLoRA does not support Conv1D; refused (tested below)")
    model, ref_model, x = _init(arch, method, opts, alpha=4 * scale)
    w0 = {n: t.base_weight().detach().clone() for n, t in targets(PeftModel(copy.deepcopy(ref_model), LoraConfig(
        r=4, target_modules=TINY_TARGETS[arch])), "default").items()}
    drift = relative_drift(model_output(model, x), model_output(ref_model, x))
    assert drift <= bound(rho(model, w0)), (drift, rho(model, w0))
    # the residual really moved something: a wrong residual (or none) would show here
    moved = max((t.base_weight().detach() - w0[n]).abs().max().item() for n, t in targets(model, "default").items())
    assert moved > 1e-4
    assert model.inilora_report.drift["max_rel"] == pytest.approx(drift, rel=1e-6, abs=1e-12)


def test_wrong_scaling_would_be_caught():
    """A residual without the scaling (or with the wrong orientation) is O(1) off: the metric sees it."""
    model, ref_model, x = _init("llama-gqa", "inilora-alpha", {}, alpha=16)
    init = targets(model, INIT_ADAPTER)
    with torch.no_grad():
        for name, t in targets(model, "default").items():
            a0 = init[name].layer.lora_A[INIT_ADAPTER].weight
            b0 = init[name].layer.lora_B[INIT_ADAPTER].weight
            t.set_base_weight(t.base_weight() + (t.layer.scaling["default"] - 1.0) * (b0 @ a0))  # as if s were 1
    assert relative_drift(model_output(model, x), model_output(ref_model, x)) > 1e-2


def test_only_working_factors_train_and_live_config_is_plain():
    model, _, _ = _init("llama-gqa", "inilora-alpha", {})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n and "lora_" in n for n in trainable)
    assert not any(INIT_ADAPTER in n for n in trainable)
    assert model.active_adapters == ["default"]
    for cfg in model.peft_config.values():
        assert cfg.init_lora_weights is False  # TRL builds new adapters from this
    assert "ref" not in model.peft_config


def test_original_gives_back_the_pretrained_model():
    model, ref_model, x = _init("llama-gqa", "inilora-alpha", {}, alpha=8)
    perturb(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    trained = model_output(model, x)
    assert relative_drift(trained, model_output(ref_model, x)) > 1e-3
    with inilora.original(model):
        back = model_output(model, x)
    assert relative_drift(back, model_output(ref_model, x)) <= bound(rho(model))
    # disable_adapter() is the residual base, not the pretrained model
    with model.disable_adapter():
        assert relative_drift(model_output(model, x), model_output(ref_model, x)) > 1e-2
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert relative_drift(model_output(model, x), trained) == 0.0


def test_same_seed_same_init_bit_for_bit_and_caller_rng_untouched():
    state = torch.random.get_rng_state()
    a, _, _ = _init("gpt2", "inilora-beta-ku", {}, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, _, _ = _init("gpt2", "inilora-beta-ku", {}, seed=7)
    c, _, _ = _init("gpt2", "inilora-beta-ku", {}, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if "lora_A" in k)


def test_pissa_equals_peft_own():
    ours, _, _ = _init("llama-gqa", "pissa", {}, alpha=8)
    theirs = peft_get_peft_model(tiny_model("llama-gqa"), LoraConfig(
        r=4, lora_alpha=8, target_modules=TINY_TARGETS["llama-gqa"], init_lora_weights="pissa"))
    st = theirs.state_dict()
    for k, v in ours.state_dict().items():
        if INIT_ADAPTER not in k:
            assert torch.equal(v, st[k]), k


def test_saved_adapter_is_marked_and_vanilla_peft_refuses(tmp_path):
    model, _, _ = _init("llama-gqa", "milora", {})
    model.save_pretrained(str(tmp_path))
    for cfg_path in (tmp_path / "adapter_config.json", tmp_path / INIT_ADAPTER / "adapter_config.json"):
        assert is_marked(json.loads(cfg_path.read_text())["init_lora_weights"])
    meta = json.loads((tmp_path / "inilora.json").read_text())
    assert meta["method"] == "milora" and meta["fingerprint"]["dtype"] == ["float32"]
    for folder in (tmp_path, tmp_path / INIT_ADAPTER):
        with pytest.raises(ValueError, match="Unknown initialization"):
            PeftModel.from_pretrained(tiny_model("llama-gqa"), str(folder))
    # the live config was not changed by saving
    assert model.peft_config["default"].init_lora_weights is False


def test_trainer_resume_path_loads_marked_adapter(tmp_path):
    model, _, x = _init("llama-gqa", "inilora-alpha", {})
    perturb(model)
    trained = model_output(model, x)
    model.save_pretrained(str(tmp_path))
    fresh, _, _ = _init("llama-gqa", "inilora-alpha", {})
    fresh.load_adapter(str(tmp_path), "default", is_trainable=True)  # what Trainer's resume calls
    assert relative_drift(model_output(fresh, x), trained) == 0.0


@pytest.mark.parametrize("arch", ["llama-gqa", "gpt2", "roberta"])
def test_load_rebuilds_the_trained_model(tmp_path, arch):
    model, _, x = _init(arch, "inilora-alpha", {}, alpha=8)
    perturb(model)
    trained = model_output(model, x)
    model.save_pretrained(str(tmp_path))
    loaded = inilora.load(tiny_model(arch), tmp_path)
    assert relative_drift(model_output(loaded, x), trained) <= 1e-6
    assert not any(p.requires_grad for p in loaded.parameters())
    again = inilora.load(tiny_model(arch), tmp_path, is_trainable=True)
    names = [n for n, p in again.named_parameters() if p.requires_grad]
    assert names and all(".default." in n for n in names)


def test_load_refuses_another_base(tmp_path):
    model, _, _ = _init("llama-gqa", "inilora-alpha", {})
    model.save_pretrained(str(tmp_path))
    with pytest.raises(FingerprintMismatch, match="different base model"):
        inilora.load(tiny_model("llama-gqa", seed=1), tmp_path)


def test_load_across_dtypes_warns_but_matches(tmp_path):
    model, _, _ = _init("llama-gqa", "inilora-alpha", {})
    model.save_pretrained(str(tmp_path))
    with pytest.warns(UserWarning, match="adapter was made on"):
        inilora.load(tiny_model("llama-gqa", dtype=torch.bfloat16), tmp_path)


def test_plain_adapter_goes_through_peft(tmp_path):
    model = inilora.get_peft_model(tiny_model("llama-gqa"), LoraConfig(r=4, target_modules=["q_proj"]), "lora")
    perturb(model)
    x = probe_inputs(model)
    model.save_pretrained(str(tmp_path))
    loaded = inilora.load(tiny_model("llama-gqa"), tmp_path)
    assert relative_drift(model_output(loaded, x), model_output(model, x)) == 0.0


@pytest.mark.parametrize("method", ["lora", "gaussian"])
def test_a_non_residual_adapter_records_its_base_and_is_checked_on_load_and_export(tmp_path, method):
    """Issue 25: a `lora` adapter exported onto another checkpoint of the same architecture was
    merged into the wrong weights, silently. It now carries the base fingerprint, unmarked."""
    from inilora.exports import export

    model = inilora.get_peft_model(tiny_model("llama-gqa"), LoraConfig(r=4, target_modules=["q_proj"]), method)
    perturb(model)
    model.save_pretrained(str(tmp_path / "a"))
    side = json.loads((tmp_path / "a" / "inilora.json").read_text())
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert side["residual"] is False and side["method"] == method and len(side["fingerprint"]["sha256"]) == 64
    assert not is_marked(saved["init_lora_weights"])  # vanilla PEFT still loads it as before
    PeftModel.from_pretrained(tiny_model("llama-gqa"), str(tmp_path / "a"))
    other = tiny_model("llama-gqa", seed=1)
    with pytest.raises(FingerprintMismatch, match="different base model"):
        inilora.load(other, tmp_path / "a")
    with pytest.raises(FingerprintMismatch, match="different base model"):
        export(tmp_path / "a", tmp_path / "merged", "merged", base=tiny_model("llama-gqa", seed=1))
    assert not (tmp_path / "merged").exists()
    inilora.load(tiny_model("llama-gqa", dtype=torch.bfloat16), tmp_path / "a")  # the same checkpoint in bf16


def test_a_peft_adapter_made_elsewhere_is_loaded_with_a_warning(tmp_path):
    peft_get_peft_model(tiny_model("llama-gqa"), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(
        str(tmp_path))
    with pytest.warns(UserWarning, match="cannot be checked against this base"):
        inilora.load(tiny_model("llama-gqa", seed=1), tmp_path)


@pytest.mark.parametrize("method", ["normal", "pissa"])
def test_residual_dtype_float32_on_bf16_base(method):
    x = probe_inputs(tiny_model("llama-gqa"))
    ref = model_output(tiny_model("llama-gqa", dtype=torch.bfloat16), x).float()
    cfg = LoraConfig(r=4, lora_alpha=64, target_modules=TINY_TARGETS["llama-gqa"])
    opts = {"std": 1.0} if method == "normal" else {}
    plain = inilora.get_peft_model(tiny_model("llama-gqa", dtype=torch.bfloat16), cfg, method, cache=False, **opts)
    kept = inilora.get_peft_model(tiny_model("llama-gqa", dtype=torch.bfloat16), cfg, method,
                                  residual_dtype="float32", cache=False, **opts)
    d_plain = relative_drift(model_output(plain, x).float(), ref)
    d_kept = relative_drift(model_output(kept, x).float(), ref)
    assert d_kept * 5 < d_plain
    assert kept.inilora_report.drift["max_rel"] == pytest.approx(d_kept, rel=1e-3)
    assert all(t.base.weight.dtype == torch.float32 for t in targets(kept, "default").values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = model_output(kept, x).float()
    assert torch.isfinite(under).all()
    assert relative_drift(under, ref) < d_plain


def test_residual_dtype_float32_on_an_fp32_base_under_bf16_autocast():
    """TRL trains under bf16 autocast: the replaced layers' R·x and s·BA·x, each rounded to bf16, no
    longer cancel. residual_dtype="float32" keeps those layers out of autocast even when the stored
    dtype is already fp32, so the model starts where the base under autocast starts."""
    x = probe_inputs(tiny_model("llama-gqa"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model_output(tiny_model("llama-gqa"), x).float()  # the base itself under autocast
    cfg = LoraConfig(r=4, lora_alpha=64, target_modules=TINY_TARGETS["llama-gqa"])
    drift = {}
    for kept in (False, True):
        model = inilora.get_peft_model(tiny_model("llama-gqa"), cfg, "normal", std=1.0, cache=False,
                                       **({"residual_dtype": "float32"} if kept else {}))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            drift[kept] = relative_drift(model_output(model, x).float(), ref)
    assert drift[True] * 5 < drift[False]


# --------------------------------------------------------------------------- bad input


def _tiny_cfg(**kw):
    return LoraConfig(**{"r": 4, "target_modules": ["q_proj", "v_proj"], **kw})


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "inilora-alfa"}, "Did you mean 'inilora-alpha'"),
    ({"method": "inilora", "stepz": 3}, "does not take option"),
    ({"method": "lora", "std": 0.1}, "takes no options"),
    ({"method": "inilora-alpha", "adapter_name": "ref"}, "reserved"),
    ({"method": "inilora-alpha", "adapter_name": INIT_ADAPTER}, "reserved"),
    ({"method": "lora", "residual_dtype": "float32"}, "residual methods only"),
    ({"method": "normal"}, "needs std"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(InitError, match=match):
        inilora.get_peft_model(tiny_model("llama-gqa"), _tiny_cfg(), cache=False, **kwargs)


@pytest.mark.parametrize("cfg,match", [
    (_tiny_cfg(target_modules=["nope"]), "match no module.*q_proj"),
    (_tiny_cfg(r=32), "not below min"),
    (_tiny_cfg(use_dora=True), "DoRA"),
    (_tiny_cfg(init_lora_weights="pissa"), "conflicts with method"),
])
def test_bad_config(cfg, match):
    with pytest.raises(InitError, match=match):
        inilora.get_peft_model(tiny_model("llama-gqa"), cfg, "inilora-alpha", cache=False)


def test_bad_weights_fail_before_work(monkeypatch):
    import inilora.methods.inilora as m

    monkeypatch.setattr(m.approx, "approximate", lambda *a, **k: pytest.fail("work started"))
    nan = tiny_model("llama-gqa")
    nan.model.layers[1].self_attn.v_proj.weight.data[0, 0] = float("nan")
    with pytest.raises(InitError, match="NaN or Inf"):
        inilora.get_peft_model(nan, _tiny_cfg(), "inilora", cache=False)
    quant = tiny_model("llama-gqa")
    layer = quant.model.layers[0].self_attn.q_proj
    layer.weight = torch.nn.Parameter(torch.zeros(layer.weight.shape, dtype=torch.int8), requires_grad=False)
    with pytest.raises(InitError, match="quantized"):
        inilora.get_peft_model(quant, _tiny_cfg(), "inilora", cache=False)
    with pytest.raises(InitError, match="Conv1D"):
        inilora.get_peft_model(tiny_model("gpt2"), _tiny_cfg(target_modules=["c_attn"]), "olora")


def test_unwritable_cache_fails_before_work(monkeypatch, tmp_path):
    import inilora.methods.inilora as m

    monkeypatch.setattr(m.approx, "approximate", lambda *a, **k: pytest.fail("work started"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(InitError, match="INILORA_CACHE"):
        inilora.get_peft_model(tiny_model("llama-gqa"), _tiny_cfg(), "inilora", steps=5, cache=blocker / "sub")


def test_damaged_save_is_refused(tmp_path):
    model, _, _ = _init("llama-gqa", "inilora-alpha", {})
    model.save_pretrained(str(tmp_path))
    (tmp_path / "inilora.json").unlink()
    with pytest.raises(InitError, match="sidecar|inilora.json"):
        inilora.load(tiny_model("llama-gqa"), tmp_path)


def test_original_with_base_is_bit_exact_on_bf16():
    """R + s·B0A0 rounds differently from a bf16 checkpoint; the checkpoint's own bytes don't."""
    cfg = LoraConfig(r=4, lora_alpha=16, target_modules=TINY_TARGETS["llama-gqa"])
    model = inilora.get_peft_model(tiny_model("llama-gqa", dtype=torch.bfloat16), cfg, "inilora-alpha", cache=False)
    perturb(model)
    x = probe_inputs(model)
    untouched = tiny_model("llama-gqa", dtype=torch.bfloat16)
    expected = model_output(untouched, x)
    trained = model_output(model, x)
    with inilora.original(model, base=untouched):
        exact = model_output(model, x)
    assert torch.equal(exact, expected)
    assert torch.equal(model_output(model, x), trained)  # the residual is back
    with inilora.original(model):
        approx_back = model_output(model, x)
    assert not torch.equal(approx_back, expected)  # why the option exists
    with pytest.raises(FingerprintMismatch):
        with inilora.original(model, base=tiny_model("llama-gqa", seed=5)):
            pass


def test_default_targets_follow_peft():
    model = inilora.get_peft_model(tiny_model("llama-gqa"), LoraConfig(r=4), "inilora-alpha", cache=False)
    assert sorted({n.rsplit(".", 1)[-1] for n in targets(model, "default")}) == ["q_proj", "v_proj"]
