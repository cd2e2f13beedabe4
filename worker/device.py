"""Device policy: which device a worker trains on, and what counts as out of memory."""

from __future__ import annotations

import torch


def resolve_device(setting: str, threads: int = 0) -> str:
    """`SAMSWEEP_DEVICE`: "auto" is CUDA when there is one, else the CPU."""
    if threads:  # several CPU slots on one host must not each take every core
        torch.set_num_threads(threads)
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def is_out_of_memory(e: BaseException) -> bool:
    """A cell too large for this device: INFEASIBLE, not retried (tests/e2e/test_faults.py)."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e).lower()  # the CPU allocator raises a plain RuntimeError
    return isinstance(e, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )
