"""The ``reproduce`` subcommand: ``entropy-dynamics reproduce NAME|all [--quick] [--out DIR]``.

The package's ``cli.py`` calls ``register(subparsers)``; this module also runs on its own:
``python -m entropy_dynamics.experiments.cli theory --quick``.
"""

from __future__ import annotations

import argparse
import sys

from . import DESCRIPTIONS, names, run

__all__ = ["main", "register"]


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``reproduce`` to an ``argparse`` subparsers object; returns the new parser.

    The parser's default ``func`` is ``run_from_args(args) -> int`` (the exit status).
    """
    listing = "\n".join(f"  {n:15s} {d}" for n, d in DESCRIPTIONS.items())
    parser = subparsers.add_parser(
        "reproduce",
        help="check the paper's claims at small scale (writes result.json, figures, report.md)",
        description="Run one of the paper's claims as an experiment, or all of them.\n\n"
        f"experiments:\n{listing}\n  {'all':15s} every experiment above but "
        f"{', '.join(n for n in names(include_long=True) if n not in names())} (over an hour "
        "each), one report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "name",
        choices=[*names(include_long=True), "all"],
        metavar="NAME",
        help=f"one of: {', '.join(names(include_long=True))}, all",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (seconds each; what the test suite runs)"
    )
    parser.add_argument(
        "--out",
        default="runs/reproduce",
        metavar="DIR",
        help="output folder: DIR/NAME/result.json, figures, DIR/report.md (default: %(default)s)",
    )
    parser.set_defaults(func=run_from_args)
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Run the experiments named in ``args``; print one line per claim; return 0."""
    todo = names() if args.name == "all" else [args.name]
    for name in todo:
        result = run(name, out_dir=args.out, quick=args.quick)
        held = sum(c.holds for c in result.claims)
        print(f"[{name}] {held}/{len(result.claims)} claims hold ({result.duration_s:.1f} s)")
        for claim in result.claims:
            mark = "holds" if claim.holds else "DOES NOT HOLD"
            print(f"  - {mark}: {claim.claim}")
    print(f"report: {args.out}/report.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point with the same arguments as ``entropy-dynamics reproduce``."""
    parser = argparse.ArgumentParser(prog="entropy-dynamics")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["reproduce", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
