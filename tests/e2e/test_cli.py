"""`tandem` from a fresh TANDEM_HOME: init with the real reference models, then the registry commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from orchestration.cli import app

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-home")
    env = {**os.environ, "TANDEM_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "orchestration.cli", "init", "--corpus-size", "600"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    for step in range(1, 8):
        assert f"[{step}/7]" in out.stdout  # progress, one line per step
    return home


@pytest.fixture
def tandem(home, monkeypatch):
    monkeypatch.setenv("TANDEM_HOME", str(home))
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args))

    return invoke


def test_init_registers_the_reference_models_and_is_idempotent(tandem, home):
    before = json.loads(tandem("sql", "SELECT name, version FROM model_versions ORDER BY ALL", "-f", "json").stdout)
    assert {(r["name"], r["version"]) for r in before} >= {("embedder", "1"), ("embedder", "2"), ("embedder", "3"),
                                                          ("embedder", "4"), ("embedder", "5"), ("classifier", "1"), ("classifier", "2"),
                                                          ("classifier", "3"), ("reranker", "1"), ("reranker", "2"),
                                                          ("reranker", "3")}
    again = subprocess.run([sys.executable, "-m", "orchestration.cli", "init", "--corpus-size", "600"],
                           env={**os.environ, "TANDEM_HOME": str(home)}, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    after = json.loads(tandem("sql", "SELECT name, version FROM model_versions ORDER BY ALL", "-f", "json").stdout)
    assert after == before
    listing = tandem("models", "list")
    assert listing.exit_code == 0 and "embedder" in listing.stdout and "classify" in listing.stdout


def test_classifier_version_records_offline_metrics(tandem):
    shown = tandem("models", "show", "classifier", "1")
    assert shown.exit_code == 0, shown.stdout
    doc = json.loads(shown.stdout)
    assert 0.5 < doc["metrics"]["accuracy"] <= 1.0 and "macro_f1" in doc["metrics"]
    assert doc["training_data_hash"]


def test_every_init_version_records_an_evaluation_and_a_passing_one_is_stable(tandem, home):
    from models.settings import TandemSettings
    from orchestration.bootstrap import Platform

    registry = Platform.open(TandemSettings(home=home)).registry
    for name, versions in (("embedder", "12345"), ("classifier", "123"), ("reranker", "123")):
        evaluations = {}
        for version in versions:
            shown = tandem("models", "show", name, version)
            assert shown.exit_code == 0, shown.stdout
            evaluations[version] = json.loads(shown.stdout)["metrics"]["evaluation"]
            assert evaluations[version]["method"] in ("reference", "labelled")
        assert evaluations["1"]["passed"]
        stable = registry.state(name).stable
        assert evaluations[stable]["passed"], (name, stable)
    embedder_v4 = json.loads(tandem("models", "show", "embedder", "4").stdout)["metrics"]["evaluation"]
    assert embedder_v4["against"] == "embedder@1" and embedder_v4["value"] >= 0.99 and embedder_v4["n"] >= 100


def test_canary_rollback_and_history(tandem):
    # Forced past the offline gate when embedder@2 has no passing evaluation (the reason is recorded either way).
    moved = tandem("models", "canary", "embedder", "2", "--weight", "0.25", "--force", "--reason", "try int8")
    assert moved.exit_code == 0, moved.output
    state = json.loads(tandem("sql", "SELECT count(*) AS n FROM registry_events WHERE name = 'embedder'",
                              "-f", "json").stdout)
    assert state[0]["n"] >= 2
    assert tandem("models", "rollback", "embedder", "--reason", "too slow").exit_code == 0
    assert tandem("models", "history", "embedder").exit_code == 0
    rows = json.loads(tandem("sql", "SELECT alias, version, reason FROM registry_events "
                             "WHERE name = 'embedder' ORDER BY \"at\"", "-f", "json").stdout)
    (alias, version, reason), cleared = [(r["alias"], r["version"], r["reason"]) for r in rows][-2:]
    assert (alias, version) == ("canary", "2") and reason.endswith("try int8")
    assert cleared == ("canary", None, "rollback: canary 2 cleared: too slow")


def test_errors_exit_non_zero_with_a_one_line_reason(tandem):
    bad = tandem("models", "promote", "embedder", "9")
    assert bad.exit_code == 1
    assert "error:" in bad.output and len(bad.output.strip().splitlines()) <= 2
    bad_sql = tandem("sql", "SELEC nothing")
    assert bad_sql.exit_code == 1 and "error:" in bad_sql.output
    assert tandem("models", "canary", "embedder", "2", "--weight", "1.5").exit_code == 1


def test_workflows_list_and_show(tandem):
    listing = tandem("workflows", "list")
    assert listing.exit_code == 0
    for name in ("classify", "enrich", "search"):
        assert name in listing.stdout
    shown = tandem("workflows", "show", "enrich")
    assert json.loads(shown.stdout)["name"] == "enrich"


def test_train_on_a_labelled_csv_registers_an_unpromoted_version(tandem, tmp_path):
    from models.corpus import generate_demo_corpus, write_corpus

    rows = [{"body": r["text"], "topic": r["label"]} for r in generate_demo_corpus(240, seed=3)]
    path = write_corpus(tmp_path / "mine.csv", [{"text": r["body"], "label": r["topic"]} for r in rows])
    missing = tandem("models", "train", str(path), "--text-col", "body")
    assert missing.exit_code == 1 and "body" in missing.output
    trained = tandem("models", "train", str(path), "--epochs", "5")
    assert trained.exit_code == 0, trained.output
    assert "registered classifier@4" in trained.output  # after init's 1 (torch) and 2, 3 (ONNX Runtime)
    state = json.loads(tandem("sql", "SELECT count(*) AS n FROM model_versions WHERE name = 'classifier'",
                              "-f", "json").stdout)
    assert state[0]["n"] == 4
