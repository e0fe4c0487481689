"""The `documents` asset: a day's CSV / Parquet / JSONL files from the inbox, as one Delta partition.

Bad rows (no text, empty text, text over the task limit, unparseable lines, duplicate ids) are
counted by reason and reported in the materialization metadata; they never reach the table and
are never dropped silently.
"""

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq

from assets.partitions import DAILY, partition_day
from assets.resources import LakeResource, TandemConfig
from models.schemas import MAX_TEXT_CHARS

SUFFIXES = (".csv", ".parquet", ".jsonl")
_MAX_EXAMPLES = 10


class DocumentsConfig(dg.Config):
    """Where a day's files are and which columns hold the id, text and (optional) label."""

    path: str | None = None  # a file or folder; default TANDEM_HOME/inbox/<YYYY-MM-DD>/
    id_column: str = "doc_id"
    text_column: str = "text"
    label_column: str = "label"


@dataclass
class Ingested:
    """Clean rows for the table and the bad rows, counted by reason with a few examples."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    bad: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def reject(self, reason: str, where: str) -> None:
        self.bad[reason] += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")


def inbox_files(source: Path) -> list[Path]:
    """The readable files at `source` (a file, or a folder's files in name order)."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        return []
    return sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def read_records(path: Path, out: Ingested) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for every record of one file; unparseable JSONL lines are rejected into `out`."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return [(f"{path.name}:{i + 1}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [(f"{path.name}:{i + 2}", r) for i, r in enumerate(csv.DictReader(f))]
    if suffix == ".jsonl":
        records = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                out.reject("unparseable", f"{path.name}:{i + 1}")
                continue
            if not isinstance(rec, dict):
                out.reject("unparseable", f"{path.name}:{i + 1}")
                continue
            records.append((f"{path.name}:{i + 1}", rec))
        return records
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


def ingest(files: list[Path], day: date, config: DocumentsConfig, now: datetime) -> Ingested:
    """Validate every record of `files` into `documents` rows for `day`."""
    out = Ingested()
    seen: set[str] = set()
    known = {config.id_column, config.text_column, config.label_column}
    for path in files:
        for where, rec in read_records(path, out):
            text = rec.get(config.text_column)
            if text is None:
                out.reject("missing_text", where)
                continue
            text = str(text)
            if not text.strip():
                out.reject("empty_text", where)
                continue
            if len(text) > MAX_TEXT_CHARS:
                out.reject("text_too_long", where)
                continue
            raw_id = rec.get(config.id_column)
            doc_id = str(raw_id) if raw_id not in (None, "") else hashlib.sha256(text.encode()).hexdigest()[:20]
            if doc_id in seen:
                out.reject("duplicate_id", where)
                continue
            seen.add(doc_id)
            label = rec.get(config.label_column)
            extra = {k: v for k, v in rec.items() if k not in known and v not in (None, "")}
            out.rows.append({
                "doc_id": doc_id, "day": day, "text": text,
                "label": str(label) if label not in (None, "") else None,
                "source": path.name,
                "attributes": json.dumps(extra, sort_keys=True, default=str) if extra else None,
                "ingested_at": now,
            })
    return out


@dg.asset(partitions_def=DAILY, group_name="batch", kinds={"delta"})
def documents(
    context: dg.AssetExecutionContext, config: DocumentsConfig, tandem: TandemConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """One day's input documents, ingested from the inbox into the Delta `documents` table."""
    day = partition_day(context)
    source = Path(config.path) if config.path else tandem.settings().home / "inbox" / day.isoformat()
    files = inbox_files(source)
    if not files:
        raise dg.Failure(
            f"no {'/'.join(SUFFIXES)} files at {source}; drop the day's files there or set config `path`"
        )
    result = ingest(files, day, config, datetime.now(UTC))
    if result.bad:
        context.log.warning(f"{sum(result.bad.values())} bad rows: {dict(result.bad)}")
    lake.lake().overwrite_partition("documents", result.rows, {"day": day})
    return dg.MaterializeResult(metadata={
        "rows": len(result.rows),
        "bad_rows": sum(result.bad.values()),
        "bad_rows_by_reason": dict(result.bad),
        "bad_row_examples": dg.MetadataValue.md("\n".join(f"- {e}" for e in result.examples) or "none"),
        "files": [p.name for p in files],
        "source": str(source),
    })
