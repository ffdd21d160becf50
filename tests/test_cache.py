"""The fit cache (docs/design.md §4): unit tests of FitCache, and the cache as get_peft_model uses it."""

from __future__ import annotations

import importlib
import json
import logging
import stat
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

import inilora
from inilora import cache as cache_mod
from inilora.cache import (
    FitCache,
    atomic_write_bytes,
    atomic_write_json,
    cache_root,
    tensor_digest,
)
from inilora.models import tiny_model

inilora_method = importlib.import_module("inilora.methods.inilora")

FIELDS = {"method": "inilora", "weights": "abc123", "targets": ["a.q_proj", "a.v_proj"], "ranks": {"a.q_proj": 4},
          "init": {"q_proj": [0.02, 0.0]}, "seed": 0, "steps": 30, "lr": 5e-4, "engine": "torch"}


def factors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"model.layers.0.self_attn.q_proj": (torch.randn(16, 4, generator=g), torch.randn(24, 4, generator=g)),
            "model.layers.0.self_attn.v_proj": (torch.randn(8, 4, generator=g), torch.randn(24, 4, generator=g))}


def entry_files(root: Path):
    return sorted(root.glob("*.json")), sorted(root.glob("*.safetensors"))


# --------------------------------------------------------------------------- unit


def test_round_trip_is_bit_exact(tmp_path):
    c = FitCache(tmp_path)
    f = factors()
    # values that a lossy or re-cast store would change
    f["model.layers.0.self_attn.q_proj"][0][0, 0] = 1.0000001192092896  # 1 + 2^-23
    f["model.layers.0.self_attn.q_proj"][0][0, 1] = 1e-40  # subnormal
    report = {"model.layers.0.self_attn.q_proj": {"rel_error": 0.5, "optimum": 0.25, "losses": [[0, 1.0]]}}
    c.put(FIELDS, f, report)
    hit = c.get(dict(FIELDS))
    assert hit is not None
    got, meta = hit
    assert set(got) == set(f)
    for n, (u, p) in f.items():
        assert got[n][0].dtype == torch.float32
        assert torch.equal(got[n][0], u) and torch.equal(got[n][1], p)
    assert meta["report"] == report


def test_key_is_order_independent_and_field_sensitive(tmp_path):
    assert FitCache.key(FIELDS) == FitCache.key(dict(reversed(list(FIELDS.items()))))
    for field, value in [("seed", 1), ("steps", 31), ("lr", 1e-3), ("engine", "reference"),
                         ("init", {"q_proj": [0.021, 0.0]}), ("targets", ["a.q_proj"])]:
        assert FitCache.key({**FIELDS, field: value}) != FitCache.key(FIELDS), field
    assert FitCache.key({**FIELDS, "extra": 1}) != FitCache.key(FIELDS)


def test_different_field_misses(tmp_path):
    c = FitCache(tmp_path)
    c.put(FIELDS, factors())
    assert c.get({**FIELDS, "seed": 1}) is None
    assert c.get({**FIELDS, "init": {"q_proj": [0.021, 0.0]}}) is None
    assert c.get({k: v for k, v in FIELDS.items() if k != "lr"}) is None
    assert c.get(FIELDS) is not None


def test_edited_key_misses_with_warning(tmp_path, caplog):
    c = FitCache(tmp_path)
    meta_path = c.put(FIELDS, factors())
    meta = json.loads(meta_path.read_text())
    meta["key"]["steps"] = 31
    meta_path.write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="inilora.cache"):
        assert c.get(FIELDS) is None
    assert any(rec.levelno == logging.WARNING for rec in caplog.records)
    assert "other settings" in caplog.text


def test_unreadable_metadata_misses_with_warning(tmp_path, caplog):
    c = FitCache(tmp_path)
    meta_path = c.put(FIELDS, factors())
    meta_path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="inilora.cache"):
        assert c.get(FIELDS) is None
    assert caplog.records


