"""Whether a lone input may take every thread of its worker, or should leave the other cores alone.

A model server's worker gives a batch's rows one thread each, and a lone row all of its threads:
on a free machine the second thread makes one row ~25% faster. When the caller runs other model
calls at the same time (a workflow's parallel steps, whose servers share the machine's cores),
those threads only fight the other models for the cores: two MiniLM servers answering one call
each at once, paired rounds on 2 cores, took 11.4-11.9 ms with two threads each against 9.5-10.4 ms
with one. The server marks such a call with `sharing_cores()`; encoders ask `cores_shared()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["cores_shared", "sharing_cores"]

_SHARED: ContextVar[bool] = ContextVar("tandem_cores_shared", default=False)


@contextmanager
def sharing_cores(shared: bool = True) -> Iterator[None]:
    """Inside: other model work runs beside this call, so a lone input runs on one thread."""
    token = _SHARED.set(shared)
    try:
        yield
    finally:
        _SHARED.reset(token)


def cores_shared() -> bool:
    """Whether the current call shares the machine's cores with other model calls (`sharing_cores`)."""
    return _SHARED.get()
