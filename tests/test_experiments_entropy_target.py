"""Experiment ``entropy_target``: its specs build, its error helper by hand, and a quick run."""

from __future__ import annotations

import json

import pytest

from entropy_dynamics import experiments, methods
from entropy_dynamics.experiments import entropy_target


def test_registered_and_every_spec_builds():
    assert "entropy_target" in experiments.names()
    for template in (*entropy_target.CONTROLLERS.values(), *entropy_target.COMPARATORS.values()):
        methods.build(template.format(target=0.65, lr=0.3))
    # second half of [0.5, 0.7, 0.8, 0.4] minus 0.6: [0.2, -0.2]
    errors = entropy_target._errors([0.5, 0.7, 0.8, 0.4], 0.6)
    assert errors["abs_error"] == pytest.approx(0.2) and errors["bias"] == pytest.approx(0.0)


@pytest.mark.slow
def test_quick_run_writes_claims_with_intervals(tmp_path):
    experiments.run("entropy_target", out_dir=tmp_path, quick=True)
    data = json.loads((tmp_path / "entropy_target" / "result.json").read_text())
    assert len(data["settings"]["seeds"]) >= 3
    assert data["settings"]["calibration"]["lr"] > 0
    claims = data["claims"]
    assert len(claims) == len(entropy_target.CONTROLLERS) * len(entropy_target.COMPARATORS)
    for claim in claims:
        (gap,) = claim["measured"].values()
        assert gap["n"] >= 3 and gap["lo"] is not None and gap["lo"] <= gap["mean"] <= gap["hi"]
    assert (tmp_path / "entropy_target" / data["figures"][0]).read_bytes()[:4] == b"\x89PNG"
