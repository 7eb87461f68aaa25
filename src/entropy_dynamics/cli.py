"""The `entropy-dynamics` command: train, eval, report, demo, lens, reproduce.

    entropy-dynamics train --config configs/demo.yaml rollout.group_size=8 method.spec=clip_b
    entropy-dynamics train --config configs/demo.yaml --resume
    entropy-dynamics eval runs/demo/grpo --k 16
    entropy-dynamics report runs/demo/grpo runs/demo/clip_b --out runs/demo
    entropy-dynamics demo
    entropy-dynamics lens runs/demo/grpo
    entropy-dynamics reproduce all --quick

Imports are lazy: `import entropy_dynamics.cli` and `--help` load neither transformers nor the
trainer. Every error reaches `main`'s one handler: a user error (bad config or input, a missing,
unwritable or full path, a damaged checkpoint) prints one line (what, where, what is valid) and
exits 2; anything else prints one line asking for a report and exits 1; `--debug` (anywhere on
the command line, or ENTROPY_DYNAMICS_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from entropy_dynamics.commands.demo import run_demo
from entropy_dynamics.commands.lens import run_lens

# Light modules only (no torch): `entropy-dynamics --help` stays under a second; each command
# imports what pulls in torch or transformers when it runs.
from entropy_dynamics.train.config import describe_fields, load_config

try:
    from entropy_dynamics.experiments.cli import register as register_experiments
except ImportError:  # experiments not installed in this build
    register_experiments = None

MAX_MESSAGE_CHARS = 600
"""An error line longer than this is cut (a 1 MB spec must not give a 1 MB message)."""

_OVERRIDES_HELP = (
    "dotted overrides section.field=value (YAML values), e.g. rollout.group_size=8 "
    "optim.lr=3e-4 method.spec='ppo + clip_b(mu=2.0)' task.options.digits=3; sections: model, "
    "task, rollout, method, optim, logging; top-level: steps, seed, device"
)


def _cmd_train(args: argparse.Namespace) -> int:
    from entropy_dynamics.train.loop import (  # torch, transformers
        NonFiniteLossError,
        TrainInterrupted,
        train,
    )

    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"logging.run_dir={args.run_dir}")
    cfg = load_config(args.config, overrides)
    try:
        run_dir = train(cfg, resume=args.resume, overwrite=args.overwrite,
                        allow_config_change=args.allow_config_change)  # fmt: skip
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except TrainInterrupted as stop:  # the checkpoint is saved: a clean stop, not an error
        run_dir = stop.run_dir
    print(f"run directory: {run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from entropy_dynamics.commands.evaluate import evaluate_run

    result = evaluate_run(
        Path(args.run_dir), k=args.k, n_eval=args.n, checkpoint=args.checkpoint,
        temperature=args.temperature, write=not args.no_write,
    )  # fmt: skip
    print(json.dumps(result, indent=1))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from entropy_dynamics.report import write_report

    out = Path(args.out) if args.out else Path(args.run_dirs[0]).parent
    path = write_report([Path(p) for p in args.run_dirs], out, title=args.title)
    print(f"report: {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    summary = run_demo(
        config=args.config, out_dir=Path(args.out), overrides=list(args.overrides),
        methods=args.methods,
    )  # fmt: skip
    for run in summary["runs"]:
        final = run["final"]
        print(
            f"{run['name']:8s} seed {run['seed']}  entropy {final['entropy']:.3f}  "
            f"reward {final['reward']:.3f}  "
            f"avg@{final['k']} {final['avg@k']:.3f}  pass@{final['k']} {final['pass@k']:.3f}"
        )
    print(f"demo took {summary['duration_s']:.0f} s; report: {Path(args.out) / 'report.md'}")
    return 0


def _cmd_lens(args: argparse.Namespace) -> int:
    return run_lens(Path(args.run_dir), step=args.step, out=args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="entropy-dynamics",
        description="Entropy-aware RL fine-tuning of language models (arXiv 2602.03392): train "
        "with GRPO / Clip_B / Clip_V / ..., evaluate, and report how policy entropy moves.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a policy with the compact GRPO loop",
                       description="Train with the compact single-device GRPO loop. Writes "
                       "config.yaml, metrics.jsonl, eval.jsonl, checkpoints/ into the run "
                       "directory (logging.run_dir).",
                       epilog="fields and defaults (each documented in "
                       "entropy_dynamics/train/config.py):\n" + describe_fields(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="YAML configuration (configs/*.yaml)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the run directory's latest intact checkpoint")  # fmt: skip
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run directory's contents first (a non-empty run directory "
                   "is refused without --resume or --overwrite)")  # fmt: skip
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue although the method, seed, lr, group size, "
                   "task or model differ from the run's config.yaml")  # fmt: skip
    p.add_argument("--run-dir", metavar="DIR", help="shorthand for logging.run_dir=DIR")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's latest checkpoint on held-out prompts",
                       description="avg@k, unbiased pass@k, greedy accuracy and the pass-rate "
                       "histogram of a run's checkpoint on its task's held-out split, printed "
                       "as JSON and kept in RUN_DIR/eval.jsonl, one record per step, k and "
                       "checkpoint.")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--k", type=int, default=None, help="samples per problem (default: logging.eval_k)"
    )
    p.add_argument("--n", type=int, default=None, help="held-out problems (default: task.n_eval)")
    p.add_argument(
        "--checkpoint", default=None, help="a checkpoints/step-N folder (default: latest)"
    )
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: rollout.temperature)")  # fmt: skip
    p.add_argument("--no-write", action="store_true",
                   help="do not write RUN_DIR/eval.jsonl (by default the record replaces any of "
                   "the same step, k and checkpoint)")  # fmt: skip
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("report", help="figures + report.md + report.html comparing runs",
                       description="Write report.md, a self-contained report.html and PNG "
                       "figures comparing the given run directories.")  # fmt: skip
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output folder (default: the first run's parent)")
    p.add_argument("--title", default=None, help="report title")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="the paper's story in minutes: GRPO vs Clip_B vs Clip_V",
                       description="SFT-warm-start the tiny char model on arithmetic (cached), "
                       "train GRPO, Clip_B and Clip_V with one seed and budget, evaluate, and "
                       "write OUT/report.md, report.html, figures and summary.json.")  # fmt: skip
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--config", default=None, help="base config (default: configs/demo.yaml)")
    p.add_argument("--methods", nargs="+", default=None, metavar="NAME=SPEC",
                   help="runs as name=spec (default: grpo clip_b clip_v)")  # fmt: skip
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("lens", help="the unified lens on a run's saved training batch",
                       description="Read RUN_DIR/batches/step-N.pt (saved when "
                       "logging.save_batch_every > 0) and show, per method, which tokens it "
                       "touches and their predicted entropy contribution.")  # fmt: skip
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--step", type=int, default=None, help="batch step (default: the latest)")
    p.add_argument("--out", default=None, help="also write the lens result as JSON here")
    p.set_defaults(func=_cmd_lens)

    if register_experiments is not None:
        register_experiments(sub)
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    for command in sub.choices.values():  # also accepted after the command's name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=_DEBUG_HELP)  # fmt: skip
    return parser


_DEBUG_HELP = "on an error, show the Python traceback instead of a one-line message"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("ENTROPY_DYNAMICS_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the one handler: a line for people, the traceback on --debug
        if debug:
            raise
        code, message = describe_error(error)
        print(f"error: {one_line(message)}", file=sys.stderr)
        return code


def describe_error(error: BaseException) -> tuple[int, str]:
    """(exit code, message): 2 for an error of the user's input or environment, 1 otherwise."""
    if isinstance(error, OSError) and not _is_internal_oserror(error):
        where = f"{error.filename}: " if error.filename else ""
        what = error.strerror or str(error)
        hint = {
            errno.ENOSPC: "; free some space (a checkpointed run continues with --resume)",
            errno.EROFS: "; choose a writable directory (logging.run_dir, --out)",
            errno.EACCES: "; choose a path you may write to, or fix its permissions",
            errno.ENOENT: "; check the path",
            errno.EISDIR: "; give a file, not a directory",
        }.get(error.errno, "")
        return 2, f"{where}{what}{hint}" if error.strerror else f"{what}{hint}"
    if isinstance(error, ValueError):  # configs, inputs, damaged files: already for people
        return 2, str(error)
    if isinstance(error, RecursionError):
        return 2, "an input is nested too deeply to process (a spec or YAML value); simplify it"
    if isinstance(error, MemoryError):
        return 2, "out of memory; lower rollout.prompts_per_step, group_size or max_new_tokens"
    if isinstance(error, ImportError):
        return 2, f"{error}; install the optional dependency it names"
    if type(error).__name__ in ("NonFiniteLossError", "WeightsDivergedError"):
        return 1, str(error)
    return 1, (
        f"internal error {type(error).__name__}: {error} (rerun with --debug for the traceback "
        "and report it)"
    )


def _is_internal_oserror(error: OSError) -> bool:
    return isinstance(error, BlockingIOError | ChildProcessError | BrokenPipeError)


def one_line(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """The message on one line, cut to `limit` characters with a note of how much was left out."""
    text = " ".join(str(message).split())
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [message cut: {len(text)} characters in all]"


if __name__ == "__main__":
    raise SystemExit(main())
