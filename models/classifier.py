"""A small MLP head over frozen MiniLM embeddings: train it, save it as an artifact, serve it.

Artifact layout: `manifest.json` (kind, labels, dims, encoder spec, metrics, training data hash)
and `head.pt` (the head's state_dict). The encoder itself is not copied; the manifest pins the
installed MiniLM weights by digest and loading refuses any other weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.embedder import EMBED_DIM, encoder_spec, get_encoder
from models.encoders import load_encoder, write_encoder
from models.errors import ArtifactError, SchemaError
from models.ops import MANIFEST, read_manifest, register_kind
from models.schemas import ClassifyIn, ClassifyOut

__all__ = [
    "KIND",
    "MiniLMClassifier",
    "TrainResult",
    "corrupt_classifier_artifact",
    "evaluate_classifier",
    "macro_f1",
    "rebase_classifier",
    "train_classifier",
    "training_data_hash",
]

KIND = "classifier-head"
HEAD_FILE = "head.pt"
_HIDDEN = 128
_BATCH = 64
_LR = 3e-3
_WEIGHT_DECAY = 1e-4


@dataclass(frozen=True)
class TrainResult:
    """Where the trained artifact was written and how it scored on the holdout split."""

    artifact_dir: Path
    metrics: dict
    training_data_hash: str
    labels: list[str] = field(default_factory=list)


def _make_head(n_labels: int, hidden: int = _HIDDEN) -> nn.Module:
    return nn.Sequential(nn.Linear(EMBED_DIM, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, n_labels))


def training_data_hash(rows: list[dict]) -> str:
    """sha256 of the (text, label) pairs, independent of row order."""
    pairs = sorted((str(r["text"]), str(r["label"])) for r in rows)
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()


def macro_f1(y_true: list[str], y_pred: list[str], labels: list[str]) -> float:
    """Unweighted mean of per-label F1 over `labels` (a label never seen nor predicted scores 0)."""
    scores = []
    for label in labels:
        tp = sum(t == label and p == label for t, p in zip(y_true, y_pred))
        fp = sum(t != label and p == label for t, p in zip(y_true, y_pred))
        fn = sum(t == label and p != label for t, p in zip(y_true, y_pred))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def train_classifier(
    rows: list[dict],
    dest: Path,
    *,
    epochs: int = 30,
    seed: int = 0,
    holdout: float = 0.2,
    quantize_encoder: bool = False,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a head on `rows` ({"text", "label"}), evaluate on a stratified holdout, write the artifact.

    Deterministic for the same rows (in any order), seed and encoder. Raises SchemaError for rows
    without text/label or with fewer than two labels.
    """
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    say = progress or (lambda _msg: None)
    rows = _clean_rows(rows)
    labels = sorted({r["label"] for r in rows})
    if len(labels) < 2:
        raise SchemaError(f"need at least two labels to train a classifier, got {labels}")
    data_hash = training_data_hash(rows)
    train_idx, test_idx = _stratified_split([r["label"] for r in rows], holdout, seed)

    t0 = time.perf_counter()
    say(f"embedding {len(rows)} texts with {'minilm-int8' if quantize_encoder else 'minilm'}")
    vectors = get_encoder("int8" if quantize_encoder else "fp32").encode([r["text"] for r in rows], batch_size=_BATCH)
    say(f"embedded in {time.perf_counter() - t0:.1f}s")
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[r["label"]] for r in rows], dtype=np.int64)

    head = _fit(torch.from_numpy(vectors[train_idx]), torch.from_numpy(y[train_idx]), len(labels), epochs, seed, say)
    with torch.inference_mode():
        pred = head(torch.from_numpy(vectors[test_idx])).argmax(1).numpy()
    y_test = [labels[i] for i in y[test_idx]]
    y_pred = [labels[i] for i in pred]
    metrics = {
        "accuracy": float(np.mean([t == p for t, p in zip(y_test, y_pred)])),
        "macro_f1": macro_f1(y_test, y_pred, labels),
        "n_train": len(train_idx),
        "n_test": len(test_idx),
    }
    say(f"holdout accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), dest / HEAD_FILE)
    manifest = {
        "kind": KIND,
        "labels": labels,
        "dims": {"input": EMBED_DIM, "hidden": _HIDDEN, "output": len(labels)},
        "encoder": encoder_spec("int8" if quantize_encoder else "fp32"),
        "metrics": metrics,
        "training_data_hash": data_hash,
        "training": {"epochs": epochs, "seed": seed, "holdout": holdout},
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=2))
    say(f"wrote {dest} in {time.perf_counter() - t0:.1f}s")
    return TrainResult(artifact_dir=dest, metrics=metrics, training_data_hash=data_hash, labels=labels)


def _clean_rows(rows: list[dict]) -> list[dict]:
    out = []
    for i, r in enumerate(rows):
        text, label = r.get("text"), r.get("label")
        if text is None or label is None or not str(text).strip() or str(label) == "":
            raise SchemaError(f"training row {i} needs a non-empty 'text' and 'label', got {r!r}")
        out.append({"text": str(text), "label": str(label)})
    # Sorting makes the split, and so the model, independent of the order rows arrive in.
    return sorted(out, key=lambda r: (r["label"], r["text"]))


