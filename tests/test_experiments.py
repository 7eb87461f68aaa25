"""Tests for the experiments framework (common helpers, registry, CLI) and the quick theory run."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from entropy_dynamics import experiments
from entropy_dynamics.experiments import cli, common


def test_correlations_hand_computed_with_ties():
    # Spearman: ranks x = [0, 1.5, 1.5, 3], y = [0, 2, 1, 3]; centred dx = [-1.5, 0, 0, 1.5],
    # dy = [-1.5, .5, -.5, 1.5]; sum dx dy = 4.5, sum dx^2 = 4.5, sum dy^2 = 5 -> 4.5 / sqrt(22.5).
    x, y = [1.0, 2.0, 2.0, 3.0], [10.0, 30.0, 20.0, 40.0]
    got = common.correlations(x, y)
    assert got["spearman"] == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-12)
    assert got["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert math.isnan(common.correlations([1.0, 1.0], [1.0, 2.0])["pearson"])
    with pytest.raises(ValueError, match="same length"):
        common.correlations([1.0], [1.0, 2.0])


def test_slope_and_sign_agreement():
    x = np.logspace(-3, -1, 5)
    assert common.fit_loglog_slope(x, 3 * x**2) == pytest.approx(2.0, abs=1e-12)
    assert math.isnan(common.fit_loglog_slope([1.0], [1.0]))
    # signs: (+,+) agree, (-,+) disagree, (0,0) agree, (-,-) agree -> 3/4
    assert common.sign_agreement([1.0, -2.0, 0.0, -1.0], [3.0, 1.0, 0.0, -5.0]) == 0.75


def test_result_json_is_strict_and_report_keeps_order(tmp_path):
    first = common.ExperimentResult("network", quick=True)
    first.check("a claim", True, float("nan"), 1.0, "nan becomes null")
    second = common.ExperimentResult("theory", quick=True)
    second.check("another", False, np.float64(0.5), [0.9, 1.0])
    for result in (first, second):
        path = common.write_result(result, tmp_path)
        common.write_report(result, tmp_path, ["theory", "network"])
    data = json.loads(path.read_text())
    assert data["claims"] == [
        {"claim": "another", "holds": False, "measured": 0.5, "threshold": [0.9, 1.0], "note": ""}
    ]
    assert (
        json.loads((tmp_path / "network" / "result.json").read_text())["claims"][0]["measured"]
        is None
    )
    report = (tmp_path / "report.md").read_text()
    assert report.index("## theory") < report.index("## network")
    assert "**no**" in report


def test_registry_and_cli_parser():
    assert experiments.names()[:2] == ["theory", "network"]
    assert set(experiments.names()) >= {"sign-test", "corollary", "clipped-tokens", "methods", "mu"}
    with pytest.raises(ValueError, match="valid names: theory, network"):
        experiments.run("nope")
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["reproduce", "theory", "--quick", "--out", "x"])
    assert (args.name, args.quick, args.out, args.func) == ("theory", True, "x", cli.run_from_args)
    with pytest.raises(SystemExit):
        parser.parse_args(["reproduce", "not-an-experiment"])


def _check_result_file(path, name):
    data = json.loads(path.read_text())
    assert data["name"] == name and data["quick"] is True
    assert data["claims"], "an experiment must check at least one claim"
    for claim in data["claims"]:
        assert set(claim) == {"claim", "holds", "measured", "threshold", "note"}
        assert isinstance(claim["claim"], str) and isinstance(claim["holds"], bool)
    for fig in data["figures"]:
        assert (path.parent / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_theory_quick_all_claims_hold(tmp_path, capsys):
    assert cli.main(["theory", "--quick", "--out", str(tmp_path)]) == 0
    data = _check_result_file(tmp_path / "theory" / "result.json", "theory")
    failing = [c["claim"] for c in data["claims"] if not c["holds"]]
    assert not failing, failing
    assert len(data["figures"]) == 2
    assert "## theory" in (tmp_path / "report.md").read_text()
    assert "9/9 claims hold" in capsys.readouterr().out
