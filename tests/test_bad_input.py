"""docs/design.md §8 as one table: every bad input is refused with a message that names the problem and the
fix, through the Python API and the CLI (exit code 2, "error: ..."), before any expensive work
starts — and an interrupted write never replaces a finished result with a partial one."""

from __future__ import annotations

import os
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import inilora
import inilora.approx
import inilora.bridge.build as bridge
import inilora.bridge.loading as bridge_load
from inilora.cache import FitCache
from inilora.cli import app
from inilora.config import CompareConfig, ConfigError, TrainConfig, load_yaml
from inilora.errors import FingerprintMismatch, InitError
from inilora.models import tiny_model
from inilora.tasks.base import TaskError, require_columns

runner = CliRunner()
WIDE = {"COLUMNS": "2000"}  # rich wraps at the terminal width; keep each message on one line
QV = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """Bases and adapters on disk, made once: the CLI reads models from folders."""
    root = tmp_path_factory.mktemp("bad-input")
    tiny_model("llama-gqa").save_pretrained(str(root / "base"))
    tiny_model("llama-gqa", seed=1).save_pretrained(str(root / "other-base"))
    nan = tiny_model("llama-gqa")
    nan.model.layers[1].self_attn.v_proj.weight.data[3, 5] = float("inf")
    nan.save_pretrained(str(root / "nan-base"))
    model = inilora.get_peft_model(tiny_model("llama-gqa"), LoraConfig(r=4, lora_alpha=4, target_modules=QV),
                                   "inilora-alpha", cache=False)
    model.save_pretrained(str(root / "adapter"))
    # a bf16 model whose plain export cancels badly (docs/design.md §4's caveat): α-style factors, large s
    bf16 = tiny_model("llama-gqa", dtype=torch.bfloat16)
    bf16.save_pretrained(str(root / "bf16-base"))
    drifty = inilora.get_peft_model(tiny_model("llama-gqa", dtype=torch.bfloat16),
                                     LoraConfig(r=4, lora_alpha=64, target_modules=QV), "normal", std=1.0, cache=False)
    with torch.no_grad():
        for p in drifty.parameters():
            if p.requires_grad:
                p.add_(0.1)
    drifty.save_pretrained(str(root / "drifty-adapter"))
    return root


@pytest.fixture
def no_work(monkeypatch):
    """Any expensive step (the approximation, PEFT's injection, the residual) fails the test."""
    def fail(what):
        def boom(*args, **kwargs):
            raise AssertionError(f"work started before the bad input was refused: {what}")
        return boom

    monkeypatch.setattr(inilora.approx, "approximate", fail("the approximation"))
    for module in (bridge, bridge_load):  # get_peft_model and load each build through PEFT
        monkeypatch.setattr(module, "_inject", fail("PEFT injection"))
        monkeypatch.setattr(module, "_apply_residual", fail("the residual"))


@dataclass
class Env:
    disk: Path
    tmp: Path
    monkeypatch: Any


def _get(method: str, model: Callable[[Env], Any] | None = None, r: int = 4, target_modules=QV, **opts):
    """``get_peft_model`` on a tiny LLaMA (or ``model(env)``); ``cache`` may be a function of env."""
    def run(env):
        base = model(env) if model else tiny_model("llama-gqa")
        kw = {"cache": False, **({"steps": 5} if method == "inilora" else {}), **opts}
        if callable(kw["cache"]):
            kw["cache"] = kw["cache"](env)
        return inilora.get_peft_model(base, LoraConfig(r=r, lora_alpha=r, target_modules=target_modules), method,
                                      **kw)
    return run


def _int8_weights(env):
    model = tiny_model("llama-gqa")
    q = model.model.layers[0].self_attn.q_proj
    q.weight = torch.nn.Parameter(torch.zeros(q.weight.shape, dtype=torch.int8), requires_grad=False)
    return model


def _bnb_4bit(env):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    return AutoModelForCausalLM.from_pretrained(str(env.disk / "base"), quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))


def _gptq_marked(env):
    model = tiny_model("llama-gqa")
    model.hf_quantizer = types.SimpleNamespace(quantization_config=types.SimpleNamespace(quant_method="gptq"))
    return model


def _nan(env):
    model = tiny_model("llama-gqa")
    model.model.layers[1].self_attn.v_proj.weight.data[0, 0] = float("nan")
    return model


def _readonly_cache(env) -> Path:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root writes through chmod; the file-in-the-way case covers the same check")
    path = env.tmp / "ro-cache"
    path.mkdir()
    path.chmod(0o500)
    env.monkeypatch.setenv("INILORA_CACHE", str(path))
    return path / "fits"


def _blocked_cache(env) -> Path:
    blocker = env.tmp / "a-file"
    blocker.write_text("not a directory")
    env.monkeypatch.setenv("INILORA_CACHE", str(blocker))
    return blocker / "fits"


