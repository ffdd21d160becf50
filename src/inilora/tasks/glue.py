"""GLUE from the hub (``nyu-mll/glue``), one :class:`ClassificationTask` per benchmark task.

Metrics follow the paper (headline first): Matthews (CoLA), accuracy (SST-2, MRPC, QNLI, RTE,
MNLI, QQP; F1 second for MRPC/QQP), Pearson (STS-B, a 1-output regression; Spearman second). Test
splits carry no labels (-1) on the hub, so runs use train → validation (MNLI: validation_matched).
A local copy in the hub's layout (``<dir>/<config>/<split>-*.parquet`` or ``<split>.jsonl``)
serves through ``load(..., source=dir)`` or ``INILORA_DATA_GLUE_<TASK>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import ClassificationTask, register_task, require_columns
from .sources import load_split, subsample

HUB = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask(ClassificationTask):
    config: str = ""

    def load(self, split: str, limit: int | None = None, seed: int = 0, source: Any = None) -> Any:
        data = load_split(self.name, HUB, self.config, split, source)
        require_columns(data.column_names, (*self.text_columns, "label"), f"{self.name} ({split})")
        return subsample(data, limit, seed)


_SPECS: dict[str, dict[str, Any]] = {
    "cola": {"text_columns": ("sentence",), "metrics": ("matthews", "accuracy"),
             "label_names": ("unacceptable", "acceptable"), "description": "CoLA: grammatical acceptability"},
    "sst2": {"text_columns": ("sentence",), "metrics": ("accuracy",), "label_names": ("negative", "positive"),
             "description": "SST-2: sentiment"},
    "mrpc": {"text_columns": ("sentence1", "sentence2"), "metrics": ("accuracy", "f1"),
             "label_names": ("not_equivalent", "equivalent"), "description": "MRPC: paraphrase"},
    "qqp": {"text_columns": ("question1", "question2"), "metrics": ("accuracy", "f1"),
            "label_names": ("not_duplicate", "duplicate"), "description": "QQP: duplicate questions"},
    "stsb": {"text_columns": ("sentence1", "sentence2"), "metrics": ("pearson", "spearman"), "num_labels": 1,
             "description": "STS-B: similarity score 0-5 (regression)"},
    "qnli": {"text_columns": ("question", "sentence"), "metrics": ("accuracy",),
             "label_names": ("entailment", "not_entailment"), "description": "QNLI: does the sentence answer"},
    "rte": {"text_columns": ("sentence1", "sentence2"), "metrics": ("accuracy",),
            "label_names": ("entailment", "not_entailment"), "description": "RTE: entailment"},
    "mnli": {"text_columns": ("premise", "hypothesis"), "metrics": ("accuracy",), "num_labels": 3,
             "label_names": ("entailment", "neutral", "contradiction"), "eval_split": "validation_matched",
             "description": "MNLI: 3-way entailment (matched validation)"},
}

for _config, _spec in _SPECS.items():
    _spec.setdefault("num_labels", len(_spec.get("label_names", ())))
    register_task(GlueTask(name=f"glue-{_config}", source=f"hub: {HUB} ({_config})", config=_config,
                           max_length=512, **_spec))

__all__ = ["HUB", "GlueTask"]
