"""load_config: defaults-list composition, overrides, and clear errors for unknown keys and wrong types."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from mm1d import config as config_module
from mm1d.config import SCHEMAS, ConfigError, from_dict, load_config, save_config, to_dict


@dataclass
class ToyModel:
    width: int = 8
    depth: int = 2
    act: Literal["gelu", "silu"] = "gelu"


@dataclass
class ToyTrain:
    lr: float = 1e-3
    max_steps: int = 10
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class ToyConfig:
    out_dir: str = "runs/toy"
    seed: int = 0
    name: str | None = None
    model: ToyModel = field(default_factory=ToyModel)
    train: ToyTrain = field(default_factory=ToyTrain)


@pytest.fixture
def cfg_dir(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "base.yaml").write_text("defaults:\n  - model: small\n  - _self_\nseed: 3\ntrain:\n  lr: 0.01\n")
    (tmp_path / "model" / "small.yaml").write_text("width: 16\n")
    (tmp_path / "model" / "big.yaml").write_text("width: 64\ndepth: 4\nact: silu\n")
    return tmp_path


def _write(dir_: Path, text: str) -> Path:
    path = dir_ / "x.yaml"
    path.write_text(text)
    return path


def test_defaults_list_composes_with_schema_defaults(cfg_dir: Path) -> None:
    cfg = load_config(cfg_dir / "base.yaml", [], ToyConfig)
    assert isinstance(cfg, ToyConfig) and isinstance(cfg.model, ToyModel)
    assert cfg.model == ToyModel(width=16, depth=2, act="gelu")  # group option + schema default
    assert cfg.seed == 3 and cfg.train.lr == 0.01 and cfg.train.max_steps == 10 and cfg.out_dir == "runs/toy"


def test_overrides_select_groups_and_set_keys(cfg_dir: Path) -> None:
    cfg = load_config(cfg_dir / "base.yaml", ["model=big", "train.max_steps=5", "seed=7", "out_dir=/tmp/o",
                                              "name=run1", "train.betas=[0.8,0.9]", "train.lr=0.5"], ToyConfig)
    assert cfg.model == ToyModel(width=64, depth=4, act="silu")
    assert (cfg.train.max_steps, cfg.seed, cfg.out_dir, cfg.name) == (5, 7, "/tmp/o", "run1")
    assert cfg.train.betas == [0.8, 0.9] and cfg.train.lr == 0.5 and isinstance(cfg.train.lr, float)
    assert load_config(cfg_dir / "base.yaml", ["train.lr=2"], ToyConfig).train.lr == 2.0  # int -> float
    assert load_config(cfg_dir / "base.yaml", ["name=null"], ToyConfig).name is None


def test_scientific_notation_override(cfg_dir: Path) -> None:
    assert load_config(cfg_dir / "base.yaml", ["train.lr=3e-4"], ToyConfig).train.lr == pytest.approx(3e-4)


@pytest.mark.parametrize("text, key, hint", [
    ("trian:\n  lr: 0.1\n", "'trian'", "Did you mean 'train'"),
    ("model:\n  widht: 3\n", "'model.widht'", "Did you mean 'width'"),
    ("sed: 1\n", "'sed'", "Did you mean 'seed'"),
])
def test_unknown_yaml_key_names_the_closest(tmp_path: Path, text: str, key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text), [], ToyConfig)
    assert key in str(err.value) and hint in str(err.value)


@pytest.mark.parametrize("text, needle", [
    ("train:\n  max_steps: ten\n", "'train.max_steps' expects an integer"),
    ("train:\n  lr: fast\n", "'train.lr' expects a number"),
    ("seed: true\n", "'seed' expects an integer"),
    ("model:\n  act: relu\n", "allowed values are ['gelu', 'silu']"),
    ("model: 3\n", "'model' expects a mapping"),
    ("train:\n  betas: 0.9\n", "'train.betas' expects a list"),
    ("out_dir: null\n", "'out_dir' expects a string"),
])
def test_wrong_types_are_errors(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, text), [], ToyConfig)
    assert needle in str(err.value)


@pytest.mark.parametrize("override, needle", [
    ("train.max_step=3", "Did you mean 'max_steps'"),
    ("trainn.lr=3", "Did you mean 'train'"),
    ("seed.x=1", "is not a section"),
    ("train.max_steps=abc", "'train.max_steps' expects an integer"),
    ("model=huge", "expects a mapping"),
    ("seed", "key=value"),
])
def test_bad_overrides_are_errors(cfg_dir: Path, override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(cfg_dir / "base.yaml", [override], ToyConfig)
    assert needle in str(err.value)


def test_missing_file_and_schema_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", [], ToyConfig)
    path = _write(tmp_path, "_schema_: toy\nseed: 4\n")
    with pytest.raises(ConfigError, match="no valid '_schema_'"):
        load_config(path)
    monkeypatch.setitem(SCHEMAS, "toy", ToyConfig)
    cfg = load_config(path)
    assert isinstance(cfg, ToyConfig) and cfg.seed == 4


def test_dict_round_trip(tmp_path: Path) -> None:
    cfg = ToyConfig(seed=5, model=ToyModel(width=3), train=ToyTrain(betas=[0.5, 0.6]))
    assert from_dict(ToyConfig, to_dict(cfg)) == cfg
    save_config(cfg, tmp_path / "c.json")
    assert from_dict(ToyConfig, json.loads((tmp_path / "c.json").read_text())) == cfg
    with pytest.raises(ConfigError, match="unknown config key 'model.depht'"):
        from_dict(ToyConfig, {"model": {"depht": 1}})


def test_a_partial_section_keeps_its_fields_own_defaults(tmp_path: Path) -> None:
    """An override inside a section whose default comes from a factory (GenerationConfig.text: greedy, reranked)
    changes that key only; the rest of the section keeps the factory's values, not the class defaults."""
    from mm1d.config import GenerationConfig, SamplerPreset

    base = tmp_path / "g.yaml"
    base.write_text("{}")
    text = load_config(base, ["text.refine=3"], GenerationConfig).text
    assert text == SamplerPreset(**{**to_dict(GenerationConfig().text), "refine": 3})
    assert text.temperature == 0.0 and text.rerank == 16 and text.refine_weight == 2.0 and SamplerPreset().rerank == 0
    video = from_dict(GenerationConfig, {"video": {"rerank": 7}}).video
    assert video.top_k == GenerationConfig().video.top_k == 4096 and video.rerank == 7


def test_registered_schemas_build_from_defaults() -> None:
    for name, schema in config_module.SCHEMAS.items():
        cfg = schema()
        assert from_dict(schema, to_dict(cfg)) == cfg, name


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_yaml_config_loads_into_its_schema(path: Path) -> None:
    cfg = load_config(path)  # the `_schema_` key names the dataclass; unknown keys or wrong types would raise
    assert type(cfg) in SCHEMAS.values()


def test_atomic_writes_get_normal_permissions(tmp_path: Path) -> None:
    import os

    from mm1d.utils import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