def _stratified_split(labels: list[str], holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in sorted(set(labels)):
        idx = np.array([i for i, lab in enumerate(labels) if lab == label])
        rng.shuffle(idx)
        # Every label with two or more rows gets at least one test row and keeps one training row.
        n_test = min(max(round(len(idx) * holdout), 1), len(idx) - 1) if len(idx) > 1 else 0
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def _fit(x: torch.Tensor, y: torch.Tensor, n_labels: int, epochs: int, seed: int, say) -> nn.Module:
    # fork_rng keeps the caller's global torch RNG untouched while making init and shuffling seeded.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = _make_head(n_labels)
        opt = torch.optim.AdamW(head.parameters(), lr=_LR, weight_decay=_WEIGHT_DECAY)
        loss_fn = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(seed)
        head.train()
        for epoch in range(1, epochs + 1):
            perm = torch.randperm(len(x), generator=gen)
            total = 0.0
            for start in range(0, len(x), _BATCH):
                b = perm[start : start + _BATCH]
                opt.zero_grad()
                loss = loss_fn(head(x[b]), y[b])
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            if epoch == 1 or epoch == epochs or epoch % 10 == 0:
                say(f"epoch {epoch}/{epochs} loss {total / len(x):.4f}")
    return head.eval()


@register_kind(KIND)
class MiniLMClassifier:
    """Classifies text with a trained head over the shared MiniLM encoder."""

    task = "classify"

    def load(self, artifact_dir: Path, device: str) -> None:
        artifact_dir = Path(artifact_dir)
        m = read_manifest(artifact_dir)
        if m.get("kind") != KIND:
            raise ArtifactError(f"{artifact_dir}: manifest kind {m.get('kind')!r} is not {KIND!r}")
        try:
            self.labels = list(m["labels"])
            dims, spec = m["dims"], m["encoder"]
        except KeyError as e:
            raise ArtifactError(f"{artifact_dir}: manifest lacks {e.args[0]!r}") from None
        if dims.get("output") != len(self.labels) or dims.get("input") != EMBED_DIM:
            raise ArtifactError(f"{artifact_dir}: dims {dims} do not fit {len(self.labels)} labels over {EMBED_DIM}")
        self.max_seq_length = int(spec.get("max_seq_length", 256))
        head = _make_head(len(self.labels), int(dims.get("hidden", _HIDDEN)))
        try:
            state = torch.load(artifact_dir / HEAD_FILE, map_location="cpu", weights_only=True)
            head.load_state_dict(state)
        except FileNotFoundError:
            raise ArtifactError(f"{artifact_dir} has no {HEAD_FILE}") from None
        except (RuntimeError, ValueError, KeyError) as e:
            raise ArtifactError(f"{artifact_dir}/{HEAD_FILE} does not fit the manifest: {e}") from e
        self.encoder = load_encoder(spec, artifact_dir, device)
        # The head follows its encoder: beside a GPU a CPU-only encoder keeps the head on the CPU too.
        self.device = self.encoder.device
        self.head = head.to(self.device).eval()

    def input_lengths(self, inputs: list[ClassifyIn]) -> list[int]:
        return self.encoder.token_lengths([x.text for x in inputs], self.max_seq_length)

    def predict_batch(self, inputs: list[ClassifyIn]) -> list[ClassifyOut]:
        vectors = self.encoder.encode([x.text for x in inputs], max_length=self.max_seq_length)
        with torch.inference_mode():
            probs = torch.softmax(self.head(torch.from_numpy(vectors).to(self.device)), dim=1).cpu().numpy()
        out = []
        for row in probs:
            best = int(row.argmax())
            scores = {label: float(p) for label, p in zip(self.labels, row)}
            out.append(ClassifyOut(label=self.labels[best], score=float(row[best]), scores=scores))
        return out


def evaluate_classifier(op, rows: list[dict], batch_size: int = 64) -> dict:
    """Accuracy and macro-F1 of a loaded classify op on labelled rows."""
    rows = [{"text": str(r["text"]), "label": str(r["label"])} for r in rows]
    preds: list[str] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        preds.extend(o.label for o in op.predict_batch([ClassifyIn(text=r["text"]) for r in chunk]))
    truth = [r["label"] for r in rows]
    labels = sorted(set(truth) | set(preds))
    return {
        "accuracy": float(np.mean([t == p for t, p in zip(truth, preds)])) if rows else 0.0,
        "macro_f1": macro_f1(truth, preds, labels),
        "n": len(rows),
    }


def rebase_classifier(src: Path, dest: Path, backend: str, cache_root: Path | None = None) -> Path:
    """Copy a classifier artifact with the same trained head over another encoder backend.

    The head is unchanged; whether it still scores as well over the new encoder's vectors is for
    an evaluation to show (`tandem init` records one).
    """
    src, dest = Path(src), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / HEAD_FILE, dest / HEAD_FILE)
    manifest = read_manifest(src)
    manifest["encoder"] = write_encoder(dest, backend, cache_root)
    manifest["derived_from"] = {"training_data_hash": manifest.get("training_data_hash"), "encoder_backend": backend}
    (dest / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=2))
    return dest


def corrupt_classifier_artifact(src: Path, dest: Path) -> Path:
    """Copy a classifier artifact with its label mapping rotated by one: a deliberately bad canary.

    Every prediction is then some other label, yet the manifest still advertises the good
    metrics, the way a broken model can look fine on paper.
    """
    src, dest = Path(src), Path(dest)
    shutil.copytree(src, dest, dirs_exist_ok=True)
    manifest = read_manifest(dest)
    labels = list(manifest["labels"])
    manifest["labels"] = labels[1:] + labels[:1]
    (dest / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=2))
    return dest
