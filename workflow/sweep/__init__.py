"""Sweeps on the client side: the CSV (``csvfile``) and each run's exact launch (``plan``)."""

from workflow.sweep.csvfile import (
    COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    RUN_ID_RE,
    Problem,
    SweepCsvError,
    SweepRow,
    parse_sweep_csv,
    read_sweep_csv,
    validate_run_id,
    write_template,
)
from workflow.sweep.plan import RunPlan, fill_placeholders, plan_runs, plans_to_json, select_rows

__all__ = [
    "COLUMNS",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "RUN_ID_RE",
    "Problem",
    "RunPlan",
    "SweepCsvError",
    "SweepRow",
    "fill_placeholders",
    "parse_sweep_csv",
    "plan_runs",
    "plans_to_json",
    "read_sweep_csv",
    "select_rows",
    "validate_run_id",
    "write_template",
]
