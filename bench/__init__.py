"""Tandem's benchmark suite: ratios measured side by side in one run (see docs/performance.md).

`python -m bench [case ...] [--quick]` runs the cases (all by default), prints a table and writes
`bench/results/<case>.json`; `make bench` runs them all. Every figure is a ratio of two set-ups
measured back to back on the same machine, repeated, with the median reported, because the
absolute numbers of a shared machine mean little.
"""

from bench._lab import RunConfig
from bench._report import CASE_INFO, CaseResult, Target
from bench._runner import CASES, run

__all__ = ["CASES", "CASE_INFO", "CaseResult", "RunConfig", "Target", "run"]
