"""Each method at its own best rate, raced by successive halving (issue 28), with a fake run function
whose validation score peaks at a known rate per method."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from inilora.config import CompareConfig, ConfigError, RaceSettings, TrainConfig, Variant, to_dict
from inilora.rates import default_grid, grid_extensions, grids, plan, replay, rung_steps, savings, survivors
from inilora.stats import tuned
from inilora.runner import read_results, run_grid

ROOT = Path(__file__).resolve().parents[1]
OPTIMUM = {"lora": 8e-3, "inilora": 1e-3, "inilora-alpha": 2.5e-4}
VAL, TEST = "offline-arith-val/accuracy", "offline-arith-test/accuracy"


def score(method: str, rate: float, seed: int, steps: int, split: str) -> float:
    """A bell in log-rate around the method's optimum; longer runs score higher; seeds and splits jitter."""
    peak = 0.5 if method == "lora" else 0.45
    x = math.log2(rate / OPTIMUM[method])
    jitter = 0.01 * ((seed * 7 + (3 if split == "test" else 0)) % 5) / 4
    return round(peak * math.exp(-x * x / 4) * steps / (steps + 4) + jitter, 6)


def fake_nlg(config: TrainConfig, *, progress: bool = True) -> dict:
    out = Path(config.output_dir)
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    start = 0
    if config.resume_from:  # a rung continues its prefix's checkpoint, which must exist (the pipeline checks it)
        ckpt = Path(config.resume_from)
        assert (ckpt / "trainer_state.json").is_file(), f"continued a missing checkpoint {ckpt}"
        start = json.loads((ckpt / "trainer_state.json").read_text())["global_step"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))  # as train.run writes it
    time.sleep(float(os.environ.get("FAKE_RUN_SLEEP", "0")))
    end = config.stop_at or config.max_steps
    (out / f"checkpoint-{end}").mkdir(exist_ok=True)
    (out / f"checkpoint-{end}" / "trainer_state.json").write_text(json.dumps({"global_step": end}))
    metrics = {}
    for task in config.eval_tasks:
        split = "val" if task.endswith("-val") else "test"
        metrics[f"{task}/accuracy"] = score(config.method, config.learning_rate, config.seed, end, split)
    result = {"metrics": metrics, "headline": next(iter(metrics)), "trainable_params": 100,
              "eval_examples": {t: 16 for t in config.eval_tasks}, "cpu_s": float(end - start),
              "train_loss": [[end, 1.0]], "wall_s": 0.0, "output_dir": str(out)}
    (out / "metrics.json").write_text(json.dumps(result))
    return result


def tuned_grid(tmp_path: Path, **kw) -> CompareConfig:
    base = dict(model="embedded:smollm2", task="offline-arith", max_steps=24, learning_rate=8e-3,
                eval_tasks=["offline-arith-test", "offline-arith-val"])
    base.update(kw.pop("base", {}))
    kw.setdefault("methods", ["lora", "inilora"])
    kw.setdefault("seeds", [0, 1, 2])
    kw.setdefault("tune", {"learning_rate": VAL})
    return CompareConfig(base=TrainConfig(**base), output_dir=str(tmp_path / "race"), **kw)


def test_default_grids_centre_per_family_and_span_16x():
    lora, ini, alpha = (default_grid(m, 8e-3) for m in ("lora", "inilora", "inilora-alpha"))
    for g in (lora, ini, alpha):
        assert len(g) == 5 and g == sorted(g) and g[-1] / g[0] == pytest.approx(16, rel=0.01)
    assert lora[2] == 8e-3 and ini[2] == 1e-3 and alpha[2] == 2.5e-4  # the measured ratios: 8× and 32×


