"""What ``--overwrite`` may replace (outdir.py): only files still holding what inilora wrote, by the
sha256 recorded at write time; a file the user changed is kept and named (issue 25)."""

from __future__ import annotations

import json

import pytest
from peft import LoraConfig

import inilora
from inilora.errors import InitError
from inilora.models import tiny_model
from inilora.outdir import check_output_dir, foreign_entries, record_adapter_files, write_export_marker


@pytest.fixture()
def adapter(tmp_path):
    out = tmp_path / "adapter"
    model = inilora.get_peft_model(tiny_model("llama-gqa"), LoraConfig(r=4, target_modules=["q_proj"]),
                                   "inilora-alpha", cache=False)
    model.save_pretrained(str(out))
    record_adapter_files(out)
    return out


def test_an_untouched_adapter_is_replaced(adapter):
    files = json.loads((adapter / "inilora.json").read_text())["files"]
    assert "README.md" in files and "inilora_init/adapter_model.safetensors" in files
    assert foreign_entries(adapter) == []
    check_output_dir(adapter, what="--out", overwrite=True)


@pytest.mark.parametrize("change", ["edit README", "edit A0", "add in inilora_init"])
def test_a_changed_file_of_ours_is_kept_and_named(adapter, change):
    target = {"edit README": adapter / "README.md", "edit A0": adapter / "inilora_init" / "adapter_model.safetensors",
              "add in inilora_init": adapter / "inilora_init" / "notes.txt"}[change]
    target.write_text("the user's words")
    named = target.relative_to(adapter).parts[0]
    with pytest.raises(InitError, match=rf"{named} \(changed since inilora wrote it\)"):
        check_output_dir(adapter, what="--out", overwrite=True)
    assert target.read_text() == "the user's words"


def test_a_file_of_ours_deleted_loses_nothing(adapter):
    (adapter / "README.md").unlink()
    check_output_dir(adapter, what="--out", overwrite=True)


def test_without_digests_a_readme_is_never_presumed_ours(adapter):
    """Adapters saved by the Python API (or an older inilora) record no digests: their model card may be edited."""
    meta = json.loads((adapter / "inilora.json").read_text())
    del meta["files"]
    (adapter / "inilora.json").write_text(json.dumps(meta))
    assert foreign_entries(adapter) == ["README.md (no digest recorded: it may be yours)"]
    (adapter / "README.md").unlink()
    assert foreign_entries(adapter) == []


def test_an_export_marker_records_digests(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("a b")
    write_export_marker(tmp_path, "merged", "src")
    assert foreign_entries(tmp_path) == []
    (tmp_path / "tok" / "vocab.txt").write_text("a b c")
    (tmp_path / "mine.md").write_text("x")
    assert foreign_entries(tmp_path) == ["mine.md", "tok (changed since inilora wrote it)"]
