"""Export: save → export in a fresh process → vanilla PEFT on the unmodified base → same logits."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from _util import TINY_TARGETS, bound, perturb, rho
from peft import LoraConfig, PeftModel, TaskType
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import inilora
from inilora.bridge import targets
from inilora.errors import InitError
from inilora.models import model_output, probe_inputs, relative_drift, tiny_model

CASES = [
    ("llama-gqa", "inilora", {"steps": 20}),
    ("llama-gqa", "inilora-alpha", {}),
    ("llama-gqa", "inilora-beta-kn", {}),
    ("llama-gqa", "milora", {}),
    ("llama-gqa", "pissa", {}),
    ("llama-gqa", "olora", {}),
    ("gpt2", "inilora-alpha", {}),
    ("gpt2", "milora", {}),
    ("roberta", "inilora-alpha", {}),
]
AUTO = {"llama-gqa": AutoModelForCausalLM, "gpt2": AutoModelForCausalLM, "roberta": AutoModelForSequenceClassification}


def _config(arch, **kw):
    extra = {"task_type": TaskType.SEQ_CLS} if arch == "roberta" else {}
    return LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": TINY_TARGETS[arch], **extra, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Per case: the base on disk, a 'trained' adapter saved from it, and the trained logits."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for arch in {a for a, _, _ in CASES}:
        tiny_model(arch).save_pretrained(str(root / f"base-{arch}"))
    for arch, method, opts in CASES:
        case = root / f"{arch}-{method}"
        base = AUTO[arch].from_pretrained(str(root / f"base-{arch}"))
        model = inilora.get_peft_model(base, _config(arch), method, seed=0, cache=False, **opts)
        perturb(model)
        x = probe_inputs(model)
        model.save_pretrained(str(case / "adapter"))
        out[(arch, method)] = {"dir": case, "base": root / f"base-{arch}", "x": x,
                               "logits": model_output(model, x), "rho": rho(model)}
    # one fresh process exports everything (the CLI path is tested separately below)
    jobs = [(str(v["dir"] / "adapter"), str(v["base"]), layout, str(v["dir"] / layout))
            for v in out.values() for layout in ("plain", "merged", "residual")]
    script = ("import json, sys, inilora\n"
              "for a, b, l, o in json.loads(sys.argv[1]):\n"
              "    r = inilora.export(a, o, layout=l, base=b)\n"
              "    print(json.dumps([o, r.drift]))\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], capture_output=True, text=True,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    drifts = dict(json.loads(line) for line in done.stdout.splitlines() if line.startswith("["))
    for v in out.values():
        v["drift"] = {layout: drifts[str(v["dir"] / layout)] for layout in ("plain", "merged", "residual")}
    return out


@pytest.mark.parametrize("arch,method", [(a, m) for a, m, _ in CASES])
def test_plain_export_loads_with_vanilla_peft_on_unmodified_base(trained, arch, method):
    case = trained[(arch, method)]
    base = AUTO[arch].from_pretrained(str(case["base"]))  # the unmodified base, freshly loaded
    cfg = json.loads((case["dir"] / "plain" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and cfg["init_lora_weights"] is True
    model = PeftModel.from_pretrained(base, str(case["dir"] / "plain"))
    limit = 2 * bound(case["rho"])
    assert relative_drift(model_output(model, case["x"]), case["logits"]) <= limit
    merged = model.merge_and_unload()
    assert relative_drift(model_output(merged, case["x"]), case["logits"]) <= limit
    assert case["drift"]["plain"] is not None and case["drift"]["plain"] <= limit


@pytest.mark.parametrize("arch,method", [(a, m) for a, m, _ in CASES])
def test_merged_and_residual_layouts(trained, arch, method):
    case = trained[(arch, method)]
    merged = AUTO[arch].from_pretrained(str(case["dir"] / "merged"))
    assert relative_drift(model_output(merged, case["x"]), case["logits"]) <= 2 * bound(case["rho"])
    res_base = AUTO[arch].from_pretrained(str(case["dir"] / "residual"))
    res = PeftModel.from_pretrained(res_base, str(case["dir"] / "residual" / "adapter"))
    assert relative_drift(model_output(res, case["x"]), case["logits"]) <= 2 * bound(case["rho"])


def test_cli_export_fresh_process(trained, tmp_path):
    case = trained[("llama-gqa", "milora")]
    out = tmp_path / "plain"
    done = subprocess.run([sys.executable, "-m", "inilora.cli", "export", str(case["dir"] / "adapter"),
                           "--base", str(case["base"]), "--layout", "plain", "--out", str(out)],
                          capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["layout"] == "plain" and report["drift"] <= 2 * bound(case["rho"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(case["base"])), str(out))
    assert relative_drift(model_output(model, case["x"]), case["logits"]) <= 2 * bound(case["rho"])


def test_plain_export_keeps_scaling_under_rslora_and_patterns(tmp_path):
    cfg = LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj"],
                     rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 3})
    model = inilora.get_peft_model(tiny_model("llama-gqa"), cfg, "inilora-alpha", cache=False)
    perturb(model)
    x = probe_inputs(model)
    want = {n: t.layer.scaling["default"] for n, t in targets(model, "default").items()}
    inilora.export(model, tmp_path / "plain", layout="plain")
    saved = json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["lora_alpha"] == pytest.approx(8 * math.sqrt(2))
    assert saved["rank_pattern"] == {"v_proj": 4}
    assert saved["alpha_pattern"] == {"q_proj": pytest.approx(3 * math.sqrt(2))}
    loaded = PeftModel.from_pretrained(tiny_model("llama-gqa"), str(tmp_path / "plain"))
    got = {n: t.layer.scaling["default"] for n, t in targets(loaded, "default").items()}
    assert got.keys() == want.keys() and all(got[n] == pytest.approx(want[n], rel=1e-12) for n in want)
    assert relative_drift(model_output(loaded, x), model_output(model, x)) <= 2 * bound(rho(model))


def test_export_does_not_touch_the_live_model(tmp_path):
    model = inilora.get_peft_model(tiny_model("llama-gqa"), _config("llama-gqa"), "milora", cache=False)
    x = probe_inputs(model)
    before = model_output(model, x)
    for layout in ("plain", "merged", "residual"):
        inilora.export(model, tmp_path / layout, layout=layout)
    assert torch.equal(model_output(model, x), before)
    assert model.active_adapters == ["default"]


def test_bf16_plain_export_warns_and_measures(tmp_path):
    cfg = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"])
    model = inilora.get_peft_model(tiny_model("llama-gqa", dtype=torch.bfloat16), cfg, "normal", std=1.0, cache=False)
    perturb(model, scale=0.1)
    with pytest.warns(UserWarning, match="layout='merged'"):
        report = inilora.export(model, tmp_path / "plain", layout="plain")
    assert report.dtype == "bfloat16" and report.drift > 0.01
    assert report.drift_fp32_adapter < report.drift  # PEFT's fp32 adapter cancels in fp32
    fp32 = inilora.get_peft_model(tiny_model("llama-gqa"), _config("llama-gqa"), "milora", cache=False)
    perturb(fp32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*config file.*")
        ok = inilora.export(fp32, tmp_path / "fine", layout="plain")
    assert ok.drift < 1e-4


def test_export_errors(tmp_path):
    model = inilora.get_peft_model(tiny_model("llama-gqa"), _config("llama-gqa"), "milora", cache=False)
    with pytest.raises(InitError, match="unknown export layout"):
        inilora.export(model, tmp_path / "x", layout="fused")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("user data")
    with pytest.raises(InitError, match="not empty"):
        inilora.export(model, tmp_path / "busy", layout="plain")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "user data"
    model.save_pretrained(str(tmp_path / "ad"))
    with pytest.raises(inilora.FingerprintMismatch):
        inilora.export(tmp_path / "ad", tmp_path / "y", base=tiny_model("llama-gqa", seed=3))
    assert not (tmp_path / "y").exists()


def test_plain_export_of_an_embedded_model_names_its_hub_model_and_keeps_the_folder(minilm_fresh, tmp_path):
    """The export travels: other machines and tools know the hub name, not this machine's folder; the
    folder (for tools that need one) is in inilora's marker file, the export's report and `inilora models`."""
    from inilora.models import EMBEDDED_ALIASES, embedded_folder, hub_name_of
    from inilora.outdir import EXPORT_MARKER

    folder = embedded_folder("embedded:minilm")
    assert minilm_fresh.name_or_path == str(folder)  # what the export would otherwise have written
    model = inilora.get_peft_model(minilm_fresh, LoraConfig(r=2, target_modules=["query", "value"]), "pissa",
                                   cache=False)
    report = inilora.export(model, tmp_path / "plain", layout="plain", check=False)
    hub = EMBEDDED_ALIASES["embedded:minilm"]
    assert json.loads((tmp_path / "plain" / "adapter_config.json").read_text())["base_model_name_or_path"] == hub
    marker = json.loads((tmp_path / "plain" / EXPORT_MARKER).read_text())
    assert marker["base_model"] == {"name": hub, "local_folder": str(folder.resolve())}
    assert (report.base_model, report.base_folder) == (hub, str(folder.resolve()))
    assert hub_name_of(str(tmp_path)) is None and hub_name_of("embedded:minilm") == hub
    listed = subprocess.run([str(Path(sys.executable).with_name("inilora")), "models"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert f"embedded:minilm\t{hub}\t{folder}" in listed
