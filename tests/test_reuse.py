"""``compare --reuse``: another grid's finished runs are taken only where they are exactly this grid's runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inilora.config import CompareConfig, TrainConfig, Variant, to_dict
from inilora.reuse import copy_run, run_key
from inilora.runner import expand, run_grid, save_config
from test_race import fake_nlg, tuned_grid
from test_runner import fake_run

ROOT = Path(__file__).resolve().parents[1]


def study(tmp_path: Path, name: str, methods: list[str], **kw) -> CompareConfig:
    base = kw.pop("base", {"task": "offline-topic"})
    return CompareConfig(base=TrainConfig(**base), output_dir=str(tmp_path / name), methods=methods,
                         seeds=[0, 1], sweep={"lora.rank": [8, 16]}, **kw)


def counting(calls: list[str]):
    def run(config, **kw):
        calls.append(config.output_dir)
        return fake_run(config, **kw)
    return run


def test_exactly_equal_runs_are_copied_in_and_the_rest_trained(tmp_path):
    first = run_grid(study(tmp_path, "a", ["lora", "inilora"]), run_fn=fake_run, progress=False)
    calls: list[str] = []
    rows = run_grid(study(tmp_path, "b", ["lora", "pissa"]), run_fn=counting(calls), progress=False,
                    reuse=[tmp_path / "a"])
    assert len(rows) == 8 and len(calls) == 4 and all("/pissa_" in c for c in calls)
    before = {r["run_id"]: r for r in first}
    for row in rows:
        if row["method"] != "lora":
            assert "reused_from" not in row
            continue
        old = before[row["run_id"]]
        # the measurement is the original's, the place and grid are this one's, and it says where it came from
        assert row["metrics"] == old["metrics"] and row["finished_at"] == old["finished_at"]
        assert row["reused_from"] == str(Path(old["output_dir"]).resolve()) and row["output_dir"] == str(tmp_path / "b" / "runs" / row["run_id"])
        assert row["config"]["output_dir"] == row["output_dir"]
        assert json.loads((Path(row["output_dir"]) / "metrics.json").read_text())["metrics"] == old["metrics"]
    # a second pass reuses and trains nothing more, and duplicates no row
    again = run_grid(study(tmp_path, "b", ["lora", "pissa"]), run_fn=counting(calls), progress=False,
                     reuse=[tmp_path / "a"])
    assert len(calls) == 4 and len(again) == 8
    assert len((tmp_path / "b" / "results.jsonl").read_text().splitlines()) == 8


def test_a_run_that_only_looks_alike_is_trained(tmp_path):
    run_grid(study(tmp_path, "a", ["lora"]), run_fn=fake_run, progress=False)
    calls: list[str] = []
    other = study(tmp_path, "b", ["lora"], base={"task": "offline-topic", "learning_rate": 1e-3})
    run_grid(other, run_fn=counting(calls), progress=False, reuse=[tmp_path / "a"])
    assert len(calls) == 4  # one setting differs: every run trains


def test_identity_is_the_config_not_the_label(tmp_path):
    run_grid(study(tmp_path, "a", ["lora"]), run_fn=fake_run, progress=False)
    calls: list[str] = []
    renamed = study(tmp_path, "b", ["plain"], variants={"plain": Variant(method="lora")}, baseline="plain")
    rows = run_grid(renamed, run_fn=counting(calls), progress=False, reuse=[tmp_path / "a"])
    assert not calls and {r["method"] for r in rows} == {"plain"} and all(r["reused_from"] for r in rows)


def test_an_unfinished_run_of_the_source_is_not_taken(tmp_path):
    run_grid(study(tmp_path, "a", ["lora"]), run_fn=fake_run, progress=False)
    victim = expand(study(tmp_path, "a", ["lora"]))[0]
    (Path(victim.config.output_dir) / "metrics.json").unlink()
    calls: list[str] = []
    run_grid(study(tmp_path, "b", ["lora"]), run_fn=counting(calls), progress=False, reuse=[tmp_path / "a"])
    assert [Path(c).name for c in calls] == [victim.run_id]


def test_a_committed_grid_lends_its_rows_without_run_folders(tmp_path, capsys):
    """docs/results/<study> keeps results.jsonl and compare.yaml only: its rows are taken as rows, by
    the same identity rule, and a run that only looks alike is still trained."""
    first = run_grid(study(tmp_path, "a", ["lora", "inilora"]), run_fn=fake_run, progress=False)
    kept = tmp_path / "committed"
    kept.mkdir()
    for name in ("results.jsonl", "compare.yaml"):
        (kept / name).write_bytes((tmp_path / "a" / name).read_bytes())
    calls: list[str] = []
    rows = run_grid(study(tmp_path, "b", ["lora", "pissa"]), run_fn=counting(calls), progress=False, reuse=[kept])
    assert len(rows) == 8 and sorted(Path(c).name.split("_")[0] for c in calls) == ["pissa"] * 4
    assert f"reused 4 finished runs of {kept} (its rows)" in capsys.readouterr().err
    before = {r["run_id"]: r for r in first}
    for row in (r for r in rows if r["method"] == "lora"):
        old = before[row["run_id"]]
        assert row["metrics"] == old["metrics"] and row["finished_at"] == old["finished_at"]
        assert row["reused_from"] == old["output_dir"]  # where it was measured, not the folder that kept it
        assert row["output_dir"] == row["config"]["output_dir"] == str(tmp_path / "b" / "runs" / row["run_id"])
        assert not Path(row["output_dir"]).exists()  # no folder copied: there was none
    again = run_grid(study(tmp_path, "b", ["lora", "pissa"]), run_fn=counting(calls), progress=False)
    assert len(calls) == 4 and len(again) == 8  # resumed from its rows, with or without --reuse
    calls.clear()
    other = study(tmp_path, "c", ["lora"], base={"task": "offline-topic", "learning_rate": 1e-3})
    run_grid(other, run_fn=counting(calls), progress=False, reuse=[kept])
    assert len(calls) == 4  # one setting differs: nothing is taken


def test_a_grid_folder_missing_one_run_folder_is_no_committed_grid(tmp_path):
    run_grid(study(tmp_path, "a", ["lora"]), run_fn=fake_run, progress=False)
    victim = expand(study(tmp_path, "a", ["lora"]))[0]
    import shutil
    shutil.rmtree(victim.config.output_dir)
    calls: list[str] = []
    run_grid(study(tmp_path, "b", ["lora"]), run_fn=counting(calls), progress=False, reuse=[tmp_path / "a"])
    assert [Path(c).name for c in calls] == [victim.run_id]


def test_copy_is_atomic_writes_this_grids_config_and_a_marker(tmp_path):
    src = tmp_path / "src" / "runs" / "r"
    (src / "adapter").mkdir(parents=True)
    (src / "adapter" / "w.bin").write_bytes(b"\x00\x01")
    (src / "config.yaml").write_text(yaml.safe_dump({"method": "lora", "output_dir": str(src)}))
    dest = tmp_path / "dst" / "runs" / "r"
    dest.mkdir(parents=True)
    (dest / "partial.txt").write_text("an unfinished run of this grid")
    (dest.parent / ".r.tmp-killed").mkdir()  # an earlier copy, killed midway
    planned = {"method": "lora", "output_dir": str(dest), "resume_from": str(dest.parent / "p" / "checkpoint-8")}
    copy_run({"_folder": str(src), "output_dir": str(src), "metrics": {"accuracy": 0.5}}, dest, planned)
    assert sorted(p.name for p in dest.iterdir()) == ["adapter", "config.yaml", "reused.json"]
    assert yaml.safe_load((dest / "config.yaml").read_text()) == planned
    assert json.loads((dest / "reused.json").read_text()) == {"output_dir": str(src), "metrics": {"accuracy": 0.5},
                                                              "reused_from": str(src)}
    assert (dest / "adapter" / "w.bin").read_bytes() == b"\x00\x01"
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    assert yaml.safe_load((src / "config.yaml").read_text())["output_dir"] == str(src)  # the source untouched


def test_a_row_whose_folder_is_another_run_is_not_taken(tmp_path):
    run_grid(study(tmp_path, "a", ["lora"]), run_fn=fake_run, progress=False)
    victim = expand(study(tmp_path, "a", ["lora"]))[0]
    config_file = Path(victim.config.output_dir) / "config.yaml"
    config_file.write_text(yaml.safe_dump({**yaml.safe_load(config_file.read_text()), "learning_rate": 5e-3}))
    calls: list[str] = []
    run_grid(study(tmp_path, "b", ["lora"]), run_fn=counting(calls), progress=False, reuse=[tmp_path / "a"])
    assert [Path(c).name for c in calls] == [victim.run_id]


def test_a_copy_killed_before_its_row_is_recorded_as_reused_on_the_next_run(tmp_path):
    run_grid(study(tmp_path, "a", ["lora"]), run_fn=fake_run, progress=False)
    first = run_grid(study(tmp_path, "b", ["lora"]), run_fn=fake_run, progress=False, reuse=[tmp_path / "a"])
    results = tmp_path / "b" / "results.jsonl"
    results.write_text("\n".join(results.read_text().splitlines()[:1]) + "\n")  # killed after the copies
    again = run_grid(study(tmp_path, "b", ["lora"]), run_fn=lambda c, **k: pytest.fail("trained a copied run"),
                     progress=False)  # without --reuse: the marker says what the folder is
    assert sorted((r["run_id"], r["reused_from"], r["finished_at"]) for r in again) == \
        sorted((r["run_id"], r["reused_from"], r["finished_at"]) for r in first)


def test_this_grids_own_finished_run_is_kept_not_replaced_by_a_copy(tmp_path):
    run_grid(study(tmp_path, "a", ["lora"]), run_fn=fake_run, progress=False)
    mine = expand(study(tmp_path, "b", ["lora"]))[0]
    out = Path(mine.config.output_dir)
    save_config(study(tmp_path, "b", ["lora"]), tmp_path / "b")  # a grid killed after its first run, before the row
    fake_run(mine.config)
    result = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**result, "metrics": {"accuracy": 0.123}}))
    rows = run_grid(study(tmp_path, "b", ["lora"]), run_fn=fake_run, progress=False, reuse=[tmp_path / "a"])
    own = next(r for r in rows if r["run_id"] == mine.run_id)
    assert own["metrics"] == {"accuracy": 0.123} and "reused_from" not in own


def test_a_chain_of_reuses_names_the_original_measurement(tmp_path):
    first = run_grid(study(tmp_path, "a", ["lora"]), run_fn=fake_run, progress=False)
    run_grid(study(tmp_path, "b", ["lora"]), run_fn=fake_run, progress=False, reuse=[tmp_path / "a"])
    rows = run_grid(study(tmp_path, "c", ["lora"]), run_fn=lambda c, **k: pytest.fail("trained"), progress=False,
                    reuse=[tmp_path / "b"])
    assert {r["reused_from"] for r in rows} == {str(Path(r["output_dir"]).resolve()) for r in first}


def test_runs_measured_on_another_kind_of_device_are_left_out(tmp_path, monkeypatch):
    from rich.console import Console

    import inilora.runner as runner

    run_grid(study(tmp_path, "a", ["lora"]), run_fn=fake_run, progress=False)
    results = tmp_path / "a" / "results.jsonl"
    results.write_text("".join(json.dumps({**json.loads(line), "device": "NVIDIA H100 80GB HBM3"}) + "\n"
                               for line in results.read_text().splitlines()))
    monkeypatch.setattr(runner, "_device_kind", lambda config: "cpu")  # this grid runs on a CPU, whatever is here
    calls: list[str] = []
    console = Console(record=True, width=200)
    run_grid(study(tmp_path, "b", ["lora"]), run_fn=counting(calls), progress=False, reuse=[tmp_path / "a"],
             console=console)
    assert len(calls) == 4  # bf16 GPU numbers do not pass for this CPU grid's fp32 runs
    assert "not reused: 4 rows measured on cuda, this grid runs on cpu" in console.export_text()
    monkeypatch.setattr(runner, "_device_kind", lambda config: "cuda")
    rows = run_grid(study(tmp_path, "c", ["lora"]), run_fn=lambda c, **k: pytest.fail("trained"), progress=False,
                    reuse=[tmp_path / "a"])
    assert len(rows) == 4  # on a GPU grid they are the same runs


def test_run_key_ignores_place_only():
    a = to_dict(TrainConfig(task="offline-topic", output_dir="/x/runs/r"))
    b = to_dict(TrainConfig(task="offline-topic", output_dir="/y/runs/r"))
    assert run_key(a) == run_key(b)
    # a prefix checkpoint inside the run's own grid is compared from the grid on
    assert run_key({**a, "resume_from": "/x/runs/p/checkpoint-8"}) == run_key({**b, "resume_from": "/y/runs/p/checkpoint-8"})
    assert run_key({**a, "resume_from": "/x/runs/p/checkpoint-8"}) != run_key({**b, "resume_from": "/y/runs/q/checkpoint-8"})
    assert run_key({**a, "resume_from": "/x/runs/p/checkpoint-8"}) != run_key({**b, "resume_from": "/y/runs/p/checkpoint-9"})
    # one outside it (set by hand) is a different file for each: compared as it is
    assert run_key({**a, "resume_from": "/a/runs/p/checkpoint-8"}) != run_key({**b, "resume_from": "/b/runs/p/checkpoint-8"})
    assert run_key(a) != run_key({**b, "seed": 1})


def test_a_moved_source_folder_is_still_found(tmp_path):
    first = run_grid(study(tmp_path, "a", ["lora"]), run_fn=fake_run, progress=False)
    (tmp_path / "a").rename(tmp_path / "moved")  # its rows still name the old place
    calls: list[str] = []
    rows = run_grid(study(tmp_path, "b", ["lora"]), run_fn=counting(calls), progress=False, reuse=[tmp_path / "moved"])
    assert not calls and len(rows) == len(first)
    assert all(r["reused_from"].startswith(str((tmp_path / "moved").resolve())) for r in rows)


def test_a_race_reuses_its_continued_rungs_too(tmp_path):
    first = run_grid(tuned_grid(tmp_path), run_fn=fake_nlg, progress=False)
    again = tuned_grid(tmp_path)
    again.output_dir = str(tmp_path / "race2")
    rows = run_grid(again, run_fn=lambda c, **k: pytest.fail(f"trained {c.output_dir}"), progress=False,
                    reuse=[tmp_path / "race"])
    assert len(rows) == len(first) and all(r["reused_from"] for r in rows)
    for r in rows:  # a continued rung's prefix is this grid's copy, in its row and in its folder's config.yaml
        stored = yaml.safe_load((Path(r["output_dir"]) / "config.yaml").read_text())
        assert stored == r["config"]
        if r["config"].get("resume_from"):
            assert r["config"]["resume_from"].startswith(str(tmp_path / "race2"))


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_refuses_a_folder_that_is_no_comparison_and_touches_nothing(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"methods": ["lora"], "seeds": [0], "base": {"task": "offline-topic"},
                                   "output_dir": str(tmp_path / "out")}))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    before = _digest(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "inilora"), "compare", str(cfg), "--reuse", str(tmp_path / "notes")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "--reuse" in proc.stderr and "results.jsonl" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _digest(tmp_path) == before and not (tmp_path / "out").exists()
