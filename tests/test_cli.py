"""The CLI is a thin layer: each command does what the Python API does, and fails clearly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import inilora
from inilora.bridge import default_targets
from inilora.cli import app, parse_options
from inilora.models import model_output, probe_inputs, relative_drift, tiny_model

runner = CliRunner()


def test_methods_lists_every_registered_method():
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for name in inilora.available_methods():
        assert name in result.output


def test_parse_options_and_default_targets():
    assert parse_options(["std=0.25", "engine=reference", "checkpoints=[10, 20]"]) == {
        "std": 0.25, "engine": "reference", "checkpoints": [10, 20]}
    assert default_targets(tiny_model("llama-gqa")) == ["q_proj", "v_proj"]
    assert default_targets(tiny_model("bert")) == ["query", "value"]
    assert default_targets(tiny_model("gpt2")) == ["c_attn"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny-llama"
    tiny_model("llama-gqa").save_pretrained(str(path))
    return path


def test_init_writes_only_the_adapter_and_it_loads(base_dir, tmp_path):
    out = tmp_path / "adapter"
    result = runner.invoke(app, ["init", "--model", str(base_dir), "--method", "inilora", "--rank", "4",
                                 "--steps", "20", "--out", str(out), "--no-cache"])
    assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "adapter_model.safetensors" in files and "inilora.json" in files
    assert "inilora_init/adapter_model.safetensors" in files
    assert not any(f.startswith("model") for f in files)  # never a full model
    meta = json.loads((out / "inilora.json").read_text())
    assert meta["method"] == "inilora" and meta["options"]["steps"] == 20
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_alpha"] == 4 and config["r"] == 4  # alpha defaults to r: s = 1
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    x = probe_inputs(base)
    expected = model_output(base, x)
    loaded = inilora.load(AutoModelForCausalLM.from_pretrained(str(base_dir)), out)
    assert relative_drift(model_output(loaded, x), expected) < 1e-4  # untrained: the original model


@pytest.mark.parametrize("args,message", [
    (["--method", "inilora-alfa"], "inilora-alpha"),
    (["--method", "inilora", "--option", "stepz=3"], "does not take option"),
    (["--rank", "500"], "not below min"),
    (["--targets", "nothing_here"], "match no module"),
])
def test_init_errors_are_clear(base_dir, tmp_path, args, message):
    result = runner.invoke(app, ["init", "--model", str(base_dir), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "inilora.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "export" in done.stdout


def test_engine_imports_no_model_libraries():
    code = ("import sys, inilora.approx, inilora.methods\n"
            "bad = [m for m in ('transformers', 'peft') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_approximate_fills_the_cache_init_reads(base_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("INILORA_CACHE", str(tmp_path / "cache"))
    rep = tmp_path / "report.json"
    result = runner.invoke(app, ["approximate", "--model", str(base_dir), "--rank", "4", "--steps", "30",
                                 "--checkpoints", "10,20", "--report", str(rep)])
    assert result.exit_code == 0, result.output
    fit = json.loads(rep.read_text())["fit"]
    assert fit and all(0 <= f["optimum"] <= f["rel_error"] for f in fit.values())
    assert len(list((tmp_path / "cache" / "fits").glob("*.json"))) == 3  # 30 steps + checkpoints 10, 20
    import inilora.methods.inilora as m

    monkeypatch.setattr(m.approx, "approximate", lambda *a, **k: pytest.fail("recomputed"))
    for steps in ("30", "10"):
        out = tmp_path / f"adapter{steps}"
        result = runner.invoke(app, ["init", "--model", str(base_dir), "--method", "inilora", "--rank", "4",
                                     "--steps", steps, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "inilora.json").read_text())["info"]["cache"] == "hit"


@pytest.mark.parametrize("raised,code,said", [
    (ZeroDivisionError("boom"), 1, "internal error (ZeroDivisionError: boom); rerun with --debug"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_main_ends_every_failure_in_one_line(monkeypatch, capsys, tmp_path, raised, code, said):
    """A genuine bug is one line (with how to get the traceback), Ctrl-C outside a fit one line, exit 130;
    --debug shows the traceback."""
    import inilora.cli as cli

    def explode(*a, **k):
        raise raised

    monkeypatch.setattr(cli, "_check_method", explode)
    argv = ["init", "--model", "x", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert said in " ".join(err.split()) and "Traceback" not in err
    if code == 1:
        with pytest.raises(ZeroDivisionError):
            cli.main([*argv, "--debug"])
