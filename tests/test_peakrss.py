"""PeakRSS reports the block's own peak: a 200 MiB buffer freed inside the block still shows,
whether or not the kernel lets the process reset its high-water mark."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lance_llm import peakrss
from lance_llm.peakrss import PeakRSS


@pytest.mark.parametrize("reset", [True, False], ids=["hwm-reset", "refused"])
def test_peak_includes_memory_freed_inside_the_block(reset: bool, monkeypatch, tmp_path: Path) -> None:
    if not reset:  # as in a sandbox that refuses the reset: only the sampler can see the peak
        monkeypatch.setattr(peakrss, "_CLEAR_REFS", tmp_path / "missing" / "clear_refs")
    with PeakRSS() as before:
        pass
    with PeakRSS() as peak:
        buf = bytearray(200 * 1024 * 1024)
        buf[::4096] = b"x" * len(buf[::4096])  # touch every page so it is resident
        time.sleep(10 * peak.interval)  # held as a stage holds its model: longer than the sampling interval
        del buf
    assert peak._reset is reset
    assert peak.mb is not None and before.mb is not None
    assert peak.mb >= before.mb + 150
    with PeakRSS() as after:  # a new block does not count the earlier buffer again
        pass
    assert after.mb is not None and after.mb < peak.mb - 150