def test_every_rate_factor_names_a_registry_init_and_families_share_a_centre():
    from inilora.methods.registry import available_methods
    from inilora.rates import RATE_FACTOR, rate_factor

    assert set(RATE_FACTOR) <= set(available_methods())  # a misspelt name would silently get LoRA's
    # one factor zero (or both small): LoRA's centre; both large with the residual frozen: IniLoRA's
    assert {rate_factor(m) for m in ("gaussian", "eva", "mica", "milora", "loftq")} == {rate_factor("lora")}
    assert {rate_factor(m) for m in ("pissa", "olora", "peft-orthogonal", "corda", "lora-ga")} == {rate_factor("inilora")}


def test_rungs_and_survivors():
    assert rung_steps(24, 3, 2) == [8, 24] and rung_steps(24, 3, 3) == [3, 8, 24]
    # rung 0 at a chosen share, the rungs between geometric; exact shares are not rounded up a step
    assert rung_steps(24, 3, 2, first=1 / 6) == [4, 24] and rung_steps(128, 3, 2, first=1 / 6) == [22, 128]
    assert rung_steps(36, 3, 3, first=1 / 9) == [4, 12, 36] == rung_steps(36, 3, 3)
    assert rung_steps(96, 3, 2, first=0.1666666667) == [16, 96] and rung_steps(96, 3, 2, first=0.17) == [17, 96]
    assert survivors({1: 0.1, 2: 0.3, 3: 0.3, 4: 0.2, 5: 0.0}, 3) == [2, 3]
    assert survivors({1: 0.5, 2: 0.5}, 3) == [1]  # ties go to the lower rate


def test_race_picks_each_optimum_records_rung_rate_split_and_saves_compute(tmp_path):
    cfg = tuned_grid(tmp_path)
    rows = run_grid(cfg, run_fn=fake_nlg, progress=False)
    assert all({"rung", "rate", "scored_on", "budget_steps"} <= set(r) for r in rows)
    for r in rows:
        assert r["rate"] == r["settings"]["learning_rate"] == r["config"]["learning_rate"]
        assert r["scored_on"] == {m: "validation" if m == VAL else "test" for m in r["metrics"]}
        assert (TEST in r["metrics"]) == (r["rung"] == 1)  # early rungs never read the test set
        # every rung is the full run's schedule; rung 0 stops at ⅙ (4 steps), rung 1 continues its checkpoint
        assert r["config"]["max_steps"] == 24 and r["config"].get("stop_at", 0) == (0 if r["rung"] == 1 else 4)
        if r["rung"] == 1:
            prefix = Path(r["config"]["resume_from"])
            assert prefix.name == "checkpoint-4" and prefix.parent.name == r["run_id"].replace("rung=1", "rung=0")
        else:
            assert "resume_from" not in r["config"]
    finals = {r["method"]: r["rate"] for r in rows if r["rung"] == 1}
    assert finals == {"lora": 8e-3, "inilora": 1e-3}
    # 5 rates × 4 steps at rung 0, 2 survivors continue 20 more: 5*4 + 2*20 = 60 of 5*24 = 120 steps per seed (½)
    s = savings(rows)
    assert s["lora"]["per_rung"] == [5, 2] and s["lora"]["steps"] == 60 * 3 and s["lora"]["grid_steps"] == 120 * 3
    # the fake's CPU seconds are the steps it trained: a finalist's full run cost its whole chain of rungs
    assert s["lora"]["cpu_s"] == 60 * 3 and s["lora"]["grid_cpu_s"] == 120 * 3
    # no duplicated rows, and the same rows a second time (everything finished)
    assert len((tmp_path / "race" / "results.jsonl").read_text().splitlines()) == len(rows) == 2 * 3 * 7
    again = run_grid(cfg, run_fn=lambda c, **k: pytest.fail("re-ran a finished cell"), progress=False)
    assert len(again) == len(rows)


def test_pick_at_an_edge_extends_the_grid_once(tmp_path):
    # LoRA's default grid centred 8× too low: its pick sits at the top edge, one rate is added above
    cfg = tuned_grid(tmp_path, methods=["lora", "inilora"], base={"learning_rate": 1e-3},
                     race=RaceSettings(eta=3, rungs=2, extend=1))
    rows = run_grid(cfg, run_fn=fake_nlg, progress=False)
    lora0 = sorted({r["rate"] for r in rows if r["method"] == "lora" and r["rung"] == 0})
    assert lora0 == default_grid("lora", 1e-3) + [8e-3]
    _, final = plan(cfg, rows)
    # inilora's grid (centre 1.25e-4, best 1e-3) grew upward once too, and no further: the limit
    assert final["inilora"] == default_grid("inilora", 1e-3) + [1e-3]
    assert {r["rate"] for r in rows if r["rung"] == 1 and r["method"] == "lora"} >= {8e-3}


def test_a_tuned_full_grid_extends_an_edge_pick_like_the_race(tmp_path):
    # race: {rungs: 1} with a sweep trains every cell; LoRA's optimum (8e-3) lies above the grid and
    # IniLoRA's (1e-3) at its lowest rate: each grows one step past its edge, every seed, then stops
    sweep = {"learning_rate": [1e-3, 2e-3, 4e-3]}
    cfg = tuned_grid(tmp_path, sweep=sweep, race=RaceSettings(rungs=1, extend=1))
    rows = run_grid(cfg, run_fn=fake_nlg, progress=False)
    rates_of = {m: sorted({r["rate"] for r in rows if r["method"] == m}) for m in ("lora", "inilora")}
    assert rates_of == {"lora": [1e-3, 2e-3, 4e-3, 8e-3], "inilora": [5e-4, 1e-3, 2e-3, 4e-3]}
    assert len(rows) == 2 * 4 * 3 and all(r["settings"]["learning_rate"] == r["config"]["learning_rate"] for r in rows)
    picks = {t.method: (t.choice, t.edge) for t in tuned(rows, "learning_rate", VAL)}
    # LoRA's new pick is again the top edge, but extend: 1 is spent — a bound the report names
    assert picks == {"lora": (8e-3, "highest"), "inilora": (1e-3, "")}
    assert grid_extensions(cfg, rows) == []
    again = run_grid(cfg, run_fn=lambda c, **k: pytest.fail("re-ran a finished cell"), progress=False)
    assert len(again) == len(rows)
    # extend: 2 goes one step further for LoRA alone, and only now (the grid's rows are kept)
    wider = tuned_grid(tmp_path, sweep=sweep, race=RaceSettings(rungs=1, extend=2))
    assert grid_extensions(wider, rows) == [("lora", {"learning_rate": 1.6e-2})]
    rows = run_grid(wider, run_fn=fake_nlg, progress=False)
    assert {t.method: t.choice for t in tuned(rows, "learning_rate", VAL)} == {"lora": 8e-3, "inilora": 1e-3}
    assert len(rows) == 2 * 4 * 3 + 3


def test_a_full_grid_extends_only_when_its_grid_is_whole_and_only_chosen_methods(tmp_path):
    sweep = {"learning_rate": [1e-3, 2e-3, 4e-3]}
    plain = run_grid(tuned_grid(tmp_path, sweep=sweep, race=RaceSettings(rungs=1, extend=0)), run_fn=fake_nlg,
                     progress=False)
    assert len(plain) == 2 * 3 * 3  # extend: 0, a full grid is exactly its sweep
    cfg = tuned_grid(tmp_path, sweep=sweep, race=RaceSettings(rungs=1, extend=1))
    assert grid_extensions(cfg, plain) == [("lora", {"learning_rate": 8e-3}), ("inilora", {"learning_rate": 5e-4})]
    # a seed missing at one rate: the pick may still move, nothing is added for that method
    assert grid_extensions(cfg, [r for r in plain if (r["method"], r["rate"], r["seed"]) != ("lora", 2e-3, 0)]) \
        == [("inilora", {"learning_rate": 5e-4})]
    assert grid_extensions(tuned_grid(tmp_path, sweep=sweep, tune={}, race=RaceSettings(rungs=1)), plain) == []
    # --methods inilora: its edge pick adds 5e-4 for it alone; LoRA's waits for a run that names it
    rows = run_grid(cfg, run_fn=fake_nlg, progress=False, only_methods=["inilora"])
    assert {(r["method"], r["rate"]) for r in rows} - {(r["method"], r["rate"]) for r in plain} == {("inilora", 5e-4)}
    rows = run_grid(cfg, run_fn=fake_nlg, progress=False, only_methods=["lora"])
    assert sorted({r["rate"] for r in rows if r["method"] == "lora"}) == [1e-3, 2e-3, 4e-3, 8e-3]
    assert len(rows) == 2 * 4 * 3


def test_baseline_may_skip_rates_of_a_tuned_key_and_is_paired_at_its_own_best(tmp_path):
    # compared at its own best rate, the baseline need not run at rates far from it: `only` along a
    # tuned key is allowed for it too, and every method is still tested against it at its pick
    cfg = tuned_grid(tmp_path, sweep={"learning_rate": [5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]},
                     variants={"lora": Variant(method="lora", only={"learning_rate": [4e-3, 8e-3, 1.6e-2]}),
                               "inilora": Variant(method="inilora", only={"learning_rate": [5e-4, 1e-3, 2e-3]})},
                     race=RaceSettings(rungs=1, extend=1))
    rows = run_grid(cfg, run_fn=fake_nlg, progress=False)
    assert sorted({r["rate"] for r in rows if r["method"] == "lora"}) == [4e-3, 8e-3, 1.6e-2]
    assert len(rows) == 3 * (3 + 3)  # both picks inside their rates: nothing added
    found = {t.method: t for t in tuned(rows, "learning_rate", VAL)}
    assert (found["lora"].choice, found["inilora"].choice) == (8e-3, 1e-3)
    assert found["inilora"].stat.n_pairs == 3  # paired with LoRA's runs at LoRA's pick, seed by seed
    # along a key that is not tuned the baseline still runs every cell
    untuned = tuned_grid(tmp_path, sweep={"learning_rate": [1e-3, 2e-3], "lora.rank": [4, 8]},
                         variants={"lora": Variant(method="lora", only={"lora.rank": [8]})})
    with pytest.raises(ConfigError, match=r"variants.lora.only.lora.rank: the baseline runs in every cell"):
        run_grid(untuned, run_fn=lambda c, **k: pytest.fail("ran"), progress=False)


def test_dry_run_lists_the_rates_an_edge_pick_adds(tmp_path, capsys):
    sweep = {"learning_rate": [1e-3, 2e-3, 4e-3]}
    cfg = tuned_grid(tmp_path, methods=["lora", "inilora"], sweep=sweep, race=RaceSettings(rungs=1, extend=1))
    rows = run_grid(cfg, run_fn=fake_nlg, progress=False)
    root = tmp_path / "race"
    for r in rows:  # forget the extension runs: the grid is whole, its edge picks ask for them again
        if r["rate"] in (8e-3, 5e-4):
            shutil.rmtree(r["output_dir"])
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["rate"] not in (8e-3, 5e-4)))
    from rich.console import Console

    console = Console(file=None, width=300, record=True)
    run_grid(cfg, run_fn=lambda c, **k: pytest.fail("ran"), dry_run=True, progress=False, console=console)
    text = console.export_text()
    assert "lora_learning_rate=0.008_seed=2" in text and "inilora_learning_rate=0.0005_seed=0" in text
    assert "24 runs (18 finished)" in text


