"""The comparison grid: expansion, dry run, resume after a SIGKILL (with a fake run function)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from inilora.config import (
    CompareConfig,
    ConfigError,
    RaceSettings,
    TrainConfig,
    Variant,
    from_dict,
    load_yaml,
    to_dict,
)
from inilora.runner import expand, read_results, run_grid

ROOT = Path(__file__).resolve().parents[1]


def fake_metrics(method: str, seed: int, rank: int) -> dict[str, float]:
    """Deterministic 'metrics' of a run, from its method, seed and rank only."""
    bonus = {"lora": 0.0, "inilora": 0.02, "inilora-alpha": 0.03}.get(method, 0.01)
    spread = 0.003 * ((seed + sum(map(ord, method))) % 3)  # differences to lora vary by seed, as real ones do
    return {"accuracy": round(0.6 + bonus + spread + 0.001 * seed + 0.01 * rank / 8, 6),
            "f1": round(0.5 + bonus + spread, 6)}


def fake_run(config: TrainConfig, *, progress: bool = True, sleep: float | None = None) -> dict:
    """Stands in for inilora.train.run: same contract (metrics.json last, existing result returned).

    ``sleep`` (else $FAKE_RUN_SLEEP) is each run's duration; pass it bound (functools.partial) where the run
    executes in a process that does not share the caller's environment, such as a Ray worker."""
    out = Path(config.output_dir)
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))  # as train.run writes it
    (out / "partial.txt").write_text("training…")
    time.sleep(float(os.environ.get("FAKE_RUN_SLEEP", "0")) if sleep is None else sleep)
    metrics = fake_metrics(config.method, config.seed, config.lora.rank)
    result = {"metrics": metrics, "headline": "accuracy", "trainable_params": 1000 * config.lora.rank,
              "train_loss": [[1, 1.0], [2, 0.5 - 0.01 * config.seed]], "wall_s": 0.0,
              "output_dir": str(out)}
    (out / "metrics.json").write_text(json.dumps(result))
    return result


def grid(tmp_path: Path, **kw) -> CompareConfig:
    kw.setdefault("methods", ["lora", "inilora"])
    kw.setdefault("seeds", [0, 1])
    kw.setdefault("sweep", {"lora.rank": [8, 16]})
    return CompareConfig(base=TrainConfig(task="offline-topic"), output_dir=str(tmp_path / "grid"), **kw)


def test_expand_product_ids_and_sweep_values(tmp_path):
    runs = expand(grid(tmp_path))
    assert len(runs) == 2 * 2 * 2
    ids = [r.run_id for r in runs]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "lora_rank=8_seed=0" and ids[-1] == "inilora_rank=16_seed=1"
    by_id = {r.run_id: r for r in runs}
    assert by_id["inilora_rank=16_seed=1"].config.lora.rank == 16
    assert by_id["inilora_rank=16_seed=1"].config.seed == 1
    assert by_id["inilora_rank=16_seed=1"].config.output_dir == str(tmp_path / "grid" / "runs" / "inilora_rank=16_seed=1")
    assert expand(grid(tmp_path))[3].run_id == runs[3].run_id  # stable


def test_method_option_sweep_applies_only_where_accepted(tmp_path):
    cfg = grid(tmp_path, methods=["lora", "normal"], seeds=[0], sweep={"method_options.std": [0.01, 0.5]})
    runs = expand(cfg)
    assert [r.run_id for r in runs] == ["lora_seed=0", "normal_std=0.01_seed=0", "normal_std=0.5_seed=0"]
    assert runs[2].config.method_options == {"std": 0.5}
    assert len(runs[0].shared_by) == 2  # the baseline serves both cells


def test_variants_give_labels_and_options(tmp_path):
    cfg = grid(tmp_path, methods=["lora", "inilora-0"], seeds=[0], sweep={},
               variants={"inilora-0": Variant(method="inilora", options={"steps": 0})})
    runs = expand(cfg)
    assert runs[1].label == "inilora-0" and runs[1].config.method == "inilora"
    assert runs[1].config.method_options == {"steps": 0}


