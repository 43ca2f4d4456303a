"""Peak host memory of an export, sampled while it runs.

``ru_maxrss`` alone would report the peak of the whole process life (including what ran before the
export); a sampling thread reports the peak of the measured span, and the process-life peak is kept
as a cross-check.
"""

from __future__ import annotations

import resource
import threading
from types import TracebackType

import psutil


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.peak_bytes`` (resident set size)."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.start_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()

    def sample(self) -> int:
        rss = self._process.memory_info().rss
        self.peak_bytes = max(self.peak_bytes, rss)
        return rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> PeakMemory:
        self.start_bytes = self.sample()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    @staticmethod
    def process_peak_bytes() -> int:
        """Peak RSS over the process's whole life (Linux reports kilobytes)."""
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gigabytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
