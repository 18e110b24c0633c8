"""Greedy generation for the evaluations that generate (IFEval, GSM8K): one HF backend per model,
requests in chunks of a few batches so progress can be shown without losing length-sorted batching.

    texts = greedy.replies(checkpoint, fingerprint, requests, batch_size=32, progress=print)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..backends.base import GenerateRequest


def replies(model_path: Path, fingerprint: str, requests: Sequence[GenerateRequest], batch_size: int,
            dtype: str = "auto", progress: Callable[[int], None] | None = None) -> list[str]:
    """The first sample of each request (requests should be greedy, n=1), in order."""
    from ..backends.hf import HFBackend

    backend = HFBackend(model_path, fingerprint, batch_size=batch_size, dtype=dtype)
    try:
        out: list[str] = []
        chunk = batch_size * 2
        for start in range(0, len(requests), chunk):
            part = requests[start:start + chunk]
            out.extend(r[0] for r in backend.generate(part))
            if progress:
                progress(len(part))
        return out
    finally:
        backend.close()
