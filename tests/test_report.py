"""Statistics against hand computations, and the report of a tiny grid."""

from __future__ import annotations

import json
import math

import pytest

from inilora.report import aggregate, holm, mean_std, paired_p, write_report


def _row(method, seed, acc, task="t", settings=None, **extra):
    return {"run_id": f"{method}-{seed}-{json.dumps(settings)}", "method": method, "seed": seed, "task": task,
            "model": "m", "settings": settings or {}, "sweep_keys": list(settings or {}), "baseline": "lora",
            "metrics": {"accuracy": acc}, "headline": "accuracy", "trainable_params": 1234,
            "train_loss": [[1, 1.0], [2, 0.5]], **extra}


def test_mean_std_ddof1():
    m, s = mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3)
    assert s == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert math.isnan(mean_std([1.0])[1])


def test_paired_t_by_hand():
    a, b = [0.70, 0.74, 0.69, 0.75], [0.68, 0.70, 0.69, 0.71]
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    from scipy.stats import t as student

    assert paired_p(a, b) == pytest.approx(2 * student.sf(abs(t), n - 1), rel=1e-9)
    assert paired_p([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]) == 1.0  # all-zero differences
    assert math.isnan(paired_p([0.5], [0.4]))


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 → 3·0.01, max(0.03, 2·0.03), max(0.06, 1·0.04)
    assert holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.02, float("nan")])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


def test_aggregate_pairs_by_seed_and_corrects_within_cell():
    lora = [0.60, 0.62, 0.61]
    ini = [0.65, 0.66, 0.66]
    alpha = [0.61, 0.63, 0.615]
    rows = [_row("lora", s, v) for s, v in zip([0, 11, 22], lora)]
    rows += [_row("inilora", s, v) for s, v in zip([22, 0, 11], [ini[2], ini[0], ini[1]])]  # order must not matter
    rows += [_row("inilora-alpha", s, v) for s, v in zip([0, 11, 22], alpha)]
    stats = {s.method: s for s in aggregate(rows)}
    assert stats["inilora"].values == ini and stats["inilora"].seeds == [0, 11, 22]
    p_ini, p_alpha = paired_p(ini, lora), paired_p(alpha, lora)
    assert stats["inilora"].p == pytest.approx(p_ini)
    assert [stats["inilora"].p_holm, stats["inilora-alpha"].p_holm] == pytest.approx(holm([p_ini, p_alpha]))
    assert math.isnan(stats["lora"].p)


def test_baseline_not_swept_serves_every_cell():
    rows = [_row("lora", s, 0.6 + 0.01 * s) for s in (0, 1, 2)]
    for std in (0.01, 0.5):
        rows += [_row("normal", s, 0.6 + std * 0.1 + 0.02 * s, settings={"method_options.std": std}) for s in (0, 1, 2)]
    stats = aggregate(rows)
    cells = {s.setting for s in stats}
    assert cells == {(("method_options.std", 0.01),), (("method_options.std", 0.5),)}
    for s in stats:
        if s.method == "normal":
            assert s.n_pairs == 3 and not math.isnan(s.p)


def test_report_of_tiny_grid(tmp_path):
    from test_runner import fake_metrics, fake_run, grid

    from inilora.runner import run_grid

    rows = run_grid(grid(tmp_path, seeds=[0, 1, 2]), run_fn=fake_run, progress=False)
    for r in rows:  # an approximation curve for inilora runs, as train.run may carry it
        if r["method"] == "inilora":
            r["approx_loss"] = {"q": [[0, 1.0], [100, 0.1]], "v": [[0, 2.0], [100, 0.2]]}
    path = write_report(tmp_path / "grid", rows)
    text = path.read_text()
    lora8 = [fake_metrics("lora", s, 8)["accuracy"] for s in (0, 1, 2)]
    m, s = mean_std(lora8)
    assert f"{m * 100:.1f} ± {s * 100:.1f}" in text
    assert "### offline-topic — rank=16" in text and "p vs lora (Holm)" in text
    assert "8.0K" in text and "16.0K" in text  # trainable parameters per method
    plots = {p.name for p in (tmp_path / "grid" / "plots").iterdir()}
    assert {"train_loss_offline-topic.png", "sweep_offline-topic_lora.rank.png", "methods_offline-topic.png",
            "approx_loss.png"} <= plots
    summary = json.loads((tmp_path / "grid" / "summary.json").read_text())
    assert any(e["method"] == "inilora" and e["p_holm"] is not None for e in summary)