def test_variant_only_runs_at_its_sweep_values_and_pairs_there(tmp_path):
    """A method added at one learning rate of a sweep runs there only, and the report's cell at that
    rate holds it beside the swept methods (same seeds, so it pairs with the baseline)."""
    from inilora.stats import aggregate

    cfg = grid(tmp_path, methods=["lora", "inilora", "inilora-0"], seeds=[0, 1],
               sweep={"learning_rate": [1e-3, 2e-3]},
               variants={"inilora-0": Variant(method="inilora", options={"steps": 0}, only={"learning_rate": [2e-3]})})
    runs = expand(cfg)
    extra = [r for r in runs if r.label == "inilora-0"]
    assert [r.run_id for r in extra] == ["inilora-0_learning_rate=0.002_seed=0", "inilora-0_learning_rate=0.002_seed=1"]
    assert all(r.config.learning_rate == 2e-3 for r in extra) and len(runs) == 2 * 2 * 2 + 2
    rows = run_grid(cfg, run_fn=fake_run, progress=False)
    cells = {(s.setting, s.method) for s in aggregate(rows, "lora") if s.metric == "accuracy"}
    assert ((("learning_rate", 2e-3),), "inilora-0") in cells
    assert ((("learning_rate", 1e-3),), "inilora-0") not in cells


@pytest.mark.parametrize("only, match", [
    ({"lora.rank": [8]}, "not a sweep key"),
    ({"learning_rate": [5e-3]}, "not among the swept values"),
    ({"learning_rate": []}, "nothing"),
])
def test_variant_only_must_name_swept_values(tmp_path, only, match):
    cfg = grid(tmp_path, methods=["lora", "x"], sweep={"learning_rate": [1e-3, 2e-3]},
               variants={"x": Variant(method="inilora", only=only)})
    with pytest.raises(ConfigError, match=match):
        expand(cfg)
    baseline_only = grid(tmp_path, methods=["lora", "inilora"], sweep={"learning_rate": [1e-3, 2e-3]},
                         variants={"lora": Variant(method="lora", only={"learning_rate": [1e-3]})})
    with pytest.raises(ConfigError, match="baseline runs in every cell"):
        expand(baseline_only)


def test_variant_settings_override_base_for_that_entry_and_pair_in_its_cell(tmp_path):
    """Full fine-tuning at its own learning rate beside LoRA at the base one: the override reaches
    that entry's runs only, nested keys included, and the entry still pairs with the baseline."""
    from inilora.stats import aggregate

    cfg = grid(tmp_path, methods=["lora", "full-slow"], seeds=[0, 1], sweep={"lora.rank": [8]},
               variants={"full-slow": Variant(method="full", settings={"learning_rate": 1e-4, "lora.alpha": 4})})
    runs = {r.label: r.config for r in expand(cfg)}
    assert runs["full-slow"].learning_rate == 1e-4 and runs["full-slow"].lora.alpha == 4
    assert runs["lora"].learning_rate == TrainConfig().learning_rate and runs["lora"].lora.alpha == TrainConfig().lora.alpha
    # written nested (YAML, --set variants.X.settings.lora.alpha=4), a key overrides that key only,
    # not the whole lora group (base's dropout stays)
    base = TrainConfig(task="offline-topic")
    base.lora.dropout = 0.3
    nested = CompareConfig(base=base, methods=["lora", "x"], seeds=[0], output_dir=str(tmp_path / "n"),
                           variants={"x": Variant(method="full", settings={"lora": {"alpha": 4}})})
    x = next(r.config for r in expand(nested) if r.label == "x")
    assert x.lora.alpha == 4 and x.lora.dropout == 0.3
    rows = run_grid(cfg, run_fn=fake_run, progress=False)
    assert {s.method for s in aggregate(rows, "lora") if s.metric == "accuracy"} == {"lora", "full-slow"}


@pytest.mark.parametrize("settings, match", [
    ({"lora.rank": 4}, "swept"),
    ({"seed": 3}, "set by the comparison"),
    ({"method_options.steps": 0}, "use options"),
    ({"learning_rat": 1e-4}, "learning_rat"),
    ({"lora": {"rank": 4}}, "swept"),  # nested = dotted: still the swept lora.rank
])
def test_variant_settings_refuse_swept_grid_and_unknown_keys(tmp_path, settings, match):
    cfg = grid(tmp_path, methods=["lora", "x"], variants={"x": Variant(method="inilora", settings=settings)})
    with pytest.raises(ConfigError, match=match):
        expand(cfg)


