"""The one safety contract every registered init method keeps (issue 27), parametrized over the registry.

The cases are read from the registry when this module is collected: every method (and each of its
declared ``variants``), including methods registered from outside the package before collection
(``tests/_extension.py``, imported by conftest) — nothing here names a method.  Each runs with its
``example_options`` on two tiny models, a LLaMA-style causal LM and a RoBERTa-style encoder classifier;
data-driven methods get four seeded calibration batches.  Clauses:

1. at init the output equals the base's: exactly for non-residual methods whose B0A0 is 0 (B0 = 0 or
   A0 = 0), within docs/design.md §1's ``2e-5·(1+ρ)`` for residual ones and for PEFT's 'orthogonal' (B0A0 = 0 in
   exact arithmetic only);
2. same seed → the same model, bit for bit (base weights and adapters);
3. after three Adam steps, ``save_pretrained`` → ``inilora.load`` in a fresh process gives identical
   outputs; plain ``PeftModel.from_pretrained`` refuses a residual adapter;
4. the ``plain`` export loads in vanilla PEFT on the unmodified base, and the ``merged`` export in
   transformers, with the logits of ``inilora.load`` (residual: ``2·2e-5·(1+ρ)``; non-residual plain:
   exactly; merged: ``4e-5``, the rounding of adding s·BA into W);
5. (LLaMA) building TRL's ``DPOTrainer`` leaves the model's output unchanged and its ``ref`` adapter
   computes the starting model, exactly;
6. (LLaMA) two gloo ranks end with identical models;
7. (LLaMA) on a bitsandbytes 4-bit base: a one-line refusal before the model is touched, or the init
   done: non-residual within clause 1's bound; residual with R re-quantized no further from R than
   ``2·(1+ρ)`` times quantizing W0 was from W0, and an output drift past ``quantized.DRIFT_WARN``
   warned about with the alternative (``residual_dtype``).

Cost is shared: one model build per clause family, one fresh process for every load and export,
one pair of forked gloo ranks for every method.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from _util import TINY_TARGETS, bound, fork_ranks, rho
from peft import LoraConfig, PeftModel, TaskType
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import inilora
from inilora import quantized
from inilora.errors import InitError
from inilora.methods import methods
from inilora.models import model_output, probe_inputs, relative_drift, tiny_model

ARCHS = {"llama-gqa": AutoModelForCausalLM, "roberta": AutoModelForSequenceClassification}
LLAMA = "llama-gqa"
STEPS = 3


def cases() -> list[tuple[str, dict]]:
    """(method, options) for every registered method and each declared variant, quick options laid under."""
    return [(m.name, {**m.example_options, **v}) for m in methods() for v in ({}, *m.variants)]


def _case_id(case: tuple[str, dict]) -> str:
    name, opts = case
    spec = inilora.get_method(name)
    shown = {k: v for k, v in opts.items() if k not in spec.example_options}
    return name + ("[" + ",".join(f"{k}={v}" for k, v in shown.items()) + "]" if shown else "")


CASES = cases()
IDS = [_case_id(c) for c in CASES]
BY_ID = dict(zip(IDS, CASES))


def _config(arch: str) -> LoraConfig:
    extra = {"task_type": TaskType.SEQ_CLS} if arch == "roberta" else {}
    return LoraConfig(r=4, lora_alpha=8, target_modules=TINY_TARGETS[arch], **extra)


def calibration(arch: str, n: int = 4, size: int = 4, length: int = 16) -> list[dict[str, torch.Tensor]]:
    """Seeded batches: token ids of the tiny vocabulary; labels the tokens (LM) or a class (encoder)."""
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 250, (size, length), generator=g)
        labels = ids.clone() if arch == LLAMA else torch.randint(0, 2, (size,), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def build(base, arch: str, case_id: str, seed: int = 0, quiet: bool = True, **kw):
    name, opts = BY_ID[case_id]
    data = calibration(arch) if inilora.get_method(name).calibration else None
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        return inilora.get_peft_model(base, _config(arch), name, seed=seed, calibration=data,
                                      progress=lambda *a: None, **kw, **opts)


def _product_rho(model) -> float:
    """Non-residual: ρ of s·B0A0 itself (0 when B0 or A0 is 0; PEFT's 'orthogonal' has B0A0 = 0 only
    in exact arithmetic, so its output at init moves by rounding)."""
    out = 0.0
    for t in inilora.bridge.targets(model, "default").values():
        s = float(t.layer.scaling["default"])
        ba = t.layer.lora_B["default"].weight.double() @ t.layer.lora_A["default"].weight.double()
        out = max(out, float(s * ba.norm() / t.base_weight().double().norm()))
    return out


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(model, arch: str) -> None:
    """A few real optimizer steps on the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for batch in calibration(arch, n=STEPS):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Per (arch, case): init checks, a twin for the seed clause, a trained adapter saved; then one
    fresh process loads every adapter with inilora.load and writes the plain and merged exports."""
    root = tmp_path_factory.mktemp("contract")
    out: dict = {}
    for arch, auto in ARCHS.items():
        base_dir = root / f"base-{arch}"
        tiny_model(arch).save_pretrained(str(base_dir))
        for case_id in IDS:
            base = auto.from_pretrained(str(base_dir)).eval()
            x = probe_inputs(base)
            before = model_output(base, x)
            rec: dict = {"base": base_dir, "x": x, "dir": root / f"{arch}-{case_id}"}
            out[(arch, case_id)] = rec
            try:
                model = build(base, arch, case_id)
            except InitError as exc:
                rec["error"] = str(exc)
                continue
            rec["residual"] = inilora.bridge.is_residual_model(model)
            rec["start"] = model_output(model, x)
            rec["init_drift"] = relative_drift(rec["start"], before)
            rec["init_exact"] = torch.equal(rec["start"], before)
            rec["rho"] = rho(model) if rec["residual"] else _product_rho(model)
            twin = build(auto.from_pretrained(str(base_dir)).eval(), arch, case_id)
            a, b = _state(model), _state(twin)
            rec["same_seed_equal"] = a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())
            if arch == LLAMA:
                rec["twin"] = twin
            _train(model, arch)
            rec["trained"] = model_output(model, x)
            model.save_pretrained(str(rec["dir"] / "adapter"))
            torch.save(x, rec["dir"] / "x.pt")
    jobs = [(str(r["dir"]), str(r["base"]), arch) for (arch, _), r in out.items() if "error" not in r]
    script = """
