"""Written files take the user's umask (0644 / 0755 with the usual 022), as PEFT's own saves do:
an adapter, an export, a report or a cache entry that only its writer can read is useless to a
colleague, a container running as another user, or a serving process (docs/design.md §8)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

CLI = Path(sys.executable).with_name("inilora")


def _modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix() or ".": stat.S_IMODE(p.stat().st_mode)
            for p in [root, *root.rglob("*")] if not p.name.startswith(".")}


def _assert_umask_modes(root: Path, umask: int) -> None:
    for rel, mode in _modes(root).items():
        want = (0o777 if (root / rel).is_dir() else 0o666) & ~umask
        assert mode == want, f"{rel}: {oct(mode)}, expected {oct(want)}"


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


def test_atomic_writers_follow_the_umask(tmp_path):
    import torch

    from inilora.cache import atomic_save_safetensors
    from inilora.fileio import atomic_write_json, temp_dir

    for umask in (0o022, 0o077, 0o002):
        old = os.umask(umask)
        try:
            d = tmp_path / f"u{umask:o}"
            atomic_write_json(d / "a.json", {"x": 1})
            atomic_save_safetensors(d / "b.safetensors", {"t": torch.zeros(2)})
            t = temp_dir(d, "out")
            (t / "c.txt").write_text("c")
        finally:
            os.umask(old)
        assert stat.S_IMODE((d / "a.json").stat().st_mode) == 0o666 & ~umask
        assert stat.S_IMODE((d / "b.safetensors").stat().st_mode) == 0o666 & ~umask
        assert stat.S_IMODE(t.stat().st_mode) == 0o777 & ~umask


def test_adapter_export_cache_and_report_are_readable_by_others(umask022, tmp_path):
    """Every writer of the package: the adapter of `init` (CLI), an export, a fit-cache entry, a report."""
    from inilora.models import tiny_model

    base = tmp_path / "tiny"
    tiny_model("llama-gqa").save_pretrained(str(base))
    env = {**os.environ, "INILORA_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}

    def cli(*args):
        done = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, cwd=tmp_path,
                              preexec_fn=lambda: os.umask(0o022))
        assert done.returncode == 0, done.stderr

    cli("init", "--model", str(base), "--method", "inilora", "--steps", "20", "--rank", "4", "--out", "adapter")
    _assert_umask_modes(tmp_path / "adapter", 0o022)
    cli("export", "adapter", "--base", str(base), "--out", "export")
    _assert_umask_modes(tmp_path / "export", 0o022)
    cli("approximate", "--model", str(base), "--steps", "20", "--rank", "4", "--report", "rep/report.json")
    _assert_umask_modes(tmp_path / "rep", 0o022)
    _assert_umask_modes(tmp_path / "cache" / "fits", 0o022)
