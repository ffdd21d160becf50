"""Bottleneck adapters (Houlsby, Pfeiffer) as training modes: counted, identity at init, trainable,
saved and loaded; refused where they do not fit (a causal LM, bad options)."""

from __future__ import annotations

import pytest
import torch

from inilora.errors import InitError
from inilora.models import model_output, probe_inputs, tiny_model
from inilora.train import bottleneck

H, L, HEAD = 64, 2, 64 * 64 + 64 + 64 * 2 + 2  # tiny RoBERTa: hidden 64, 2 layers; head dense + out_proj


def _per_adapter(m: int) -> int:
    return H * m + m + m * H + H  # down (weight + bias), up (weight + bias)


@pytest.mark.parametrize("mode,per_layer", [("houlsby", 2), ("pfeiffer", 1)])
@pytest.mark.parametrize("size", [8, 64])
def test_parameter_count_is_the_adapters_and_the_head(mode, per_layer, size):
    model = tiny_model("roberta")
    places = bottleneck.add_adapters(model, mode, {"size": size})
    assert len(places) == L * per_layer
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == L * per_layer * _per_adapter(size) + HEAD
    assert all(".adapter." in n or n.startswith("classifier.") for n in trainable)
    if mode == "pfeiffer":
        assert not any("attention.output.dense.adapter" in n for n in trainable)


@pytest.mark.parametrize("mode", bottleneck.MODES)
def test_output_unchanged_at_init(mode):
    for arch in ("roberta", "bert"):
        model = tiny_model(arch)
        x = probe_inputs(model)
        before = model_output(model, x)
        bottleneck.add_adapters(model, mode)
        assert torch.equal(model_output(model, x), before)  # up-projection 0: h + 0, exactly


def test_adapters_train_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny_model("roberta")
    bottleneck.add_adapters(model, "houlsby", {"size": 16})
    x = probe_inputs(model)
    labels = torch.tensor([0, 1])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(25):
        loss = model(**x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    model.eval()
    assert losses[-1] < 0.5 * losses[0]
    ups = [m.adapter.up.weight for m in model.modules() if isinstance(m, bottleneck.WithAdapter)]
    assert ups and all(float(u.abs().max()) > 0 for u in ups)  # the adapters themselves moved
    bottleneck.save(model, tmp_path, "houlsby", {"size": 16})
    fresh = bottleneck.load(tiny_model("roberta"), tmp_path)
    assert torch.equal(model_output(fresh, x), model_output(model, x))


def test_what_does_not_fit_is_refused():
    with pytest.raises(InitError, match="BERT-style encoder"):
        bottleneck.add_adapters(tiny_model("llama-gqa"), "houlsby")
    for options, match in (({"size": 0}, "size"), ({"sise": 8}, "sise"), ({"nonlinearity": "elu"}, "nonlinearity"),
                           ({"init_std": -1.0}, "init_std")):
        with pytest.raises(InitError, match=match):
            bottleneck.check_options("houlsby", options)


@pytest.mark.parametrize("mode,per_layer", [("houlsby", 2), ("pfeiffer", 1)])
def test_a_bottleneck_run_end_to_end(tmp_path, mode, per_layer):
    """MiniLM (6 layers, hidden 384) on offline-topic: trains, reports its count, saves what trained."""
    from inilora.config import TrainConfig
    from inilora.train import run

    cfg = TrainConfig(output_dir=str(tmp_path / mode), model="embedded:minilm", task="offline-topic", method=mode,
                      method_options={"size": 8}, train_size=16, eval_size=8, max_length=32, epochs=1, batch_size=8,
                      learning_rate=1e-3, logging_steps=1, seed=3)
    result = run(cfg, progress=False)
    h, m = 384, 8
    assert result["trainable_params"] == 6 * per_layer * (2 * h * m + m + h) + h * 4 + 4
    assert (tmp_path / mode / "adapter" / bottleneck.STATE).is_file()
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
