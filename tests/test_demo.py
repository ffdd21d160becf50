"""``inilora demo``: the presets keep the README's promises, and a tiny version runs end to end."""

from __future__ import annotations

import json
import time

from inilora.demo import FULL, NLU_METHODS, QUICK, configs
from inilora.runner import expand


def test_quick_demo_grid_matches_the_brief(tmp_path):
    from inilora.rates import default_grid
    from inilora.runner import check_race

    nlu, nlg = configs(tmp_path, QUICK)
    assert FULL.nlu_methods == tuple(NLU_METHODS)
    assert len(nlu.seeds) >= 3 and nlu.base.model == "embedded:minilm"
    assert nlg.base.model == "embedded:smollm2" and nlg.base.task == "offline-arith"
    assert nlg.methods == ["lora", "inilora"] and len(nlg.seeds) >= 3
    # the fair comparison: own-best rates on validation problems disjoint from the test ones, each grid 16× wide
    assert check_race(nlg) == "offline-arith-val" and nlg.tune == {"learning_rate": "offline-arith-val/accuracy"}
    for m in nlg.methods:
        g = default_grid(m, nlg.base.learning_rate, nlg.race.points, nlg.race.step)
        assert g[-1] / g[0] >= 16
    assert len(expand(nlu)) == 3 * len(QUICK.seeds)
    assert nlu.variants["inilora"].options["steps"] < FULL.fit_steps == 20000


def test_smoke_demo_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from inilora.cli import app

    start = time.time()
    result = CliRunner().invoke(app, ["demo", "--smoke", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    for part in ("nlu", "nlg"):
        folder = tmp_path / "demo" / part
        text = (folder / "report.md").read_text()
        assert "lora" in text and "inilora" in text
        assert (folder / "plots" / f"methods_{'offline-topic' if part == 'nlu' else 'offline-arith'}.png").is_file()
        rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
        assert all(r["trainable_params"] > 0 for r in rows)
    assert "inilora demo" in result.output
    nlg = (tmp_path / "demo" / "nlg" / "report.md").read_text()
    assert nlg.index("own best") < nlg.index("At shared settings")  # the own-best view first
    assert "Finding: At each method's own best learning rate" in " ".join(result.output.split())
    assert (tmp_path / "demo" / "nlg" / "plots" / "sensitivity_offline-arith.png").is_file()
    rows = [json.loads(line) for line in (tmp_path / "demo" / "nlg" / "results.jsonl").read_text().splitlines()]
    assert {r["rung"] for r in rows} == {0, 1} and all(r["scored_on"] for r in rows)
    first = time.time() - start
    # a second call resumes: every run is already finished
    start = time.time()
    again = CliRunner().invoke(app, ["demo", "--smoke", "--out", str(tmp_path / "demo")])
    assert again.exit_code == 0, again.output
    assert time.time() - start < max(10.0, first / 3)


def test_demo_flow_own_best_first_with_a_finding_in_80_columns(tmp_path, monkeypatch):
    """The demo's own flow with a stand-in for training (the real runs: test_smoke_demo_end_to_end)."""
    import io
    import sys
    from pathlib import Path

    from rich.console import Console

    sys.path.insert(0, str(Path(__file__).parent))
    from test_race import fake_nlg
    from test_runner import fake_run

    from inilora.backends import InProcess
    from inilora.demo import SMOKE, run_demo, scaled

    def fake(config, **kw):
        if config.task == "offline-arith":
            return fake_nlg(config, **kw)
        return fake_run(config, **kw)

    import inilora.demo as demo
    import inilora.plots

    monkeypatch.setattr(inilora.plots, "make_plots", lambda *a, **k: [])  # the plots: tested in test_report
    err = io.StringIO()
    out = io.StringIO()

    real = demo.__dict__.get("Console")
    sizes = scaled(SMOKE, nlg_seeds=(0, 1, 2), nlg_steps=6)
    import rich.console

    orig = rich.console.Console

    class Wide(orig):  # the demo's stdout console, captured
        def __init__(self, *a, **k):
            k.setdefault("file", out)
            super().__init__(*a, **k)

    rich.console.Console = Wide
    try:
        paths = run_demo(tmp_path / "demo", sizes=sizes, run_fn=fake, console=Console(file=err, width=200),
                         backend=InProcess())  # the stand-in is a closure: it stays in this process
    finally:
        rich.console.Console = orig
    assert real is None and set(paths) == {"nlg", "nlu"}
    text = out.getvalue()
    flat = " ".join(text.split())
    assert flat.index("each method at its own best rate") < flat.index("one shared rate")
    assert "Finding: At each method's own best learning rate (chosen on validation), lora is ahead" in flat
    table = text[: text.index("Finding")]
    assert max(len(line) for line in table.splitlines()) <= 80
    nlg = (tmp_path / "demo" / "nlg" / "report.md").read_text()
    assert nlg.index("own best") < nlg.index("At shared settings")
    assert "up to 3 seeds as time allows" in err.getvalue() and "× 3 seeds" not in err.getvalue()
