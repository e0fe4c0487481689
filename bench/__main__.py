"""`python -m bench [case ...] [--quick]`: run benchmark cases and write bench/results/<case>.json."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

from bench._lab import RunConfig
from bench._report import markdown_table
from bench._runner import CASES, run

RESULTS = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="Run Tandem's benchmark cases.")
    p.add_argument("cases", nargs="*", metavar="case", help=f"cases to run (default: all): {', '.join(CASES)}")
    p.add_argument("--quick", action="store_true",
                   help="seconds per case with tiny models, for smoke tests (figures are not meaningful)")
    p.add_argument("--out", type=Path, help="results folder (default: bench/results, bench/results/quick with --quick)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tandem-bench",
                   help="scratch folder; the real models' home and the SQL data set are kept here between runs")
    p.add_argument("--fresh", action="store_true", help="rebuild what earlier runs left in --work")
    p.add_argument("--reps", type=int, help="repetitions per measurement (default 3; 2 with --quick)")
    p.add_argument("--duration", type=float, help="seconds per load run (whole seconds; default 6, 1 with --quick)")
    p.add_argument("--batch-docs", type=int, help="documents in the batch case's partition (default 20000)")
    p.add_argument("--sql-rows", type=int, help="rows of the sql case's predictions table (default 10M)")
    p.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk exists")
    p.add_argument("--markdown", action="store_true",
                   help="print the results already in --out as a Markdown table (for docs/performance.md) and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    config = RunConfig.make(quick=args.quick, work_dir=args.work.absolute(), reps=args.reps,
                            duration_s=args.duration, fresh=args.fresh, batch_docs=args.batch_docs,
                            sql_rows=args.sql_rows)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    if args.markdown:
        print(markdown_table(out))
        return 0
    # SIGTERM unwinds like Ctrl-C, so the processes this run started are stopped (by PID) on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        results = run(args.cases or list(CASES), config, out, force_python_load=args.python_load)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if any(r.skipped and r.skipped.startswith("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
