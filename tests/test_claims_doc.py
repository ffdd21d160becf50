"""docs/results.md's generated blocks equal what scripts/claims.py recomputes from the committed raw
rows, and the script's statistics mean what the page says they mean."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats as st

ROOT = Path(__file__).resolve().parents[1]


def _claims():
    spec = importlib.util.spec_from_file_location("claims", ROOT / "scripts" / "claims.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["claims"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_results_page_matches_its_raw_rows():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "claims.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    doc = (ROOT / "docs" / "results.md").read_text()
    claims = doc.split("<!-- generated: claims -->\n", 1)[1].split("<!-- end: claims -->", 1)[0]
    assert claims.startswith("| paper | claim |") and claims.count("\n| ") >= 15  # filled: a row per claim


def test_blocks_are_filled_and_refilled():
    c = _claims()
    doc = "a\n<!-- generated: x -->\n<!-- end: x -->\nb\n<!-- generated: y -->\nold\n<!-- end: y -->\n"
    once = c.render(doc, {"x": "X1", "y": "Y"})
    assert once == "a\n<!-- generated: x -->\nX1\n<!-- end: x -->\nb\n<!-- generated: y -->\nY\n<!-- end: y -->\n"
    assert c.render(once, {"x": "X1", "y": "Y"}) == once  # idempotent: --check after --write passes
    with pytest.raises(SystemExit, match="z"):
        c.render("<!-- generated: z -->\n<!-- end: z -->", {})


def test_verdict_words_follow_the_rule():
    c = _claims()
    up = {s: 50.0 + s for s in range(5)}
    a = {s: up[s] + 3 + 0.1 * (s % 2) for s in range(5)}  # consistently 3 points ahead
    assert c.Cmp("x", a, up).verdict == "holds"
    assert c.Cmp("x", a, up, sign=-1).verdict == "reversed"
    assert c.Cmp("x", a, up, sign=0).verdict == "reversed"  # "A matches B" refuted by a clear difference
    noisy = {s: up[s] + (4 if s % 2 else -4) for s in range(5)}
    assert c.Cmp("x", noisy, up).verdict == "inconclusive" and "MDE" in c.Cmp("x", noisy, up).text()
    held = c.holm([c.Cmp("x", a, up), c.Cmp("y", a, up)], "two")
    assert all(h.p_adj == pytest.approx(min(1.0, 2 * h.p)) for h in held)


def test_mde_has_the_stated_power():
    """At a true difference equal to the MDE, a two-sided paired t-test at 5 % rejects ≈ 80 % of the
    time (noncentral t, computed another way than the script's quantile sum)."""
    c = _claims()
    b = {s: 0.0 for s in range(5)}
    a = {0: 1.0, 1: -2.0, 2: 3.0, 3: 0.5, 4: 1.5}
    cmp = c.Cmp("x", a, b)
    n = cmp.n
    sd = st.tstd(list(a.values()))
    nc = cmp.mde / (sd / n ** 0.5)
    crit = st.t.ppf(0.975, n - 1)
    power = st.nct.sf(crit, n - 1, nc) + st.nct.cdf(-crit, n - 1, nc)
    assert 0.75 < power < 0.85
    assert cmp.lo < cmp.diff < cmp.hi and cmp.hi - cmp.diff == pytest.approx(crit * sd / n ** 0.5)


def test_item_level_test_pairs_examples_over_seeds(tmp_path, monkeypatch):
    import json

    c = _claims()
    (tmp_path / "s").mkdir()
    rows = [{"run_id": f"{m}_{seed}", "method": m, "seed": seed, "task": "t", "settings": {"learning_rate": lr},
             "metrics": {"accuracy": 0.5}, "items": {"test": bits}}
            for m, lr, bits in (("a", 1e-3, "1111011110"), ("b", 2e-3, "1000010000")) for seed in (0, 1)]
    (tmp_path / "s" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(c, "RESULTS", tmp_path)
    line = c.item_test("s", "test", "a", {"learning_rate": 1e-3}, "b", {"learning_rate": 2e-3})
    assert "+60.0 points over 10 examples × 2 seeds" in line  # 8/10 right vs 2/10, every gain on its own example
    assert c.item_test("s", "test", "a", {"learning_rate": 9.0}, "b", {}) == "no per-example rows"


def test_numbers_come_from_whole_grids_only(tmp_path, monkeypatch):
    """A study committed method by method: a method's rows count once its whole planned grid is in (an
    own-best rate over part of a grid, or a mean over some seeds, would be no one's result)."""
    import json

    import yaml

    from inilora.config import CompareConfig, TrainConfig, to_dict

    c = _claims()
    study = tmp_path / "s"
    study.mkdir()
    cfg = CompareConfig(base=TrainConfig(task="offline-topic"), methods=["lora", "gaussian"], seeds=[0, 1],
                        sweep={"learning_rate": [1e-3, 2e-3]}, output_dir=str(tmp_path / "out"))
    (study / "compare.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    cells = [(m, lr, seed) for m in ("lora", "gaussian") for lr in (1e-3, 2e-3) for seed in (0, 1)]

    def commit(kept):
        (study / "results.jsonl").write_text("".join(json.dumps(
            {"run_id": f"{m}_{lr}_{seed}", "method": m, "seed": seed, "task": "offline-topic", "baseline": "lora",
             "headline": "accuracy", "settings": {"learning_rate": lr},
             "metrics": {"accuracy": 0.5 + lr + seed / 100, "dev": 0.5 + lr}})
            + "\n" for m, lr, seed in kept))

    monkeypatch.setattr(c, "RESULTS", tmp_path)
    commit(cells[:-1])  # gaussian lacks one seed at one rate
    assert len(c.committed("s")) == 7 and {r["method"] for r in c.rows("s")} == {"lora"}
    assert c.finished("s", ["lora", "gaussian"]) == ["lora"]
    assert c.own_best("s", "lora", "dev")[0] == 2e-3
    commit(cells[:3] + cells[4:-1])  # neither whole: every number waits
    assert c.rows("s") == [] and c.finished("s", ["lora", "gaussian"]) == []
    assert not c._complete("s")
    commit(cells)
    assert len(c.rows("s")) == 8 and c.finished("s", ["lora", "gaussian"]) == ["lora", "gaussian"]
    assert c._complete("s")
    # tuned on "dev", whose best is the grid's top rate: the study asks for the rate past it first
    cfg.tune, cfg.race.rungs = {"learning_rate": "dev"}, 1
    (study / "compare.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    c._planned.cache_clear()
    assert c.finished("s", ["lora", "gaussian"]) == ["lora", "gaussian"] and not c._complete("s")
    commit(cells + [(m, 4e-3, seed) for m in ("lora", "gaussian") for seed in (0, 1)])
    assert c._complete("s")  # 4e-3 is the best again, but race.extend (1) allows one step: that row is a bound


def test_table_6_compares_each_rank_at_that_ranks_own_rates(tmp_path, monkeypatch):
    """At each rank, IniLoRA and LoRA each at the rate their dev mean picks *at that rank*, paired by seed,
    Holm over the rank pairs; nothing while a pick sits at a grid's end with an extension still to run."""
    import json

    import numpy as np
    import yaml

    from inilora import stats
    from inilora.config import CompareConfig, TrainConfig, to_dict

    c = _claims()
    study = tmp_path / "s"
    study.mkdir()
    rates, seeds = [5e-4, 1e-3, 2e-3, 4e-3], [0, 1, 2]
    cfg = CompareConfig(base=TrainConfig(task="offline-topic"), methods=["lora", "inilora"], seeds=seeds,
                        sweep={"lora.rank": [16, 32], "learning_rate": rates}, tune={"learning_rate": "dev"},
                        output_dir=str(tmp_path / "out"))
    cfg.race.rungs = 1
    (study / "compare.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    # each (method, rank)'s dev peak: LoRA's moves with rank, so one rate for both ranks would be wrong
    peak = {("lora", 16): 2e-3, ("lora", 32): 1e-3, ("inilora", 16): 2e-3, ("inilora", 32): 2e-3}
    test = {(m, r, s): 0.6 + 0.01 * s * (m == "inilora") + 0.02 * (r == 32) + 0.003 * s ** 2
            for m in ("lora", "inilora") for r in (16, 32) for s in seeds}

    def commit(peaks):
        (study / "results.jsonl").write_text("".join(json.dumps(
            {"run_id": f"{m}_{r}_{lr}_{s}", "method": m, "seed": s, "task": "offline-topic", "baseline": "lora",
             "headline": "accuracy", "settings": {"lora.rank": r, "learning_rate": lr},
             "train_loss": [[8, 1.0 + (m == "lora") * 0.1 * (s + 1)]],
             "metrics": {"accuracy": test[m, r, s] if lr == peaks[m, r] else 0.3, "dev": 0.9 - abs(lr - peaks[m, r])}})
            + "\n" for m in ("lora", "inilora") for r in (16, 32) for lr in rates for s in seeds))

    monkeypatch.setattr(c, "RESULTS", tmp_path)
    commit({**peak, ("lora", 32): 4e-3})  # LoRA's rank-32 pick at the grid's top: its rate past it is due
    assert c.settled("s", ["lora", "inilora"]) == ["inilora"] and c.by_setting("s", "dev", "lora.rank") == []
    commit(peak)
    found = c.by_setting("s", "dev", "lora.rank")
    assert [x.label for x in found] == ["rank 16: IniLoRA (0.002) − LoRA (0.002)", "rank 32: IniLoRA (0.002) − LoRA (0.001)"]
    for cmp_, rank in zip(found, (16, 32)):
        want = [100 * (test["inilora", rank, s] - test["lora", rank, s]) for s in seeds]
        assert cmp_.n == 3 and cmp_.diff == pytest.approx(np.mean(want))
    assert [x.p_adj for x in found] == pytest.approx(stats.holm([x.p for x in found]))
    assert all(x.family == "the 2 ranks" for x in found)  # one method against IniLoRA: a family of ranks
    loss = c.setting_losses("s", "dev", "lora.rank")
    assert [x.diff for x in loss] == pytest.approx([100 * 0.1 * np.mean([s + 1 for s in seeds])] * 2)
    block = c.setting_block("s", "accuracy", "dev", "lora.rank")
    assert block.count("rank 16:\n") == block.count("rank 32:\n") == 1  # a rate table per rank
    assert "| lora, lora.rank 32 | 0.001 |" in block and "| inilora, lora.rank 32 | 0.002 |" in block


def test_table_4_tests_the_lead_at_each_size_and_its_growth_paired_by_seed(tmp_path, monkeypatch):
    """Table 4: IniLoRA − LoRA at each training size, each at its own rate there; the lead's growth is
    the largest size's lead minus the smallest's, per seed, as one paired test."""
    import json

    import numpy as np
    import yaml
    from scipy import stats as st

    from inilora.config import CompareConfig, TrainConfig, to_dict

    c = _claims()
    study = tmp_path / "s"
    study.mkdir()
    rates, seeds, sizes = [5e-4, 1e-3, 2e-3, 4e-3], [0, 1, 2, 3], [256, 1024, 4096]
    cfg = CompareConfig(base=TrainConfig(task="offline-topic"), methods=["lora", "inilora"], seeds=seeds,
                        sweep={"train_size": sizes, "learning_rate": rates}, tune={"learning_rate": "dev"},
                        output_dir=str(tmp_path / "out"))
    cfg.race.rungs = 1
    (study / "compare.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    # LoRA's rate at 256 rows is not its rate at the others: one rate for every size would be wrong
    peak = {("lora", 256): 1e-3, ("lora", 1024): 2e-3, ("lora", 4096): 2e-3, ("inilora", 256): 2e-3,
            ("inilora", 1024): 2e-3, ("inilora", 4096): 2e-3}
    test = {(m, n, s): 0.5 + 0.05 * sizes.index(n) + (m == "inilora") * 0.01 * sizes.index(n) * (1 + s % 2)
            + 0.002 * s * (m == "lora") for m in ("lora", "inilora") for n in sizes for s in seeds}
    (study / "results.jsonl").write_text("".join(json.dumps(
        {"run_id": f"{m}_{n}_{lr}_{s}", "method": m, "seed": s, "task": "offline-topic", "baseline": "lora",
         "headline": "accuracy", "settings": {"train_size": n, "learning_rate": lr}, "train_loss": [[8, 1.0]],
         "metrics": {"accuracy": test[m, n, s] if lr == peak[m, n] else 0.3, "dev": 0.9 - abs(lr - peak[m, n])}})
        + "\n" for m in ("lora", "inilora") for n in sizes for lr in rates for s in seeds))
    monkeypatch.setattr(c, "RESULTS", tmp_path)
    found = c.by_setting("s", "dev", "train_size", ("lora",))
    assert [x.label for x in found] == ["256 rows: IniLoRA (0.002) − LoRA (0.001)", "1024 rows: IniLoRA (0.002) − LoRA "
                                        "(0.002)", "4096 rows: IniLoRA (0.002) − LoRA (0.002)"]
    assert all(x.family == "the 3 train sizes" for x in found)
    lead = {n: [100 * (test["inilora", n, s] - test["lora", n, s]) for s in seeds] for n in sizes}
    for x, n in zip(found, sizes):
        assert x.diff == pytest.approx(np.mean(lead[n]))
    grow = c.lead_growth("s", "dev", "train_size")
    growth = np.subtract(lead[4096], lead[256])
    assert grow.n == 4 and grow.diff == pytest.approx(growth.mean())
    assert grow.p == pytest.approx(st.ttest_1samp(growth, 0).pvalue)
    assert "4096 rows minus at 256 rows" in grow.label
    assert c.setting_block("s", "accuracy", "dev", "train_size").count(" rows:\n") == 3


def test_a_direction_arm_counts_once_settled_and_its_early_p_is_never_below_the_final(tmp_path, monkeypatch):
    """direction-nlg runs arm by arm: an arm set against IniLoRA before the other three are in gets
    Bonferroni over the 4 planned (4·p), which the Holm p it gets once all are in never exceeds."""
    import json

    import yaml

    from inilora import stats
    from inilora.config import CompareConfig, TrainConfig, to_dict

    c = _claims()
    study = tmp_path / "s"
    study.mkdir()
    arms = ["lora", "inilora", "random-fit-size", "pissa", "inilora-0it", "inilora-lora-size"]
    rates, seeds = [1e-3, 2e-3, 4e-3], [0, 1, 2, 3]
    cfg = CompareConfig(base=TrainConfig(task="offline-topic"), methods=arms, seeds=seeds,
                        variants={"random-fit-size": {"method": "normal", "options": {"std": 0.17}}, "inilora-0it": {"method": "inilora"},
                                  "inilora-lora-size": {"method": "inilora"}},
                        sweep={"learning_rate": rates}, tune={"learning_rate": "dev"}, output_dir=str(tmp_path / "o"))
    cfg.race.rungs = 1
    (study / "compare.yaml").write_text(yaml.safe_dump(to_dict(cfg)))

    def commit(which):
        (study / "results.jsonl").write_text("".join(json.dumps(
            {"run_id": f"{m}_{lr}_{s}", "method": m, "seed": s, "task": "offline-topic", "baseline": "lora",
             "headline": "accuracy", "settings": {"learning_rate": lr},
             "metrics": {"accuracy": 0.6 + 0.01 * arms.index(m) + 0.004 * s * s * (m == "inilora"),
                         "dev": 0.9 - abs(lr - 2e-3)}}) + "\n" for m in which for lr in rates for s in seeds))

    monkeypatch.setattr(c, "RESULTS", tmp_path)
    commit(arms[:3])
    early = c.direction_cmps("s", "dev")
    assert list(early) == ["random-fit-size"]
    assert early["random-fit-size"].p_adj == pytest.approx(min(1, 4 * early["random-fit-size"].p))
    assert "(Bonferroni over the 4 planned vs IniLoRA, 1 in so far)" in early["random-fit-size"].text()
    assert "Holm" not in early["random-fit-size"].text()
    commit(arms)
    c._planned.cache_clear()
    final = c.direction_cmps("s", "dev")
    assert list(final) == arms[2:] + ["lora-size"]
    four = [final[m] for m in arms[2:]]
    assert [x.p_adj for x in four] == pytest.approx(stats.holm([x.p for x in four]))
    assert final["random-fit-size"].p_adj <= early["random-fit-size"].p_adj


def test_table_5_reads_the_fit_cost_rows_and_words_a_cost(tmp_path, monkeypatch):
    """Table 5 is a cost, not a comparison: it holds when every fit took under an hour and every second
    call read the cache faster than the fit; the times shown are the rows' own (min–max over repeats)."""
    import json

    c = _claims()
    monkeypatch.setattr(c, "RESULTS", tmp_path)
    assert c.fit_cost().verdicts == ["**untested**"]
    (tmp_path / "fit-cost").mkdir()

    def commit(cached_s):
        rows = [{"run_id": f"m_repeat={k}", "method": "inilora", "seed": 0, "task": "approximate",
                 "model": "embedded:m", "matrices": 12, "rank": 8, "steps": 20000, "engine": "cpu-fused", "threads": 1,
                 "device": "cpu (test)", "first": {"wall_s": 150.0 + k}, "fit": {"wall_s": 120.0 + 30 * k, "peak_rss_mib": 600.0 + k},
                 "cached": {"wall_s": cached_s, "cache": "hit"}} for k in range(2)]
        (tmp_path / "fit-cost" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    commit(9.0)
    got = c.fit_cost()
    assert got.verdicts[0].startswith("**holds**") and "2.5 min at most" in got.verdicts[0]
    assert "the fit 2.0–2.5 min wall, peak RSS 601 MiB" in got.verdicts[1] and "cache in 9.0 s" in got.verdicts[1]
    commit(500.0)  # a "cached" call slower than the fit: the cache saved nothing
    assert c.fit_cost().verdicts[0].startswith("**reversed**")