@pytest.mark.parametrize("sweep, match", [
    ({"lora.rnk": [8]}, "rnk"),
    ({"learning_rat": [1e-3]}, "learning_rat"),
    ({"method_options.nonsense": [1]}, "nonsense"),
    ({"lora.rank": [0]}, "rank"),
])
def test_bad_sweep_key_fails_before_any_run(tmp_path, sweep, match):
    calls = []
    with pytest.raises(ConfigError, match=match):
        run_grid(grid(tmp_path, sweep=sweep), run_fn=lambda c, **k: calls.append(c))
    assert not calls and not (tmp_path / "grid").exists()


def test_unknown_method_and_baseline_fail(tmp_path):
    with pytest.raises(ConfigError, match="lorra"):
        expand(grid(tmp_path, methods=["lora", "lorra"]))
    with pytest.raises(ConfigError, match="baseline"):
        expand(grid(tmp_path, methods=["inilora"]))


def test_each_method_is_looked_up_once_per_grid_and_modes_sweep_their_own_options(tmp_path, monkeypatch):
    """train.resolve once per label (not per run); a bottleneck mode takes its own swept option."""
    import inilora.train

    calls = []
    resolve = inilora.train.resolve
    monkeypatch.setattr(inilora.train, "resolve", lambda name: calls.append(name) or resolve(name))
    runs = expand(grid(tmp_path, methods=["lora", "houlsby", "full"], sweep={"method_options.size": [8, 16]}))
    assert sorted(calls) == ["full", "houlsby", "lora"]
    assert [r.run_id for r in runs if r.seed == 0] == ["lora_seed=0", "houlsby_size=8_seed=0", "full_seed=0",
                                                      "houlsby_size=16_seed=0"]
    with pytest.raises(ConfigError, match="houlsby.*size must be"):
        expand(grid(tmp_path, methods=["lora", "houlsby"], sweep={"method_options.size": [0]}))
    with pytest.raises(ConfigError, match="full.*takes no method_options"):
        expand(grid(tmp_path, methods=["lora", "full-x"], variants={"full-x": Variant(method="full", options={"size": 8})}))


def test_dry_run_prints_plan_and_runs_nothing(tmp_path):
    from rich.console import Console

    console = Console(record=True, width=200)
    rows = run_grid(grid(tmp_path), run_fn=lambda c, **k: pytest.fail("ran"), dry_run=True, console=console)
    assert rows == []
    text = console.export_text()
    assert "8 runs" in text and "inilora_rank=16_seed=1" in text
    assert not (tmp_path / "grid").exists()


def test_resume_skips_finished_and_restarts_partial(tmp_path):
    cfg = grid(tmp_path)
    calls = []

    def counting(config, **kw):
        calls.append(config.output_dir)
        return fake_run(config, **kw)

    first = run_grid(cfg, run_fn=counting, progress=False)
    assert len(first) == 8 and len(calls) == 8
    # a partial run dir (no metrics.json), and a finished one missing from results.jsonl
    results = tmp_path / "grid" / "results.jsonl"
    lines = results.read_text().splitlines()
    results.write_text("\n".join(lines[:6]) + "\n" + lines[6][:20])  # last two lost, one torn
    partial = Path(expand(cfg)[7].config.output_dir)
    (partial / "metrics.json").unlink()
    (partial / "junk").write_text("x")
    calls.clear()
    again = run_grid(cfg, run_fn=counting, progress=False)
    assert len(calls) == 2 and not (partial / "junk").exists()
    assert _comparable(again) == _comparable(first)


def _comparable(rows):
    return sorted((r["run_id"], json.dumps(r["metrics"], sort_keys=True), r["seed"], r["method"]) for r in rows)


