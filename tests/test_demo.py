"""``inilora demo``: the presets keep the README's promises, and a tiny version runs end to end."""

from __future__ import annotations

import json
import time

from inilora.demo import FULL, NLU_METHODS, QUICK, configs
from inilora.runner import expand


def test_quick_demo_grid_matches_the_brief(tmp_path):
    nlu, nlg = configs(tmp_path, QUICK)
    assert nlu.methods == NLU_METHODS == ["lora", "pissa", "milora", "inilora", "inilora-alpha", "inilora-beta-kn"]
    assert len(nlu.seeds) >= 3 and nlu.base.model == "embedded:minilm"
    assert nlg.base.model == "embedded:smollm2" and nlg.base.task == "offline-arith"
    assert nlg.methods[:3] == ["lora", "inilora", "inilora-alpha"] and len(nlg.seeds) >= 3
    assert len(expand(nlu)) == 6 * len(QUICK.seeds)
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
        assert "lora" in text and ("inilora" in text or part == "nlg")
        assert (folder / "plots" / f"methods_{'offline-topic' if part == 'nlu' else 'offline-arith'}.png").is_file()
        rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
        assert all(r["trainable_params"] > 0 for r in rows)
    assert "inilora demo" in result.output
    first = time.time() - start
    # a second call resumes: every run is already finished
    start = time.time()
    again = CliRunner().invoke(app, ["demo", "--smoke", "--out", str(tmp_path / "demo")])
    assert again.exit_code == 0, again.output
    assert time.time() - start < max(10.0, first / 3)