def _config_file(text: str, cls: type) -> Callable[[Env], Any]:
    def run(env):
        path = env.tmp / "bad.yaml"
        path.write_text(text)
        return load_yaml(path, cls)
    return run


def _config_cli(text: str) -> Callable[[Env], list[str]]:
    def args(env):
        path = env.tmp / "bad.yaml"
        path.write_text(text)
        return ["compare", str(path), "--dry-run"]
    return args


def _load_other_base(env):
    return inilora.load(AutoModelForCausalLM.from_pretrained(str(env.disk / "other-base")), env.disk / "adapter")


def _user_folder(env) -> None:
    (env.tmp / "out").mkdir()
    (env.tmp / "out" / "notes.txt").write_text("the user's own file")


def _init_args(*extra: str, cache: bool = False) -> Callable[[Env], list[str]]:
    return lambda env: ["init", "--model", str(env.disk / "base"), *extra, *([] if cache else ["--no-cache"]),
                        "--out", str(env.tmp / "out")]


# --------------------------------------------------------------------------- interrupted writes


class Interrupted(KeyboardInterrupt):
    pass


def _interrupt(*args, **kwargs):
    raise Interrupted()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _export_interrupted(env):
    out = env.tmp / "export"
    inilora.export(env.disk / "adapter", out, layout="plain", base=str(env.disk / "base"))
    before = _snapshot(out)
    env.monkeypatch.setattr("inilora.exports._measure", _interrupt)  # after the new files are written
    with pytest.raises(Interrupted):
        inilora.export(env.disk / "adapter", out, layout="residual", base=str(env.disk / "base"), overwrite=True)
    assert _snapshot(out) == before
    assert not [p for p in env.tmp.iterdir() if ".tmp-" in p.name]


def _init_interrupted(env):
    out = env.tmp / "adapter"
    result = runner.invoke(app, _init_args("--method", "inilora-alpha")(env)[:-1] + [str(out)])
    assert result.exit_code == 0, result.output
    before = _snapshot(out)
    import peft.peft_model

    def half_written(tensors, path, *a, **k):
        Path(path).write_bytes(b"partial")
        raise Interrupted()

    env.monkeypatch.setattr(peft.peft_model, "safe_save_file", half_written)
    result = runner.invoke(app, ["init", "--model", str(env.disk / "base"), "--method", "milora", "--rank", "4",
                                 "--out", str(out)])  # click turns the interrupt into "Aborted!", exit 1
    assert result.exit_code != 0
    assert _snapshot(out) == before
    assert not [p for p in env.tmp.iterdir() if ".tmp-" in p.name]


def _cache_interrupted(env):
    cache = FitCache(env.tmp / "fits")
    key = {"what": "test"}
    u, p = torch.ones(4, 2), torch.zeros(3, 2)
    cache.put(key, {"m": (u, p)})
    env.monkeypatch.setattr("inilora.cache.save_file", lambda tensors, path, **k: (Path(path).write_bytes(b"x"),
                                                                                 _interrupt()))
    with pytest.raises(Interrupted):
        cache.put(key, {"m": (u * 2, p)})
    factors, _ = cache.get(key)
    assert torch.equal(factors["m"][0], u)


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    api: Callable[[Env], Any] | None
    error: type | None  # None: a warning (``warns``) or a write check (``api`` asserts itself)
    problem: str  # regex the message must match: what is wrong
    fix: str  # regex the message must match: what to do
    cli: Callable[[Env], list[str]] | None = None
    warns: type | None = None


