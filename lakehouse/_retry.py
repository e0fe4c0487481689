"""Retry Delta commits that lost a race with concurrent writers; map delta-rs errors once."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.exceptions import SchemaMismatchError as DeltaSchemaMismatchError

from lakehouse.errors import CommitConflictError, LakehouseError, QueryError, SchemaMismatchError

T = TypeVar("T")

TRIES = 10
BASE_DELAY_S = 0.05
MAX_DELAY_S = 4.0


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (delta-rs appends a long backtrace)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def retry_commit(
    op: Callable[[], T],
    what: str,
    *,
    predicate: str | None = None,
    tries: int = TRIES,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `op` (which must re-open the table itself), retrying commit conflicts with full-jitter backoff."""
    last: CommitFailedError | None = None
    for attempt in range(tries):
        try:
            return op()
        except CommitFailedError as exc:
            last = exc
        except DeltaError as exc:
            raise _map_delta_error(what, exc, predicate) from exc
        if attempt + 1 < tries:
            sleep(random.uniform(0, min(MAX_DELAY_S, BASE_DELAY_S * 2**attempt)))
    raise CommitConflictError(
        f"{what}: still conflicting with concurrent writers after {tries} tries ({first_line(last)})"
    ) from last


def _map_delta_error(what: str, exc: DeltaError, predicate: str | None) -> LakehouseError:
    message = first_line(exc)
    if isinstance(exc, DeltaSchemaMismatchError):
        return SchemaMismatchError(f"{what}: Delta rejected the data's schema: {message}")
    if predicate is not None and "failed validation check" in message:
        return SchemaMismatchError(
            f"{what}: some rows of the data do not satisfy the predicate {predicate!r}"
        )
    if predicate is not None:
        return QueryError(f"{what}: predicate {predicate!r} failed: {message}")
    return LakehouseError(f"{what}: {message}")
