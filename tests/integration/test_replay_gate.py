"""Replay into a candidate and the offline gate, on real Delta tables and the real registry (tiny models),
and through `tandem` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from assets.offline_replay import ReplayFilters, ReplayThresholds, evaluate_candidate
from models.gate import gate_verdict
from models.workflows import load_workflows
from orchestration.bootstrap import Platform
from orchestration.cli_replay import _resolver
from tests.integration.conftest import ROOT, base_env
from tests.integration.dagster_support import LABELS, make_home
from tests.integration.requests_support import request_rows

TEXTS = [f"logged request number {i} about markets and matches" for i in range(60)]


@pytest.fixture
def home(tmp_path):
    """A home with classifier 1 stable (logged traffic), 2 = the same model, 3 = another salt (disagrees)."""
    h = make_home(tmp_path)
    h.registry.register("classifier", "classify", h.artifact("classifier-2", "tiny-classify", labels=LABELS),
                        version="2", actor="test")
    h.registry.register("classifier", "classify",
                        h.artifact("classifier-3", "tiny-classify", labels=LABELS, salt="v3"), version="3", actor="test")
    resolve = _resolver(Platform.open(h.settings))
    h.lake.append("requests", [
        *request_rows(resolve, model="classifier", task="classify", version="1", texts=TEXTS[:30], workflow="classify"),
        *request_rows(resolve, model="classifier", task="classify", version="1", texts=TEXTS[30:45]),
        *request_rows(resolve, model="classifier", task="classify", version="1", texts=TEXTS[45:50], pii_policy="hash"),
        *request_rows(resolve, model="classifier", task="classify", version="1", texts=TEXTS[50:], tenant="other"),
    ])
    h.resolve = resolve
    return h


def _evaluate(h, candidate: str, **filters) -> dict:
    return evaluate_candidate(h.lake, h.registry, h.resolve, load_workflows(), "classifier", candidate,
                              ReplayFilters(**filters), ReplayThresholds())


def test_replaying_the_log_through_the_same_model_agrees_and_through_another_disagrees(home):
    same = _evaluate(home, "2", tenant="acme")
    assert same["passed"] and same["n_replayed"] == 45 and same["agreement"] == 1.0
    assert same["n_skipped"] == 5 and json.loads(same["skipped"]) == {"input not kept (pii policy hash)": 5}
    assert json.loads(same["baseline_versions"]) == ["1"] and same["score_distance"] == pytest.approx(0.0)
    assert same["candidate_p50_ms"] is not None and same["logged_p50_ms"] == pytest.approx(20.0)
    other = _evaluate(home, "3")
    assert not other["passed"] and other["n_replayed"] == 55
    assert other["agreement_upper"] < 0.85 and "label agreement with stable" in other["reasons"]
    few = _evaluate(home, "2", limit=10)
    assert not few["passed"] and "not enough evidence" in few["reasons"]


def test_the_gate_follows_the_newest_replay_of_the_version(home):
    assert not gate_verdict(home.registry, home.lake, "classifier", "3").passed
    home.lake.append("replay_evaluations", [_evaluate(home, "2"), _evaluate(home, "3")])
    assert gate_verdict(home.registry, home.lake, "classifier", "2").passed
    failed = gate_verdict(home.registry, home.lake, "classifier", "3")
    assert not failed.passed and "replay: failed" in failed.summary


def _tandem(home, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=ROOT, input=stdin,
                          env=base_env(Path(home.settings.home)), capture_output=True, text=True, timeout=300)


def test_tandem_replay_then_canary_as_a_user_runs_it(home):
    refused = _tandem(home, "models", "canary", "classifier", "2", "--weight", "0.1")
    assert refused.returncode == 1
    assert "tandem replay classifier --candidate 2" in refused.stderr and "--force --reason" in refused.stderr

    replayed = _tandem(home, "replay", "classifier", "--candidate", "2", "--tenant", "acme")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "items replayed" in replayed.stdout and "skipped 5: input not kept (pii policy hash)" in replayed.stdout
    assert "passed" in replayed.stdout
    bad = _tandem(home, "replay", "classifier", "--candidate", "3", "--since", "2000-01-01")
    assert bad.returncode == 1 and "label agreement with stable" in bad.stdout and "not passed" in bad.stdout
    rows = home.lake.read("replay_evaluations").to_pylist()
    assert sorted((r["candidate_version"], r["passed"]) for r in rows) == [("2", True), ("3", False)]

    ok = _tandem(home, "models", "canary", "classifier", "2", "--weight", "0.1", "--reason", "replayed")
    assert ok.returncode == 0, ok.stderr
    assert "offline gate: passed (replay:" in ok.stdout
    no_reason = _tandem(home, "models", "canary", "classifier", "3", "--force")
    assert no_reason.returncode == 1 and "needs a reason" in no_reason.stderr
    forced = _tandem(home, "models", "canary", "classifier", "3", "--force", "--reason", "INC-7 hotfix")
    assert forced.returncode == 0, forced.stderr
    events = home.lake.read("registry_events", filter=pc.field("alias") == "canary").to_pylist()
    reasons = [e["reason"] for e in sorted(events, key=lambda e: e["at"])]
    assert reasons[0] == "replayed"
    assert reasons[1].startswith("forced past the offline gate (replay: failed") and reasons[1].endswith("INC-7 hotfix")


def test_the_replay_asset_runs_the_same_evaluation_from_dagster_config(home):
    import dagster as dg

    from assets import replay_evaluation

    config = {"ops": {"replay_evaluation": {"config": {"model": "classifier", "candidate": "2", "tenant": "acme",
                                                       "since": "2000-01-01"}}}}
    with dg.instance_for_test() as instance:
        result = dg.materialize([replay_evaluation], resources=home.resources, instance=instance, run_config=config)
    meta = result.asset_materializations_for_node("replay_evaluation")[0].metadata
    assert meta["passed"].value is True and meta["n_replayed"].value == 45 and meta["n_skipped"].value == 5
    (row,) = home.lake.read("replay_evaluations").to_pylist()
    assert row["run_id"] == result.run_id and json.loads(row["filters"])["tenant"] == "acme"
    assert gate_verdict(home.registry, home.lake, "classifier", "2").passed
