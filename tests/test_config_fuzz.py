"""Fuzz the strict config loader: every input loads into a config that round-trips, or is refused
with a ConfigError — never another exception, never an unknown key accepted in silence — and a wrong
type anywhere names the dotted key path (docs/design.md §8: a config file with unknown keys is bad input)."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import types
import typing
from typing import Any, Literal, Union

import pytest
import yaml

from inilora.config import (
    CompareConfig,
    ConfigError,
    TrainConfig,
    from_dict,
    load_yaml,
    to_dict,
)

CLASSES = (TrainConfig, CompareConfig)
UNICODE = ["ränk", "lora.rank", "λ", "模型", "🙂", "", " ", "\x00", "rank\n", "ＲＡＮＫ"]


def _junk(rng: random.Random, depth: int = 0) -> Any:
    """Any value a YAML file or a Python caller might put somewhere."""
    pick = rng.randrange(20 if depth < 4 else 14)
    simple = [
        None, True, False, 0, -1, 1, 2**70, -(10**400), 0.5, -3.25, float("nan"), float("inf"), float("-inf"),
        rng.choice(UNICODE),
    ]
    if pick < len(simple):
        return simple[pick]
    if pick == 14:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(3))]
    if pick == 15:
        return {_key(rng): _junk(rng, depth + 1) for _ in range(rng.randrange(3))}
    if pick == 16:
        return _deep(rng.randrange(1, 40), rng)
    if pick == 17:
        return rng.choice([b"bytes", {1, 2}, (1, "a"), object(), 1 + 2j, range(3)])
    if pick == 18:
        return "x" * rng.randrange(0, 300)
    return rng.uniform(-1e6, 1e6)


def _key(rng: random.Random) -> Any:
    return rng.choice([rng.choice(UNICODE), "rnak", "lora_rank", "methods", "rank", 1, None, True, 2.5, (1, 2),
                       "".join(rng.choice("abcxyz_.") for _ in range(rng.randrange(1, 8)))])


def _deep(n: int, rng: random.Random) -> Any:
    value: Any = rng.choice([1, "a", None])
    for _ in range(n):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return value


def _paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into nested dicts/lists (including the root)."""
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, prefix + (i,))
    return out


def _get(data: Any, path: tuple) -> Any:
    for p in path:
        data = data[p]
    return data