import json, sys, warnings, torch, inilora
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from inilora.models import model_output
warnings.simplefilter("ignore")
auto = {"llama-gqa": AutoModelForCausalLM, "roberta": AutoModelForSequenceClassification}
for case, base, arch in json.loads(sys.argv[1]):
    model = inilora.load(auto[arch].from_pretrained(base), case + "/adapter")
    torch.save(model_output(model, torch.load(case + "/x.pt")), case + "/loaded.pt")
    for layout in ("plain", "merged"):
        inilora.export(case + "/adapter", case + "/" + layout, layout=layout, base=base)
"""
    done = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _case(built, arch, case_id) -> dict:
    rec = built[(arch, case_id)]
    if "error" in rec:
        pytest.fail(f"{case_id} on {arch} was refused: {rec['error']}")
    return rec


@pytest.mark.parametrize("case_id", IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_output_at_init_equals_the_base(built, arch, case_id):
    rec = _case(built, arch, case_id)
    if rec["residual"] or rec["rho"] > 0:
        assert rec["init_drift"] <= bound(rec["rho"]), (rec["init_drift"], rec["rho"])
    else:  # B0 = 0 or A0 = 0: nothing added, nothing rounded
        assert rec["init_exact"], rec["init_drift"]


@pytest.mark.parametrize("case_id", IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_same_model_bit_for_bit(built, arch, case_id):
    assert _case(built, arch, case_id)["same_seed_equal"]


@pytest.mark.parametrize("case_id", IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_process_load_is_identical_and_vanilla_peft_refuses_residual(built, arch, case_id):
    rec = _case(built, arch, case_id)
    assert torch.equal(torch.load(rec["dir"] / "loaded.pt"), rec["trained"])
    base = ARCHS[arch].from_pretrained(str(rec["base"]))
    if rec["residual"]:
        with pytest.raises(ValueError, match="Unknown initialization"):
            PeftModel.from_pretrained(base, str(rec["dir"] / "adapter"))


@pytest.mark.parametrize("case_id", IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_plain_and_merged_exports_give_the_loaded_logits(built, arch, case_id):
    rec = _case(built, arch, case_id)
    loaded = torch.load(rec["dir"] / "loaded.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = PeftModel.from_pretrained(ARCHS[arch].from_pretrained(str(rec["base"])), str(rec["dir"] / "plain"))
        merged = ARCHS[arch].from_pretrained(str(rec["dir"] / "merged"))
    plain_out, merged_out = model_output(plain.eval(), rec["x"]), model_output(merged.eval(), rec["x"])
    if rec["residual"]:
        assert relative_drift(plain_out, loaded) <= 2 * bound(rec["rho"])
    else:
        assert torch.equal(plain_out, loaded)
    assert relative_drift(merged_out, loaded) <= 2 * bound(rec["rho"])


@pytest.mark.parametrize("case_id", IDS)
def test_dpo_trainer_keeps_the_model_and_its_reference_is_the_start(built, case_id, tmp_path):
    pytest.importorskip("trl")
    from test_trl import _dpo, _tokenizer
    from trl.trainer.utils import use_adapter

    rec = _case(built, LLAMA, case_id)
    model = rec["twin"]
    start = model_output(model, rec["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = _dpo(model, _tokenizer(model.config.vocab_size), tmp_path)
    model = trainer.model.eval()
    assert torch.equal(model_output(model, rec["x"]), start)
    assert "ref" in model.peft_config
    with use_adapter(model, "ref"):
        assert torch.equal(model_output(model, rec["x"]), start)


# ------------------------------------------------------------------------------------ two gloo ranks

def _rank_main(rank: int, port: int, folder: Path) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), INILORA_CACHE=str(folder / "cache"))
    try:
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo")
        states = {}
        for case_id in IDS:
            try:
                states[case_id] = _state(build(tiny_model(LLAMA), LLAMA, case_id, measure_drift=False))
            except InitError as exc:
                states[case_id] = str(exc)
        torch.save(states, folder / f"rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - any failure reaches the parent
        (folder / f"rank{rank}.err").write_text(traceback.format_exc())
        os._exit(1)
    os._exit(0)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    return fork_ranks(_rank_main, tmp_path_factory.mktemp("contract-gloo"), 2, timeout=600)


@pytest.mark.parametrize("case_id", IDS)
def test_two_gloo_ranks_end_identical(ranks, case_id):
    a, b = ranks[0][case_id], ranks[1][case_id]
    assert not isinstance(a, str), a
    assert a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


# ------------------------------------------------------------------------------------- 4-bit base

def _bnb_4bit_on_cpu() -> str | None:
    try:
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32)
        layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False)
        layer.to("cpu")(torch.randn(2, 64))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: not on this machine
        return f"bitsandbytes 4-bit does not run here: {type(exc).__name__}: {exc}"


@pytest.fixture(scope="module")
def base_4bit(tmp_path_factory):
    why = _bnb_4bit_on_cpu()
    if why:
        pytest.skip(why)
    from transformers import BitsAndBytesConfig

    path = tmp_path_factory.mktemp("contract-4bit") / "base"
    fp32 = tiny_model(LLAMA)
    fp32.save_pretrained(str(path))
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)

    def load():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_pretrained(str(path), quantization_config=cfg).eval()

    q = load()
    own = max(float((quantized.dequantize(m) - fp32.get_submodule(n).weight).norm() / fp32.get_submodule(n).weight.norm())
              for n, m in q.named_modules() if quantized.quant_kind(m))
    return load, own


@pytest.mark.parametrize("case_id", IDS)
def test_4bit_base_is_correct_or_refused_in_one_line(base_4bit, case_id):
    load, own = base_4bit
    base = load()
    x = probe_inputs(base)
    before = model_output(base, x)
    stored = {n: p.detach().clone() for n, p in base.state_dict().items() if isinstance(p, torch.Tensor)}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            model = build(base, LLAMA, case_id, quiet=False)
        except InitError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 600, str(exc)
            after = {n: p for n, p in base.state_dict().items() if isinstance(p, torch.Tensor)}
            assert after.keys() == stored.keys() and all(torch.equal(p, stored[n]) for n, p in after.items())
            return
    out = model_output(model, x)
    if not inilora.bridge.is_residual_model(model):
        assert relative_drift(out, before) <= bound(_product_rho(model))
        return
    # R = W0 − s·B0A0 re-quantized: its error is bounded like quantizing a matrix of norm ≤ (1+ρ)·‖W0‖ ...
    info = model.inilora_report.info["quantized"]
    assert info["requant_rel_error_max"] <= 2 * own * (1 + rho(model)) + 1e-6
    drift = relative_drift(out, before)
    assert drift == pytest.approx(model.inilora_report.drift["max_rel"], rel=1e-6)
    if drift > quantized.DRIFT_WARN:  # ... and a drift past the warning level is said, with what to do instead
        assert any("residual_dtype" in str(w.message) for w in seen), [str(w.message) for w in seen]