def test_report_cli_rebuilds_from_results(tmp_path):
    from test_runner import fake_run, grid
    from typer.testing import CliRunner

    from inilora.cli import app
    from inilora.runner import run_grid

    run_grid(grid(tmp_path, seeds=[0, 1, 2], sweep={}), run_fn=fake_run, progress=False)
    (tmp_path / "grid" / "compare.yaml").unlink()  # results alone
    result = CliRunner().invoke(app, ["report", str(tmp_path / "grid"), "--no-plots"])
    assert result.exit_code == 0, result.output
    assert "inilora" in (tmp_path / "grid" / "report.md").read_text()


def test_small_n_is_said_plainly_in_tables_and_summary(tmp_path):
    """A tie of 3 seeds (std exactly 0) is flagged, not shown as stability; one seed says why there is no test;
    per-seed values stand beside mean ± std; ×100 is said once, in the header."""
    from rich.console import Console

    from inilora.report import TIE, markdown_tables, summary_table

    rows = [_row("lora", s, a) for s, a in zip((0, 1, 2), (0.60, 0.62, 0.61))]
    rows += [_row("pissa", s, 0.625) for s in (0, 1, 2)]
    rows += [_row("inilora", 0, 0.7)]
    stats = aggregate(rows)
    md = markdown_tables(rows, stats, "lora")
    pissa = next(line for line in md.splitlines() if line.startswith("| pissa"))
    assert f"62.5 ± 0.0 {TIE}" in pissa and "62.5, 62.5, 62.5" in pissa
    assert "(×100)" not in pissa and "accuracy (×100)" in md
    assert f"{TIE} std exactly 0" in md and "not evidence of stability" in md
    assert "inilora: one seed only, so no std and no test" in md
    lora = next(line for line in md.splitlines() if line.startswith("| **lora**"))
    assert "60.0, 62.0, 61.0" in lora
    console = Console(record=True, width=200)
    console.print(summary_table(rows, stats))
    text = console.export_text()
    assert "mean ± std (×100)" in text and text.count("(×100)") == 1
    assert "one seed only" in text and "std exactly 0" in text


def test_a_constant_difference_gets_no_p_value_and_says_why():
    """Two seeds that tie on a small eval set (differences 0.0625, 0.0625): t is infinite, p would be 0."""
    from inilora.report import markdown_tables

    assert math.isnan(paired_p([0.0625, 0.0625], [0.0, 0.0]))
    assert paired_p([0.0625, 0.0625], [0.0625, 0.0625]) == 1.0
    rows = [_row("lora", s, 0.0) for s in (0, 1)] + [_row("inilora", s, 0.0625) for s in (0, 1)]
    md = markdown_tables(rows, aggregate(rows), "lora")
    line = next(x for x in md.splitlines() if x.startswith("| inilora"))
    assert line.rstrip(" |").endswith("—")
    assert "same difference to `lora` on every seed" in md


def _lr_rows():
    """LoRA is best on validation at 2e-3, IniLoRA at 1e-3; their *test* accuracies peak elsewhere, so a
    choice made on the test metric would pick other rates (and other numbers)."""
    val = {("lora", 1e-3): 0.50, ("lora", 2e-3): 0.60, ("inilora", 1e-3): 0.70, ("inilora", 2e-3): 0.65}
    test = {("lora", 1e-3): 0.90, ("lora", 2e-3): 0.40, ("inilora", 1e-3): 0.55, ("inilora", 2e-3): 0.95}
    rows = []
    for (method, lr), v in val.items():
        for seed in (0, 1, 2):
            r = _row(method, seed, test[method, lr] + 0.01 * seed * (1 + (method == "inilora")),
                     settings={"learning_rate": lr}, tune={"learning_rate": "val/accuracy"})
            r["metrics"]["val/accuracy"] = v + 0.001 * seed
            rows.append(r)
    return rows


