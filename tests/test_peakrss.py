"""PeakRSS reports the block's own peak: a 200 MiB buffer freed inside the block still shows."""

from __future__ import annotations

from lance_llm.peakrss import PeakRSS


def test_peak_includes_memory_freed_inside_the_block() -> None:
    with PeakRSS() as before:
        pass
    with PeakRSS() as peak:
        buf = bytearray(200 * 1024 * 1024)
        buf[::4096] = b"x" * len(buf[::4096])  # touch every page so it is resident
        del buf
    assert peak.mb is not None and before.mb is not None
    assert peak.mb >= before.mb + 150
    with PeakRSS() as after:  # the mark was reset: the earlier buffer is not counted again
        pass
    assert after.mb is not None and after.mb < peak.mb - 150
