"""Run directories and checkpoints: nothing executed from them, no two runs mixed, damage handled.

Each case works on a copy of one small run trained through the real CLI (two checkpoints, two
saved batches) and drives the real CLI against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess

import pytest
import torch

from _reliability import assert_user_error, copy_run, row, run_cli, train_args
from entropy_dynamics import cli
from entropy_dynamics.train import checkpoint as ckpt
from entropy_dynamics.train.logging import read_jsonl
from entropy_dynamics.train.rundir import claim_run_dir

RUN = ["steps=2", "logging.checkpoint_every=1", "logging.save_batch_every=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(train_args(run_dir, *RUN)) == 0
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step-1", "step-2"]
    return run_dir


@pytest.fixture
def run(trained, tmp_path):
    return copy_run(trained, tmp_path / "run")


class Crafted:
    """Unpickling this runs `touch MARKER` (what a crafted optimizer.pt or batch would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _redigest(folder):
    digest = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in ckpt.FILES}
    (folder / ckpt.DIGEST).write_text(json.dumps(digest))


def _only_step_2(run):
    shutil.rmtree(run / "checkpoints" / "step-1")
    return run / "checkpoints" / "step-2"


# ------------------------------------------------------------------ crafted files never run


@pytest.mark.parametrize("redigest", [
    pytest.param(True, id=row("ckpt-crafted-optimizer", "crafted optimizer.pt (pickle whose "
                              "`__reduce__` runs a shell command), digest rewritten to match",
                              "`train --resume`: nothing runs; exit 2, one line 'refused to load'")),
    pytest.param(False, id=row("ckpt-crafted-optimizer-stale-digest", "crafted optimizer.pt, "
                               "digest not updated", "nothing runs; exit 2, one line 'damaged'")),
])  # fmt: skip
def test_crafted_optimizer_file_is_never_unpickled(run, tmp_path, capsys, redigest):
    folder, marker = _only_step_2(run), tmp_path / "pwned"
    torch.save({"optimizer": Crafted(marker), "scheduler": None}, folder / "optimizer.pt")
    if redigest:
        _redigest(folder)
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "steps=3"), "--resume")
    assert_user_error(code, err, "no intact checkpoint")
    assert ("refused to load" if redigest else "do not match") in err
    assert not marker.exists()


def test_crafted_rng_pickle_is_never_loaded(run, tmp_path, capsys):
    row(
        "ckpt-crafted-rng-pt",
        "crafted rng.pt (the old pickle name) dropped into a checkpoint",
        "never read (RNG states are JSON); resume succeeds, nothing runs",
    )
    marker = tmp_path / "pwned"
    torch.save({"python": Crafted(marker)}, run / "checkpoints" / "step-2" / "rng.pt")
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "steps=3"), "--resume")
    assert code == 0, err
    assert not marker.exists()
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize(("make", "needles"), [
    pytest.param("crafted", ["refused to load"], id=row(
        "lens-crafted-batch", "crafted batches/step-2.pt (shell command in `__reduce__`)",
        "`lens`: nothing runs; exit 2, one line 'refused to load'")),
    pytest.param("garbage", [], id=row(
        "lens-garbage-batch", "batches/step-2.pt of random bytes (24 seeded draws: the "
        "unpickler raises UnpicklingError, KeyError, ... depending on the bytes)",
        "exit 2, one line: 'refused to load' or 'not a readable batch file'")),
    pytest.param("list", ["not a saved training batch"], id=row(
        "lens-wrong-structure", "batches/step-2.pt holding a list of tensors", "exit 2, one line")),
    pytest.param("shapes", ["must be a [B, T] tensor"], id=row(
        "lens-shape-mismatch", "batches/step-2.pt whose fields disagree in shape",
        "exit 2, one line naming the field")),
])  # fmt: skip
def test_bad_batch_files_give_one_line_and_run_nothing(run, tmp_path, capsys, make, needles):
    path, marker = run / "batches" / "step-2.pt", tmp_path / "pwned"
    if make == "crafted":
        torch.save({"batch": Crafted(marker)}, path)
    elif make == "garbage":
        for seed in range(24):
            path.write_bytes(random.Random(seed).randbytes(4096))
            code, _, err = run_cli(capsys, "lens", run)
            assert_user_error(code, err, "step-2.pt")
            assert "refused to load" in err or "not a readable batch file" in err, err
        return
    elif make == "list":
        torch.save([torch.zeros(2)], path)
    else:
        saved = torch.load(path, weights_only=True)
        saved["batch"]["entropy"] = torch.zeros(3, 1)
        torch.save(saved, path)
    code, _, err = run_cli(capsys, "lens", run)
    assert_user_error(code, err, "step-2.pt", *needles)
    assert not marker.exists()