def _mutate(data: dict, rng: random.Random) -> dict:
    data = copy.deepcopy(data)
    for _ in range(rng.randrange(1, 4)):
        paths = _paths(data)
        path = rng.choice(paths)
        op = rng.randrange(4)
        if not path:
            op = 1
        if op == 0:  # replace a value
            parent = _get(data, path[:-1])
            parent[path[-1]] = _junk(rng)
        elif op == 1:  # add a key somewhere a mapping is
            node = _get(data, path)
            if isinstance(node, dict):
                node[_key(rng)] = _junk(rng)
        elif op == 2:  # delete a key
            parent = _get(data, path[:-1])
            if isinstance(parent, dict):
                del parent[path[-1]]
        else:  # wrap a value one level deeper
            parent = _get(data, path[:-1])
            parent[path[-1]] = rng.choice([[parent[path[-1]]], {"value": parent[path[-1]]}])
    return data


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _arms(tp: Any) -> list[Any]:
    """The non-null members of ``X | None`` (or ``[tp]``)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _assert_only_known_keys(cls: type, data: Any, where: str = "") -> None:
    """What loaded must not have carried a key the dataclass does not define (at any depth)."""
    hints = _hints(cls)
    for key, value in data.items():
        assert key in hints, f"unknown key {where}{key} was accepted"
        tp = hints[key]
        for arg in _arms(tp):
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                _assert_only_known_keys(arg, value, f"{where}{key}.")
            if typing.get_origin(arg) is dict:
                item = typing.get_args(arg)[1]
                if dataclasses.is_dataclass(item):
                    for k, v in value.items():
                        _assert_only_known_keys(item, v, f"{where}{key}.{k}.")


def _check(cls: type, data: Any, yaml_too: bool = True) -> str:
    try:
        config = from_dict(cls, data)
    except ConfigError as exc:
        assert str(exc).strip(), "a ConfigError must say what is wrong"
        return "refused"
    except Exception as exc:  # noqa: BLE001 - the property under test
        pytest.fail(f"{cls.__name__}: {type(exc).__name__} instead of ConfigError for {data!r:.300}: {exc}")
    _assert_only_known_keys(cls, data)
    plain = to_dict(config)
    again = from_dict(cls, plain)
    assert again == config and to_dict(again) == plain
    if yaml_too:  # what the runner writes and reads (slow in pure Python: sampled)
        assert from_dict(cls, yaml.load(yaml.dump(plain, Dumper=_Dumper), Loader=_Loader)) == config
    return "loaded"


def _full(cls: type) -> dict:
    """A valid config with every optional field set, so every leaf exists to be mutated."""
    data = to_dict(cls())
    lora = {"rank": 8, "alpha": 16.0, "dropout": 0.1, "targets": ["q_proj", "v_proj"], "use_rslora": False}
    train = {**to_dict(TrainConfig()), "lora": lora, "train_size": 100, "eval_size": 50, "max_length": 64,
             "eval_tasks": ["offline-arith"], "method_options": {"std": 0.5, "steps": 10, "tags": ["a", {"b": None}]}}
    if cls is TrainConfig:
        return train
    data["base"] = train
    data["sweep"] = {"lora.rank": [8, 16], "method_options.std": [0.1, 1.0]}
    if "variants" in data:
        data["variants"] = {"alpha-1": {"method": "inilora-alpha", "options": {"std": 1.0}}}
        data["methods"] = [*data["methods"], "alpha-1"]
    return data


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_random_inputs_load_or_raise_config_error(cls):
    rng = random.Random(20261125)
    base = _full(cls)
    assert _check(cls, base) == "loaded"
    outcomes = {"loaded": 0, "refused": 0}
    for i in range(1500):
        outcomes[_check(cls, _mutate(base, rng), yaml_too=i % 10 == 0)] += 1
    for _ in range(150):  # whole-document junk: not a mapping, or a mapping of junk
        outcomes[_check(cls, _junk(rng), yaml_too=False)] += 1
        outcomes[_check(cls, {_key(rng): _junk(rng) for _ in range(rng.randrange(4))}, yaml_too=False)] += 1
    assert outcomes["loaded"] > 50 and outcomes["refused"] > 500, outcomes


# --------------------------------------------------------------------------- one wrong leaf


def _wrong_values(tp: Any) -> list[Any]:
    """Values of the wrong type for annotation ``tp`` (never a valid one)."""
    origin = typing.get_origin(tp)
    optional = origin in (Union, types.UnionType) and type(None) in typing.get_args(tp)
    if optional:
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        out = [v for v in _wrong_values(arms[0]) if all(not _valid(v, a) for a in arms)]
        return [v for v in out if not (optional and v is None)]
    if tp is Any:
        return [object(), {1, 2}, float("nan"), b"x", _deep(40, random.Random(0))]
    if origin is Literal:
        return ["not-an-option", 1, None, ["auto"]]
    if tp is bool:
        return [1, 0, "true", None, 1.0, []]
    if tp is int:
        return ["8", 8.5, True, None, [8], {"a": 1}]
    if tp is float:
        return ["0.1", True, None, [1.0], {}, float("nan"), float("inf"), 10**400]
    if tp is str:
        return [5, 1.5, True, None, ["a"], {"a": "b"}]
    if origin in (list, dict) or dataclasses.is_dataclass(tp):
        return ["text", 5, None, 2.5] + ([{"a": 1}] if origin is list else [[1]])
    raise AssertionError(f"no wrong values for {tp}")


def _valid(value: Any, tp: Any) -> bool:
    try:
        from inilora.config import _convert

        _convert(value, tp, "probe")
        return True
    except ConfigError:
        return False


def _leaves(cls: type, data: dict, prefix: str = "", path: tuple = ()) -> list[tuple[str, tuple, Any]]:
    """(dotted key, path into data, annotation) for every leaf, list item and nested field."""
    out = []
    for name, tp in _hints(cls).items():
        key, where = f"{prefix}{name}", path + (name,)
        value = data.get(name)
        out.append((key, where, tp))
        inner = _arms(tp)[0]
        if dataclasses.is_dataclass(inner) and isinstance(value, dict):
            out += _leaves(inner, value, f"{key}.", where)
        elif typing.get_origin(inner) is list and isinstance(value, list) and value:
            out.append((f"{key}[0]", where + (0,), typing.get_args(inner)[0]))
        elif typing.get_origin(inner) is dict and isinstance(value, dict) and value:
            k = next(iter(value))
            item = typing.get_args(inner)[1]
            if dataclasses.is_dataclass(item):
                out += _leaves(item, value[k], f"{key}.{k}.", where + (k,))
            else:
                out.append((f"{key}.{k}", where + (k,), item))
    return out


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_one_wrong_leaf_names_its_dotted_path(cls):
    base = _full(cls)
    tried = 0
    for key, path, tp in _leaves(cls, base):
        for wrong in _wrong_values(tp):
            data = copy.deepcopy(base)
            _get(data, path[:-1])[path[-1]] = wrong
            with pytest.raises(ConfigError) as info:
                from_dict(cls, data)
            message = str(info.value)
            assert key in message, f"{key} = {wrong!r:.60}: message does not name the key: {message}"
            tried += 1
    assert tried > (60 if cls is TrainConfig else 100)


@pytest.mark.parametrize("cls,key,value,match", [
    (TrainConfig, "lora", {"rnak": 8}, r"unknown key lora\.rnak \(did you mean 'rank'\?\)"),
    (TrainConfig, "learning_rate", -1.0, r"learning_rate: must be > 0"),
    (TrainConfig, "lora", {"dropout": 1.0}, r"lora\.dropout: must be in \[0, 1\)"),
    (TrainConfig, "weight_decay", -0.1, r"weight_decay: must be ≥ 0"),
    (TrainConfig, "method", " ", r"method: must not be empty"),
    (TrainConfig, "generation", {"top_p": 0.0}, r"generation\.top_p: must be in \(0, 1\]"),
    (TrainConfig, "method_options", {"std": float("nan")}, r"method_options\.std: expected a finite number"),
    (TrainConfig, "method_options", {1: 2}, r"method_options: .*string"),
    (CompareConfig, "seeds", [0, 0], r"seeds: must not repeat"),
    (CompareConfig, "seeds", [-1], r"seeds: must be ≥ 0"),
    (CompareConfig, "base", {"lora": {"rank": 0}}, r"base\.lora\.rank: must be ≥ 1"),
    (CompareConfig, "sweep", {"lora.rank": []}, r"sweep\.lora\.rank: must be a non-empty list"),
])
def test_out_of_range_and_typos_are_named(cls, key, value, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(cls, {key: value})


def test_yaml_files(tmp_path):
    path = tmp_path / "run.yaml"
    for text, match in [("lora: {rank: 8}\nlearnig_rate: 1e-3\n", r"run\.yaml: unknown key learnig_rate.*learning_rate"),
                        ("0\n", r"expected a mapping"), ("[1, 2]\n", r"expected a mapping"),
                        ("a: [\n", r"not valid YAML"), ("seed: .nan\n", r"seed: expected an integer"),
                        ("learning_rate: .inf\n", r"learning_rate: expected a finite number"),
                        ("? [a, b]\n: 1\n", r"not valid YAML|unknown key")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            load_yaml(path, TrainConfig)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="run.yaml"):
        load_yaml(path, TrainConfig)
    for empty in ("", "# only a comment\n", "{}\n"):  # an empty config would run every default, silently
        path.write_text(empty)
        with pytest.raises(ConfigError, match=r"run\.yaml: (expected a mapping|holds no settings)"):
            load_yaml(path, TrainConfig)
    path.write_text(yaml.safe_dump(to_dict(from_dict(CompareConfig, _full(CompareConfig)))))
    assert load_yaml(path, CompareConfig) == from_dict(CompareConfig, _full(CompareConfig))
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml", TrainConfig)


def test_settings_objects_and_numbers_from_python():
    from inilora.config import LoraSettings

    config = from_dict(TrainConfig, {"lora": LoraSettings(rank=4), "learning_rate": 1, "method_options": {"c": (1, 2)}})
    assert config.lora.rank == 4 and config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.method_options == {"c": [1, 2]}  # plain data: what YAML can hold
    assert math.isfinite(config.learning_rate)


def test_set_values_are_read_by_the_type_of_their_field(tmp_path):
    """Issue 25: `--set seed=011` was 9 (YAML 1.1 octal), `--set train_size=` was None ("the whole
    split"), `1e-3` a string, and a --set mistake was reported as one of the file."""
    from inilora.cli import _set_pairs

    path = tmp_path / "run.yaml"
    path.write_text("model: embedded:minilm\nseed: 010\nlearning_rate: 1e-3\nmethod_options: {lr: 2e-3}\n")
    config = load_yaml(path, TrainConfig)
    assert config.seed == 10 and config.learning_rate == 1e-3 and config.method_options == {"lr": 2e-3}
    config = load_yaml(path, TrainConfig, _set_pairs(["seed=011", "learning_rate=5e-4", "lora.targets=q,v",
                                                      "max_length=null", "shared_fit=true", "method_options.steps=0100"]))
    assert (config.seed, config.learning_rate, config.lora.targets) == (11, 5e-4, ["q", "v"])
    assert config.max_length is None and config.shared_fit is True and config.method_options["steps"] == 100
    for pair, match in [("train_size=", r"--set train_size=: empty value"), ("lora.alpha=", r"--set lora.alpha=: empty"),
                        ("seed=0x1z", r"--set seed=0x1z: expected a whole number"),
                        ("seed=1.5", r"--set seed=1.5: expected a whole number"),
                        ("lora.rank=0", r"--set lora.rank=0: lora.rank: must be ≥ 1"),
                        ("lora.rnak=4", r"--set lora.rnak=4: unknown key lora.rnak \(did you mean 'rank'\?\)"),
                        ("shared_fit=maybe", r"--set shared_fit=maybe: expected true or false")]:
        with pytest.raises(ConfigError, match=match):
            load_yaml(path, TrainConfig, _set_pairs([pair]))
    path.write_text("model: embedded:minilm\nseed: -1\n")  # the file's own mistake is the file's, --set or not
    with pytest.raises(ConfigError, match=r"run\.yaml: seed: must be ≥ 0"):
        load_yaml(path, TrainConfig, _set_pairs(["lora.rank=4"]))
    path.with_name("g.yaml").write_text("methods: [lora]\n")
    sweep = load_yaml(path.with_name("g.yaml"), CompareConfig, _set_pairs(["sweep.lora.rank=[08, 16]", "seeds=[0,11]"]))
    assert sweep.sweep == {"lora.rank": [8, 16]} and sweep.seeds == [0, 11]
