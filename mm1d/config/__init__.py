"""Typed configuration schemas and the one loader every entry point uses.

YAML files only *compose* values; the schema (a dataclass) owns every key, its type and its default.
``load_config(path, overrides, schema)`` composes the YAML with Hydra (``defaults:`` lists work), applies
``key=value`` overrides, and converts the result into the dataclass. An unknown key or a wrong type is a
``ConfigError`` that names the key and the closest valid one. Library code receives dataclasses only.

Modules: ``core`` (the loader), ``common`` (shared sections and the ``SCHEMAS`` registry), then one module
per group of subsystems: ``pretrain`` (model, text, sequences, loader, pretraining), ``visual`` (visual
tokenizers, their training, pretokenization) and ``generation`` (generation and evaluation). Keep each
schema next to its siblings. Every name is re-exported here: import from ``mm1d.config``.
"""

# The schema modules are imported in this order so that SCHEMAS is filled in the order the single
# config.py used to register into it.
# isort: off
from mm1d.config.core import T, ConfigError, from_dict, load_config, parse_cli, save_config, to_dict
from mm1d.config.common import (
    SCHEMAS,
    EngineConfig,
    OptimConfig,
    ShapesConfig,
    TrackingConfig,
    TrainConfig,
    VocabConfig,
)
from mm1d.config.pretrain import (
    BudgetConfig,
    LoaderConfig,
    LossConfig,
    ModelConfig,
    PretrainConfig,
    SequenceConfig,
    TextCorpusConfig,
    TextTokenizerConfig,
    TokenizerPaths,
    TrainTextConfig,
)
from mm1d.config.visual import (
    AdaptiveBudgetConfig,
    FlexTokConfig,
    PretokenizeConfig,
    SampleGridConfig,
    TokenizerDataConfig,
    TrainFlexTokConfig,
    TrainTokenizerConfig,
    TrainVideoFlexTokConfig,
    VideoFlexTokConfig,
    VisualTokenizerConfig,
)
from mm1d.config.generation import GenerationConfig, ReconEvalConfig, SamplerPreset, ZeroShotEvalConfig
# isort: on

__all__ = [
    # core
    "T",
    "ConfigError",
    "from_dict",
    "to_dict",
    "load_config",
    "parse_cli",
    "save_config",
    # common
    "VocabConfig",
    "OptimConfig",
    "EngineConfig",
    "TrackingConfig",
    "TrainConfig",
    "ShapesConfig",
    "SCHEMAS",
    # pretrain
    "ModelConfig",
    "TextTokenizerConfig",
    "TextCorpusConfig",
    "TrainTextConfig",
    "BudgetConfig",
    "SequenceConfig",
    "LossConfig",
    "LoaderConfig",
    "TokenizerPaths",
    "PretrainConfig",
    # visual
    "VisualTokenizerConfig",
    "FlexTokConfig",
    "TokenizerDataConfig",
    "SampleGridConfig",
    "TrainTokenizerConfig",
    "TrainFlexTokConfig",
    "AdaptiveBudgetConfig",
    "PretokenizeConfig",
    "VideoFlexTokConfig",
    "TrainVideoFlexTokConfig",
    # generation
    "SamplerPreset",
    "GenerationConfig",
    "ReconEvalConfig",
    "ZeroShotEvalConfig",
]