def test_no_unsafe_torch_load_in_the_source():
    row(
        "source-no-unsafe-load",
        "`grep weights_only=False src`",
        "no torch.load that may run code: every load passes weights_only=True",
    )
    import entropy_dynamics

    root = os.path.dirname(entropy_dynamics.__file__)
    found = subprocess.run(["grep", "-rn", "weights_only=False", root], capture_output=True,
                           text=True).stdout  # fmt: skip
    assert found == ""
    loads = subprocess.run(["grep", "-rn", "torch.load(", root], capture_output=True, text=True)
    assert loads.stdout and all("weights_only=True" in line for line in loads.stdout.splitlines())


# ------------------------------------------------------------------ state.json and the digest

STATE_CASES = [
    ("state-step-negative", {"step": -5}, "step=-5"),
    ("state-step-huge", {"step": 10**6}, "does not match the folder"),
    ("state-step-text", {"step": "abc"}, "step='abc'"),
    ("state-step-float", {"step": 2.0}, "step=2.0"),
    ("state-nonfinite-negative", {"step": 2, "nonfinite": -1}, "nonfinite=-1"),
    ("state-step-mismatch", {"step": 1}, "does not match the folder"),
    ("state-not-object", [2], "JSON object"),
]


@pytest.mark.parametrize(("state", "needle"), [
    pytest.param(state, needle, id=row(case, f"state.json = `{json.dumps(state)}` (digest "
                                       "rewritten to match)", "refused; exit 2, metrics kept"))
    for case, state, needle in STATE_CASES
])  # fmt: skip
def test_tampered_state_json_is_refused_and_keeps_the_metrics(run, capsys, state, needle):
    folder = _only_step_2(run)
    (folder / "state.json").write_text(json.dumps(state))
    _redigest(folder)
    before = (run / "metrics.jsonl").read_text()
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "steps=3"), "--resume")
    assert_user_error(code, err, "no intact checkpoint")
    assert needle in err
    assert (run / "metrics.jsonl").read_text() == before


def test_state_json_not_json_is_refused(run, capsys):
    row("state-not-json", "state.json of garbage text (digest rewritten)", "refused; exit 2")
    folder = _only_step_2(run)
    (folder / "state.json").write_text("{step: ")
    _redigest(folder)
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "steps=3"), "--resume")
    assert_user_error(code, err, "no intact checkpoint")
    assert "not JSON" in err


DAMAGE = {
    "flip": lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 1]) + p.read_bytes()[1:]),
    "truncate": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "delete": lambda p: p.unlink(),
}


