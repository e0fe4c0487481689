"""Processes of a model server never outlive it."""

from __future__ import annotations

import os
import signal

__all__ = ["die_with_parent"]


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent (the model server) dies.

    Called in every process the server forks (uvicorn, LitServe's queue manager) and spawns (the
    inference workers). Without it, a `kill -9` of the server left its HTTP process holding the
    port and answering /health for a server that no longer existed. Linux only; elsewhere a no-op.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
