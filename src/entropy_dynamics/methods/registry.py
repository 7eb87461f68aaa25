"""The registries of method parts and presets: register once, look up by name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .base import Part

__all__ = [
    "KINDS",
    "Preset",
    "get",
    "get_part",
    "get_preset",
    "names",
    "register",
    "register_preset",
]

KINDS = ("surrogate", "filter", "regulariser", "reweight", "advantage")
_PARTS: dict[str, type[Part]] = {}
_PRESETS: dict[str, Preset] = {}


@dataclass(frozen=True)
class Preset:
    """A named method: ``spec`` (a spec string) plus a docstring naming its paper and defaults.

    Arguments given to a preset in a spec (``"clip_b(mu=2.0)"``) override the default of the one
    part in ``spec`` that accepts that argument name.
    """

    name: str
    spec: str
    doc: str

    def __call__(self, **overrides):
        """Build the preset's Method, overriding defaults: ``get("clip_v")(mu=6.0)``."""
        from .spec import build

        return build({self.name: overrides})


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


def register_preset(name: str, spec: str, doc: str) -> Preset:
    """Add a preset. A preset may share its name with a part only if its spec uses that part."""
    if not name.isidentifier():
        raise ValueError(f"register_preset: name must be an identifier, got {name!r}")
    if name in _PRESETS:
        raise ValueError(f"register_preset: a preset named {name!r} is already registered")
    preset = Preset(name=name, spec=spec, doc=doc)
    _PRESETS[name] = preset
    return preset


def names(kind: str | None = None) -> list[str]:
    """Sorted registered names: all (parts and presets), or one kind (a part kind or "preset")."""
    if kind is None:
        return sorted(set(_PARTS) | set(_PRESETS))
    if kind == "preset":
        return sorted(_PRESETS)
    if kind not in KINDS:
        raise ValueError(f"names: kind must be one of {[*KINDS, 'preset']} or None, got {kind!r}")
    return sorted(name for name, cls in _PARTS.items() if cls.kind == kind)


def _unknown(name: str, valid: list[str], what: str) -> ValueError:
    return ValueError(f"unknown {what} {name!r}; valid names: {', '.join(valid)}")


def get_part(name: str) -> type[Part]:
    """The part class registered as ``name``; unknown names raise, listing the valid ones."""
    if name not in _PARTS:
        raise _unknown(name, sorted(_PARTS), "method part")
    return _PARTS[name]


def get_preset(name: str) -> Preset:
    """The preset registered as ``name``; unknown names raise, listing the valid ones."""
    if name not in _PRESETS:
        raise _unknown(name, sorted(_PRESETS), "method preset")
    return _PRESETS[name]


def get(name: str) -> Preset | type[Part]:
    """A preset (callable: ``get("clip_b")(mu=2.0)`` builds a Method) or else a part class.

    Where a preset shares a part's name (``clip_b``), the preset is returned; use ``get_part``
    for the part itself. Unknown names raise ValueError listing every valid name.
    """
    if name in _PRESETS:
        return _PRESETS[name]
    if name in _PARTS:
        return _PARTS[name]
    raise _unknown(name, names(), "method or part")


def is_part(name: str) -> bool:
    return name in _PARTS


def is_preset(name: str) -> bool:
    return name in _PRESETS
