"""Shared helpers for the benchmark sections (``demos/bench.py`` and the ``bench_*`` modules).

:func:`measure` times one call and reports its peak memory above the level at the start: on CUDA
``torch.cuda.max_memory_allocated`` (reset first), on CPU the peak resident set size, sampled by a
background thread from ``/proc/self/statm`` every ``poll_s`` (a peak shorter than that can be missed).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Tuple

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")
MIB = float(1 << 20)


def rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc/self/statm``, second field, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _PeakRSS:
    """Polls the RSS in a daemon thread between ``start()`` and ``stop()``; ``stop()`` returns the peak."""

    def __init__(self, poll_s: float):
        self.poll_s = poll_s
        self.peak = rss_bytes()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._done.wait(self.poll_s):
            self.peak = max(self.peak, rss_bytes())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return max(self.peak, rss_bytes())


def measure(fn: Callable[[], Any], device: str = "cpu", poll_s: float = 0.005) -> Tuple[float, float, Any]:
    """``(seconds, peak MiB above the start, fn())`` for one call of ``fn``."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return seconds, (torch.cuda.max_memory_allocated(device) - base) / MIB, result
    base = rss_bytes()
    peak = _PeakRSS(poll_s)
    peak.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        top = peak.stop()
    return seconds, (top - base) / MIB, result