def _data_path(root: Path) -> Path:
    (data,) = root.glob("*.safetensors")
    return data


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_data_misses_with_warning(tmp_path, caplog, damage):
    c = FitCache(tmp_path)
    c.put(FIELDS, factors())
    data = _data_path(tmp_path)
    raw = bytearray(data.read_bytes())
    if damage == "truncate":
        data.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":  # same length, still a valid safetensors file: only the checksum notices
        raw[-3] ^= 0x01
        data.write_bytes(bytes(raw))
    else:
        data.unlink()
    with caplog.at_level(logging.WARNING, logger="inilora.cache"):
        assert c.get(FIELDS) is None
    assert "checksum" in caplog.text or "corrupt" in caplog.text


def test_missing_metadata_is_an_unfinished_entry(tmp_path):
    c = FitCache(tmp_path)
    meta_path = c.put(FIELDS, factors())
    meta_path.unlink()
    assert c.get(FIELDS) is None
    assert FitCache(tmp_path / "never-made").get(FIELDS) is None


def test_put_overwrites_an_entry(tmp_path):
    c = FitCache(tmp_path)
    c.put(FIELDS, factors(0))
    c.put(FIELDS, factors(1))
    got, _ = c.get(FIELDS)
    n = "model.layers.0.self_attn.q_proj"
    assert torch.equal(got[n][0], factors(1)[n][0])
    jsons, datas = entry_files(tmp_path)
    assert len(jsons) == 1 and len(datas) == 1
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def _chmod_effective(path: Path) -> bool:
    """Whether a read-only mode actually stops us (root ignores it)."""
    try:
        (path / "probe").write_text("x")
    except OSError:
        return True
    (path / "probe").unlink()
    return False


def test_check_writable_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        if not _chmod_effective(ro):
            pytest.skip("running as a user that chmod does not restrict (root)")
        with pytest.raises(inilora.InitError, match="INILORA_CACHE"):
            FitCache(ro).check_writable()
        with pytest.raises(inilora.InitError, match="INILORA_CACHE"):
            FitCache(ro / "fits").check_writable()
    finally:
        ro.chmod(stat.S_IRWXU)


def test_check_writable_path_under_a_file(tmp_path):
    """A cache 'directory' that cannot exist (its parent is a file): fails even as root."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(inilora.InitError, match="INILORA_CACHE") as exc:
        FitCache(blocker / "fits").check_writable()
    assert str(blocker) in str(exc.value)
    FitCache(tmp_path / "ok" / "fits").check_writable()  # creates it
    assert (tmp_path / "ok" / "fits").is_dir()
    assert not list((tmp_path / "ok" / "fits").iterdir())  # the probe is cleaned up


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("INILORA_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert FitCache().dir == tmp_path / "c" / "fits"
    monkeypatch.delenv("INILORA_CACHE")
    assert cache_root() == Path.home() / ".cache" / "inilora"


def test_atomic_write_json_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "meta.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2]})
    atomic_write_json(path, {"c": 3})
    assert json.loads(path.read_text()) == {"c": 3}
    assert [p.name for p in path.parent.iterdir()] == ["meta.json"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "meta.json"
    atomic_write_json(path, {"old": True})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b'{"new": true}')
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_tensor_digest_sensitivity():
    t = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    base = tensor_digest({"a": t, "b": t * 2})
    assert base == tensor_digest({"b": t * 2, "a": t.clone()})
    flipped = t.clone()
    flipped.view(torch.int32)[3, 3] ^= 1  # one bit
    assert tensor_digest({"a": flipped, "b": t * 2}) != base
    assert tensor_digest({"a": t.double(), "b": t * 2}) != base
    assert tensor_digest({"a": t.reshape(4, 16), "b": t * 2}) != base
    assert tensor_digest({"c": t, "b": t * 2}) != base


# --------------------------------------------------------------------------- through get_peft_model

TARGETS = ["q_proj", "v_proj"]


def build(cache, *, alpha=4, seed=0, steps=30, rslora=False, **options):
    cfg = LoraConfig(r=4, lora_alpha=alpha, target_modules=TARGETS, use_rslora=rslora)
    return inilora.get_peft_model(tiny_model("llama-gqa"), cfg, method="inilora", seed=seed, steps=steps,
                                  cache=cache, measure_drift=False, progress=lambda *a: None, **options)


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def base_state(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items() if "base_layer.weight" in n}


def products(model):
    """s·B0A0 per targeted module (float64)."""
    out = {}
    for name, mod in model.named_modules():
        if name.endswith(tuple(TARGETS)) and hasattr(mod, "lora_A"):
            a0 = mod.lora_A["default"].weight.double()
            b0 = mod.lora_B["default"].weight.double()
            out[name] = mod.scaling["default"] * (b0 @ a0)
    return out


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the approximation as inilora.methods.inilora reaches it."""
    real = inilora_method.approx.approximate
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("steps"))
        return real(*args, **kwargs)

    monkeypatch.setattr(inilora_method.approx, "approximate", counting)
    return calls


