"""Peak resident memory of one stretch of work (a loop stage), for the stage manifest.

    with PeakRSS() as peak:
        body()
    peak.mb  # highest RSS of this process during the block, in MiB (None if unmeasurable)

Two readings, the larger wins. Linux lets a process reset its own high-water mark
(`echo 5 > /proc/self/clear_refs`), so VmHWM afterwards is the block's own peak; but the kernel
updates that mark lazily (per-CPU RSS counters, folded in at some unmaps only), and some
sandboxes refuse the reset, so a peak freed again inside the block can be missing from it. A
thread therefore also samples VmRSS every `interval` seconds: it sees every peak held longer than
that, which a loop stage's model and batches are. Child processes (a launched trainer) are
reported separately through RUSAGE_CHILDREN, which only knows the largest child ever, so
`children_mb` is an upper bound for the block.
"""

from __future__ import annotations

import resource
import threading
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakRSS:
    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.mb: float | None = None
        self.children_mb: float | None = None
        self._peak_kb = 0
        self._reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRSS:
        try:
            _CLEAR_REFS.write_text("5")
            self._reset = True
        except OSError:
            self._reset = False
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak_kb = max(self._peak_kb, _status_kb("VmRSS") or 0)
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        hwm = (_status_kb("VmHWM") or 0) if self._reset else 0
        kb = max(hwm, self._peak_kb, _status_kb("VmRSS") or 0) or None
        self.mb = round(kb / 1024, 1) if kb else None
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        self.children_mb = round(child / 1024, 1) if child else None