def test_tuned_chooses_on_validation_and_tests_against_the_baselines_own_choice():
    from inilora.stats import tuned

    found = {t.method: t for t in tuned(_lr_rows(), "learning_rate", "val/accuracy", "lora")}
    assert found["lora"].choice == 2e-3 and found["inilora"].choice == 1e-3
    assert found["inilora"].on_means[2e-3] == pytest.approx(0.651)
    lora_vals, ini_vals = found["lora"].stat.values, found["inilora"].stat.values
    assert lora_vals == pytest.approx([0.40, 0.41, 0.42]) and ini_vals == pytest.approx([0.55, 0.57, 0.59])
    assert found["inilora"].stat.p == pytest.approx(paired_p(ini_vals, lora_vals))
    assert math.isnan(found["lora"].stat.p)
    # a method run at one rate only (a variant's `only`) was not tuned: it gets no row
    once = [r for r in _lr_rows() if r["method"] == "lora" and r["settings"]["learning_rate"] == 1e-3]
    for r in once:
        r["method"] = "inilora-0it"
    assert "inilora-0it" not in {t.method for t in tuned(_lr_rows() + once, "learning_rate", "val/accuracy")}


def test_tuned_ties_go_to_the_smallest_value_whatever_order_runs_finished():
    from inilora.stats import tuned

    rows = [r for r in _lr_rows() if r["method"] == "lora"]
    for r in rows:
        r["metrics"]["val/accuracy"] = 0.5
    assert tuned(rows, "learning_rate", "val/accuracy")[0].choice == 1e-3
    assert tuned(rows[::-1], "learning_rate", "val/accuracy")[0].choice == 1e-3


def test_a_choice_at_an_end_of_the_range_is_flagged_as_a_bound(tmp_path):
    """A best value at an end of the rates tried may not be the method's best: the report must say
    so; a best inside the range must not be flagged."""
    from inilora.stats import tuned

    rows = _lr_rows()
    for seed in (0, 1, 2):  # lora also at 4e-3, worse on validation: its 2e-3 is now inside
        r = _row("lora", seed, 0.3, settings={"learning_rate": 4e-3}, tune={"learning_rate": "val/accuracy"})
        r["metrics"]["val/accuracy"] = 0.2
        rows.append(r)
    found = {t.method: t for t in tuned(rows, "learning_rate", "val/accuracy", "lora")}
    assert found["lora"].edge == "" and found["inilora"].edge == "lowest"
    text = write_report(tmp_path, rows, plots=False).read_text()
    assert "| lora | 0.002 |" in text
    assert "At an end of the range tried: inilora (lowest)" in text


def test_report_has_the_own_best_table_when_the_grid_tunes(tmp_path):
    path = write_report(tmp_path, _lr_rows(), plots=False)
    text = path.read_text()
    assert "## Each method at its own best setting" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| inilora | 0.001 (lowest tried) |"))
    assert "**70.1**" in line and "57.0 ± 2.0" in line
    rows = [{k: v for k, v in r.items() if k != "tune"} for r in _lr_rows()]
    assert "own best" not in write_report(tmp_path, rows, plots=False).read_text()


def test_swept_numbers_are_tabled_in_ascending_order_whatever_order_runs_finished(tmp_path):
    rows = _lr_rows()
    rows = [r for r in rows if r["settings"]["learning_rate"] == 2e-3] + [r for r in rows if r["settings"]["learning_rate"] == 1e-3]
    text = write_report(tmp_path, rows, plots=False).read_text()
    assert text.index("### t — learning_rate=0.001") < text.index("### t — learning_rate=0.002")
    assert "| method | 0.001 | 0.002 |" in text


def test_report_says_which_settings_a_method_ran_at_that_the_baseline_did_not(tmp_path):
    """Full fine-tuning at its own learning rate (a variant's ``settings``) is named in the report;
    settings that are swept, or that differ by construction (seed, output folder), are not."""
    def cfg(lr, seed, out):
        return {"learning_rate": lr, "seed": seed, "output_dir": out, "lora": {"rank": 8}, "method_options": {}}

    rows = [_row("lora", s, 0.6 + s / 100, config=cfg(2e-3, s, f"a{s}")) for s in (0, 1, 2)]
    rows += [_row("full", s, 0.7 + s / 100, config=cfg(1e-4, s, f"b{s}")) for s in (0, 1, 2)]
    rows += [_row("inilora", s, 0.65 + s / 100, config=cfg(2e-3, s, f"c{s}")) for s in (0, 1, 2)]
    text = write_report(tmp_path, rows, plots=False).read_text()
    line = next(x for x in text.splitlines() if x.startswith("Settings that differ"))
    assert line == "Settings that differ from the baseline's (lora): full: learning_rate = 0.0001."
    same = [r for r in rows if r["method"] != "full"]
    assert "Settings that differ" not in write_report(tmp_path, same, plots=False).read_text()


