"""Faults around the approximation (docs/design.md §8): a fit killed at any point resumes from its last
snapshot and ends bit-identical to an uninterrupted run; the snapshot goes once the entry is
written; two processes filling one cache entry leave one valid entry.

The kills are real: a child process runs the fit and gets SIGKILL — either while it stalls at a
random iteration (so a resume from the middle is certain), or at a random moment while it saves
a snapshot every 10 iterations (so a kill can land inside a save).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from inilora.approx import Resume, approximate
from inilora.cache import FitCache

STEPS = 2000

# The child: fit 3 small matrices with a resumable engine, print progress, optionally stall.
CHILD = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    from inilora.approx import Resume, approximate
    engine, state, out, every, stall = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (64, 48), "b": (64, 48), "c": (37, 53)}
    W = {n: torch.randn(d, k, generator=g) * 0.1 for n, (d, k) in shapes.items()}
    I = {n: (torch.randn(w.shape[0], 4, generator=g) * 0.1, torch.randn(w.shape[1], 4, generator=g) * 0.1)
         for n, w in W.items()}

    def progress(done, total, loss):
        t = done // len(W)
        print(t, flush=True)
        if stall and t >= stall:
            time.sleep(600)  # killed here

    resume = Resume(state, "test-run", every_steps=every, every_seconds=None) if state != "-" else None
    fits = approximate(W, I, steps=STEPS, engine=engine, log_every=10, checkpoints=(500, 1500),
                       resume=resume, progress=progress)
    torch.save({n: (f.U, f.P, f.losses, f.checkpoints) for n, f in fits.items()}, out)
    print("resumed", resume.resumed_from if resume else None, flush=True)
    """.replace("STEPS", str(STEPS))
)


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _run(engine: str, state: str, out: Path, every: int = 100, stall: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, engine, state, str(out), str(every), str(stall)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return out


def _kill_at(proc: subprocess.Popen, t_kill: int) -> None:
    """SIGKILL ``proc`` once it reports iteration ≥ t_kill (or at once if it is stalled there)."""
    for line in proc.stdout:
        if line.strip().isdigit() and int(line) >= t_kill:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for n, (ua, pa, la, ca) in a.items():
        ub, pb, lb, cb = b[n]
        assert torch.equal(ua, ub) and torch.equal(pa, pb), n
        assert la == lb, n
        assert sorted(ca) == sorted(cb)
        for t in ca:
            assert torch.equal(ca[t][0], cb[t][0]) and torch.equal(ca[t][1], cb[t][1]), (n, t)


def _engines() -> list[str]:
    from inilora.approx import cpu_fused

    try:
        cpu_fused.load_library()
        return ["torch", "cpu-fused"]
    except cpu_fused.CpuFusedUnavailable:
        return ["torch"]


ENGINES = _engines()


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, dict]:
    """Uninterrupted runs of every engine (same thread count as the victims), run side by side."""
    root = tmp_path_factory.mktemp("clean")
    procs = {e: _run(e, "-", root / f"{e}.pt") for e in ENGINES}
    for proc in procs.values():
        _finish(proc)
    return {e: torch.load(root / f"{e}.pt") for e in ENGINES}


@pytest.mark.parametrize("engine", ENGINES)
def test_sigkill_midway_then_resume_is_bit_identical(tmp_path, clean, engine):
    resumed, state = tmp_path / "resumed.pt", tmp_path / "s.resume.pt"
    stall = random.Random(engine).randrange(150, STEPS - 100, 10)  # a random iteration, fixed per engine
    victim = _run(engine, str(state), resumed, every=100, stall=stall)
    _kill_at(victim, stall)
    assert state.exists()  # the last snapshot: iteration stall rounded down to a multiple of 100
    out = _finish(_run(engine, str(state), resumed))
    assert out.strip().splitlines()[-1] == f"resumed {stall // 100 * 100}", out[-200:]
    _same(clean[engine], torch.load(resumed))


def test_sigkill_at_a_random_moment_during_saves(tmp_path, clean):
    """Snapshots every 10 iterations, killed at a random moment, likely mid-save: the survivor
    (the old or the new snapshot, never half of one) still resumes to the same bits."""
    engine = ENGINES[-1]
    resumed, state = tmp_path / "resumed.pt", tmp_path / "s.resume.pt"
    victim = _run(engine, str(state), resumed, every=10)
    next(victim.stdout)  # it is running
    time.sleep(random.Random(7).uniform(0.05, 0.3))
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    _finish(_run(engine, str(state), resumed))
    _same(clean[engine], torch.load(resumed))


