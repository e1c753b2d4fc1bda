"""Loading, validation, conversion: ``ConfigError``, ``from_dict`` / ``to_dict``, ``load_config``, ``parse_cli``
and ``save_config`` (import them from ``mm1d.config``).

YAML files only *compose* values; the schema (a dataclass) owns every key, its type and its default.
``load_config(path, overrides, schema)`` composes the YAML with Hydra (``defaults:`` lists work), applies
``key=value`` overrides, and converts the result into the dataclass. An unknown key or a wrong type is a
``ConfigError`` that names the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from mm1d.config.common import SCHEMAS

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem (unknown key, wrong type, missing file), with a helpful message."""


# ----------------------------------------------------------------------------------------------------
# Loading, validation, conversion
# ----------------------------------------------------------------------------------------------------


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.4)
    return f" Did you mean '{match[0]}'?" if match else f" Valid keys: {', '.join(sorted(options))}."


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise ConfigError naming ``path``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{path}' must not be null (expected {_type_name(tp)}).")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{path}' has value {value!r}, which is not {_type_name(tp)}.")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(
                f"config key '{path}' has value {value!r}; allowed values are {list(get_args(tp))}."
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{path}' expects a list, got {value!r}.")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' expects a mapping, got {value!r}.")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' expects a mapping for {tp.__name__}, got {value!r}.")
        return from_dict(tp, value, prefix=path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{path}' expects true/false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{path}' expects an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}' expects a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}' expects a string, got {value!r}.")
        return value
    return value


def from_dict(schema: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build the dataclass ``schema`` from a plain dict, strictly.

    Raises:
        ConfigError: on an unknown key (with the closest valid key) or a value of the wrong type.
    """
    hints = get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'.{_closest(key, names)}")
        factory = fields[key].default_factory
        if isinstance(value, dict) and factory is not dataclasses.MISSING:
            default = factory()
            if dataclasses.is_dataclass(default):  # a partial section keeps this field's own defaults
                value = _merged(to_dict(default), value)
        kwargs[key] = _convert(value, hints[key], path)
    try:
        return schema(**kwargs)
    except TypeError as e:  # a required field without default
        raise ConfigError(f"config section '{prefix or schema.__name__}': {e}") from e


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it, nested dicts merged key by key (other values replaced)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain nested dict (JSON-serializable)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _parse_value(text: str) -> Any:
    """Parse an override value like YAML 1.2 / OmegaConf would (``3e-4`` is a float, not a string)."""
    import yaml
    from omegaconf._utils import get_yaml_loader

    try:
        return yaml.load(text, Loader=get_yaml_loader())
    except yaml.YAMLError:
        return text


def _set_override(data: dict[str, Any], schema: type, dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``a.b.c``, checking each step against the schema."""
    keys = dotted.split(".")
    node, tp, path = data, schema, ""
    for i, key in enumerate(keys):
        path = f"{path}.{key}" if path else key
        names = [f.name for f in dataclasses.fields(tp)]
        if key not in names:
            raise ConfigError(f"unknown config key '{path}' in override '{dotted}'.{_closest(key, names)}")
        hint = get_type_hints(tp)[key]
        if i == len(keys) - 1:
            node[key] = value
            return
        inner = [a for a in (get_args(hint) or (hint,)) if dataclasses.is_dataclass(a)]
        if not inner:
            raise ConfigError(f"config key '{path}' is not a section; cannot set '{dotted}'.")
        tp = inner[0]
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]


def load_config(path: str | Path, overrides: typing.Sequence[str] = (), schema: type[T] | None = None) -> T:
    """Compose ``path`` (YAML, Hydra ``defaults:`` supported) with ``key=value`` overrides into ``schema``.

    Overrides of the form ``group=option`` where ``group/option.yaml`` exists beside the file select a
    config group (Hydra semantics); every other override sets a (dotted) key and is checked against the
    schema.

    Args:
        path: YAML file.
        overrides: e.g. ``["train.max_steps=10", "seed=3"]``.
        schema: the dataclass to build; when None the YAML's ``_schema_`` key names one registered in ``SCHEMAS``.

    Returns:
        An instance of ``schema``.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    p = Path(path).resolve()
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    group_ov, key_ov = [], []
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not of the form key=value")
        key, val = ov.split("=", 1)
        key = key.lstrip("+")
        if "." not in key and (p.parent / key / f"{val}.yaml").is_file():
            group_ov.append(f"{key}={val}")
        else:
            key_ov.append((key, val))
    with initialize_config_dir(config_dir=str(p.parent), version_base=None, job_name="mm1d"):
        composed = compose(config_name=p.stem, overrides=group_ov)
    data = OmegaConf.to_container(composed, resolve=True)
    assert isinstance(data, dict)
    name = data.pop("_schema_", None)
    if schema is None:
        if name is None or name not in SCHEMAS:
            raise ConfigError(f"{path}: no schema given and no valid '_schema_' key (one of {sorted(SCHEMAS)})")
        schema = SCHEMAS[name]
    for key, val in key_ov:
        _set_override(data, schema, key, _parse_value(val))
    return from_dict(schema, data)


def parse_cli(description: str | None, schema: type[T], argv: typing.Sequence[str] | None = None) -> T:
    """The command line every entry point shares: ``--config PATH`` plus ``key=value`` overrides.

    Also accepts ``--local_rank`` (set by the deepspeed launcher). A config problem prints a clear message
    and exits with status 2.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10 seed=1")
    args = parser.parse_args(argv)
    try:
        return load_config(args.config, args.overrides, schema)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a dataclass config as JSON (used inside checkpoints and bundles)."""
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2))