def test_tables_list_the_baseline_first_then_methods_in_the_order_runs_first_named_them(tmp_path):
    """A split or resumed study finishes runs in any order: the tables' order must not follow the
    first cell's finishing order (here IniLoRA ran first at 1e-3)."""
    rows = _lr_rows()
    rows = [r for r in rows if r["method"] == "inilora"] + [r for r in rows if r["method"] == "lora"]
    rows += [_row("alpha", s, 0.5, settings={"learning_rate": 2e-3}) for s in (0, 1, 2)]
    order = list(dict.fromkeys(s.method for s in aggregate(rows) if s.setting == (("learning_rate", 1e-3),)))
    assert order == ["lora", "inilora"]
    assert list(dict.fromkeys(s.method for s in aggregate(rows))) == ["lora", "inilora", "alpha"]
    text = write_report(tmp_path, rows, plots=False).read_text()
    sweep = text[text.index("## Sweeps"):]
    assert sweep.index("| lora |") < sweep.index("| inilora |") < sweep.index("| alpha |")


def test_provenance_names_the_machine_and_threads_of_each_run(tmp_path):
    rows = [_row("lora", s, 0.6, device="cpu (AMD EPYC)", threads=1, precision="fp32") for s in (0, 1)]
    rows += [_row("inilora", s, 0.7, device="cpu (AMD EPYC)", threads=2, precision="fp32") for s in (0, 1)]
    text = write_report(tmp_path, rows, plots=False).read_text()
    assert "Measured on cpu (AMD EPYC) (1 thread, fp32), cpu (AMD EPYC) (2 threads, fp32);" in text


def test_provenance_says_when_versions_differ_and_which_runs_were_taken_from_another_grid(tmp_path):
    old = {"transformers": "5.24.0", "peft": "0.21.2"}
    rows = [_row("lora", s, 0.6, versions=old, reused_from=f"/studies/first/runs/lora_seed={s}") for s in (0, 1)]
    rows += [_row("inilora", s, 0.7, versions={**old, "transformers": "5.25.0"}) for s in (0, 1)]
    text = write_report(tmp_path, rows, plots=False).read_text()
    assert ("library versions differ between runs: transformers 5.24.0, peft 0.21.2 | transformers 5.25.0, "
            "peft 0.21.2") in text
    assert "2 of 4 runs were taken from /studies/first (`compare --reuse`), as measured there" in text


# ------------------------------------------------------------------------------------------------
# the fair view first (issue 28) and the report cosmetics of issue 24


def _race_rows(tmp_path):
    from test_race import fake_nlg, tuned_grid

    from inilora.runner import run_grid

    return run_grid(tuned_grid(tmp_path), run_fn=fake_nlg, progress=False)


def _width(table) -> int:
    from io import StringIO

    from rich.console import Console

    buf = StringIO()
    Console(file=buf, width=200).print(table)
    return max(len(line.rstrip()) for line in buf.getvalue().splitlines())


def test_demo_tables_fit_80_columns(tmp_path):
    from inilora.report import own_best_table, summary_table

    rows = _race_rows(tmp_path)
    assert _width(own_best_table(rows, title="NLG: each method at its own best rate")) <= 80
    nlu = [{**r, "method": m, "seed": s, "metrics": {"accuracy": 0.6123 + 0.01 * s}, "headline": "accuracy",
            "settings": {}, "sweep_keys": [], "task": "offline-topic", "trainable_params": 75300}
           for r in rows[:1] for m in ("lora", "inilora", "inilora-alpha") for s in (0, 11, 22)]
    assert _width(summary_table(nlu, title="inilora demo — NLU", per_seed=False)) <= 80


