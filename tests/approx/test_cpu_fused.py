"""The "cpu-fused" engine (C++ kernel built on first use) against the reference loop and the
"torch" engine (docs/design.md §3 tolerances), its lane layouts, determinism, build cache and fallback.

Skipped, with the reason, where the library cannot be built (no compiler / ninja).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from _fixtures import close, problem, rel

from inilora.approx import ENGINE_VERSION, ENGINES, approximate, cpu_fused
from inilora.approx.batched import fit_batched
from inilora.approx.cpu_fused import fit_cpu_fused


@pytest.fixture(scope="module")
def lib():
    try:
        return cpu_fused.load_library()
    except cpu_fused.CpuFusedUnavailable as exc:
        pytest.skip(f"the cpu-fused library cannot be built here: {exc}")


def test_registered():
    assert "cpu-fused" in ENGINES and ENGINE_VERSION["cpu-fused"] == "1"


def test_matches_reference_mixed(lib):
    """docs/design.md §3: 2000 steps on ≤ 4 small matrices of mixed shapes, products within 1e-3 of the
    released loop and every logged loss within 1 %."""
    shapes = {"a": (64, 48), "b": (64, 48), "c": (32, 48), "d": (80, 80)}
    W, init = problem(shapes)
    kw = dict(steps=2000, checkpoints=(200, 1000))
    ref = approximate(W, init, engine="reference", **kw)
    ours = approximate(W, init, engine="cpu-fused", **kw)
    assert list(ours) == list(W)
    for n in W:
        a, b = ours[n], ref[n]
        assert a.engine == "cpu-fused" and a.steps == 2000
        assert a.U.shape == b.U.shape and a.P.shape == b.P.shape and a.U.is_contiguous()
        assert rel(a.U @ a.P.T, b.U @ b.P.T) <= 1e-3, n
        assert [t for t, _ in a.losses] == [t for t, _ in b.losses]
        for (_, la), (_, lb) in zip(a.losses, b.losses):
            assert abs(la - lb) <= 0.01 * lb, n
        for t in (200, 1000):
            assert rel(a.checkpoints[t][0] @ a.checkpoints[t][1].T, b.checkpoints[t][0] @ b.checkpoints[t][1].T) <= 1e-3
        assert a.rel_error == pytest.approx(b.rel_error, rel=1e-3)
        assert a.optimum == b.optimum


def test_matches_torch_engine_smollm2_shapes(lib):
    """SmolLM2-135M q/v shapes (576×576, 192×576), random fp32 W (std 0.2), r=8, 200 steps."""
    shapes = {}
    for layer in range(6):
        shapes[f"{layer}.q"] = (576, 576)
        shapes[f"{layer}.v"] = (192, 576)
    W, init = problem(shapes, w_std=0.2, f_std=0.2, seed=1)
    ws, inits = list(W.values()), list(init.values())
    torch_runs = fit_batched(ws, inits, steps=200, log_every=50)
    fused_runs = fit_cpu_fused(ws, inits, steps=200, log_every=50, lib=lib, threads=2)
    for a, b in zip(fused_runs, torch_runs):
        close(a, b, 1e-5)


def test_eps_sensitive_2048(lib):
    """2048² with std 0.02: gradients ≈ 1e-8 ≈ Adam's eps, so a mean shared with the small
    matrix beside it (or a sum) would change the trajectory.  The big matrix is split into
    several work items (the barrier path)."""
    g = torch.Generator().manual_seed(2)
    ws = [torch.randn(2048, 2048, generator=g) * 0.02, torch.randn(64, 48, generator=g) * 0.02]
    inits = [(torch.randn(w.shape[0], 8, generator=g) * 0.02, torch.randn(w.shape[1], 8, generator=g) * 0.02) for w in ws]
    torch_runs = fit_batched(ws, inits, steps=100, log_every=10)
    fused_runs = fit_cpu_fused(ws, inits, steps=100, log_every=10, lib=lib, threads=2)
    for a, b in zip(fused_runs, torch_runs):
        close(a, b, 1e-5)
    alone = fit_cpu_fused(ws[1:], inits[1:], steps=100, log_every=10, lib=lib)[0]
    assert torch.equal(alone.U, fused_runs[1].U) and torch.equal(alone.P, fused_runs[1].P)


@pytest.mark.parametrize("r", [1, 3, 4, 8, 12, 16])
def test_odd_shapes_and_ranks(lib, r):
    """d, k not multiples of 8 / 16 (the partial column group and row-block remainders),
    a row or a column only, ranks that pad (3 → 4, 12 → 16)."""
    shapes = {"a": (37, 53), "b": (5, 9), "c": (130, 77), "row": (1, 17), "col": (19, 1), "e": (24, 40)}
    W, init = problem(shapes, r=r, w_std=0.1, f_std=0.1, seed=r)
    ws, inits = list(W.values()), list(init.values())
    torch_runs = fit_batched(ws, inits, steps=150, log_every=30)
    fused_runs = fit_cpu_fused(ws, inits, steps=150, log_every=30, lib=lib, threads=2)
    for a, b in zip(fused_runs, torch_runs):
        assert a.U.shape == b.U.shape and a.P.shape == b.P.shape
        close(a, b, 1e-5)


@pytest.mark.parametrize("width", [4, 8, 16])
def test_other_vector_widths(width):
    """Every lane layout the autotuner may pick (16: r=8 columns in interleaved pairs; 8; 4), built
    for this machine (emulated where wider than its ISA): same results as the "torch" engine."""
    try:
        other = cpu_fused.load_library(width)
    except cpu_fused.CpuFusedUnavailable as exc:
        pytest.skip(f"cannot build the {width}-lane library: {exc}")
    assert other.ifs_vector_width() == width
    shapes = {"a": (37, 53), "b": (64, 48), "c": (19, 1)}
    for r in (1, 2, 4, 8, 16, 24):
        W, init = problem(shapes, r=r, w_std=0.1, f_std=0.1, seed=10 + r)
        ws, inits = list(W.values()), list(init.values())
        torch_runs = fit_batched(ws, inits, steps=100, log_every=50)
        fused_runs = fit_cpu_fused(ws, inits, steps=100, log_every=50, lib=other, threads=2)
        for a, b in zip(fused_runs, torch_runs):
            close(a, b, 1e-5)


def test_deterministic_and_thread_count_independent(lib):
    shapes = {"a": (300, 200), "b": (64, 48), "big": (1100, 1000)}  # "big" is split into items
    W, init = problem(shapes, r=8, w_std=0.1, f_std=0.1, seed=4)
    ws, inits = list(W.values()), list(init.values())
    runs = [fit_cpu_fused(ws, inits, steps=60, log_every=20, lib=lib, threads=t) for t in (2, 2, 1, 3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a.U, b.U) and torch.equal(a.P, b.P)
            assert a.losses == b.losses


def test_checkpoints_equal_shorter_runs(lib):
    W, init = problem({"a": (64, 48), "d": (80, 80)}, r=4, w_std=0.1, f_std=0.1)
    ws, inits = list(W.values()), list(init.values())
    full = fit_cpu_fused(ws, inits, steps=120, checkpoints=(0, 7, 120), lib=lib)
    for t in (7, 120):
        short = fit_cpu_fused(ws, inits, steps=t, lib=lib)
        for f, s in zip(full, short):
            assert torch.equal(f.checkpoints[t][0], s.U) and torch.equal(f.checkpoints[t][1], s.P)
    for f, (U0, P0) in zip(full, inits):
        assert torch.equal(f.checkpoints[0][0], U0) and torch.equal(f.checkpoints[0][1], P0)


def test_bf16_and_strided_weights_read_exactly(lib):
    """bf16 W is cast up exactly (on the C side) and a row-padded fp32 view is read in place:
    both give bit-for-bit the fit of the contiguous fp32 copy."""
    W, init = problem({"a": (64, 48), "b": (37, 53)}, dtype=torch.bfloat16)
    ws, inits = list(W.values()), list(init.values())
    ours = fit_cpu_fused(ws, inits, steps=100, lib=lib)
    up = fit_cpu_fused([w.float() for w in ws], inits, steps=100, lib=lib)
    padded = [torch.zeros(w.shape[0], w.shape[1] + 5)[:, : w.shape[1]].copy_(w.float()) for w in ws]
    assert not padded[0].is_contiguous()
    strided = fit_cpu_fused(padded, inits, steps=100, lib=lib)
    for a, b, c in zip(ours, up, strided):
        assert torch.equal(a.U, b.U) and torch.equal(a.P, b.P)
        assert torch.equal(c.U, b.U) and torch.equal(c.P, b.P)
    ref = fit_batched(ws, inits, steps=100)
    for a, b in zip(ours, ref):
        close(a, b, 1e-5)


def test_progress_counts_matrix_iterations(lib):
    W, init = problem({"a": (64, 48), "b": (32, 48)})
    seen = []
    approximate(W, init, engine="cpu-fused", steps=250, progress=lambda done, total, loss: seen.append((done, total)))
    assert seen == [(0, 500), (200, 500), (400, 500), (500, 500)]


def test_fallback_without_compiler(monkeypatch):
    """Build failure → one RuntimeWarning and exactly the "torch" engine's result."""

    def broken(vector_width):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(cpu_fused, "_libs", {})
    monkeypatch.setattr(cpu_fused, "_compile", broken)
    W, init = problem({"a": (64, 48), "c": (32, 48)})
    with pytest.warns(RuntimeWarning, match="cpu-fused engine unavailable .*no C\\+\\+ compiler found.*'torch' engine"):
        ours = approximate(W, init, engine="cpu-fused", steps=100)
    theirs = approximate(W, init, engine="torch", steps=100)
    for n in W:
        assert torch.equal(ours[n].U, theirs[n].U) and torch.equal(ours[n].P, theirs[n].P)
        assert ours[n].losses == theirs[n].losses
        assert ours[n].engine == "torch"  # what ran, so a cache key built from it is honest
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning):  # the failure is remembered, and said again per call
            approximate(W, init, engine="cpu-fused", steps=1)


_LOAD = textwrap.dedent(
    """
    import sys
    from inilora.approx import cpu_fused
    lib = cpu_fused.load_library()
    print(lib.ifs_vector_width())
    """
)


def test_concurrent_builds_and_stale_lock(lib, tmp_path):
    """Two processes building into an empty cache both load a complete library; a lock file
    left by a builder killed mid-build does not block the next load."""
    env = dict(os.environ, INILORA_CACHE=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", _LOAD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == str(lib.ifs_vector_width())
    builds = [d for d in (tmp_path / "build").iterdir() if d.is_dir()]
    assert len(builds) == 1
    (builds[0] / "lock").write_text("")  # what a SIGKILLed builder leaves behind
    done = subprocess.run([sys.executable, "-c", _LOAD], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not (builds[0] / "lock").exists()