@pytest.mark.parametrize(("name", "damage"), [
    pytest.param("model.safetensors", "flip", id=row(
        "ckpt-latest-weights-bitflip", "one bit flipped in the newest model.safetensors",
        "resume warns and continues from the previous checkpoint (metrics cut back to it)")),
    pytest.param("model.safetensors", "truncate", id=row(
        "ckpt-latest-weights-truncated", "the newest model.safetensors cut in half",
        "resume warns and falls back to the previous checkpoint")),
    pytest.param("optimizer.pt", "truncate", id=row(
        "ckpt-latest-optimizer-truncated", "the newest optimizer.pt cut in half",
        "resume warns and falls back")),
    pytest.param("rng.json", "delete", id=row(
        "ckpt-latest-rng-missing", "the newest rng.json deleted", "resume warns and falls back")),
    pytest.param(ckpt.DIGEST, "delete", id=row(
        "ckpt-latest-digest-missing", "the newest digest.json missing (an interrupted or older "
        "write)", "not a checkpoint: the previous one is used")),
])  # fmt: skip
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(run, capsys, name, damage):
    DAMAGE[damage](run / "checkpoints" / "step-2" / name)
    code, _, err = run_cli(capsys, *train_args(run, *RUN), "--resume")
    assert code == 0, err
    assert "Traceback" not in err
    if name != ckpt.DIGEST:
        assert "skipping damaged checkpoint" in err and "step-2" in err
        assert (run / "checkpoints" / "damaged-step-2").is_dir()  # kept aside for inspection
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]  # step 2 re-run
    assert ckpt.latest_checkpoint(run).name == "step-2"
    ckpt.verify_checkpoint(run / "checkpoints" / "step-2")  # rewritten whole


def test_every_checkpoint_damaged_is_one_line(run, capsys):
    row("ckpt-all-damaged", "every checkpoint's weights damaged", "`--resume`: exit 2, one line "
        "'no intact checkpoint ... --overwrite'")  # fmt: skip
    for folder in ckpt.list_checkpoints(run):
        DAMAGE["flip"](folder / "model.safetensors")
    code, _, err = run_cli(capsys, *train_args(run, *RUN), "--resume")
    assert_user_error(code, err, "no intact checkpoint", "--overwrite")


def test_digest_listing_other_files_is_refused(run, capsys):
    row(
        "ckpt-digest-wrong-files",
        "digest.json naming files that are not the checkpoint's",
        "that checkpoint is skipped with a warning; the previous one is used",
    )
    (run / "checkpoints" / "step-2" / ckpt.DIGEST).write_text(json.dumps({"x": "0"}))
    code, out, err = run_cli(capsys, "eval", run, "--k", "1", "--n", "1", "--no-write")
    assert code == 0, err
    assert "must list exactly" in err and json.loads(out[out.index("{") :])["step"] == 1


def test_eval_falls_back_and_explicit_damaged_checkpoint_is_refused(run, capsys):
    row(
        "eval-latest-damaged",
        "`eval` when the newest checkpoint is damaged",
        "warns and evaluates the newest intact one",
    )
    row(
        "eval-explicit-damaged",
        "`eval --checkpoint` naming a damaged checkpoint",
        "exit 2, one line naming the file",
    )
    DAMAGE["truncate"](run / "checkpoints" / "step-2" / "model.safetensors")
    code, out, err = run_cli(capsys, "eval", run, "--k", "1", "--n", "1", "--no-write")
    assert code == 0 and "skipping damaged checkpoint" in err
    assert json.loads(out[out.index("{") :])["step"] == 1
    code, _, err = run_cli(capsys, "eval", run, "--checkpoint", run / "checkpoints" / "step-2")
    assert_user_error(code, err, "model.safetensors", "damaged")


@pytest.mark.parametrize(("args", "needles"), [
    pytest.param(["eval", "RUN", "--checkpoint", "RUN/checkpoints/step-9"], ["not a checkpoint"],
                 id=row("eval-checkpoint-missing", "`eval --checkpoint` of a folder that does "
                        "not exist", "exit 2, one line")),
    pytest.param(["eval", "RUN/checkpoints"], ["no config.yaml"],
                 id=row("eval-not-a-run", "`eval` of a folder that is not a run",
                        "exit 2, one line")),
    pytest.param(["lens", "RUN/checkpoints"], ["no batches"],
                 id=row("lens-no-batches", "`lens` of a folder without saved batches",
                        "exit 2, one line naming logging.save_batch_every")),
    pytest.param(["lens", "RUN", "--step", "7"], ["step=7", "saved steps"],
                 id=row("lens-step-missing", "`lens --step 7` when steps 1, 2 were saved",
                        "exit 2, one line listing the saved steps")),
    pytest.param(["report", "RUN/nowhere"], [], id=row(
        "report-missing-run", "`report` of a run directory that does not exist",
        "exit 2, one line")),
])  # fmt: skip
def test_read_only_commands_on_wrong_paths_are_one_line(run, capsys, args, needles):
    args = [a.replace("RUN", str(run)) for a in args]
    code, _, err = run_cli(capsys, *args)
    assert_user_error(code, err, *needles)