@pytest.mark.parametrize("tune, eval_tasks, match", [
    ({"learning_rate": TEST}, ["offline-arith-test", "offline-arith-val"], "the test set the tables report"),
    ({"learning_rate": "accuracy"}, ["offline-arith-test", "offline-arith-val"], "not TASK/METRIC"),
    ({"learning_rate": VAL}, ["offline-arith-test"], "not TASK/METRIC"),
])
def test_selection_on_test_rows_is_refused_before_any_run(tmp_path, tune, eval_tasks, match):
    cfg = tuned_grid(tmp_path, tune=tune, base={"eval_tasks": eval_tasks})
    with pytest.raises(ConfigError, match=match):
        run_grid(cfg, run_fn=lambda c, **k: pytest.fail("ran"), progress=False)
    assert not (tmp_path / "race").exists()


def test_nlu_task_without_validation_split_is_refused(tmp_path):
    cfg = CompareConfig(base=TrainConfig(task="offline-topic", max_steps=8), methods=["lora", "inilora"],
                        tune={"learning_rate": "accuracy"}, output_dir=str(tmp_path / "nlu"))
    with pytest.raises(ConfigError, match="one held-out split"):
        run_grid(cfg, run_fn=lambda c, **k: pytest.fail("ran"), progress=False)


RACE_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_race import fake_nlg
from inilora.config import load_yaml, CompareConfig
from inilora.runner import run_grid
run_grid(load_yaml(sys.argv[1], CompareConfig), run_fn=fake_nlg, progress=False)
"""


@pytest.mark.parametrize("sig, at", [(signal.SIGKILL, 4), (signal.SIGINT, 31)])
def test_killed_at_a_rung_resumes_without_losing_or_duplicating_rows(tmp_path, sig, at):
    """Killed inside rung 0 (after 4 rows) or inside rung 1 (after 31 of its 30 + 12 rows)."""
    import yaml

    from inilora.config import to_dict

    cfg = tuned_grid(tmp_path)
    path = tmp_path / "race.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    # 0.4 s a run leaves the watcher 4 s after row 31 to land the kill inside the race, on a loaded machine too
    env = {**os.environ, "FAKE_RUN_SLEEP": "0.4", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-c", RACE_SCRIPT.format(tests=str(ROOT / "tests")), str(path)]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and len(read_results(tmp_path / "race")) < at:
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait()
    killed_at = len(read_results(tmp_path / "race"))
    assert at <= killed_at < 42, "the kill must land inside the race"
    env["FAKE_RUN_SLEEP"] = "0"
    subprocess.run(cmd, env=env, check=True)
    lines = (tmp_path / "race" / "results.jsonl").read_text().splitlines()
    ids = [json.loads(line)["run_id"] for line in lines]
    assert len(ids) == len(set(ids)) == 42
    reference = run_grid(tuned_grid(tmp_path / "ref"), run_fn=fake_nlg, progress=False)

    def key(rows):
        return sorted((r["run_id"], json.dumps(r["metrics"], sort_keys=True)) for r in rows)

    assert key(read_results(tmp_path / "race")) == key(reference)


def test_replay_on_the_committed_question_2_study():
    rows = read_results(ROOT / "docs" / "results" / "fit-and-lr-nlg")
    rows = [r for r in rows if r["method"] in ("lora", "inilora", "inilora-alpha")]
    out = replay(rows, VAL, [8], eta=3)
    assert set(out) == {"lora", "inilora", "inilora-alpha"}
    assert {m: o["grid_pick"] for m, o in out.items()} == {"lora": 8e-3, "inilora": 1e-3, "inilora-alpha": 2.5e-4}
    for o in out.values():  # 7 (6) rates × 8 steps, then 3 (2) finalists × 16 more, over 5 seeds
        assert o["steps"] < o["grid_steps"]


def test_grids_from_sweep_are_shared():
    cfg = CompareConfig(base=TrainConfig(task="offline-arith", max_steps=8), methods=["lora", "inilora"],
                        sweep={"learning_rate": [4e-3, 1e-3]}, tune={"learning_rate": VAL})
    assert grids(cfg) == {"lora": [1e-3, 4e-3], "inilora": [1e-3, 4e-3]}


def test_a_single_finalist_is_still_each_methods_own_best(tmp_path):
    """3 rates, η = 3: one rate per method reaches the full run; the own-best table still has it."""
    from inilora.stats import tuned

    cfg = tuned_grid(tmp_path, race=RaceSettings(eta=3, rungs=2, extend=0, points=3, step=4.0))
    rows = run_grid(cfg, run_fn=fake_nlg, progress=False)
    found = {t.method: t for t in tuned(rows, "learning_rate", VAL)}
    assert {m: t.choice for m, t in found.items()} == {"lora": 8e-3, "inilora": 1e-3}
    assert found["lora"].tried == [2e-3, 8e-3, 3.2e-2] and not found["lora"].edge


def test_a_race_of_some_methods_now_and_the_rest_later_equals_one_race(tmp_path):
    part = run_grid(tuned_grid(tmp_path), run_fn=fake_nlg, progress=False, only_methods=["inilora"])
    assert {r["method"] for r in part} == {"inilora"} and {r["rung"] for r in part} == {0, 1}
    rest = run_grid(tuned_grid(tmp_path), run_fn=fake_nlg, progress=False)
    whole = tuned_grid(tmp_path)
    whole.output_dir = str(tmp_path / "whole")
    once = run_grid(whole, run_fn=fake_nlg, progress=False)
    assert sorted((r["run_id"], r["metrics"].get(VAL)) for r in rest) == sorted((r["run_id"], r["metrics"].get(VAL)) for r in once)


def test_a_race_with_a_short_first_rung_trains_that_share_and_half_the_grid(tmp_path):
    from inilora.config import RaceSettings

    cfg = tuned_grid(tmp_path, race=RaceSettings(first=1 / 6, extend=0), sweep={"learning_rate": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]})
    rows = run_grid(cfg, run_fn=fake_nlg, progress=False)
    assert {r["budget_steps"] for r in rows if r["rung"] == 0} == {4}
    assert {r["start_step"] for r in rows if r["rung"] == 1} == {4}  # the finalists continue rung 0's checkpoint
    for label, s in savings(rows).items():
        assert s["per_rung"] == [5, 2] and s["steps"] / s["grid_steps"] == pytest.approx((5 * 4 + 2 * 20) / (5 * 24))


def test_race_settings_out_of_range_are_refused_naming_the_key_once(tmp_path):
    import yaml

    from inilora.config import load_yaml, to_dict

    for key, bad, says in [("first", 0, "must be between 0 and 1"), ("first", 1.5, "must be between 0 and 1"),
                           ("eta", 1, "must be ≥ 2"), ("rungs", 0, "must be ≥ 1")]:
        data = to_dict(tuned_grid(tmp_path))
        data["race"][key] = bad
        (tmp_path / "g.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError, match=rf"g\.yaml: race\.{key}: {says}"):
            load_yaml(tmp_path / "g.yaml", CompareConfig)


def test_a_share_may_be_written_as_a_fraction_in_the_file_and_in_set(tmp_path):
    import yaml

    from inilora.config import load_yaml, to_dict

    data = to_dict(tuned_grid(tmp_path))
    data["race"]["first"] = "1/6"  # as the README writes it
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(data))
    assert load_yaml(tmp_path / "g.yaml", CompareConfig).race.first == 1 / 6
    data["race"]["first"] = 0.5
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(data))
    assert load_yaml(tmp_path / "g.yaml", CompareConfig, {"race.first": "1/3"}).race.first == 1 / 3
    for bad in ("1/0", "a/6", "1/6/2"):
        with pytest.raises(ConfigError, match=r"race\.first.*expected a number"):
            load_yaml(tmp_path / "g.yaml", CompareConfig, {"race.first": bad})


def test_a_race_begun_at_another_first_rung_is_refused_with_the_share_that_continues_it(tmp_path):
    from inilora.config import RaceSettings

    run_grid(tuned_grid(tmp_path, race=RaceSettings(first=None)), run_fn=fake_nlg, progress=False)  # rung 0: 8 of 24
    before = (tmp_path / "race" / "results.jsonl").read_bytes()
    with pytest.raises(ConfigError, match=r"differs in: stop_at.*set race.first: 0.3333333333") as err:
        run_grid(tuned_grid(tmp_path), run_fn=fake_nlg, progress=False)  # the default: rung 0 at 4 of 24
    assert (tmp_path / "race" / "results.jsonl").read_bytes() == before
    share = float(str(err.value).rsplit(": ", 1)[1].rstrip("."))
    again = run_grid(tuned_grid(tmp_path, race=RaceSettings(first=share)),
                     run_fn=lambda c, **k: pytest.fail("re-ran a finished cell"), progress=False)
    assert len(again) == len(before.splitlines())  # the hint's share continues the same race


def test_a_variants_only_is_that_methods_own_grid_in_a_race(tmp_path):
    """Optima 8× apart: each method races the rates it alone runs (``only``), not the whole sweep."""
    sweep = [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]
    cfg = tuned_grid(tmp_path, sweep={"learning_rate": sweep}, race=RaceSettings(extend=1),
                     variants={"inilora": Variant(method="inilora", only={"learning_rate": [5e-4, 1e-3, 2e-3]})})
    rows = run_grid(cfg, run_fn=fake_nlg, progress=False)
    first = {m: sorted({r["rate"] for r in rows if r["method"] == m and r["rung"] == 0}) for m in cfg.methods}
    assert first == {"lora": sweep, "inilora": [5e-4, 1e-3, 2e-3]}
    assert {r["method"]: r["rate"] for r in rows if r["rung"] == 1 and r["rate"] in (8e-3, 1e-3)} == \
        {"lora": 8e-3, "inilora": 1e-3}
    # a rate outside the sweep is refused before any run, naming the variant
    bad = tuned_grid(tmp_path / "bad", sweep={"learning_rate": sweep},
                     variants={"inilora": Variant(method="inilora", only={"learning_rate": [3e-3]})})
    with pytest.raises(ConfigError, match=r"variants\.inilora\.only\.learning_rate: \[0\.003\]"):
        run_grid(bad, run_fn=lambda c, **k: pytest.fail("ran a cell"), progress=False)
    assert not (tmp_path / "bad" / "race" / "results.jsonl").exists()


def test_an_interrupted_extension_is_finished_before_anything_is_picked_again(tmp_path):
    """A grid stopped while it ran a rate past its edge (some seeds in) resumes that rate's other seeds:
    once, a pick on the seeds in made the rate an inside one and the rest were never run."""
    sweep = {"learning_rate": [1e-3, 2e-3, 4e-3]}
    cfg = tuned_grid(tmp_path, sweep=sweep, race=RaceSettings(rungs=1, extend=1))
    whole = run_grid(cfg, run_fn=fake_nlg, progress=False)
    lost = [r for r in whole if r["method"] == "lora" and r["rate"] == 8e-3 and r["seed"] != 0]
    assert len(lost) == 2
    kept = [r for r in whole if r not in lost]
    assert grid_extensions(cfg, kept) == [("lora", {"learning_rate": 8e-3})]
    results = tmp_path / "race" / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in kept))
    for r in lost:  # killed before its run finished: no folder either
        shutil.rmtree(r["output_dir"])
    trained = []
    rows = run_grid(cfg, run_fn=lambda c, **k: trained.append(c.seed) or fake_nlg(c, **k), progress=False)
    assert sorted(trained) == [1, 2] and len(rows) == len(whole)


def _sized(method: str, size: int, rate: float, seed: int, dev: float, steps: int) -> dict:
    return {"run_id": f"{method}_{size}_{rate}_{seed}", "method": method, "seed": seed, "task": "t", "model": "m",
            "settings": {"train_size": size, "learning_rate": rate}, "sweep_keys": ["train_size", "learning_rate"],
            "baseline": "lora", "headline": "test/accuracy", "rate": rate, "rung": 0, "rungs": 1,
            "metrics": {"dev/accuracy": dev + seed * 1e-3, "test/accuracy": dev},
            "train_loss": [[s, 1.0 / (1 + rate * s * 100)] for s in range(8, steps + 1, 8)]}


def _two_sizes() -> list[dict]:
    """256 rows (32 steps) tried 4e-3 … 1.6e-2, best 4e-3: an edge there; 4096 rows (512 steps) tried
    2e-3 … 1.6e-2, best 4e-3: inside. Pooled, 4e-3 would look inside at both."""
    rows = []
    for method in ("lora", "inilora"):
        for seed in (0, 1, 2):
            for rate, dev in ((4e-3, 0.60), (8e-3, 0.55), (1.6e-2, 0.50)):
                rows.append(_sized(method, 256, rate, seed, dev, 32))
            for rate, dev in ((2e-3, 0.70), (4e-3, 0.80), (8e-3, 0.75), (1.6e-2, 0.65)):
                rows.append(_sized(method, 4096, rate, seed, dev, 512))
    return rows


def test_a_rate_is_chosen_and_its_edge_found_within_each_other_setting():
    from inilora.stats import forgiveness

    rows = _two_sizes()
    picks = {(t.method, dict(t.rest)["train_size"]): (t.choice, t.edge, t.tried)
             for t in tuned(rows, "learning_rate", "dev/accuracy")}
    assert picks[("lora", 256)] == (4e-3, "lowest", [4e-3, 8e-3, 1.6e-2])
    assert picks[("lora", 4096)] == (4e-3, "", [2e-3, 4e-3, 8e-3, 1.6e-2])
    ranges = {(f.method, dict(f.rest)["train_size"]): f.best for f in forgiveness(rows, "dev/accuracy")}
    assert ranges == {("lora", 256): 4e-3, ("lora", 4096): 4e-3, ("inilora", 256): 4e-3, ("inilora", 4096): 4e-3}


def test_replay_races_within_each_other_setting_at_its_own_length():
    """Each size's runs are replayed alone, and equal the replay of that size's rows by themselves."""
    rows = _two_sizes()
    got = replay(rows, "dev/accuracy", [16], eta=3)
    assert set(got) == {f"{m} (train_size={n})" for m in ("lora", "inilora") for n in (256, 4096)}
    for n in (256, 4096):
        alone = replay([r for r in rows if r["settings"]["train_size"] == n], "dev/accuracy", [16], eta=3)
        assert got[f"lora (train_size={n})"] == alone[f"lora (train_size={n})"]
    # 32-step runs: a rung at 16 keeps 1 of 3 rates; the 512-step ones pay 4 rates × 16 + 2 × 496, per seed
    assert got["lora (train_size=256)"]["steps"] == (3 * 16 + 1 * 16) * 3
    assert got["lora (train_size=4096)"]["steps"] == (4 * 16 + 2 * 496) * 3
    assert got["lora (train_size=4096)"]["grid_pick"] == 4e-3


def test_the_own_best_table_and_finding_name_each_setting_in_order():
    """Per-setting choices printed without their setting read as one method listed three times."""
    from rich.console import Console

    from inilora.report import own_best_table, verdict

    rows = [{**r, "tune": {"learning_rate": "dev/accuracy"}} for r in reversed(_two_sizes())]  # 4096 rows first
    console = Console(width=80, record=True)
    console.print(own_best_table(rows))
    table = console.export_text()
    lines = [line for line in table.splitlines() if line.startswith("│") and " lora " in line]
    assert "train_size" in table and [line.split()[1] for line in lines] == ["256", "4096"], table
    said = verdict(rows)
    assert said.startswith("At each method's own best learning rate (chosen on validation) at each setting: "
                           "train_size=256: ")
    assert said.index("train_size=256: ") < said.index("train_size=4096: ") and said.count(" is ahead on ") == 2
