"""Length buckets (`models._buckets`) and the ONNX Runtime device choice, without any model."""

from __future__ import annotations

import random

import numpy as np
import pytest

from models._buckets import encode_in_buckets, plan_buckets
from models.embedder import torch_device
from models.onnx_encoder import choose_providers


def _fake_run(calls: list):
    """A stand-in encoder: each row depends only on its own unpadded tokens, never on its neighbours."""

    def run(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        calls.append(input_ids.shape)
        rows = []
        for ids, m in zip(input_ids, mask):
            real = ids[m.astype(bool)]
            rows.append([real.sum(), len(real), real[0], real[-1]])
        return np.array(rows, dtype=np.float32)

    return run


def _sequences(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randint(1, 999) for _ in range(rng.choice([3, 5, 12, 30, 31, 80, 200]))] for _ in range(n)]


def test_bucketed_rows_come_back_in_input_order_and_match_one_unbucketed_run():
    ids = _sequences(50)
    calls: list = []
    bucketed = encode_in_buckets(ids, _fake_run(calls), 4)
    width = max(len(s) for s in ids)  # the unbucketed way: one batch padded to the longest sequence
    padded = np.array([s + [0] * (width - len(s)) for s in ids], dtype=np.int64)
    mask = np.array([[1] * len(s) + [0] * (width - len(s)) for s in ids], dtype=np.int64)
    np.testing.assert_array_equal(bucketed, _fake_run([])(padded, mask))
    expected = np.array([[sum(s), len(s), s[0], s[-1]] for s in ids], dtype=np.float32)
    np.testing.assert_array_equal(bucketed, expected)
    assert len(calls) > 1  # it really did split


def test_buckets_pad_far_less_than_one_batch_of_mixed_lengths():
    lengths = [len(s) for s in _sequences(64, seed=1)]
    buckets = plan_buckets(lengths)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in buckets)
    assert padded < 0.5 * max(lengths) * len(lengths)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))


def test_bucket_sizes_respect_the_cap_and_the_floor():
    lengths = list(range(1, 201))
    buckets = plan_buckets(lengths, max_size=16, min_size=4)
    assert all(len(b) <= 16 for b in buckets)
    assert all(len(b) >= 4 for b in buckets[:-1])
    assert plan_buckets([7] * 10, max_size=64) == [list(range(10))]  # equal lengths never split
    assert plan_buckets([]) == []
    with pytest.raises(ValueError):
        plan_buckets([1, 2], max_size=0)


@pytest.mark.parametrize(
    ("variant", "device", "available", "providers", "runs_on"),
    [
        ("fp32", "cpu", ["CPUExecutionProvider"], ["CPUExecutionProvider"], "cpu"),
        ("fp32", "cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"],
         [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"], "cuda:1"),
        ("fp32", "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"],
         [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"], "cuda"),
        ("fp32", "cuda:0", ["CPUExecutionProvider"], ["CPUExecutionProvider"], "cpu"),  # no CUDA build: CPU
        ("int8", "cuda:0", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"], "cpu"),
    ],
)
def test_onnx_providers_follow_the_device_and_keep_int8_on_the_cpu(variant, device, available, providers, runs_on):
    assert choose_providers(variant, device, available) == (providers, runs_on)


def test_torch_int8_runs_on_the_cpu_beside_a_gpu():
    assert torch_device("int8", "cuda:0") == "cpu"
    assert torch_device("fp32", "cuda:0") == "cuda:0"
    assert torch_device("fp16", "cuda:0") == "cuda:0"
    assert torch_device("fp32", "cpu") == "cpu"
