"""Spec parsing, presets, the registry, and every method name used in docs and configs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from entropy_dynamics import methods
from entropy_dynamics.methods import build, get, names, parse
from entropy_dynamics.methods.clipping import ClipB
from entropy_dynamics.methods.registry import register
from entropy_dynamics.methods.spec import register_preset

ROOT = Path(__file__).resolve().parents[1]
PRESETS = [
    "grpo",
    "clip_higher",
    "clip_b",
    "clip_v",
    "clip_cov",
    "kl_cov",
    "entropy_bonus",
    "top_entropy",
    "ce_gppo",
    "w_reinforce",
]


def test_parse_forms_agree():
    text = "ppo(eps_high=0.28) + clip_b(mu=2.5, variant='paper')"
    want = [("ppo", {"eps_high": 0.28}), ("clip_b", {"mu": 2.5, "variant": "paper"})]
    assert parse(text) == want
    assert parse({"ppo": {"eps_high": 0.28}, "clip_b": {"mu": 2.5, "variant": "paper"}}) == want
    assert parse(["ppo(eps_high=0.28)", {"clip_b": {"mu": 2.5, "variant": "paper"}}]) == want
    assert parse("grpo") == [("grpo", {})]
    assert parse({"clip_v": None}) == [("clip_v", {})]
    yaml_spec = yaml.safe_load("method:\n  ppo: {eps_high: 0.28}\n  clip_b: {mu: 2.5}\n")
    assert build(yaml_spec["method"]).spec == build("ppo(eps_high=0.28) + clip_b(mu=2.5)").spec


@pytest.mark.parametrize("name", PRESETS)
def test_presets_registered_documented_and_round_trip(name):
    assert name in names("preset")
    preset = get(name)
    assert "arXiv" in preset.doc or "classic" in preset.doc
    method = build(name)
    assert build(method.spec).spec == method.spec
    assert preset().spec == method.spec


def test_preset_arguments_override_defaults():
    assert (
        build("clip_b(mu=2.0)").spec == "ppo(eps_low=0.2, eps_high=0.2, dual_clip=3.0) + "
        "clip_b(mu=2.0, variant='released', denominator='kept')"
    )
    method = build("clip_v(mu=6, max_frac=1e-3)")
    assert (method.filters[0].mu, method.filters[0].max_frac) == (6, 1e-3)
    assert build("clip_cov(ratio=1e-3)").surrogate.eps_low == 1.0  # the preset's clip range kept
    assert build("kl_cov(ratio=2e-4, coef=0.1)").spec == "pg + kl_cov(ratio=0.0002, coef=0.1)"
    assert build("clip_higher(eps_high=0.3)").surrogate.eps_high == 0.3
    assert build("w_reinforce(pos_weight=0.2)").advantage.pos_weight == 0.2
    assert build("clip_b(dual_clip=None)").surrogate.spec == "ppo(eps_low=0.2, eps_high=0.2)"
    with pytest.raises(ValueError, match="no part accepts argument 'rho'"):
        build("clip_b(rho=0.1)")


def test_surrogate_resolution():
    # No surrogate: default PPO clip; the Clip_B / Clip_V / GRPO presets add the dual clip.
    assert build("clip_b").surrogate.spec == "ppo(eps_low=0.2, eps_high=0.2, dual_clip=3.0)"
    assert build("top_entropy").surrogate.spec == "ppo(eps_low=0.2, eps_high=0.2)"
    # A named surrogate wins over a preset's.
    assert build("ppo(eps_high=0.28) + clip_b(mu=2.5)").surrogate.eps_high == 0.28
    assert build("pg + clip_cov").surrogate.name == "pg"
    # A non-default preset surrogate wins over the plain default one.
    assert build("clip_higher + top_entropy").surrogate.eps_high == 0.28
    assert build("clip_b + entropy_bonus").surrogate.dual_clip == 3.0
    assert build("ce_gppo + entropy_bonus").surrogate.name == "ce_gppo"
    with pytest.raises(ValueError, match="imply different surrogates"):
        build("clip_cov + kl_cov")
    with pytest.raises(ValueError, match="imply different surrogates"):
        build("clip_higher + clip_b")  # name one: 'ppo(eps_high=0.28, dual_clip=3.0) + clip_b'
    with pytest.raises(ValueError, match="uses w_reinforce twice"):
        build("w_reinforce + w_reinforce(pos_weight=0.2)")
    with pytest.raises(ValueError, match="names 2 surrogates"):
        build("ppo + pg")
    with pytest.raises(ValueError, match="uses clip_b twice"):
        build("clip_b + clip_b(mu=2)")


@pytest.mark.parametrize(
    "spec",
    [
        "ppo(eps_high=0.28) + clip_b(mu=2.5) + entropy_bonus(coef=0.01)",
        "pg + clip_v(mu=7.5, variant='paper') + top_entropy(rho=0.5) + adv_weight(neg_weight=2.0)",
        "ppo(dual_clip=3.0) + kl_ref(estimator='k1') + adaptive_entropy_bonus(target=0.5)",
    ],
)
def test_composite_round_trip(spec):
    method = build(spec)
    assert build(method.spec).spec == method.spec


@pytest.mark.parametrize(
    "spec, match",
    [
        ("clip_x", "unknown method or part 'clip_x'; valid names: .*clip_b"),
        ("ppo(eps=0.1)", r"ppo: unknown argument\(s\) \['eps'\]; valid: \['eps_low'"),
        ("ppo(0.1)", "keyword arguments only"),
        ("ppo(eps_high=0.28", "syntax error"),
        ("ppo - clip_b", "is not a name"),
        ("clip_b(mu=__import__('os').getcwd())", "is not a literal"),
        ("os.system('true')", "is not a name"),
        ("ppo(**{'eps_low': 0.1})", r"'\*\*' is not allowed"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        build(spec)
    with pytest.raises(ValueError):
        build(42)


def test_registry_refuses_duplicates_and_lists_names():
    with pytest.raises(ValueError, match="already registered"):
        register(ClipB)
    with pytest.raises(ValueError, match="already registered"):
        register_preset("grpo", "ppo", "dup")
    with pytest.raises(ValueError, match="unknown method or part 'nope'; valid names: "):
        get("nope")
    assert set(PRESETS) <= set(names())
    for kind in ("surrogate", "filter", "regulariser", "reweight"):
        assert names(kind)
    assert names("surrogate") == ["archer_ppo", "ce_gppo", "pg", "ppo"]
    with pytest.raises(ValueError, match="kind must be one of"):
        names("loss")


# ---------------------------------------------------------------------------------------------
# Every method / part name used in the docs, README and configs exists.

_SPAN = re.compile(r"`([^`\n]+)`")
_BUILD_CALL = re.compile(r"""build\((["'])(.+?)\1\)""")
# Words that mark a call as a method spec rather than some other keyword-only call in the docs.
_HINTS = ("clip", "ppo", "grpo", "kl", "entropy", "reinforce", "pg", "weight", "cov", "gppo")


def _spec_like(text: str) -> bool:
    """A span that parses as a spec with at least one call or '+' and lowercase names only."""
    text = text.strip().strip("\"'")
    if not text or ("(" not in text and "+" not in text):
        return False
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return False
    nodes = []
    while isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Add):
        nodes.append(tree.right)
        tree = tree.left
    nodes.append(tree)
    for node in nodes:
        if isinstance(node, ast.Name):
            continue
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and not node.args
            and node.func.id.islower()
        ):
            return False
        try:
            [ast.literal_eval(k.value) for k in node.keywords]
        except ValueError:
            return False
    names_used = [n.id if isinstance(n, ast.Name) else n.func.id for n in nodes]
    if not any(hint in name for name in names_used for hint in _HINTS):
        return False
    return len(nodes) > 1 or isinstance(nodes[0], ast.Call)


