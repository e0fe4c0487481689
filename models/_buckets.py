"""Length buckets: run a batch of token sequences as a few padded groups with little padding waste.

Both MiniLM backends (torch and ONNX Runtime) tokenize a batch once without padding, then
`encode_in_buckets` sorts the sequences by length, groups neighbours while the padded share of a
group stays small, pads each group only to its own longest sequence, runs it and puts the rows back
in input order. A server hands `predict_batch` whatever its batch window collected, so a short
query batched beside long documents no longer pays for their length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["encode_in_buckets", "plan_buckets"]

MAX_BUCKET = 64
MIN_BUCKET = 8
MAX_PAD_FRACTION = 0.2


def plan_buckets(
    lengths: Sequence[int],
    *,
    max_size: int = MAX_BUCKET,
    min_size: int = MIN_BUCKET,
    max_pad_fraction: float = MAX_PAD_FRACTION,
) -> list[list[int]]:
    """Indices of `lengths` grouped into buckets, shortest first.

    A bucket is closed when it holds `max_size` items, or when adding the next (longer) item would
    make padding more than `max_pad_fraction` of its padded tokens — but never below `min_size`
    items, since every run has a fixed cost that a few padded tokens are cheaper than.
    """
    if max_size < 1 or min_size < 1:
        raise ValueError(f"bucket sizes must be positive, got max_size={max_size}, min_size={min_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    buckets: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        n = max(int(lengths[i]), 1)
        if current:
            padded = n * (len(current) + 1)
            waste = 1 - (tokens + n) / padded
            if len(current) >= max_size or (len(current) >= min_size and waste > max_pad_fraction):
                buckets.append(current)
                current, tokens = [], 0
        current.append(i)
        tokens += n
    if current:
        buckets.append(current)
    return buckets


def encode_in_buckets(
    ids: Sequence[Sequence[int]],
    run: Callable[[np.ndarray, np.ndarray], np.ndarray],
    dim: int,
    *,
    pad_id: int = 0,
    max_size: int = MAX_BUCKET,
) -> np.ndarray:
    """Rows of `run(input_ids, attention_mask)` for every sequence in `ids`, in input order.

    `run` gets one bucket as int64 arrays of shape (b, longest in bucket) and returns (b, dim).
    """
    out = np.empty((len(ids), dim), dtype=np.float32)
    for bucket in plan_buckets([len(s) for s in ids], max_size=max_size):
        width = max(len(ids[i]) for i in bucket)
        input_ids = np.full((len(bucket), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(bucket), width), dtype=np.int64)
        for row, i in enumerate(bucket):
            input_ids[row, : len(ids[i])] = ids[i]
            mask[row, : len(ids[i])] = 1
        out[bucket] = run(input_ids, mask)
    return out