def test_report_is_recomputed_from_results_alone_own_best_first_with_counts(tmp_path):
    from inilora.report import write_report

    rows = _race_rows(tmp_path)
    text = write_report(tmp_path / "race", plots=False).read_text()  # from results.jsonl only
    assert text.index("own best") < text.index("At shared settings") < text.index("## Runs")
    assert "offline-arith-test/accuracy (×100, n=16)" in text
    assert "What the race cost" in text and "5 → 2" in text and "How forgiving" in text
    assert "12 finished full runs and 30 shorter race rungs" in text
    assert "lora is ahead" in text  # the verdict sentence, above the table
    assert len(rows) == 42
    summary = json.loads((tmp_path / "race" / "summary.json").read_text())
    assert {(o["method"], o["rate"]) for o in summary["own_best"]} == {("lora", 8e-3), ("inilora", 1e-3)}
    assert summary["verdict"].startswith("At each method's own best learning rate")


def test_pinned_rate_says_so_first_and_seed_counts_are_true(tmp_path):
    from inilora.report import write_report

    rows = [{"run_id": f"{m}_seed={s}", "method": m, "seed": s, "task": "offline-topic", "settings": {},
             "sweep_keys": [], "baseline": "lora", "metrics": {"accuracy": 0.5 + 0.01 * s + (m == "inilora") * 0.02},
             "headline": "accuracy", "eval_examples": {"offline-topic": 128}, "config": {"learning_rate": 3e-3}}
            for m, seeds in (("lora", (0, 1, 2)), ("inilora", (0,))) for s in seeds]
    text = write_report(tmp_path, rows, plots=False).read_text()
    head = "\n".join(text.splitlines()[:8])
    assert "Every method ran at the same learning rate (0.003)" in head and "tune: {learning_rate" in head
    assert "seeds lora 3, inilora 1" in head and "3 seeds" not in head
    assert "(×100, n=128)" in text


def test_titles_wrap_to_the_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from inilora.plots import _wrap

    fig = plt.figure(figsize=(6, 4))
    title = "offline-arith: offline-arith-test/accuracy per method (mean ± std, dots: seeds)"
    lines = _wrap(title, fig).splitlines()
    assert len(lines) >= 2 and " ".join(lines) == title
    plt.close(fig)


def test_identical_fit_curves_are_drawn_once_and_labelled(tmp_path, monkeypatch):
    import inilora.plots as plots

    captured = {}

    def keep(fig, path):
        captured["labels"] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        captured["lines"] = len(fig.axes[0].get_lines())
        plots._plt().close(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    curve = [[0, 0.05], [100, 0.04]]
    rows = [{"method": "inilora", "seed": s, "model": "m", "approx_loss": curve} for s in (0, 11, 22)]
    rows.append({"method": "inilora", "seed": 33, "model": "m", "approx_loss": [[0, 0.05], [100, 0.03]]})
    plots._approx(rows, tmp_path)
    assert captured["lines"] == 2
    assert captured["labels"] == ["inilora seeds 0, 11, 22 (×3 identical)", "inilora seed 33"]


def test_junk_rows_are_refused_and_a_torn_row_is_named(tmp_path):
    """Issue 25: `null` or `[1, 2]` in results.jsonl ended in an internal error; a torn line vanished."""
    from inilora.errors import InitError
    from inilora.results import read_results_noted

    path = tmp_path / "results.jsonl"
    for junk, match in [("null", "line 2 is a JSON null"), ("[1, 2]", "line 2 is a JSON list"),
                        ('{"run_id": 3}', "line 2 is a result row without a valid run_id, method, seed, task")]:
        path.write_text(json.dumps(_row("lora", 0, 0.5)) + "\n" + junk + "\n")
        with pytest.raises(InitError, match=match):
            read_results_noted(tmp_path)
    rows = [_row(m, s, 0.5 + s / 10) for m in ("lora", "inilora") for s in (0, 1)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"run_id": "inilora-2-nu')
    got, notes = read_results_noted(tmp_path)
    assert len(got) == 4 and len(notes) == 1 and "line 5" in notes[0]
    text = write_report(tmp_path, plots=False).read_text()
    assert "## Skipped lines" in text and "line 5 skipped" in text