def _doc_specs():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for path in files:
        if path.exists():
            text = path.read_text()
            for span in _SPAN.findall(text):
                if _spec_like(span):
                    yield path.name, span.strip().strip("\"'")
            for _, spec in _BUILD_CALL.findall(text):
                yield path.name, spec


def _config_specs(node, path):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "method" and isinstance(value, dict) and "spec" in value:
                yield path.name, value["spec"]  # the trainer's MethodConfig section
            elif key in ("method", "methods") and value is not None:
                for item in value if isinstance(value, list) and key == "methods" else [value]:
                    yield path.name, item
            else:
                yield from _config_specs(value, path)
    elif isinstance(node, list):
        for item in node:
            yield from _config_specs(item, path)


def test_every_method_named_in_docs_and_configs_builds():
    found = list(_doc_specs())
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        found += list(_config_specs(yaml.safe_load(path.read_text()), path))
    assert (
        any(where == "methods.md" for where, _ in found) or not (ROOT / "docs/methods.md").exists()
    )
    for where, spec in found:
        try:
            build(spec)
        except ValueError as error:
            pytest.fail(f"{where}: method spec {spec!r} does not build: {error}")


def test_methods_md_lists_every_preset():
    text = (ROOT / "docs" / "methods.md").read_text()
    for name in PRESETS + [n for n in names() if n not in PRESETS]:
        assert f"`{name}" in text, f"docs/methods.md does not mention {name}"
    assert methods.__doc__
