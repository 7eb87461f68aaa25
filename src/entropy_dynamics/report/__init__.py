"""Figures and a Markdown / self-contained HTML report read from run directories (docs/report.md)."""

from entropy_dynamics.report.document import FIGURES, summary_table, write_report
from entropy_dynamics.report.runs import RunRecord, load_run, load_runs

__all__ = ["FIGURES", "RunRecord", "load_run", "load_runs", "summary_table", "write_report"]