def test_foreign_entries_under_checkpoints_are_ignored(run, capsys):
    row(
        "ckpt-stray-folder",
        "a folder checkpoints/step-abc (and a file checkpoints/step-7)",
        "ignored by resume, eval and retention",
    )
    (run / "checkpoints" / "step-abc").mkdir()
    (run / "checkpoints" / "step-7").write_text("notes")
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "steps=3"), "--resume")
    assert code == 0, err
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-1", "step-2", "step-3"]
    assert (run / "checkpoints" / "step-abc").is_dir()  # not ours: left alone
    code, _, err = run_cli(capsys, "eval", run, "--k", "1", "--n", "1", "--no-write")
    assert code == 0, err


def test_stale_temporary_folder_of_an_interrupted_write_is_removed(run, capsys):
    row(
        "ckpt-stale-tmp",
        "checkpoints/.tmp-step-3-999 left by a write killed midway",
        "ignored, then removed by the next run",
    )
    stale = run / "checkpoints" / ".tmp-step-3-999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert ckpt.latest_checkpoint(run).name == "step-2"
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "steps=3"), "--resume")
    assert code == 0, err
    assert not stale.exists()


def test_checkpoint_of_another_model_is_one_line(run, capsys):
    row(
        "ckpt-other-model",
        "`--resume --allow-config-change` with another model.tiny size",
        "exit 2, one line: the weights do not fit this model",
    )
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "steps=3",
                           "model.tiny={hidden_size: 16, num_layers: 1, num_heads: 2, "
                           "intermediate_size: 32}"), "--resume", "--allow-config-change")  # fmt: skip
    assert_user_error(code, err, "no intact checkpoint")
    assert "does not fit this model" in err


def test_resume_past_the_configured_steps_is_refused(run, capsys):
    row(
        "resume-past-steps",
        "`--resume steps=1` when the checkpoint is at step 2",
        "exit 2, one line: pass steps=2 or more",
    )
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "steps=1"), "--resume")
    assert_user_error(code, err, "past steps=1", "steps=2")


# ------------------------------------------------------------------ one run per directory


def test_non_empty_run_dir_without_resume_is_refused_and_untouched(run, capsys):
    row(
        "rundir-not-empty",
        "`train` into a run directory that holds a run, without --resume",
        "exit 2, one line naming --resume and --overwrite; nothing changed",
    )

    def listing():
        return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != ".lock"}

    before = listing()
    code, _, err = run_cli(capsys, *train_args(run, *RUN))
    assert_user_error(code, err, "not empty", "--resume", "--overwrite")
    assert listing() == before


def test_readme_sequence_does_not_mix_two_runs(run, capsys):
    row("rundir-readme-sequence", "README: train grpo, then `train method.spec=clip_b` into the "
        "same directory, then with --resume", "both refused (the second names "
        "--allow-config-change); the grpo run is intact")  # fmt: skip
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "method.spec=clip_b"))
    assert_user_error(code, err, "--resume", "--overwrite")
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "method.spec=clip_b"), "--resume")
    assert_user_error(code, err, "method.spec 'grpo' -> 'clip_b'", "--allow-config-change")
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_overwrite_empties_the_run_first(run, capsys):
    row(
        "rundir-overwrite",
        "`train --overwrite` into a finished run (3 checkpoints of another method)",
        "the old run is deleted first: only the new run's files remain",
    )
    code, _, err = run_cli(capsys, *train_args(run, "steps=1", "method.spec=clip_b"),
                           "--overwrite")  # fmt: skip
    assert code == 0, err
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1]
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-1"]
    assert not (run / "batches").exists()


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    row("rundir-overwrite-foreign", "`train --overwrite --run-dir ~/notes` (a folder that is "
        "not a run)", "exit 2, one line; nothing deleted")  # fmt: skip
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("precious")
    code, _, err = run_cli(capsys, *train_args(notes, "steps=1"), "--overwrite")
    assert_user_error(code, err, "does not look like a run directory")
    assert (notes / "thesis.tex").read_text() == "precious"


