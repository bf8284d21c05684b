"""Counts over time for a stream whose time span is not known in advance, in fixed memory.

A report draws "ROM calls over virtual time" while it reads the trace once: it cannot know the
last timestamp before it gets there. So the counts live in a fixed number of bins whose width
doubles, neighbours merged pairwise, whenever a time falls past the last bin (the histogram an
oscilloscope's roll mode keeps). The result is at most ``bins`` bins of one width, at least
half of them used, whatever the trace's length.
"""

from __future__ import annotations

import numpy as np

_U64 = np.uint64


class TimeBins:
    """Counts per (time bin, category): ``add(times, categories)`` with uint64 times from an
    origin (the first time seen; earlier times count in the first bin)."""

    def __init__(self, bins: int = 256, categories: int = 256) -> None:
        if bins < 2 or bins % 2:
            raise ValueError("an even number of bins, at least 2")
        self.bins = bins
        self.counts = np.zeros((bins, categories), np.int64)
        self.origin: int | None = None
        self.width = 1
        self.last = 0  # the highest time seen

    def add(self, times: np.ndarray, categories: np.ndarray) -> None:
        if not len(times):
            return
        times = times.astype(_U64, copy=False)
        if self.origin is None:
            self.origin = int(times[0])
        top = int(times.max())
        self.last = max(self.last, top)
        span = max(top - self.origin, 0)
        while span >= self.bins * self.width:
            self._merge()
        origin = _U64(self.origin)
        offsets = np.maximum(times, origin) - origin
        index = (offsets // _U64(self.width)).astype(np.int64)
        ncat = self.counts.shape[1]
        flat = np.bincount(index * ncat + categories.astype(np.int64),
                           minlength=self.counts.size)
        self.counts += flat.reshape(self.counts.shape)

    def _merge(self) -> None:
        half = self.bins // 2
        merged = self.counts.reshape(half, 2, -1).sum(axis=1)
        self.counts[:half] = merged
        self.counts[half:] = 0
        self.width *= 2

    @property
    def used(self) -> int:
        """Bins up to the last one that holds anything."""
        nonzero = np.flatnonzero(self.counts.any(axis=1))
        return int(nonzero[-1]) + 1 if len(nonzero) else 0

    def starts(self) -> np.ndarray:
        """Each used bin's start time (float64, in the times' unit)."""
        return (self.origin or 0) + np.arange(self.used, dtype=np.float64) * self.width