GRID_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_runner import fake_run
from inilora.config import load_yaml, CompareConfig
from inilora.runner import run_grid
run_grid(load_yaml(sys.argv[1], CompareConfig), run_fn=fake_run, progress=False)
"""


def test_sigkill_midway_then_rerun_equals_uninterrupted(tmp_path):
    import yaml

    from inilora.config import to_dict

    cfg = grid(tmp_path, seeds=[0, 1, 2], sweep={"lora.rank": [8]})
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "FAKE_RUN_SLEEP": "0.4", "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-c", GRID_SCRIPT.format(tests=str(ROOT / "tests")), str(path)]
    proc = subprocess.Popen(cmd, env=env)
    results = tmp_path / "grid" / "results.jsonl"
    deadline = time.time() + 180  # a wait, not a timing: the grid first checks every cell (imports transformers)
    while time.time() < deadline and len(read_results(tmp_path / "grid")) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(read_results(tmp_path / "grid"))
    assert 2 <= killed_at < 6, "the kill must land midway"
    env["FAKE_RUN_SLEEP"] = "0"
    subprocess.run(cmd, env=env, check=True)
    resumed = read_results(tmp_path / "grid")
    assert len(results.read_text().splitlines()) == 6  # no duplicate lines

    reference = run_grid(grid(tmp_path / "ref", seeds=[0, 1, 2], sweep={"lora.rank": [8]}), run_fn=fake_run,
                         progress=False)
    assert _comparable(resumed) == _comparable(reference)


def test_shipped_configs_load_and_expand(tmp_path):
    files = sorted((ROOT / "configs").glob("*/*.yaml"))
    compare_files = [f for f in files if f.name not in ("train-nlu.yaml", "train-nlg.yaml")]
    assert len(compare_files) >= 10
    for f in compare_files:
        cfg = load_yaml(f, CompareConfig)
        runs = expand(cfg, tmp_path)
        assert runs, f
        assert len(cfg.seeds) >= 3, f"{f}: every comparison has ≥ 3 seeds (docs/design.md §6)"


def test_shipped_embedded_configs_pass_every_check_a_run_makes(tmp_path):
    """A dry run makes every check a real run makes before its first cell (methods, race, selection on
    dev rows, check_grid): a study config refused after hours of queueing is a broken promise."""
    from io import StringIO

    from rich.console import Console

    files = sorted((ROOT / "configs" / "embedded").glob("*.yaml"))
    compare_files = [f for f in files if not f.name.startswith("train-")]
    assert len(compare_files) >= 10
    for f in compare_files:
        cfg = load_yaml(f, CompareConfig)
        run_grid(cfg, dry_run=True, output_dir=tmp_path / f.stem, console=Console(file=StringIO()))
        assert not (tmp_path / f.stem).exists(), f"{f}: a dry run wrote its output folder"


def test_round_trip_of_compare_config(tmp_path):
    from inilora.config import to_dict

    cfg = grid(tmp_path, variants={"inilora": Variant(method="inilora", options={"steps": 100})})
    assert from_dict(CompareConfig, to_dict(cfg)) == cfg


def test_compare_from_yaml_with_overrides(tmp_path):
    import yaml

    from inilora.config import to_dict
    from inilora.runner import run_compare

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(to_dict(grid(tmp_path, sweep={}))))
    report = run_compare(path, run_fn=fake_run, overrides={"sweep.lora.rank": [4, 8], "seeds": [0, 1, 2]})
    rows = read_results(tmp_path / "grid")
    assert len(rows) == 2 * 2 * 3 and {r["settings"]["lora.rank"] for r in rows} == {4, 8}
    assert report is not None and "rank=4" in report.read_text()


def test_finished_run_of_another_config_is_refused(tmp_path):
    run_grid(grid(tmp_path, sweep={}), run_fn=fake_run, progress=False)
    changed = grid(tmp_path, sweep={})
    changed.base.learning_rate = 1e-2
    with pytest.raises(ConfigError, match="learning_rate"):
        run_grid(changed, run_fn=fake_run, progress=False)


def test_a_grid_folder_moved_elsewhere_resumes(tmp_path):
    """Where a run lives is not its configuration: a study folder moved (or its results.jsonl and
    compare.yaml copied to a fresh folder) is the same study, and nothing of it trains again."""
    import shutil

    rows = run_grid(grid(tmp_path), run_fn=fake_run, progress=False)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(str(tmp_path / "grid"), str(moved / "grid"))
    again = run_grid(grid(moved), run_fn=lambda c, **k: pytest.fail(f"trained {c.output_dir} again"), progress=False)
    assert len(again) == len(rows)
    rows_only = tmp_path / "rows-only" / "grid"
    rows_only.mkdir(parents=True)
    for name in ("results.jsonl", "compare.yaml"):
        shutil.copy(moved / "grid" / name, rows_only / name)
    changed = grid(tmp_path / "rows-only")
    changed.base.learning_rate = 1e-2  # a real difference is still refused, naming it and not the place
    with pytest.raises(ConfigError, match=r"differs in: learning_rate\)"):
        run_grid(changed, run_fn=fake_run, progress=False, dry_run=True)


def test_a_folder_of_another_study_is_refused_even_where_no_run_id_collides(tmp_path):
    """Other methods at other base settings share no run id with the grid there; they must still not
    add their rows to its results.jsonl nor replace its compare.yaml."""
    run_grid(grid(tmp_path, sweep={}), run_fn=fake_run, progress=False)
    root = tmp_path / "grid"
    before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    other = grid(tmp_path, sweep={}, methods=["pissa"], baseline="pissa")
    other.base.max_steps, other.base.lora.rank = 50, 16
    with pytest.raises(ConfigError, match=r"another configuration \(base differs in: lora\.rank, max_steps\)"):
        run_grid(other, run_fn=fake_run, progress=False)
    with pytest.raises(ConfigError, match="another configuration"):
        run_grid(other, run_fn=fake_run, progress=False, dry_run=True)
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()} == before
    assert not (root / "runs" / "pissa_seed=0").exists()


def test_a_grid_grows_in_its_folder(tmp_path):
    """More seeds, methods and swept values of the same study are this study: they run beside its rows."""
    run_grid(grid(tmp_path, seeds=[0]), run_fn=fake_run, progress=False)
    grown = grid(tmp_path, seeds=[0, 1], methods=["lora", "inilora", "pissa"], sweep={"lora.rank": [8, 16, 32]})
    rows = run_grid(grown, run_fn=fake_run, progress=False)
    assert len(rows) == len(expand(grown, tmp_path / "grid")) == 18


def test_compare_and_train_read_set_values_alike(tmp_path):
    """One value parser and one YAML loader: `compare --set base.shared_fit=true` was refused
    ("expected true or false, got 'true'") while `train --set` accepted it."""
    from typer.testing import CliRunner

    from inilora.cli import _set_pairs, app
    from inilora.config import CompareConfig, TrainConfig, load_yaml

    root = Path(__file__).resolve().parents[1] / "configs" / "embedded"
    pairs = _set_pairs(["base.shared_fit=true", "seeds=[0, 1]", "sweep.lora.rank=[4, 8]", "base.lora.rank=16"])
    config = load_yaml(root / "results-nlu.yaml", CompareConfig, pairs)
    assert config.base.shared_fit is True and config.seeds == [0, 1] and config.sweep["lora.rank"] == [4, 8]
    assert config.base.lora.rank == 16
    train = load_yaml(root / "train-nlu.yaml", TrainConfig, _set_pairs(["shared_fit=true", "lora.rank=4"]))
    assert train.shared_fit is True and train.lora.rank == 4
    result = CliRunner().invoke(app, ["compare", str(root / "results-nlu.yaml"), "--dry-run", "--set",
                                      "base.shared_fit=true", "--output-dir", str(tmp_path / "grid")])
    assert result.exit_code == 0, result.output


def test_tune_names_a_sweep_key_never_test_rows_and_rows_say_rung_rate_split(tmp_path):
    with pytest.raises(ConfigError, match="tune.lora.rank: not a sweep key"):
        grid(tmp_path, sweep={}, tune={"lora.rank": "accuracy"})
    # an NLU task has one held-out split, the one reported: choosing on it is refused, in a full grid too
    with pytest.raises(ConfigError, match="would select on test rows"):
        run_grid(grid(tmp_path, sweep={"learning_rate": [1e-3, 2e-3]}, tune={"learning_rate": "f1"},
                      race=RaceSettings(rungs=1)), run_fn=lambda c, **k: pytest.fail("ran"), progress=False)
    with pytest.raises(ConfigError, match="tune.lora.rank: .*would select on test rows"):
        run_grid(grid(tmp_path, sweep={"lora.rank": [4, 8]}, tune={"lora.rank": "f1"}),
                 run_fn=lambda c, **k: pytest.fail("ran"), progress=False)
    rows = run_grid(grid(tmp_path, sweep={"lora.rank": [4, 8]}), run_fn=fake_run, progress=False)
    # every row says its rung (a plain grid: 0 of 1), its rate and the split each metric was scored on
    assert all(r["rung"] == 0 and r["rungs"] == 1 and r["rate"] == r["config"]["learning_rate"] for r in rows)
    assert all(r["scored_on"] == {"accuracy": "test", "f1": "test"} for r in rows)


def test_every_cell_is_checked_before_the_first_run_and_in_dry_run(tmp_path):
    """Issue 25: an unknown task in a swept list was refused after other cells had trained, --dry-run
    showed it "to run", and a stray compare.yaml stayed behind."""
    calls = []

    def counting(config, *, progress=False):
        calls.append(config.task)
        return fake_run(config, progress=progress)

    for sweep, match in [({"task": ["offline-topic", "offline-topik"]}, r"unknown task 'offline-topik' \(did you mean"),
                         ({"model": ["embedded:minilm", "embedded:minlm"]}, "did you mean embedded:minilm"),
                         ({"lora.rank": [8, 4096]}, "rank")]:
        for dry in (True, False):
            with pytest.raises(ConfigError, match=match):
                run_grid(grid(tmp_path, sweep=sweep), run_fn=counting, dry_run=dry, progress=False)
            assert not calls and not (tmp_path / "grid").exists()


def test_a_refusal_inside_the_first_run_leaves_no_folder_behind(tmp_path):
    from inilora.errors import InitError

    def refusing(config, *, progress=False):
        Path(config.output_dir).mkdir(parents=True)
        raise InitError("the model refuses this rank")

    with pytest.raises(InitError):
        run_grid(grid(tmp_path), run_fn=refusing, progress=False)
    assert not (tmp_path / "grid").exists()
    (tmp_path / "grid").mkdir()  # a folder the user had is never removed
    with pytest.raises(InitError):
        run_grid(grid(tmp_path), run_fn=refusing, progress=False)
    assert (tmp_path / "grid" / "compare.yaml").is_file()


def test_methods_option_runs_only_those_cells_and_the_grid_stays_whole(tmp_path):
    import yaml

    cfg = grid(tmp_path, methods=["lora", "inilora", "pissa"])
    calls: list[str] = []

    def counting(config, **kw):
        calls.append(config.method)
        return fake_run(config, **kw)

    rows = run_grid(cfg, run_fn=counting, progress=False, only_methods=["pissa", " lora"])
    assert sorted(set(calls)) == ["lora", "pissa"] and len(rows) == 8
    saved = yaml.safe_load((tmp_path / "grid" / "compare.yaml").read_text())
    assert saved["methods"] == ["lora", "inilora", "pissa"]  # the grid is the config's, not the selection
    calls.clear()
    again = run_grid(cfg, run_fn=counting, progress=False)
    assert set(calls) == {"inilora"} and len(calls) == 4 and len(again) == 12
    assert _comparable(again) == _comparable(run_grid(grid(tmp_path / "whole", methods=["lora", "inilora", "pissa"]),
                                                      run_fn=fake_run, progress=False))


def test_methods_option_refuses_a_name_the_grid_lacks_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"--methods: 'inilroa' is not one of this grid's methods; did you mean 'inilora'"):
        run_grid(grid(tmp_path), run_fn=fake_run, progress=False, only_methods=["inilroa"])
    with pytest.raises(ConfigError, match=r"--methods: no method named; give one or more of lora, inilora"):
        run_grid(grid(tmp_path), run_fn=fake_run, progress=False, only_methods=["", " "])
    assert not (tmp_path / "grid").exists()


def test_compare_names_methods_without_rows_and_why(tmp_path):
    from io import StringIO

    import yaml
    from rich.console import Console

    from inilora.config import to_dict
    from inilora.runner import run_compare

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(to_dict(grid(tmp_path, sweep={}))))
    out = StringIO()
    run_compare(path, run_fn=fake_run, console=Console(file=out, width=200), only_methods=["lora"])
    assert "no rows yet for inilora" in out.getvalue() and "without --methods" in out.getvalue()
    out = StringIO()
    run_compare(path, run_fn=fake_run, console=Console(file=out, width=200))
    assert "no rows yet" not in out.getvalue()  # every method has rows: nothing to say