@pytest.fixture
def forbid(monkeypatch):
    """Make any approximation call fail: a cache hit must not need one."""

    def forbid_now():
        def raising(*args, **kwargs):
            raise AssertionError("the approximation ran although the fit is cached")

        monkeypatch.setattr(inilora_method.approx, "approximate", raising)

    return forbid_now


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b)).item()


def test_miss_then_hit_bit_identical(tmp_path, forbid, one_thread):
    first = build(str(tmp_path))
    assert first.inilora_report.info["cache"] == "miss"
    jsons, datas = entry_files(tmp_path)
    assert len(jsons) == 1 and len(datas) == 1

    forbid()
    second = build(str(tmp_path))
    assert second.inilora_report.info["cache"] == "hit"
    a, b = lora_state(first), lora_state(second)
    assert set(a) == set(b) and len(a) == 16  # 4 modules × (A, B) × (default, A0/B0 adapter)
    for n in a:
        assert torch.equal(a[n], b[n]), n
    ra, rb = base_state(first), base_state(second)
    assert ra and set(ra) == set(rb)
    for n in ra:
        assert torch.equal(ra[n], rb[n]), n
    assert second.inilora_report.fit == first.inilora_report.fit


def test_cache_false_and_zero_steps_write_nothing(tmp_path, one_thread):
    off = build(False)
    assert off.inilora_report.info["cache"] == "off"
    zero = build(str(tmp_path), steps=0)
    assert zero.inilora_report.info["cache"] == "off"
    assert entry_files(tmp_path) == ([], [])


def test_cached_and_uncached_agree(tmp_path, one_thread):
    cached = lora_state(build(str(tmp_path)))
    plain = lora_state(build(False))
    for n in cached:
        assert torch.equal(cached[n], plain[n]), n


@pytest.mark.parametrize("variant", [{"alpha": 8}, {"alpha": 4, "rslora": True}, {"alpha": 16, "rslora": True}])
def test_other_scaling_reuses_the_fit(tmp_path, forbid, one_thread, variant):
    first = build(str(tmp_path))
    forbid()
    second = build(str(tmp_path), **variant)
    assert second.inilora_report.info["cache"] == "hit"
    s2 = {n: m.scaling["default"] for n, m in second.named_modules() if hasattr(m, "scaling") and n.endswith("q_proj")}
    assert all(v != 1.0 for v in s2.values())  # the variant really changes s
    p1, p2 = products(first), products(second)
    assert set(p1) == set(p2) and p1
    for n in p1:
        assert rel(p2[n], p1[n]) <= 1e-6, n
    # and the factors themselves are rescaled by 1/√s, not left as they were
    a1 = lora_state(first)
    a2 = lora_state(second)
    some = next(n for n in a1 if "q_proj.lora_A.default" in n)
    s = next(iter(s2.values()))
    torch.testing.assert_close(a2[some] * s**0.5, a1[some], rtol=1e-6, atol=0)


@pytest.mark.parametrize("change", [{"seed": 1}, {"steps": 31}, {"std": 0.05}, {"lr": 1e-3}])
def test_other_settings_miss(tmp_path, spy, one_thread, change):
    build(str(tmp_path))
    assert len(spy) == 1
    other = build(str(tmp_path), **change)
    assert other.inilora_report.info["cache"] == "miss"
    assert len(spy) == 2
    jsons, _ = entry_files(tmp_path)
    assert len(jsons) == 2


