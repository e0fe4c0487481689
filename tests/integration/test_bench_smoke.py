"""The benchmark suite cannot rot: `python -m bench --quick` runs cheap cases end to end.

Real processes (tiny-model LitServe servers, the gateway, wrk or the Python load generator, Delta
and DuckDB) but seconds per case; the figures mean nothing at this size, so only the shape of each
`<case>.json` is checked, never the targets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CASES = ["overhead", "lone", "batching", "cache", "sql", "ceiling"]
REQUIRED = {"case", "compared", "ratio", "target", "meets_target", "skipped", "raw", "machine", "quick"}
MACHINE = {"date", "cores", "torch_threads", "packages", "load_generator", "loadavg_at_start"}


def test_quick_bench_writes_a_result_with_ratio_target_and_machine_facts_per_case(tmp_path):
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *CASES, "--quick", "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=ROOT, env={**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for case in CASES:
        doc = json.loads((out / f"{case}.json").read_text())
        assert REQUIRED <= set(doc), f"{case}: missing {REQUIRED - set(doc)}"
        assert doc["case"] == case and doc["quick"] is True
        assert doc["skipped"] is None, f"{case}: {doc['skipped']}"
        assert isinstance(doc["ratio"], float) and doc["ratio"] > 0, f"{case}: ratio {doc['ratio']!r}"
        assert isinstance(doc["meets_target"], bool)
        assert doc["target"][0] in "≥≤"
        assert MACHINE <= set(doc["machine"]), f"{case}: machine facts missing {MACHINE - set(doc['machine'])}"
        assert doc["raw"], f"{case}: no raw figures"
    overhead = json.loads((out / "overhead.json").read_text())["raw"]
    assert overhead["c1"]["rounds"] > 0 and overhead["c1"]["errors"] == 0
    assert overhead["gateway_c32"][0]["requests"] > 0 and overhead["gateway_c32"][0]["errors"] == 0
    assert "case" in proc.stdout and "overhead" in proc.stdout  # the table was printed


def test_the_accelerator_script_serves_each_version_through_server_and_gateway(tmp_path):
    # What a GPU machine runs (`python -m bench.accelerator`); here `--device auto` resolves to the CPU.
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.accelerator", "--quick", "--clients", "1,8", "--out", str(out),
         "--work", str(tmp_path / "work")],
        cwd=ROOT, env={**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    doc = json.loads((out / "accelerator.json").read_text())
    assert doc["accelerator"]["device"] in ("cpu", "cuda") and doc["clients"] == ["1", "8"]
    assert doc["rows"], "no version measured"
    for row in doc["rows"]:
        assert row["in_process_texts_per_s"] > 0
        for via in ("server", "gateway"):
            for clients in ("1", "8"):
                load = row[via][clients]
                assert load["rps"] > 0 and load["errors"] == 0, (row["version"], via, clients, load)
    assert "| v1 (default) |" in proc.stdout and "gateway" in proc.stdout  # the Markdown table was printed
    bad = subprocess.run([sys.executable, "-m", "bench.accelerator", "--clients", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--clients takes client counts of at least 1" in bad.stderr
