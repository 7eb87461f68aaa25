"""The registries of method parts and presets: register once, look up by name.

Parts are registered here; presets are stored here but made by ``spec.register_preset`` (a
preset builds a Method, which needs the spec parser, so its class lives in ``spec``).
"""

from __future__ import annotations

import dataclasses

from .base import Part

__all__ = ["KINDS", "get_part", "is_part", "is_preset", "names", "register", "unknown_name"]

KINDS = ("surrogate", "filter", "regulariser", "reweight", "advantage")
_PARTS: dict[str, type[Part]] = {}
PRESETS: dict = {}  # name -> spec.Preset, filled by spec.register_preset


def register(cls: type[Part]) -> type[Part]:
    """Class decorator: add a part (a dataclass subclass of a part kind) under ``cls.name``.

    Registering a name twice is refused (ValueError), as is a part without a name or kind.
    """
    if not (isinstance(cls, type) and issubclass(cls, Part)) or cls.kind not in KINDS:
        raise ValueError(f"register: expected a Part subclass of kind {list(KINDS)}, got {cls!r}")
    if not cls.name or not cls.name.isidentifier():
        raise ValueError(f"register: {cls.__name__}.name must be an identifier, got {cls.name!r}")
    if cls.name in _PARTS:
        raise ValueError(
            f"register: a part named {cls.name!r} is already registered "
            f"({_PARTS[cls.name].__name__}); choose another name"
        )
    if not dataclasses.is_dataclass(cls):
        raise ValueError(
            f"register: {cls.__name__} must be a dataclass (its fields are its hyperparameters)"
        )
    _PARTS[cls.name] = cls
    return cls


def names(kind: str | None = None) -> list[str]:
    """Sorted registered names: all (parts and presets), or one kind (a part kind or "preset")."""
    if kind is None:
        return sorted(set(_PARTS) | set(PRESETS))
    if kind == "preset":
        return sorted(PRESETS)
    if kind not in KINDS:
        raise ValueError(f"names: kind must be one of {[*KINDS, 'preset']} or None, got {kind!r}")
    return sorted(name for name, cls in _PARTS.items() if cls.kind == kind)


def unknown_name(name: str, valid: list[str], what: str) -> ValueError:
    return ValueError(f"unknown {what} {name!r}; valid names: {', '.join(valid)}")


def get_part(name: str) -> type[Part]:
    """The part class registered as ``name``; unknown names raise, listing the valid ones."""
    if name not in _PARTS:
        raise unknown_name(name, sorted(_PARTS), "method part")
    return _PARTS[name]


def is_part(name: str) -> bool:
    return name in _PARTS


def is_preset(name: str) -> bool:
    return name in PRESETS
