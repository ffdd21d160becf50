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
from inilora.runner import expand, run_grid
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


def test_copy_is_atomic_and_rewrites_the_runs_own_config(tmp_path):
    src = tmp_path / "src" / "runs" / "r"
    (src / "adapter").mkdir(parents=True)
    (src / "adapter" / "w.bin").write_bytes(b"\x00\x01")
    (src / "config.yaml").write_text(yaml.safe_dump({"method": "lora", "output_dir": str(src)}))
    dest = tmp_path / "dst" / "runs" / "r"
    dest.mkdir(parents=True)
    (dest / "partial.txt").write_text("an unfinished run of this grid")
    copy_run({"output_dir": str(src)}, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["adapter", "config.yaml"]
    assert yaml.safe_load((dest / "config.yaml").read_text()) == {"method": "lora", "output_dir": str(dest)}
    assert (dest / "adapter" / "w.bin").read_bytes() == b"\x00\x01"
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    assert yaml.safe_load((src / "config.yaml").read_text())["output_dir"] == str(src)  # the source untouched


def test_run_key_ignores_place_only():
    a = to_dict(TrainConfig(task="offline-topic", output_dir="/x/runs/r"))
    b = to_dict(TrainConfig(task="offline-topic", output_dir="/y/runs/r"))
    assert run_key(a) == run_key(b)
    assert run_key({**a, "resume_from": "/x/runs/p/checkpoint-8"}) == \
        run_key({**b, "resume_from": "rel/y/runs/p/checkpoint-8"})
    assert run_key({**a, "resume_from": "/x/runs/p/checkpoint-8"}) != run_key({**b, "resume_from": "/y/runs/q/checkpoint-8"})
    assert run_key({**a, "resume_from": "/x/runs/p/checkpoint-8"}) != run_key({**b, "resume_from": "/y/runs/p/checkpoint-9"})
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
    for r in rows:  # a continued rung's prefix is this grid's copy
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
