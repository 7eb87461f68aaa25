"""The README's quick-tour code runs as written, and its commands exist."""

import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _block_after(heading: str, lang: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def test_quick_tour_python_runs_and_its_comment_is_right():
    scope: dict = {}
    exec(compile(_block_after("## Quick tour", "python"), "README quick tour", "exec"), scope)
    stats = scope["stats"]
    assert stats.logprobs.shape == (4, 32) and torch.isfinite(stats.baseline).all()
    assert scope["keep"].dtype == torch.bool
    # the comment quotes Thm 3.3 on p = (1/2, 1/4, 1/4), token 1, alpha 0.1: 0.01875 ln 2
    ed = scope["ed"]
    value = ed.predict_grpo_step_change(scope["z"], torch.tensor(1), 0.1).item()
    assert f"{value:.4f}" in _block_after("## Quick tour", "python")


def test_make_targets_named_in_readme_exist():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    for target in set(re.findall(r"make ([a-z-]+)", README)):
        assert re.search(rf"^{target}:", makefile, re.M), f"README names `make {target}`"


def test_methods_table_lists_every_registered_preset():
    from entropy_dynamics.methods import names

    section = README.split("## Methods", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
    assert sorted(listed) == names("preset")