def test_corrupt_entry_is_recomputed(tmp_path, spy, one_thread, caplog):
    first = build(str(tmp_path))
    data = _data_path(tmp_path)
    raw = bytearray(data.read_bytes())
    raw[-5] ^= 0xFF
    data.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="inilora.cache"):
        second = build(str(tmp_path))
    assert second.inilora_report.info["cache"] == "miss"
    assert len(spy) == 2
    assert caplog.text
    a, b = lora_state(first), lora_state(second)
    for n in a:
        assert torch.equal(a[n], b[n]), n
    third = build(str(tmp_path))  # the entry was rewritten
    assert third.inilora_report.info["cache"] == "hit"
    assert len(spy) == 2


def test_checkpoints_are_their_own_entries(tmp_path, forbid, one_thread):
    run = build(str(tmp_path), steps=30, checkpoints=[10, 20])
    assert run.inilora_report.info["cache"] == "miss"
    jsons, _ = entry_files(tmp_path)
    assert len(jsons) == 3
    fresh = {t: build(False, steps=t) for t in (10, 20)}
    forbid()
    for t in (10, 20, 30):
        hit = build(str(tmp_path), steps=t)
        assert hit.inilora_report.info["cache"] == "hit", t
        if t in fresh:
            got, want = lora_state(hit), lora_state(fresh[t])
            for n in got:
                torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-9)
            # a checkpoint hit reports the fit like a fresh run of that length
            report, expected = hit.inilora_report.fit, fresh[t].inilora_report.fit
            assert set(report) == set(expected) and expected
            for n in expected:
                assert report[n]["rel_error"] == pytest.approx(expected[n]["rel_error"], rel=1e-6)
                assert report[n]["optimum"] == pytest.approx(expected[n]["optimum"], rel=1e-12)
    with pytest.raises(AssertionError, match="cached"):
        build(str(tmp_path), steps=15)  # not a checkpoint: would need a fit


def test_checkpoints_requested_after_a_plain_run_are_stored(tmp_path, spy, forbid, one_thread):
    """A cached final fit without the asked-for checkpoints must not swallow them."""
    build(str(tmp_path), steps=30)
    again = build(str(tmp_path), steps=30, checkpoints=[10])
    assert again.inilora_report.info["cache"] == "miss"
    assert spy == [30, 30]
    forbid()
    assert build(str(tmp_path), steps=10).inilora_report.info["cache"] == "hit"
    assert build(str(tmp_path), steps=30, checkpoints=[10]).inilora_report.info["cache"] == "hit"


# --------------------------------------------------------------------------- damaged files (docs/design.md §8)


def test_edited_names_in_metadata_miss_with_warning(tmp_path, caplog):
    """The JSON's key still matches but its list of matrices was edited: never a crash, a miss."""
    c = FitCache(tmp_path)
    meta_path = c.put(FIELDS, factors())
    for names in (["model.layers.0.self_attn.q_proj"], ["model.layers.0.self_attn.q_proj", "other"]):
        meta = json.loads(meta_path.read_text())
        meta["names"] = names
        meta_path.write_text(json.dumps(meta))
        with caplog.at_level(logging.WARNING, logger="inilora.cache"):
            assert c.get(FIELDS) is None
        assert "does not match its metadata" in caplog.text


@pytest.mark.parametrize("damage", ["truncate-json", "truncate-data"])
def test_truncated_entry_is_recomputed_through_get_peft_model(tmp_path, spy, one_thread, caplog, damage):
    first = build(str(tmp_path))
    (meta_path,), (data_path,) = entry_files(tmp_path)
    target = meta_path if damage == "truncate-json" else data_path
    raw = target.read_bytes()
    target.write_bytes(raw[: len(raw) // 3])
    with caplog.at_level(logging.WARNING, logger="inilora.cache"):
        second = build(str(tmp_path))
    assert second.inilora_report.info["cache"] == "miss" and len(spy) == 2
    assert "recomputing" in caplog.text
    a, b = lora_state(first), lora_state(second)
    for n in a:
        assert torch.equal(a[n], b[n]), n
    assert build(str(tmp_path)).inilora_report.info["cache"] == "hit"  # rewritten whole
    assert len(spy) == 2
