"""The canary guard's evidence: its tests, the minimum samples, and same-input replays per task."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from assets.canary import CanaryConfig
from assets.canary_guard import Arm, judge
from assets.canary_replay import Replay, replay
from assets.stats import mean_bounds, normal_cdf, normal_quantile, two_proportion_test, wilson_bounds
from models.corpus import generate_demo_corpus
from models.schemas import ClassifyOut, EmbedOut, RankedDocument, RerankOut
from orchestration.schedules import CanaryLoop

CFG = CanaryConfig()


# --- statistics --------------------------------------------------------------------------------


def test_the_normal_distribution_without_scipy():
    assert normal_cdf(0.0) == pytest.approx(0.5)
    assert normal_cdf(1.959964) == pytest.approx(0.975, abs=1e-6)
    assert normal_quantile(0.95) == pytest.approx(1.6448536, abs=1e-6)
    assert normal_quantile(0.5) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError):
        normal_quantile(1.0)


def test_the_two_proportion_test_is_one_sided_and_pooled():
    # Pooled rate 11/200: z = (0.10 - 0.01) / sqrt(0.055 * 0.945 * 2/100) = 2.7915, p = 1 - Phi(z).
    assert two_proportion_test(1, 100, 10, 100) == pytest.approx(0.002624, rel=1e-3)
    assert two_proportion_test(10, 100, 1, 100) > 0.99  # canary better: no evidence it is worse
    assert 0.05 < two_proportion_test(2, 100, 4, 100) < 0.5  # a small difference on 100 calls proves nothing
    assert two_proportion_test(0, 50, 0, 50) == 1.0


def test_bounds_narrow_with_the_sample():
    lo_small, hi_small = wilson_bounds(9, 10, 0.95)
    lo_big, hi_big = wilson_bounds(900, 1000, 0.95)
    assert lo_small < lo_big < 0.9 < hi_big < hi_small
    assert wilson_bounds(10, 10, 0.95)[1] == 1.0
    mean, lower, upper = mean_bounds([0.98, 0.99, 0.97, 0.99], 0.95)
    assert mean == pytest.approx(0.9825) and lower < mean < upper


# --- live evidence -----------------------------------------------------------------------------


def agreeing_replay(n: int = 200) -> Replay:
    return Replay("embed", n=n, cosines=[0.99] * n)


def arm(requests: int, errors: int, latency: float = 10.0) -> Arm:
    return Arm(requests, errors, [latency] * (requests - errors))


def test_below_the_minimum_sample_per_arm_the_decision_is_hold_never_rollback_or_pass():
    j = judge({"stable": arm(500, 0), "canary": arm(5, 5)}, agreeing_replay(), CanaryConfig(min_requests=20))
    assert j.decision == "hold" and not j.breaches
    assert "not enough evidence" in j.holds[0] and "5 canary" in j.holds[0]
    j = judge({"stable": arm(500, 0), "canary": arm(19, 0)}, agreeing_replay(), CanaryConfig(min_requests=20))
    assert j.decision == "hold"


def test_a_significantly_higher_canary_error_rate_rolls_back_with_its_p_value():
    j = judge({"stable": arm(100, 1), "canary": arm(100, 10)}, agreeing_replay(), CFG)
    assert j.decision == "rollback"
    assert j.evidence["error_rate_p_value"] == pytest.approx(0.002624, rel=1e-3)
    assert j.breaches[0].startswith("error rate 0.100 vs stable 0.010")


def test_an_error_difference_within_noise_passes():
    j = judge({"stable": arm(100, 2), "canary": arm(100, 4)}, agreeing_replay(), CFG)
    assert j.decision == "pass", j.reasons
    assert j.evidence["error_rate_p_value"] > 0.05


def test_p95_latency_is_judged_only_with_enough_answered_calls():
    slow = {"stable": arm(100, 0, latency=10.0), "canary": arm(100, 0, latency=80.0)}
    assert judge(slow, agreeing_replay(), CFG).breaches[0].startswith("p95 latency 80.0 ms")
    # 100 canary calls, 90 failed: the error test fires, but 10 answered calls are too few for a p95.
    j = judge({"stable": arm(100, 0), "canary": arm(100, 90, latency=80.0)}, agreeing_replay(), CFG)
    assert not any("p95" in b for b in j.breaches) and any("p95" in h for h in j.holds)


# --- same-input replay ---------------------------------------------------------------------------


def _vector(text: str, dim: int = 64) -> np.ndarray:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


class FakeEmbedder:
    """`noise` ~ the per-component perturbation of a quantized copy; `other=True` is a different model."""

    task = "embed"

    def __init__(self, noise: float = 0.0, other: bool = False):
        self.noise, self.other = noise, other

    def predict_batch(self, inputs):
        out = []
        for x in inputs:
            v = _vector(("other:" if self.other else "") + x.text)
            if self.noise:
                v = v + np.random.default_rng(len(x.text)).standard_normal(v.size) * self.noise
            out.append(EmbedOut(embedding=[float(a) for a in v]))
        return out


class FakeClassifier:
    task = "classify"

    def __init__(self, labels: list[str]):
        self.labels = labels

    def predict_batch(self, inputs):
        return [ClassifyOut(label=(lab := self.labels[len(x.text) % len(self.labels)]), score=0.9,
                            scores={lab: 0.9}) for x in inputs]


class FakeReranker:
    task = "rerank"

    def __init__(self, reverse: bool = False):
        self.reverse = reverse

    def predict_batch(self, inputs):
        out = []
        for x in inputs:
            q = _vector(x.query)
            scored = [(float(q @ _vector(d)) * (-1 if self.reverse else 1), i, d) for i, d in enumerate(x.documents)]
            scored.sort(key=lambda t: -t[0])
            out.append(RerankOut(results=[RankedDocument(index=i, document=d, score=s) for s, i, d in scored]))
        return out


def run_replay(task: str, stable, canary, rows) -> Replay:
    ops = {"1": stable, "2": canary}
    return replay(task, "m", "1", "2", rows, lambda model, version: ops[version], batch_size=32)


ROWS = generate_demo_corpus(200, seed=3)


def test_an_int8_like_embedder_at_cosine_0_986_passes_and_a_different_model_rolls_back():
    # noise per component sigma with 64 dims: cosine ~ 1 / sqrt(1 + 64 sigma^2) = 0.986
    sigma = math.sqrt((1 / 0.986**2 - 1) / 64)
    close = run_replay("embed", FakeEmbedder(), FakeEmbedder(noise=sigma), ROWS)
    assert close.n == 200 and 0.98 < float(np.mean(close.cosines)) < 0.99
    j = judge({"stable": arm(100, 0), "canary": arm(100, 0)}, close, CFG)
    assert j.decision == "pass", j.reasons
    assert j.evidence["agreement_upper"] >= j.evidence["agreement"] > 0.98

    other = run_replay("embed", FakeEmbedder(), FakeEmbedder(other=True), ROWS)
    j = judge({"stable": arm(100, 0), "canary": arm(100, 0)}, other, CFG)
    assert j.decision == "rollback" and j.breaches[0].startswith("cosine agreement with stable")
    assert j.evidence["agreement_upper"] < 0.5


def test_a_classifier_with_different_labels_rolls_back_on_agreement_and_accuracy():
    labels = ["finance", "sports", "technology", "health", "travel", "food"]
    same = run_replay("classify", FakeClassifier(labels), FakeClassifier(labels), ROWS)
    j = judge({"stable": arm(100, 0), "canary": arm(100, 0)}, same, CFG)
    assert j.decision == "pass" and j.evidence["agreement"] == 1.0 and j.evidence["accuracy_drop"] == 0.0

    # Labelled by what stable says, so stable scores 1.0 and the canary's accuracy shows its disagreement.
    labelled = [{"text": r["text"], "label": labels[len(r["text"]) % len(labels)]} for r in ROWS]
    shuffled = run_replay("classify", FakeClassifier(labels), FakeClassifier(labels[1:] + labels[:1]), labelled)
    j = judge({"stable": arm(100, 0), "canary": arm(100, 0)}, shuffled, CFG)
    assert j.decision == "rollback"
    assert [b.split(" ")[0] for b in j.breaches] == ["label", "accuracy"]
    assert j.evidence["agreement"] == 0.0 and j.evidence["accuracy_stable"] == 1.0


def test_an_accuracy_drop_is_judged_with_its_sample_size():
    def paired(n_pairs: int) -> Replay:
        # per 20 items: both right 14, only stable right 3, only canary right 2, both wrong 1: drop 0.05
        unit = [(True, True)] * 14 + [(True, False)] * 3 + [(False, True)] * 2 + [(False, False)]
        items = unit * n_pairs
        return Replay("classify", n=len(items), agree=[True] * len(items),
                      correct_stable=[a for a, _ in items], correct_canary=[b for _, b in items])

    small = judge({"stable": arm(100, 0), "canary": arm(100, 0)}, paired(2), CFG)  # 40 items
    assert small.decision == "pass" and small.evidence["accuracy_drop_lower"] < 0
    big = judge({"stable": arm(100, 0), "canary": arm(100, 0)}, paired(40), CFG)  # 800 items
    assert big.decision == "rollback" and big.breaches[0].startswith("accuracy 0.800 vs stable 0.850")


def test_rerankers_are_compared_on_the_same_queries_by_top_k():
    same = run_replay("rerank", FakeReranker(), FakeReranker(), ROWS[:60])
    j = judge({"stable": arm(100, 0), "canary": arm(100, 0)}, same, CFG)
    assert j.decision == "pass" and j.evidence["agreement"] == 1.0 and j.evidence["topk_overlap"] == 1.0

    reversed_ = run_replay("rerank", FakeReranker(), FakeReranker(reverse=True), ROWS[:60])
    j = judge({"stable": arm(100, 0), "canary": arm(100, 0)}, reversed_, CFG)
    assert j.decision == "rollback"
    assert {b.split(" with")[0] for b in j.breaches} == {"top-1 agreement", "top-k overlap"}


def test_a_small_replay_holds_and_a_canary_that_fails_every_row_rolls_back():
    j = judge({"stable": arm(100, 0), "canary": arm(100, 0)}, agreeing_replay(n=10), CFG)
    assert j.decision == "hold" and "replay: 10 comparable items" in j.holds[0]

    class Broken(FakeEmbedder):
        def predict_batch(self, inputs):
            raise RuntimeError("cannot load")

    rep = run_replay("embed", FakeEmbedder(), Broken(), ROWS[:50])
    assert rep.cosines == [0.0] * 50 and "canary failed on every evaluation row" in rep.notes[0]
    assert judge({"stable": arm(100, 0), "canary": arm(100, 0)}, rep, CFG).decision == "rollback"


# --- configuration -------------------------------------------------------------------------------


def test_the_canary_loop_reads_its_environment_and_carries_it_to_the_job():
    loop = CanaryLoop.from_env({"TANDEM_CANARY_CRON": "* * * * *", "TANDEM_CANARY_LADDER": "0.1, 0.5",
                                "TANDEM_CANARY_PASSES": "1", "TANDEM_CANARY_MIN_REQUESTS": "5",
                                "TANDEM_CANARY_WINDOW_MINUTES": "3", "TANDEM_CANARY_GUARD_INTERVAL_S": "5"})
    assert loop == CanaryLoop(cron="* * * * *", ladder=(0.1, 0.5), passes_required=1, min_requests=5,
                              window_minutes=3, guard_interval_s=5)
    cfg = CanaryConfig(**loop.run_config()["ops"]["canary_evaluation"]["config"])
    assert (cfg.ladder, cfg.passes_required, cfg.min_requests, cfg.window_minutes) == ([0.1, 0.5], 1, 5, 3)
    assert CanaryLoop.from_env({}) == CanaryLoop()
    assert CanaryLoop().cron == "*/10 * * * *" and CanaryLoop().guard_interval_s == 30
    with pytest.raises(ValueError, match="TANDEM_CANARY_PASSES='two'"):
        CanaryLoop.from_env({"TANDEM_CANARY_PASSES": "two"})
    with pytest.raises(ValueError, match="ladder"):
        CanaryLoop.from_env({"TANDEM_CANARY_LADDER": "0.5,2"})
