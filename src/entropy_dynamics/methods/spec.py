"""Method specs: parse ``"ppo(eps_high=0.28) + clip_b(mu=2.5)"`` (or a dict / list) and build.

Grammar: terms joined by ``+``; a term is ``name`` or ``name(key=value, ...)`` with keyword
arguments only; values are Python literals (numbers, strings, None, True/False), read with
``ast.literal_eval`` (nothing is evaluated). The dict form maps names to keyword dicts
(``{"ppo": {"eps_high": 0.28}, "clip_b": {"mu": 2.5}}``, the YAML form); a list may mix spec
strings and one-key dicts.

Resolution: a name that is a preset expands to the preset's parts, its arguments overriding the
default of the one part that accepts each argument name; any other name is a part. A method has
exactly one surrogate: a surrogate named in the spec wins; otherwise the presets' surrogates
(which must agree, the plain default ``ppo`` giving way to any other); otherwise ``ppo()``.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import registry
from .base import Part, Surrogate
from .method import Method
from .registry import get_part, is_part, is_preset, names, unknown_name

__all__ = ["Preset", "build", "get", "get_preset", "parse", "register_preset"]


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
        return build({self.name: overrides})


def register_preset(name: str, spec: str, doc: str) -> Preset:
    """Add a preset. A preset may share its name with a part only if its spec uses that part."""
    if not name.isidentifier():
        raise ValueError(f"register_preset: name must be an identifier, got {name!r}")
    if name in registry.PRESETS:
        raise ValueError(f"register_preset: a preset named {name!r} is already registered")
    preset = Preset(name=name, spec=spec, doc=doc)
    registry.PRESETS[name] = preset
    return preset


def get_preset(name: str) -> Preset:
    """The preset registered as ``name``; unknown names raise, listing the valid ones."""
    if name not in registry.PRESETS:
        raise unknown_name(name, sorted(registry.PRESETS), "method preset")
    return registry.PRESETS[name]


def get(name: str) -> Preset | type[Part]:
    """A preset (callable: ``get("clip_b")(mu=2.0)`` builds a Method) or else a part class.

    Where a preset shares a part's name (``clip_b``), the preset is returned; use ``get_part``
    for the part itself. Unknown names raise ValueError listing every valid name.
    """
    if name in registry.PRESETS:
        return registry.PRESETS[name]
    if is_part(name):
        return get_part(name)
    raise unknown_name(name, names(), "method or part")


Term = tuple[str, dict[str, Any]]
_EXAMPLE = "e.g. 'ppo(eps_high=0.28) + clip_b(mu=2.5)'"


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"bad method spec {spec!r}: {why}; expected terms joined by '+', {_EXAMPLE}")


def _term(node: ast.AST, spec: str) -> Term:
    if isinstance(node, ast.Name):
        return node.id, {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise _bad(spec, f"{ast.unparse(node)!r} is not a name or name(key=value, ...)")
    if node.args:
        raise _bad(spec, f"{node.func.id}(...) takes keyword arguments only")
    kwargs = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise _bad(spec, "'**' is not allowed")
        try:
            kwargs[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise _bad(
                spec,
                f"{keyword.arg}={ast.unparse(keyword.value)} is not a literal "
                "(number, string, None, True/False)",
            ) from None
    return node.func.id, kwargs


def _parse_string(spec: str) -> list[Term]:
    try:
        tree = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError as error:
        raise _bad(spec, f"syntax error ({error.msg})") from None
    nodes = []
    while isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Add):
        nodes.append(tree.right)
        tree = tree.left
    nodes.append(tree)
    return [_term(node, spec) for node in reversed(nodes)]


def parse(spec: str | Mapping | Sequence) -> list[Term]:
    """Spec -> ``[(name, kwargs), ...]`` in order; no name is resolved yet."""
    if isinstance(spec, str):
        return _parse_string(spec)
    if isinstance(spec, Mapping):
        terms = []
        for name, kwargs in spec.items():
            if kwargs is not None and not isinstance(kwargs, Mapping):
                raise ValueError(
                    f"bad method spec: {name!r} maps to {kwargs!r}; expected a "
                    "dict of keyword arguments or None"
                )
            terms.append((str(name), dict(kwargs or {})))
        return terms
    if isinstance(spec, Sequence):
        return [term for item in spec for term in parse(item)]
    raise ValueError(f"bad method spec {spec!r}: expected a string, a dict or a list; {_EXAMPLE}")


def _make(name: str, kwargs: dict[str, Any]) -> Part:
    cls = get_part(name)
    accepted = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"{name}: unknown argument(s) {unknown}; valid: {accepted or 'none'}")
    return cls(**kwargs)


def _expand_preset(name: str, overrides: dict[str, Any]) -> list[Term]:
    terms = [(part, dict(kwargs)) for part, kwargs in _parse_string(get_preset(name).spec)]
    for key, value in overrides.items():
        owners = [
            kwargs
            for part, kwargs in terms
            if key in {f.name for f in dataclasses.fields(get_part(part)) if f.init}
        ]
        if len(owners) != 1:
            parts = " + ".join(part for part, _ in terms)
            why = "no part" if not owners else "more than one part"
            raise ValueError(
                f"preset {name} ({parts}): {why} accepts argument {key!r}; name "
                "the parts explicitly instead"
            )
        owners[0][key] = value
    return terms


def _pick_surrogate(explicit: list[Surrogate], implied: list[Surrogate], spec) -> Surrogate:
    if len(explicit) > 1:
        raise ValueError(
            f"method spec {spec!r} names {len(explicit)} surrogates "
            f"({', '.join(s.spec for s in explicit)}); a method has exactly one"
        )
    if explicit:
        return explicit[0]
    default = _make("ppo", {})
    distinct = {s.spec: s for s in implied if s.spec != default.spec}
    if len(distinct) > 1:
        raise ValueError(
            f"method spec {spec!r}: its presets imply different surrogates "
            f"({', '.join(distinct)}); name one explicitly, e.g. 'ppo(...) + ...'"
        )
    return next(iter(distinct.values()), default)


def build(spec: str | Mapping | Sequence) -> Method:
    """Build a Method from a spec string, dict or list (see the module docstring).

    Examples: ``build("clip_b")``, ``build("clip_v(mu=6, max_frac=1e-3)")``,
    ``build("ppo(eps_high=0.28) + clip_b(mu=2.5) + entropy_bonus(coef=0.001)")``,
    ``build({"ppo": {"eps_high": 0.28}, "clip_b": {"mu": 2.5}})``.
    Unknown names, unknown arguments, a part given twice or two surrogates raise ValueError.
    """
    explicit, implied, others = [], [], []
    for name, kwargs in parse(spec):
        if is_preset(name):
            for part_name, part_kwargs in _expand_preset(name, kwargs):
                part = _make(part_name, part_kwargs)
                (implied if isinstance(part, Surrogate) else others).append(part)
        elif is_part(name):
            part = _make(name, kwargs)
            (explicit if isinstance(part, Surrogate) else others).append(part)
        else:
            get(name)  # raises, listing every valid name
    seen = set()
    for part in others:
        if part.name in seen:
            raise ValueError(f"method spec {spec!r} uses {part.name} twice; give it once")
        seen.add(part.name)
    by_kind = {
        kind: [p for p in others if p.kind == kind]
        for kind in ("filter", "regulariser", "reweight", "advantage")
    }
    if len(by_kind["advantage"]) > 1:
        names = ", ".join(p.name for p in by_kind["advantage"])
        raise ValueError(
            f"method spec {spec!r} names {len(by_kind['advantage'])} advantage estimators "
            f"({names}); a method has at most one"
        )
    return Method(
        _pick_surrogate(explicit, implied, spec),
        by_kind["filter"],
        by_kind["regulariser"],
        by_kind["reweight"],
        advantage=next(iter(by_kind["advantage"]), None),
    )
