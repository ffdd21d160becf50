"""Initialisation under torchrun (docs/design.md §10): 2 CPU processes over gloo.

Each rank builds the same tiny LLaMA and calls ``get_peft_model``; every rank must end with
bit-identical residual base weights and adapters — for ``inilora`` (its fit split by matrix
across the ranks, the cache written by rank 0 only), ``milora`` (computed on rank 0,
broadcast) and ``pissa`` (PEFT's own init, rank 0's broadcast over the others).  To show the
broadcast is what makes them equal, rank 1's SVD is deliberately perturbed: had rank 1 used
its own result, the ranks would differ.  Then FSDP2: a model initialised with inilora before
wrapping is sharded with ``fully_shard`` and its forward output must equal the unsharded one.

The two ranks are forked from the test process once for the whole module, with torchrun's
environment variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); the tests compare what
they wrote.
"""

from __future__ import annotations

import copy
import os
import sys
import traceback
from pathlib import Path

import pytest
import torch
from _util import fork_ranks

WORLD = 2
STEPS = 40


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from torch.distributed.fsdp import fully_shard  # noqa: F401

    import inilora
    import inilora.models  # noqa: F401

    return fork_ranks(_rank_main, tmp_path_factory.mktemp("dist"), WORLD, timeout=300)


def _equal(a: dict, b: dict) -> None:
    assert set(a) == set(b) and a
    for n, t in a.items():
        assert torch.equal(t, b[n]), n


@pytest.mark.parametrize("method", ["inilora", "milora", "pissa"])
def test_every_rank_holds_identical_residual_and_adapters(ranks, method):
    states = [r[method] for r in ranks]
    assert any("base_layer.weight" in n for n in states[0])
    assert any("lora_A" in n for n in states[0])
    _equal(states[0], states[1])


def test_perturbed_rank_would_have_differed(ranks):
    """Rank 1's own SVD is off (the perturbation works), yet it holds rank 0's factors."""
    assert ranks[1]["perturbed_svd"] and not ranks[0]["perturbed_svd"]
    assert ranks[1]["own_svd_differs"]


def test_inilora_fit_is_split_and_cached_once(ranks):
    fitted = [set(r["fitted"]) for r in ranks]
    assert fitted[0] and fitted[1] and not fitted[0] & fitted[1]  # each rank fitted its own share
    assert len(fitted[0] | fitted[1]) == 4  # 2 layers × (q_proj, v_proj)
    assert ranks[0]["cache_entries"] == 1 and ranks[0]["info"]["cache"] == "miss"
    assert ranks[1]["info"] == ranks[0]["info"]
    assert not ranks[0]["leftover_resume"]


def test_fsdp2_sharded_forward_equals_unsharded(ranks):
    for r in ranks:
        if r.get("fsdp") is None:
            pytest.skip(r.get("fsdp_skip", "FSDP2 unavailable"))
        ref, sharded = r["fsdp"]
        torch.testing.assert_close(sharded, ref, rtol=1e-5, atol=1e-6)
        assert r["fsdp_sharded"]  # the parameters really were DTensor shards


# ----------------------------------------------------------------------------- the ranks


def _state(model) -> dict:
    return {n: t.detach().clone() for n, t in model.state_dict().items() if "lora_" in n or "base_layer.weight" in n}


def _perturb_svd_on_rank1(rank: int) -> None:
    if rank != 1:
        return
    real = torch.linalg.svd

    def off(A, *args, **kwargs):
        U, S, Vh = real(A, *args, **kwargs)
        return U, S * 1.01, Vh

    torch.linalg.svd = off


def _fsdp(rank: int, out: dict) -> None:
    from peft import LoraConfig
    from torch.distributed.device_mesh import init_device_mesh

    import inilora
    from inilora.models import model_output, probe_inputs, tiny_model

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as exc:  # pragma: no cover - older torch
        out["fsdp_skip"] = f"no FSDP2: {exc}"
        return
    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    model = inilora.get_peft_model(tiny_model("llama-gqa"), cfg, method="inilora", seed=0, steps=STEPS,
                                   cache=False, measure_drift=False, progress=lambda *a: None, engine="torch")
    reference = copy.deepcopy(model)
    inputs = probe_inputs(reference, None)
    ref = model_output(reference, inputs)
    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    out["fsdp_sharded"] = any(type(p).__name__ == "DTensor" for p in model.parameters())
    out["fsdp"] = (ref, model_output(model, inputs))


def _worker(folder: Path) -> None:
    import time

    import torch.distributed as dist
    from peft import LoraConfig

    import inilora
    from inilora import cache as cache_mod
    from inilora.methods import inilora as inilora_method
    from inilora.models import tiny_model

    t0 = time.time()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    fitted: list[str] = []
    real_approximate = inilora_method.approx.approximate

    def counting(weights, init, **kw):
        fitted.extend(weights)
        return real_approximate(weights, init, **kw)

    inilora_method.approx.approximate = counting
    out: dict = {"perturbed_svd": rank == 1}
    cfg = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    model = inilora.get_peft_model(tiny_model("llama-gqa"), cfg, method="inilora", seed=0, steps=STEPS,
                                   measure_drift=False, progress=lambda *a: None, resume=10, engine="torch")
    out["inilora"] = _state(model)
    out["info"] = model.inilora_report.info
    out["fitted"] = fitted
    fits = cache_mod.cache_root() / "fits"
    out["cache_entries"] = len(list(fits.glob("*.json")))
    out["leftover_resume"] = [p.name for p in fits.glob("*resume*")]
    _perturb_svd_on_rank1(rank)
    for method in ("milora", "pissa"):
        m = inilora.get_peft_model(tiny_model("llama-gqa"), cfg, method=method, seed=0, measure_drift=False)
        out[method] = _state(m)
    if rank == 1:  # the perturbation is real: rank 1's own MiLoRA factors would differ
        from inilora.methods import get_method
        from inilora.naming import rng_factory

        name = "model.layers.0.self_attn.q_proj"
        w = dict(tiny_model("llama-gqa").named_modules())[name].weight.detach()
        a0, _ = get_method("milora").fn({name: w}, {name: 4}, {name: 1.0}, rng_factory(0)).factors[name]
        key = f"base_model.model.{name}.lora_A.default.weight"
        out["own_svd_differs"] = not torch.equal(a0, out["milora"][key])
    _fsdp(rank, out)
    print(f"rank {rank}: {time.time() - t0:.1f} s", flush=True)
    torch.save(out, folder / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _rank_main(rank: int, port: int, folder: Path) -> None:
    """Entry of a forked rank: torchrun's environment, then the worker; a failure is written down."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), INILORA_CACHE=str(folder / "cache"))
    try:
        _worker(folder)
    except BaseException:  # noqa: BLE001 - any failure must reach the parent, then exit
        (folder / f"rank{rank}.err").write_text(traceback.format_exc())
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":  # or run by hand under torchrun: torchrun --nproc-per-node 2 tests/test_distributed.py OUT
    _worker(Path(sys.argv[1]))
