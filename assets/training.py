"""The `classifier_training` asset: train a classifier on labelled documents and register it (not promoted)."""

import tempfile
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc

from assets.documents import documents
from assets.resources import LakeResource, RegistryResource
from lakehouse import Lake
from models.corpus import generate_demo_corpus


class TrainingConfig(dg.Config):
    """What to train on and how; the demo corpus is used when fewer than `min_rows` labelled documents exist."""

    model: str = "classifier"
    max_rows: int = 20_000
    min_rows: int = 200
    demo_corpus_size: int = 4000
    epochs: int = 30
    seed: int = 0


def labelled_documents(lake: Lake, limit: int) -> list[dict]:
    """The newest `limit` documents that carry a label, as {"text", "label"}."""
    table = lake.read("documents", filter=pc.field("label").is_valid(), columns=["day", "text", "label"])
    rows = sorted(table.to_pylist(), key=lambda r: r["day"], reverse=True)[:limit]
    return [{"text": r["text"], "label": r["label"]} for r in rows]


@dg.asset(deps=[documents], group_name="models", kinds={"pytorch"})
def classifier_training(
    context: dg.AssetExecutionContext, config: TrainingConfig, lake: LakeResource, registry: RegistryResource
) -> dg.MaterializeResult:
    """A new classifier version trained on labelled documents (or the demo corpus) and registered, not promoted."""
    from models.classifier import train_classifier  # torch: imported by the run, not the code location

    rows = labelled_documents(lake.lake(), config.max_rows)
    source = "documents"
    if len(rows) < config.min_rows:
        context.log.info(f"only {len(rows)} labelled documents (< {config.min_rows}); training on the demo corpus")
        rows, source = generate_demo_corpus(config.demo_corpus_size, seed=config.seed), "demo corpus"
    with tempfile.TemporaryDirectory() as tmp:
        result = train_classifier(
            rows, Path(tmp) / "classifier", epochs=config.epochs, seed=config.seed, progress=context.log.info
        )
        mv = registry.registry().register(
            config.model, "classify", result.artifact_dir, metrics=result.metrics,
            training_data_hash=result.training_data_hash,
            lineage={"source": source, "rows": len(rows), "dagster_run_id": context.run.run_id},
            description=f"trained by Dagster on {len(rows)} rows ({source})", actor="dagster:classifier_training",
        )
    return dg.MaterializeResult(metadata={
        "version": mv.version,
        "accuracy": result.metrics["accuracy"],
        "macro_f1": result.metrics["macro_f1"],
        "n_train": result.metrics["n_train"],
        "n_test": result.metrics["n_test"],
        "training_source": source,
        "training_data_hash": result.training_data_hash,
        "labels": result.labels,
    })