def test_resume_and_overwrite_together_are_refused(run, capsys):
    row("rundir-resume-and-overwrite", "`train --resume --overwrite`", "exit 2, one line")
    code, _, err = run_cli(capsys, *train_args(run, *RUN), "--resume", "--overwrite")
    assert_user_error(code, err, "--resume and --overwrite")


@pytest.mark.parametrize("override", [
    pytest.param("method.spec=clip_v", id=row("resume-changed-method", "`--resume` with another "
                 "method.spec", "exit 2, one line naming the field and --allow-config-change")),
    pytest.param("seed=5", id=row("resume-changed-seed", "`--resume` with another seed",
                                  "exit 2, one line")),
    pytest.param("optim.lr=0.02", id=row("resume-changed-lr", "`--resume` with another optim.lr",
                                         "exit 2, one line")),
    pytest.param("rollout.group_size=2", id=row("resume-changed-group-size", "`--resume` with "
                 "another rollout.group_size", "exit 2, one line")),
    pytest.param("task.options={digits: 2, terms: 2}", id=row("resume-changed-task", "`--resume` "
                 "with other task.options", "exit 2, one line")),
])  # fmt: skip
def test_resume_with_a_changed_config_is_refused(run, capsys, override):
    code, _, err = run_cli(capsys, *train_args(run, *RUN, override), "--resume")
    assert_user_error(code, err, override.split("=")[0], "--allow-config-change")


def test_resume_may_extend_steps_and_may_change_config_when_asked(run, capsys):
    row("resume-extend-steps", "`--resume steps=3` (a longer run)", "allowed: continues at step 3")
    row(
        "resume-allow-config-change",
        "`--resume --allow-config-change optim.lr=0.02`",
        "allowed: continues with the new lr",
    )
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "steps=3"), "--resume")
    assert code == 0, err
    code, _, err = run_cli(capsys, *train_args(run, *RUN, "steps=4", "optim.lr=0.02"),
                           "--resume", "--allow-config-change")  # fmt: skip
    assert code == 0, err
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3, 4]


def test_second_trainer_in_the_same_directory_is_refused(run, capsys):
    row(
        "rundir-in-use",
        "a second `train --resume` while another trainer holds the directory",
        "exit 2, one line 'in use by another training process'",
    )
    from entropy_dynamics.train.config import load_config

    cfg = load_config(run / "config.yaml", [f"logging.run_dir={run}"])
    with claim_run_dir(cfg, resume=True, overwrite=False, allow_config_change=False):
        code, _, err = run_cli(capsys, *train_args(run, *RUN, "steps=3"), "--resume")
    assert_user_error(code, err, "in use by another training process")


def test_run_dir_that_is_a_file_or_under_a_file_is_one_line(tmp_path, capsys):
    row("rundir-is-file", "`--run-dir` naming a file", "exit 2, one line")
    row("rundir-under-file", "`--run-dir` below a file (cannot be created)", "exit 2, one line")
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(capsys, *train_args(tmp_path / "f", "steps=1"))
    assert_user_error(code, err, "is a file")
    code, _, err = run_cli(capsys, *train_args(tmp_path / "f" / "run", "steps=1"))
    assert_user_error(code, err, "cannot write there")


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only directory: a read-only tmpfs when root may mount, else chmod 555."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                                 capture_output=True).returncode == 0  # fmt: skip
        if not mounted:
            pytest.skip("root without permission to mount a read-only tmpfs")
        yield path
        subprocess.run(["umount", str(path)], check=False)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


def test_read_only_run_dir_is_one_line(read_only_dir, capsys):
    row("rundir-read-only", "`--run-dir` on a read-only file system", "exit 2, one line "
        "'cannot write there (Read-only file system)'")  # fmt: skip
    code, _, err = run_cli(capsys, *train_args(read_only_dir / "run", "steps=1"))
    assert_user_error(code, err, "cannot write there")