def test_damaged_or_foreign_snapshot_is_ignored(tmp_path):
    g = torch.Generator().manual_seed(3)
    W = {"a": torch.randn(32, 24, generator=g) * 0.1}
    init = {"a": (torch.randn(32, 4, generator=g) * 0.1, torch.randn(24, 4, generator=g) * 0.1)}
    clean = approximate(W, init, steps=200, engine="torch", log_every=10)["a"]
    path = tmp_path / "x.resume.pt"

    class Stop(Exception):
        pass

    def stop_at_100(done, total, loss):
        if done >= 100:
            raise Stop

    with pytest.raises(Stop):
        approximate(W, init, steps=200, engine="torch", log_every=10,
                    resume=Resume(path, "k", every_steps=20, every_seconds=None), progress=stop_at_100)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # truncated
    kw = {"steps": 200, "engine": "torch", "log_every": 10}
    r = Resume(path, "k")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        got = approximate(W, init, resume=r, **kw)["a"]
    assert r.resumed_from is None and torch.equal(got.U, clean.U)
    path.write_bytes(raw)
    r = Resume(path, "another key")  # e.g. other weights: never resumed from
    with pytest.warns(RuntimeWarning, match="another run"):
        got = approximate(W, init, resume=r, **kw)["a"]
    assert r.resumed_from is None and torch.equal(got.U, clean.U)
    r = Resume(path, "k")
    got = approximate(W, init, resume=r, **kw)["a"]
    assert r.resumed_from == 100 and torch.equal(got.U, clean.U) and torch.equal(got.P, clean.P)


# ------------------------------------------------------------------- through get_peft_model


def _build(cache, progress=None, steps=300, **options):
    from peft import LoraConfig

    import inilora
    from inilora.models import tiny_model

    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    return inilora.get_peft_model(tiny_model("llama-gqa"), cfg, method="inilora", seed=0, steps=steps, cache=cache,
                                  measure_drift=False, progress=progress or (lambda *a: None), **options)


def _lora(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_interrupted_init_resumes_and_cleans_up(tmp_path):
    class Stop(Exception):
        pass

    def interrupt(done, total, loss):
        if done >= total // 2:
            raise Stop

    torch.set_num_threads(1)
    with pytest.raises(Stop):
        _build(str(tmp_path), progress=interrupt, engine="torch", resume=50)
    snaps = list(tmp_path.glob("*.resume.pt"))
    assert len(snaps) == 1 and not list(tmp_path.glob("*.json"))  # no entry, only the snapshot
    resumed = _build(str(tmp_path), engine="torch", resume=50)
    assert resumed.inilora_report.info["cache"] == "miss"
    assert resumed.inilora_report.info["resumed_from"] == 200  # saved at t=200, just before the interrupt
    assert not list(tmp_path.glob("*.resume.pt"))  # removed once the entry is written
    clean = _build(False, engine="torch")
    a, b = _lora(resumed), _lora(clean)
    for n in a:
        assert torch.equal(a[n], b[n]), n


def test_auto_engine_is_recorded_resolved(tmp_path):
    model = _build(str(tmp_path), steps=20)
    engine = model.inilora_report.info["engine"]
    assert engine in ("cpu-fused", "torch")
    (meta,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert meta["key"]["engine"] == engine  # the key names the engine that ran, never "auto"
    explicit = _build(str(tmp_path), steps=20, engine=engine)
    assert explicit.inilora_report.info["cache"] == "hit"


# ------------------------------------------------------------------- concurrent writers

WRITER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from inilora.cache import FitCache
    root, go = sys.argv[1], sys.argv[2]
    fields = {"method": "inilora", "weights": "w", "steps": 5}
    factors = {f"m{i}": (torch.full((256, 8), float(i)), torch.full((512, 8), -float(i))) for i in range(64)}
    import os, time
    while not os.path.exists(go):
        time.sleep(0.001)
    for _ in range(5):
        FitCache(root).put(fields, factors, {"who": "same"})
    print("ok")
    """
)


def test_two_processes_filling_one_entry(tmp_path):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "fits"), str(go)], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.5)
    go.write_text("")
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]
    root = tmp_path / "fits"
    assert len(list(root.glob("*.json"))) == 1 and len(list(root.glob("*.safetensors"))) == 1
    assert not list(root.glob(".*.tmp"))
    hit = FitCache(root).get({"method": "inilora", "weights": "w", "steps": 5})
    assert hit is not None
    factors, _ = hit
    assert len(factors) == 64 and torch.equal(factors["m3"][0], torch.full((256, 8), 3.0))
