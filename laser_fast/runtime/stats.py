"""Per-stage seconds and peak resident memory."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far in MiB (Linux ``VmHWM``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource
        import sys

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(r / 2**20 if sys.platform == "darwin" else r / 1024, 1)
    except (ImportError, OSError):  # pragma: no cover - no resource module
        return None


class _Timer:
    """Seconds per stage, and the process's peak resident memory when each stage ended."""

    def __init__(self):
        self.t: dict[str, float] = {}
        self.peak_mb: dict[str, float | None] = {}
        self.after_stage: list[Any] = []  # called when any stage ends (e.g. drop mapped pages)

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        logger.info("stage %s ...", name)
        try:
            yield
        finally:
            for hook in self.after_stage:
                hook()
            self.t[name] = round(self.t.get(name, 0.0) + time.perf_counter() - t0, 3)
            self.peak_mb[name] = peak_rss_mb()


