"""The installed ``inilora`` command, driven from the outside as a user types it (docs/design.md §8).

Every case runs the console script in a fresh process with one invalid value (a seeded
generator adds more to the hand-picked ones) and asserts what the user sees and keeps:
a non-zero exit (2 for usage mistakes), a last stderr line that starts with ``error:`` and
names the problem, no traceback, no model loaded (so none fitted either; counted in the child by
tests/probes, not read from a wall time a busy machine stretches), and
the files of the user's folders *and* of the cache byte-identical before and after.
The named regression tests below are the reproductions of issue 13.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CLI = Path(sys.executable).with_name("inilora")
pytestmark = pytest.mark.skipif(not CLI.exists(), reason="the inilora console script is not installed here")

#: on the child's PYTHONPATH: with INILORA_TEST_MODEL_LOADS set, it lists the child's model loads
PROBES = Path(__file__).with_name("probes")


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (and every folder, as a name) with its content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A user's machine: a small model, a trained adapter, a Trainer output folder, their own files, a cache."""
    from peft import LoraConfig

    import inilora
    from inilora.models import tiny_model

    root = tmp_path_factory.mktemp("outside")
    home = root / "home"
    tiny = home / "tiny"
    tiny_model("llama-gqa").save_pretrained(str(tiny))
    model = inilora.get_peft_model(tiny_model("llama-gqa"), LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
                                   "inilora-alpha", cache=False)
    model.peft_config["default"].base_model_name_or_path = str(tiny)
    model.save_pretrained(str(home / "adapter"))
    model.save_pretrained(str(home / "trainer-out"))  # what a Trainer's output_dir looks like
    (home / "trainer-out" / "checkpoint-6").mkdir()
    (home / "trainer-out" / "checkpoint-6" / "optimizer.pt").write_bytes(b"the user's optimizer state")
    (home / "mine").mkdir()
    (home / "mine" / "notes.txt").write_text("the user's own file")
    (home / "a-file").write_text("not a folder")
    (home / "report.json").write_text('{"mine": true}')
    cache = root / "cache"
    (cache / "fits").mkdir(parents=True)
    (cache / "fits" / "entry.json").write_text('{"a cached": "fit"}')
    path = os.pathsep.join(p for p in (str(PROBES), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "INILORA_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "COLUMNS": "200",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return {"root": root, "home": home, "cache": cache, "env": env}


def _run(world, args: list[str], timeout: float = 120) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the installed script as the user would; also the model loads it made (tests/probes)."""
    fd, report = tempfile.mkstemp(dir=world["root"], suffix=".loads")
    os.close(fd)
    try:
        done = subprocess.run([str(CLI), *args], cwd=world["home"], capture_output=True, text=True, timeout=timeout,
                              env={**world["env"], "INILORA_TEST_MODEL_LOADS": report}, stdin=subprocess.DEVNULL)
        text = Path(report).read_text()
    finally:
        os.unlink(report)
    return done, [line for line in text.splitlines() if line]


# --------------------------------------------------------------------------- the generated cases

SMOL = ["--model", "embedded:smollm2"]


def _cases() -> list[tuple[str, list[str], str, int | None]]:
    """(id, argv, what the last line must name, exit code or None for 'not 0')."""
    cases: list[tuple[str, list[str], str, int | None]] = []

    def add(cid, argv, names, code=2):
        cases.append((cid, argv, names, code))

    init = ["init", *SMOL, "--out", "new-out"]
    approx = ["approximate", *SMOL]
    export = ["export", "adapter", "--out", "new-export"]
    # hand-picked: the mistakes people make (issue 13's list first)
    for v in ["0", "-3", "abc", "1.5", ""]:
        add(f"init rank {v!r}", [*init, "--rank", v], "--rank")
        add(f"approximate rank {v!r}", [*approx, "--rank", v], "--rank")
    for v in ["64", "9" * 40]:  # against the model's config, before its weights load
        add(f"init rank {v!r} too large", ["init", "--model", "tiny", "--out", "new-out", "--rank", v], "--rank")
    for v in ["0", "-8", "abc", "nan", "inf", "-inf"]:
        add(f"init lora-alpha {v!r}", [*init, f"--lora-alpha={v}"], "alpha")
    for v in ["float33", "fp33", "int8", "", "torch.float8"]:
        add(f"init dtype {v!r}", [*init, "--dtype", v], "--dtype")
        add(f"init residual-dtype {v!r}", [*init, "--method", "inilora-alpha", "--residual-dtype", v],
            "--residual-dtype")
        add(f"approximate dtype {v!r}", [*approx, "--dtype", v], "--dtype")
        add(f"export dtype {v!r}", [*export, "--dtype", v], "--dtype")
    for v in ["-1", "abc", "1.5"]:
        add(f"init steps {v!r}", [*init, "--steps", v], "--steps")
        add(f"approximate steps {v!r}", [*approx, "--steps", v], "--steps")
    for v in ["50,abc", "a", "1.5", "50;100", "-1", "30000"]:
        add(f"approximate checkpoints {v!r}", [*approx, "--checkpoints", v], "checkpoints")
    option_cases = [
        ("inilora-alpha", "std=abc", "std"), ("inilora-alpha", "std=-1", "std"), ("inilora-alpha", "std=0", "std"),
        ("inilora-alpha", "stdd=0.1", "stdd"), ("inilora-alpha", "std", "--option"), ("inilora-alpha", "=1", "--option"),
        ("inilora", "lr=-1", "lr"), ("inilora", "lr=abc", "lr"), ("inilora", "steps=-5", "steps"),
        ("inilora", "steps=1.5", "steps"), ("inilora", "std_scope=layer", "std_scope"),
        ("inilora", "std_source=bias", "std_source"), ("inilora", "round_std=-1", "round_std"),
        ("inilora", "mean=abc", "mean"), ("inilora", "engine=warp", "engine"), ("inilora", "resume=0", "resume"),
        ("inilora", "checkpoints=[5, 'x']", "checkpoints"), ("inilora", "checkpoints=50", "checkpoints"),
        ("normal", "std=abc", "std"), ("uniform", "bound=-2", "bound"), ("kaiming_normal", "mode=fan_xx", "mode"),
        ("xavier_normal", "gain=abc", "gain"), ("lora", "std=1", "takes no options"),
        ("pissa", "niter=2", "takes no options"),
    ]
    for method, opt, names in option_cases:
        add(f"init {method} -o {opt!r}", [*init, "--method", method, "-o", opt], names)
    for opt, names in [("lr=-1", "lr"), ("lr=0", "lr"), ("std=abc", "std"), ("engine=nope", "engine")]:
        add(f"approximate -o {opt!r}", [*approx, "-o", opt], names)
    for v in ["inilora-alfa", "INILORA", "", "pisa"]:
        add(f"init method {v!r}", [*init, "--method", v], "method")
    for cmd in ("init", "approximate"):  # issue 25: a user's typo, not "internal error … please report it"
        add(f"{cmd} --model embedded:smolm2", [cmd, "--model", "embedded:smolm2", *(["--out", "x"] if cmd == "init" else [])],
            "did you mean embedded:smollm2")
    add("approximate engine unknown", [*approx, "--engine", "warp"], "engine")
    add("approximate device unknown", [*approx, "--device", "tpu:9"], "--device")
    add("approximate devices unknown", [*approx, "--devices", "cpu,banana"], "--devices")
    # output paths
    add("init out is a file", ["init", *SMOL, "--out", "a-file"], "a-file")
    add("init out unwritable", ["init", *SMOL, "--out", "/proc/inilora/x"], "cannot be written")
    add("init out holds the user's files", ["init", *SMOL, "--out", "mine"], "not empty")
    add("init out holds the user's files --overwrite", ["init", *SMOL, "--out", "mine", "--overwrite"], "notes.txt")
    add("init out is a Trainer folder", ["init", *SMOL, "--out", "trainer-out"], "not empty")
    add("init out is a Trainer folder --overwrite", ["init", *SMOL, "--out", "trainer-out", "--overwrite"],
        "checkpoint-6")
    add("init out is the model", ["init", "--model", "tiny", "--out", "tiny", "--overwrite"], "input")
    add("approximate report is the user's", [*approx, "--report", "report.json"], "exists")
    add("approximate report is the user's --overwrite", [*approx, "--report", "report.json", "--overwrite"],
        "not written by inilora")
    add("approximate report is a folder", [*approx, "--report", "mine"], "folder")
    # export
    add("export missing folder", ["export", "nowhere", "--out", "x"], "nowhere")
    add("export of a non-adapter folder", ["export", "mine", "--out", "x"], "adapter_config.json")
    add("export onto its input", ["export", "adapter", "--out", "adapter", "--overwrite"], "input")
    add("export onto a Trainer folder", [*export[:2], "--out", "trainer-out", "--overwrite"], "checkpoint-6")
    add("export layout", [*export, "--layout", "plane"], "--layout")
    add("export out is a file", [*export[:2], "--out", "a-file"], "a-file")
    # structure of the line itself
    add("unknown command", ["inits"], "inits")
    add("unknown option", ["init", *SMOL, "--out", "x", "--rnak", "4"], "--rnak")
    add("missing --out", ["init", *SMOL], "--out")
    add("train missing config", ["train", "nope.yaml"], "nope.yaml")
    add("compare missing config", ["compare", "nope.yaml"], "nope.yaml")
    add("report of no grid", ["report", "mine"], "results.jsonl")
    add("train --set without =", ["train", "nope.yaml", "--set", "lora.rank"], "--set")

    # seeded generator: more values for the numeric options
    rng = random.Random(13)
    junk = ["", " ", "nan", "1e999", "-0", "0x10", "1,5", "½", "1e-400", "--", "∞", "7" * 25, "-1e-9"]
    for _ in range(24):
        option, names, cmd = rng.choice([("--rank", "--rank", init[:2] + ["tiny"] + init[3:]), ("--steps", "steps", approx),
                                          ("--lora-alpha", "alpha", init), ("--seed", "--seed", init)])
        value = rng.choice(junk + [str(rng.randint(-10**6, 0)), f"{rng.uniform(-5, 0):.3f}", chr(rng.randint(97, 122))])
        if option == "--seed" and value.lstrip("-").isdigit():
            continue  # any integer is a valid seed
        if option in ("--steps",) and value in ("-0",):
            continue  # 0 steps is valid
        add(f"gen {cmd[0]} {option} {value!r}", [*cmd, f"{option}={value}"], names, None)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789_-."
    for _ in range(24):  # names that are not dtypes, layouts or seeds
        word = "".join(rng.choice(letters) for _ in range(rng.randint(1, 9)))
        if word in ("float32", "float16", "bfloat16", "float64", "fp32", "fp16", "bf16", "half", "plain",
                    "merged", "residual") or word.lstrip("-").isdigit():
            continue
        option, names, cmd = rng.choice([("--dtype", "--dtype", init), ("--layout", "--layout", export),
                                          ("--seed", "--seed", approx), ("--residual-dtype", "--residual-dtype", init)])
        add(f"gen {cmd[0]} {option} {word!r}", [*cmd, f"{option}={word}"], names)
    return cases


CASES = _cases()


@pytest.mark.parametrize("argv,names,code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_refuses_cleanly_and_touches_nothing(world, argv, names, code):
    before = (_tree(world["home"]), _tree(world["cache"]))
    done, loads = _run(world, argv)
    after = (_tree(world["home"]), _tree(world["cache"]))
    output = done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, output
    if code is not None:
        assert done.returncode == code, output
    assert "Traceback" not in output and "internal error" not in output, output
    assert lines and lines[-1].startswith("error:"), output
    assert names.lower() in lines[-1].lower(), f"{names!r} not named in: {lines[-1]}"
    assert "Warning" not in done.stderr, output
    assert not loads, f"{loads}: a model was loaded before the input was checked"
    assert after == before, "a refused command changed the user's files or the cache"


def test_the_harness_has_hundreds_of_cases():
    assert len(CASES) >= 150


def test_the_probe_sees_a_model_load(world, tmp_path):
    """The refusals' "no model loaded" rests on the probe: a command that loads one must show it."""
    done, loads = _run(world, ["init", "--model", "tiny", "--method", "lora", "--rank", "4", "--out", str(tmp_path / "o")])
    assert done.returncode == 0, done.stderr
    assert len(loads) == 1 and loads[0].startswith("LlamaForCausalLM.from_pretrained("), loads


# --------------------------------------------------------------------------- issue 13's reproductions


def test_init_never_deletes_a_trainer_folder(world, tmp_path):
    """Repro 1: `init --out` onto a Trainer output folder deleted its checkpoints, exit 0."""
    run = tmp_path / "run"
    args = ["init", "--model", str(world["home"] / "tiny"), "--method", "inilora-alpha", "--rank", "4", "--out", str(run)]
    first, _ = _run(world, args)
    assert first.returncode == 0, first.stderr
    (run / "checkpoint-6").mkdir()
    (run / "checkpoint-6" / "optimizer.pt").write_bytes(b"state")
    before = _tree(run)
    for extra in ([], ["--overwrite"]):
        done, _ = _run(world, [*args, *extra])
        assert done.returncode == 2 and "checkpoint-6" in done.stderr or "not empty" in done.stderr, done.stderr
        assert _tree(run) == before
    shutil_free = tmp_path / "own"  # a folder holding only our adapter is replaced with --overwrite
    done, _ = _run(world, [*args[:-1], str(shutil_free)])
    assert done.returncode == 0
    again, _ = _run(world, [*args[:-1], str(shutil_free), "--overwrite", "--seed", "1"])
    assert again.returncode == 0, again.stderr
    assert json.loads((shutil_free / "inilora.json").read_text())["seed"] == 1


def test_zero_or_negative_alpha_is_refused_in_python_too():
    """Repro 2: α = 0 made NaN factors (÷√s) and a saved adapter; α < 0 a raw math error."""
    from peft import LoraConfig

    import inilora
    from inilora.errors import InitError
    from inilora.models import tiny_model

    for alpha in (0, -8, float("nan")):
        for method in ("inilora", "milora", "inilora-alpha", "lora"):
            with pytest.raises(InitError, match="lora_alpha"):
                inilora.get_peft_model(tiny_model("llama-gqa"),
                                       LoraConfig(r=4, lora_alpha=alpha, target_modules=["q_proj"]), method)


def test_non_finite_init_is_an_error_never_an_adapter():
    """Repro 2: any NaN/Inf in factors, residual or drift is an InitError naming the matrix."""
    from peft import LoraConfig

    import inilora
    from inilora.errors import InitError
    from inilora.models import tiny_model

    with pytest.raises(InitError, match=r"NaN or Inf in .* of model\.layers\.\d+\.self_attn\.q_proj"):
        inilora.get_peft_model(tiny_model("llama-gqa"), LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj"]),
                               "normal", std=1e30)  # s·B0A0 overflows fp32: the residual is Inf


def test_unwritable_out_is_found_before_the_fit(world):
    """Repro 3: an unwritable --out was discovered after a full fit, as a traceback."""
    done, loads = _run(world, ["init", "--model", "tiny", "--method", "inilora", "--steps", "100000", "--out", "/proc/x"])
    assert done.returncode == 2 and "cannot be written" in done.stderr and "Traceback" not in done.stderr
    assert not loads, loads


def test_train_config_error_leaves_no_folder_and_the_fix_runs(world, tmp_path):
    """Repro 3: a bad method option left output_dir/config.yaml, so the corrected rerun was refused."""
    from inilora.config import ConfigError
    from inilora.train import load_config
    from inilora.train.pipeline import run

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "train-out"
    bad = load_config(root / "configs" / "embedded" / "train-nlu.yaml",
                      {"output_dir": str(out), "method": "inilora-alpha", "method_options": {"std": "abc"}})
    with pytest.raises(ConfigError.__mro__[1], match="std"):
        run(bad, progress=False)
    assert not out.exists()
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("x")
    foreign = load_config(root / "configs" / "embedded" / "train-nlu.yaml", {"output_dir": str(tmp_path / "theirs")})
    with pytest.raises(ConfigError, match="not an inilora run"):
        run(foreign, progress=False)


def test_targets_take_commas_and_repeats(world, tmp_path):
    """Repro 5: the README's `--targets q_proj,v_proj` failed."""
    base = ["init", "--model", "tiny", "--method", "inilora-alpha", "--rank", "4"]
    for i, targets in enumerate((["--targets", "q_proj,v_proj"], ["--targets", "q_proj", "--targets", "v_proj"])):
        out = tmp_path / f"t{i}"
        done, _ = _run(world, [*base, *targets, "--out", str(out)])
        assert done.returncode == 0, done.stderr
        assert sorted(json.loads((out / "adapter_config.json").read_text())["target_modules"]) == ["q_proj", "v_proj"]


def test_export_names_the_flag_a_user_types(world, tmp_path):
    """Repro 5: export's message said `overwrite=True` where the flag is --overwrite."""
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("x")
    done, _ = _run(world, ["export", "adapter", "--out", str(tmp_path / "e")])
    assert done.returncode == 2 and "--overwrite" in done.stderr and "overwrite=True" not in done.stderr


def test_an_export_replaces_only_its_own_kind(world, tmp_path):
    out = tmp_path / "plain"
    args = ["export", "adapter", "--out", str(out), "--base", "tiny"]
    assert _run(world, args)[0].returncode == 0
    marker = json.loads((out / "inilora-export.json").read_text())
    assert marker["layout"] == "plain" and "adapter_model.safetensors" in marker["files"]
    assert _run(world, [*args, "--overwrite"])[0].returncode == 0
    (out / "serving-notes.md").write_text("mine")
    done, _ = _run(world, [*args, "--overwrite"])
    assert done.returncode == 2 and "serving-notes.md" in done.stderr
    assert (out / "serving-notes.md").read_text() == "mine"


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_during_a_fit_saves_and_says_how_to_resume(world, sig, code):
    """Repro 5: Ctrl-C saved nothing before the first periodic snapshot and said nothing. SIGTERM (a
    job's time limit, `kill PID`) ended the process with nothing saved either; now it is taken alike."""
    import threading

    args = [str(CLI), "approximate", "--model", "tiny", "--rank", "4", "--steps", "10000000", "--engine", "torch"]
    proc = subprocess.Popen(args, cwd=world["home"], env=world["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(180, proc.kill)  # never hang the suite
    guard.start()
    try:
        seen = []
        for line in proc.stderr:  # the fit has started once its first progress line is out
            seen.append(line)
            if "IniLoRA fit: step" in line:
                break
        time.sleep(1.0)
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=120)
    finally:
        guard.cancel()
        proc.kill()
    err = "".join(seen) + rest
    assert proc.returncode == code, err
    assert "Run the same command again to resume" in err and "Traceback" not in err, err
    assert list((world["cache"] / "fits").glob("*.resume.pt")), "no snapshot was written"


# --------------------------------------------------------------------------- train, compare, report, demo
#
# Generated from the config classes themselves: for every field of a `train` config (and, under
# `base.`, of a `compare` one) a value of the wrong type, an empty `--set`, a misspelled key, and a
# value out of range where the loader has a range; for the grid, report and demo the mistakes of
# issue 25. Each case asserts exit 2, exactly one line, no traceback, every folder byte-identical, and
# -- through Python's own import log -- that neither torch nor transformers was imported where the
# mistake is knowable before them (a misspelled key must not cost a 40 s model-library import).

NO_TORCH, NO_TRANSFORMERS = "torch", "transformers"  # the library a refusal must not have imported

GOOD_TRAIN = {"model": "embedded:minilm", "task": "offline-topic", "method": "lora", "output_dir": "new-train-run",
              "train_size": 8, "eval_size": 8, "max_steps": 1}
GOOD_COMPARE = {"base": {"model": "embedded:minilm", "task": "offline-topic", "train_size": 8, "eval_size": 8,
                         "max_steps": 1}, "methods": ["lora"], "seeds": [0], "output_dir": "new-grid"}


def _fields(cls, prefix: str = ""):
    """(dotted key, annotation) of every leaf field of a config dataclass."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp


def _wrong_type(tp) -> object:
    """A YAML value that is not of type ``tp``."""
    import types
    import typing

    arms = [a for a in typing.get_args(tp) if a is not type(None)] \
        if typing.get_origin(tp) in (typing.Union, types.UnionType) else [tp]
    tp, origin = arms[0], typing.get_origin(arms[0])
    if tp is bool:
        return "maybe"
    if tp in (int, float):
        return "twelve" if tp is float else 1.5
    if origin is typing.Literal:
        return "fp64"
    if origin is list:
        return 5
    if origin is dict:
        return [1, 2]
    return [1, 2]  # str (and anything else): a list


def _out_of_range(cls, key: str, tp):
    """A value of the right type that the loader refuses for ``key`` (found by asking it), or None."""
    import copy

    from inilora.config import ConfigError, from_dict, set_dotted

    base = {"base": GOOD_COMPARE["base"]} if cls.__name__ == "CompareConfig" else GOOD_TRAIN
    for value in (0, -1, 1.0, -0.5, 10**9, "", " "):
        if isinstance(value, str) != (tp is str or "str" in str(tp)):
            continue
        data = copy.deepcopy(base)
        set_dotted(data, key, value)
        try:
            from_dict(cls, data)
        except ConfigError:
            return value
    return None


def _swap(key: str) -> str:
    """The key with two adjacent letters of its last part swapped (lora.rank → lora.rnak)."""
    head, _, last = key.rpartition(".")
    words = [last[:i] + last[i + 1] + last[i] + last[i + 2:] for i in range(max(1, len(last) // 2 - 1), len(last) - 1)]
    word = next((w for w in words if w != last), last + last[-1])
    return f"{head}.{word}" if head else word


def _yaml(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _merged(base: dict, key: str, value) -> dict:
    import copy

    from inilora.config import set_dotted

    data = copy.deepcopy(base)
    set_dotted(data, key, value)
    return data


def _run_cases():
    """(id, argv, {file name: text} written beside the home, what the line names, library not imported)."""
    from inilora.config import CompareConfig, TrainConfig

    cases = []

    def add(cid, argv, names, files=None, light=NO_TORCH):
        cases.append((cid, argv, files or {}, names, light))

    for key, tp in _fields(TrainConfig):
        add(f"train --set {key}= (empty)", ["train", "{good-train}", "--set", f"{key}="], key)
        add(f"train {key}: wrong type", ["train", "{cfg}"], key, {"cfg": _yaml(_merged(GOOD_TRAIN, key, _wrong_type(tp)))})
        bad = _out_of_range(TrainConfig, key, tp)
        if bad is not None:
            add(f"train {key}: refused value {bad!r}", ["train", "{cfg}"], key, {"cfg": _yaml(_merged(GOOD_TRAIN, key, bad))})
        typo = _swap(key)
        if key in ("method_options",):
            continue
        data = _merged(GOOD_TRAIN, key, 1)
        node = data
        for part in key.split(".")[:-1]:
            node = node[part]
        node[typo.rsplit(".", 1)[-1]] = node.pop(key.rsplit(".", 1)[-1])
        add(f"train {key}: misspelled {typo}", ["train", "{cfg}"], typo.rsplit(".", 1)[-1], {"cfg": _yaml(data)})
    # the --set values that used to mean something else (issue 25, class 3)
    for pair, names in [("seed=0x1z", "seed"), ("seed=1.5", "seed"), ("learning_rate=fast", "learning_rate"),
                        ("lora.rank=8.0", "lora.rank"), ("shared_fit=maybe", "shared_fit"), ("lora.rnak=4", "rnak"),
                        ("lora.targets=[q, ]", "lora.targets"), ("precision=fp64", "precision"),
                        ("train_size=", "train_size"), ("lora.alpha=", "lora.alpha"), ("seed=-1", "seed")]:
        add(f"train --set {pair}", ["train", "{good-train}", "--set", pair], "--set " + pair.split("=")[0])
    for text, names in [("", "empty"), ("# nothing but a comment\n", "empty"), ("{}\n", "no settings"),
                        ("- model\n- task\n", "mapping"), ("model: [\n", "not valid YAML"),
                        ("\x00\x01binary", "valid YAML")]:
        add(f"train config {text[:12]!r}", ["train", "{cfg}"], names, {"cfg": text})
    add("train config is a folder", ["train", "mine"], "folder")
    add("train config is an adapter's JSON", ["train", "adapter/adapter_config.json"], "unknown key")
    add("train config is a weights file", ["train", "adapter/adapter_model.safetensors"], "adapter_model.safetensors")
    for key, value, names, light in [
            ("model", "embedded:smolm2", "did you mean embedded:smollm2", NO_TORCH),
            ("task", "offline-topik", "did you mean", NO_TORCH), ("eval_tasks", ["offline-arith", "gsm9k"], "gsm9k", NO_TORCH),
            ("output_dir", "mine", "notes.txt", NO_TORCH), ("output_dir", "a-file", "a-file", NO_TORCH),
            ("output_dir", "/proc/inilora/x", "cannot be written", NO_TORCH),
            ("method", "inilora-alfa", "inilora-alfa", NO_TRANSFORMERS),
            ("method_options", {"stdd": 1}, "stdd", NO_TRANSFORMERS)]:
        data = _merged(GOOD_TRAIN, key, value)
        if key == "method_options":
            data["method"] = "inilora-alpha"
        add(f"train {key}: {value!r}", ["train", "{cfg}"], names, {"cfg": _yaml(data)}, light)

    # compare: the grid's own fields, a sample of base's, the cells' names, the old -o
    for key, tp in _fields(CompareConfig):
        if key.startswith("base."):
            continue
        add(f"compare --set {key}= (empty)", ["compare", "{good-compare}", "--set", f"{key}="], key)
        add(f"compare {key}: wrong type", ["compare", "{cfg}"], key,
            {"cfg": _yaml(_merged(GOOD_COMPARE, key, _wrong_type(tp)))})
        data = dict(GOOD_COMPARE, **{_swap(key): GOOD_COMPARE.get(key, "x")})
        data.pop(key, None)
        add(f"compare {key}: misspelled", ["compare", "{cfg}"], _swap(key), {"cfg": _yaml(data)})
    for i, (key, tp) in enumerate(_fields(TrainConfig)):
        if i % 2 == 0 and not isinstance(_wrong_type(tp), list) and tp is not str:  # a str takes any text
            add(f"compare --set base.{key}=(wrong type)", ["compare", "{good-compare}", "--set",
                f"base.{key}={_wrong_type(tp)}"], key.rsplit(".", 1)[-1],
                light=NO_TRANSFORMERS if "list" in str(tp) else NO_TORCH)  # `5` is the list ['5']: a name
    for name, change, names, light in [
            ("base task unknown", {"base": {**GOOD_COMPARE["base"], "task": "offline-topik"}}, "offline-topik", NO_TRANSFORMERS),
            ("swept task unknown", {"sweep": {"task": ["offline-topic", "gsm9k"]}}, "gsm9k", NO_TRANSFORMERS),
            ("swept model misspelled", {"sweep": {"model": ["embedded:minilm", "embedded:minlm"]}}, "embedded:minlm",
             NO_TRANSFORMERS),
            ("method unknown", {"methods": ["lora", "inilora-alfa"]}, "inilora-alfa", NO_TRANSFORMERS),
            ("variant option unknown", {"methods": ["lora", "a"], "variants": {"a": {"method": "inilora-alpha",
                                                                                      "options": {"stdd": 1}}}},
             "stdd", NO_TRANSFORMERS),
            ("baseline not a method", {"baseline": "pissa"}, "baseline", NO_TRANSFORMERS),
            ("seeds repeat", {"seeds": [0, 0]}, "seeds", NO_TORCH),
            # a rate chosen on the NLU task's one held-out split would select on test rows (a race reads the
            # task's eval sets through the train face, which imports torch; transformers still not)
            ("tune on test rows", {"tune": {"learning_rate": "accuracy"}}, "would select on test rows", NO_TRANSFORMERS),
            ("output_dir the user's", {"output_dir": "mine"}, "notes.txt", NO_TORCH),
            ("output_dir a file", {"output_dir": "a-file"}, "a-file", NO_TORCH)]:
        cfg = {"cfg": _yaml({**GOOD_COMPARE, **change})}
        add(f"compare {name}", ["compare", "{cfg}"], names, cfg, light)
        if "unknown" in name or "user's" in name:  # --dry-run checks the same (and writes nothing)
            add(f"compare --dry-run {name}", ["compare", "{cfg}", "--dry-run"], names, cfg, light)
    add("compare -o (the old --output-dir)", ["compare", "{good-compare}", "-o", "method_options.steps=10"],
        "--output-dir")
    add("compare into another study's grid", ["compare", "{good-compare}", "--output-dir", "{grid}"],
        "base differs in: max_steps", {"grid/compare.yaml": _yaml({**GOOD_COMPARE, "methods": ["pissa"], "baseline": "pissa",
                                                                  "base": {**GOOD_COMPARE["base"], "max_steps": 7}}),
                                       "grid/results.jsonl": ""})
    add("compare config is a folder", ["compare", "mine"], "folder")
    add("compare empty config", ["compare", "{cfg}"], "empty", {"cfg": ""})
    add("compare --set seeds=[0,,1]", ["compare", "{good-compare}", "--set", "seeds=[0,,1]"], "seeds")

    # report: what results.jsonl may hold that is not a result
    for text, names in [("null\n", "line 1"), ("[1, 2]\n", "line 1"), ('{"x": 1}\n', "run_id"), ("7\n", "line 1"),
                        ('{"run_id": "a", "method": "lora", "seed": "0", "task": "t"}\n', "seed"),
                        ("\n\n", "no finished runs"), ("{torn", "no finished runs")]:
        add(f"report results.jsonl {text.strip()[:20]!r}", ["report", "{dir}"], names, {"dir/results.jsonl": text})
    add("report results.jsonl not text", ["report", "{dir}"], "not text", {"dir/results.jsonl": b"\xff\xfe\x00"})
    add("report of a file", ["report", "a-file"], "a-file")
    add("report of the user's folder", ["report", "mine"], "results.jsonl")
    add("report of a missing folder", ["report", "nowhere"], "nowhere")

    # demo: its output folder is the user's, or a file
    add("demo --out the user's folder", ["demo", "--out", "mine"], "notes.txt")
    add("demo --out a Trainer folder", ["demo", "--out", "trainer-out"], "checkpoint-6")
    add("demo --out a file", ["demo", "--out", "a-file"], "a-file")
    add("demo --out unwritable", ["demo", "--out", "/proc/inilora/demo"], "cannot be written")
    add("demo --out/nlu the user's", ["demo", "--out", "{dir}"], "nlu", {"dir/nlu/notes.txt": "mine"})
    add("demo --nlu-task unknown", ["demo", "--nlu-task", "offline-topik"], "--nlu-task")
    add("demo --out ''", ["demo", "--out", ""], "--out")
    return cases


RUN_CASES = _run_cases()


def _imported(stderr: str) -> set[str]:
    """The top-level packages Python's import log (PYTHONPROFILEIMPORTTIME) says were imported."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def _materialise(case, given: Path) -> list[str]:
    """Write a case's own files (its config, a grid folder) into ``given``; its argv with their paths."""
    _, argv, files, _, _ = case
    given.mkdir(parents=True)
    paths = {"good-train": given / "good-train.yaml", "good-compare": given / "good-compare.yaml"}
    paths["good-train"].write_text(_yaml(GOOD_TRAIN))
    paths["good-compare"].write_text(_yaml(GOOD_COMPARE))
    for name, content in files.items():
        path = given / (name if "/" in name else f"{name}.yaml")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        paths[name.split("/")[0]] = given / name.split("/")[0] if "/" in name else path
    return [a.format(**{k: str(v) for k, v in paths.items()}) if a.startswith("{") else a for a in argv]


@pytest.fixture(scope="module")
def batch(world):
    """Every run-command case, each in a forked child of one process (tests/_cli_batch.py)."""
    specs = []
    for i, case in enumerate(RUN_CASES):
        given = world["root"] / "given" / str(i)
        specs.append({"id": case[0], "argv": _materialise(case, given), "cwd": str(world["home"]),
                      "hashed": [str(world["home"]), str(world["cache"]), str(given)],
                      "after_torch": case[4] == NO_TRANSFORMERS})
    cases, results = world["root"] / "run-cases.json", world["root"] / "run-results.json"
    cases.write_text(json.dumps(specs))
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("_cli_batch.py")), str(cases), str(results)],
                          cwd=world["home"], env=world["env"], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(results.read_text())


def _check_refusal(code, stdout: str, stderr: str, names: str, imported, touched) -> None:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    said = "\n".join([stdout, *lines])
    assert code == 2, said
    assert "Traceback" not in said and "internal error" not in said, said
    assert len(lines) == 1 and lines[0].startswith("error:") and not stdout.strip(), said
    assert names.lower() in lines[0].lower(), f"{names!r} not named in: {lines[0]}"
    assert not imported, f"{', '.join(imported)} imported before refusing: {lines[0]}"
    assert not touched, f"a refused command changed {touched}"


@pytest.mark.parametrize("case", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_run_commands_refuse_in_one_line_before_the_model_libraries(batch, case):
    got = batch[case[0]]
    assert "crash" not in got, got
    allowed = {"torch", "peft"} if case[4] == NO_TRANSFORMERS else set()  # peft: the registry's import
    _check_refusal(got["code"], got["stdout"], got["stderr"], case[3], sorted(set(got["imported"]) - allowed),
                   got["touched"])


@pytest.mark.parametrize("case", RUN_CASES[::25], ids=[c[0] for c in RUN_CASES[::25]])
def test_the_console_script_refuses_as_the_batch_does(world, tmp_path, case):
    """A sample through the installed script itself, torch seen in Python's import log."""
    args = _materialise(case, tmp_path / "given")
    before = (_tree(world["home"]), _tree(world["cache"]), _tree(tmp_path / "given"))
    env = {**world["env"], "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run([str(CLI), *args], cwd=world["home"], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    after = (_tree(world["home"]), _tree(world["cache"]), _tree(tmp_path / "given"))
    imported = _imported(done.stderr) & ({"transformers"} if case[4] == NO_TRANSFORMERS else {"torch", "transformers"})
    _check_refusal(done.returncode, done.stdout, done.stderr, case[3], sorted(imported),
                   ["a folder"] if after != before else [])


def test_the_run_commands_have_their_share_of_cases():
    per = {cmd: sum(1 for c in RUN_CASES if c[1][0] == cmd) for cmd in ("train", "compare", "report", "demo")}
    assert per["train"] >= 100 and per["compare"] >= 40 and per["report"] >= 10 and per["demo"] >= 6, per


def test_overwrite_keeps_what_the_user_changed_and_exports_check_the_base(world, tmp_path):
    """Issue 25's reproductions: `init --overwrite` replaced a README.md the user had edited; a `lora`
    adapter exported with `--base` another checkpoint of the same architecture merged silently."""
    from inilora.models import tiny_model

    out = tmp_path / "ad"
    args = ["init", "--model", "tiny", "--method", "lora", "--rank", "4", "--out", str(out)]
    assert _run(world, args)[0].returncode == 0
    assert _run(world, [*args, "--overwrite"])[0].returncode == 0  # untouched: ours to replace
    (out / "README.md").write_text("# my notes on this adapter\n")
    before = _tree(out)
    done, _ = _run(world, [*args, "--overwrite"])
    assert done.returncode == 2 and "README.md (changed since inilora wrote it)" in done.stderr, done.stderr
    assert _tree(out) == before
    tiny_model("llama-gqa", seed=1).save_pretrained(str(tmp_path / "other"))
    done, _ = _run(world, ["export", str(out), "--base", str(tmp_path / "other"), "--layout", "merged",
                           "--out", str(tmp_path / "merged")])
    assert done.returncode == 2 and "different base model" in done.stderr, done.stderr
    assert not (tmp_path / "merged").exists()
    done, _ = _run(world, ["export", str(out), "--base", "tiny", "--layout", "merged", "--out", str(tmp_path / "merged")])
    assert done.returncode == 0, done.stderr