CASES = [
    Case("unknown method", _get("inilora-alfa"), InitError, r"unknown init method 'inilora-alfa'",
         r"Did you mean 'inilora-alpha'.*inilora methods", cli=_init_args("--method", "inilora-alfa")),
    Case("unknown method option", _get("inilora", stepz=3), InitError, r"does not take option\(s\) stepz",
         r"its options are: .*steps", cli=_init_args("--method", "inilora", "--option", "stepz=3")),
    Case("rank >= min(d, k)", _get("milora", r=32), InitError, r"rank 32 .* not below min\(out, in\) = 32",
         r"Lower r", cli=_init_args("--method", "milora", "--rank", "32")),
    Case("targets match nothing", _get("inilora-alpha", target_modules=["qproj"]), InitError,
         r"match no module", r"named: .*q_proj", cli=_init_args("--method", "inilora-alpha", "--targets", "qproj")),
    Case("non-float weights", _get("inilora", model=_int8_weights), InitError, r"q_proj .*torch\.int8 weight",
         r"dequantize it explicitly"),
    Case("quantized layer the method can't handle", _get("pissa", model=_bnb_4bit), InitError,
         r"bnb-4bit layer; method 'pissa' is PEFT's own", r"Use 'milora'.*non-residual method"),
    Case("unsupported quantization scheme", _get("inilora-alpha", model=_gptq_marked), InitError,
         r"quantized with 'gptq'", r"non-residual method .*unquantized"),
    Case("NaN/Inf in weights", _get("inilora", model=_nan), InitError, r"v_proj\.weight contains NaN or Inf",
         r"base checkpoint is broken",
         cli=lambda env: ["init", "--model", str(env.disk / "nan-base"), "--method", "inilora-alpha",
                          "--out", str(env.tmp / "out")]),
    Case("cache directory not writable (chmod)", _get("inilora", cache=_readonly_cache), InitError,
         r"cache directory .* is not writable", r"Set INILORA_CACHE .* or pass cache=False",
         cli=lambda env: (_readonly_cache(env), _init_args("--method", "inilora", "--steps", "5", cache=True)(env))[1]),
    Case("cache directory not writable (a file in the way)", _get("inilora", cache=_blocked_cache), InitError,
         r"cache directory .* is not writable", r"Set INILORA_CACHE",
         cli=lambda env: (_blocked_cache(env), _init_args("--method", "inilora", "--steps", "5", cache=True)(env))[1]),
    Case("config: unknown key", _config_file("lora: {rank: 8}\nlearnig_rate: 0.001\n", TrainConfig), ConfigError,
         r"bad\.yaml: unknown key learnig_rate", r"did you mean 'learning_rate'"),
    Case("config: unknown nested key", _config_file("base: {lora: {rnak: 8}}\n", CompareConfig), ConfigError,
         r"bad\.yaml: unknown key base\.lora\.rnak", r"did you mean 'rank'",
         cli=_config_cli("base: {lora: {rnak: 8}}\n")),
    Case("config: wrong type", _config_file("seeds: [0, one]\n", CompareConfig), ConfigError,
         r"bad\.yaml: seeds\[1\]: expected an integer", r"got str 'one'", cli=_config_cli("seeds: [0, one]\n")),
    Case("dataset missing a required column",
         lambda env: require_columns(["question", "answer"], ["sentence", "label"], "task 'mine', split 'train'"),
         TaskError, r"task 'mine', split 'train': missing column\(s\) sentence, label", r"it has question, answer"),
    Case("residual adapter on another base", _load_other_base, FingerprintMismatch,
         r"initialised on a different base model", r"load the base it was made on",
         cli=lambda env: ["export", str(env.disk / "adapter"), "--base", str(env.disk / "other-base"),
                          "--out", str(env.tmp / "out")]),
    Case("export drift > 0.01",
         lambda env: inilora.export(env.disk / "drifty-adapter", env.tmp / "out", base=str(env.disk / "bf16-base")),
         None, r"plain export differs from the merged model by", r"Export layout='merged'", warns=UserWarning,
         cli=lambda env: ["export", str(env.disk / "drifty-adapter"), "--base", str(env.disk / "bf16-base"),
                          "--out", str(env.tmp / "out")]),
    Case("`init --out` onto a folder that is not an adapter", None, InitError,
         r"--out .* exists and is not empty", r"choose a new folder",
         cli=lambda env: (_user_folder(env), _init_args("--method", "inilora-alpha")(env))[1]),
    Case("interrupted export keeps the previous one", _export_interrupted, None, "", ""),
    Case("interrupted `init --out` keeps the previous adapter", _init_interrupted, None, "", ""),
    Case("interrupted cache write keeps the previous entry", _cache_interrupted, None, "", ""),
]


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, disk, tmp_path, monkeypatch, request):
    env = Env(disk, tmp_path, monkeypatch)
    if case.warns is not None:  # the export is made (it is the user's choice) and warns, naming the better layout
        with pytest.warns(case.warns) as record:
            case.api(env)
        message = _flat(" ".join(str(w.message) for w in record))
        assert re.search(case.problem, message) and re.search(case.fix, message), message
        if case.cli is not None:
            with pytest.warns(case.warns, match=case.fix):
                result = runner.invoke(app, case.cli(env)[:-1] + [str(tmp_path / "out-cli")], env=WIDE)
            assert result.exit_code == 0, result.output
        return
    if case.error is None:  # a write that is interrupted: the check is in the case itself
        case.api(env)
        return
    request.getfixturevalue("no_work")
    if case.api is not None:
        with pytest.raises(case.error) as info:
            case.api(env)
        message = _flat(str(info.value))
        assert re.search(case.problem, message), f"problem not named: {message}"
        assert re.search(case.fix, message), f"fix not named: {message}"
    if case.cli is not None:
        args = case.cli(env)
        if args[0] not in {c.name or c.callback.__name__ for c in app.registered_commands}:
            pytest.skip(f"no `inilora {args[0]}` command yet")
        result = runner.invoke(app, args, catch_exceptions=False, env=WIDE)
        output = _flat(result.output)
        assert result.exit_code == 2, output
        assert output.startswith("error:") or " error: " in f" {output}", output
        assert re.search(case.problem, output) and re.search(case.fix, output), output
        out = tmp_path / "out"
        assert not out.exists() or _snapshot(out) == {"notes.txt": b"the user's own file"}  # nothing written
