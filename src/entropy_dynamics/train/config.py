"""Trainer configuration: loaded from YAML with dotted overrides, checked, saved.

    cfg = load_config("configs/demo.yaml", ["rollout.group_size=8", "method.spec=clip_b"])

The fields (one frozen dataclass per concern, each documented once) are in
``train.config_fields`` and re-exported here. Invalid values raise ValueError naming the field,
the value and the valid choices.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from entropy_dynamics.train.config_fields import (  # noqa: F401  (re-exported)
    DEVICES,
    DTYPES,
    SCHEDULES,
    STATS_FROM,
    LoggingConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RolloutConfig,
    TaskConfig,
    TrainConfig,
    config_warnings,
    invalid_field,
    short_repr,
    validate,
)

_SECTIONS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def to_dict(cfg: TrainConfig) -> dict:
    """The configuration as plain YAML-able Python values (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(cfg))


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML value to the field's declared type, or raise naming the field."""
    hint = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "tuple": tuple}
    kind = hint.get(annotation, annotation) if isinstance(annotation, str) else annotation
    if kind is float and isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is tuple and isinstance(value, list | tuple):
        return tuple(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool, dict) and isinstance(value, kind):
        return value
    if kind == "str | bool" and isinstance(value, str | bool):  # rollout.chat_template
        return value
    invalid_field(name, value, f"a value of type {getattr(kind, '__name__', kind)}")
    return value  # unreachable


def _build_section(section: str, values: dict) -> Any:
    cls = _SECTIONS[section].default_factory
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(
                f"unknown config field {section}.{key}; valid fields of {section}: "
                + ", ".join(sorted(fields))
            )
        kwargs[key] = _coerce(f"{section}.{key}", value, fields[key].type)
    return cls(**kwargs)


def from_dict(data: dict) -> TrainConfig:
    """Build a TrainConfig from nested plain values; unknown keys raise and list the valid ones."""
    data = dict(data or {})
    kwargs: dict[str, Any] = {}
    top_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, value in data.items():
        if key not in top_fields:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(top_fields)}")
        if key in {"model", "task", "rollout", "method", "optim", "logging"}:
            if not isinstance(value, dict):
                invalid_field(key, value, "a mapping of its fields")
            kwargs[key] = _build_section(key, value)
        else:
            kwargs[key] = _coerce(key, value, top_fields[key].type)
    return TrainConfig(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.field=value` strings (values parsed as YAML) to a nested dict, in place.

    `task.options.digits=3` reaches into dict-valued fields.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(
                f"override {short_repr(item)} must look like section.field=value, e.g. "
                "rollout.group_size=8"
            )
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {short_repr(item)}: {key!r} is not a section")
        node[keys[-1]] = _safe_yaml(raw, f"override {short_repr(item)}") if raw.strip() else ""
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (or defaults when `path` is None) and apply dotted overrides."""
    data: dict = {}
    if path is not None:
        data = _read_yaml_file(Path(path))
    apply_overrides(data, list(overrides or []))
    return from_dict(data)


def _read_yaml_file(path: Path) -> dict:
    """The mapping in a YAML file; ValueError naming the file (and line) for every way it fails."""
    if not path.exists():
        raise ValueError(
            f"config file {path}: not found; pass an existing YAML file (configs/*.yaml)"
        )
    if path.is_dir():
        raise ValueError(f"config file {path}: is a directory; pass a YAML file (configs/*.yaml)")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"config file {path}: not UTF-8 text; pass a YAML file") from None
    except OSError as err:
        raise ValueError(f"config file {path}: cannot be read ({err.strerror or err})") from None
    data = _safe_yaml(text, f"config file {path}") or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def _safe_yaml(text: str, where: str) -> Any:
    """yaml.safe_load with its errors as one-line ValueErrors (what, where, what is valid)."""
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as err:
        raise ValueError(
            f"{where}{_mark(err)}: {err.problem}; only plain YAML values (numbers, strings, "
            "lists, mappings) are allowed, no tags such as !!python/..."
        ) from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{where}{_mark(err)}: YAML syntax error: {problem}") from None
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply to read as YAML") from None


def _mark(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None)
    return "" if mark is None else f" line {mark.line + 1} column {mark.column + 1}"


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the effective configuration as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe_fields() -> str:
    """Every configurable field with its default, one per line (for `train --help`).

    Read from the dataclass fields, not from a validated TrainConfig(): validation builds the
    method, which imports torch, and `--help` must stay fast.
    """
    lines = []
    for top in dataclasses.fields(TrainConfig):
        value = top.default if top.default_factory is dataclasses.MISSING else top.default_factory()
        name = top.name
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            for key, default in value.items():
                lines.append(f"  {name}.{key} = {default!r}")
        else:
            lines.append(f"  {name} = {value!r}")
    return "\n".join(lines)
