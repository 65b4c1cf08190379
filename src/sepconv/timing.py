"""Timing, used by the "auto" tuner and by the benchmark apps alike.

Interleaved timing: every candidate runs once per round, in the same process, on the same
inputs, in a shuffled order (so no candidate always inherits the caches of the same
predecessor), and drifting clocks hit all of them alike; results are medians per candidate,
with their spread. Candidates far slower than the fastest are dropped after a few rounds
(their medians so far are kept and marked) so a slow fallback cannot eat the time budget; the
others' medians come from the rounds after the drop."""

from __future__ import annotations

import ctypes
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Candidate:
    name: str
    fn: Callable[[], object]
    times: list = field(default_factory=list)
    dropped: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0-100) of the samples, interpolated."""
        return percentile(self.times, q)

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: how far single calls scatter around the median."""
        return (self.percentile(90) - self.percentile(10)) / self.median


def percentile(values, q: float) -> float:
    """The q-th percentile (0-100) of `values`, linearly interpolated between samples."""
    v = sorted(values)
    if not v:
        raise ValueError("percentile: no samples.")
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def steady_allocator() -> bool:
    """Stop glibc from handing freed blocks back to the OS, for this process.

    With glibc's defaults a freed multi-MiB output is often returned to the kernel (by trim or
    munmap), so the next call page-faults its output afresh: 400 faults for a 1.6 MB tensor,
    measured as 470 us instead of 55 us on the same layer, at random, for every peer alike.
    Benchmarks call this once so that they time convolutions rather than page faults; it
    raises the mmap threshold to glibc's maximum (32 MiB) and the trim threshold to 1 GiB.
    Returns False where there is no glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def copy_bandwidth(nbytes: int = 256 << 20, runs: int = 7) -> float:
    """GB/s of copying a `nbytes` float32 tensor at the current thread count, counting the
    read and the write once each: the DRAM bandwidth a memory-bound kernel can hope for
    (measured here: 30-32 GB/s with 2 threads). The one bandwidth probe of the package."""
    import torch

    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    return 2 * nbytes / median_seconds(lambda: dst.copy_(src), runs=runs) / 1e9


def median_seconds(fn: Callable[[], object], runs: int = 10, warmup: int = 1) -> float:
    """Median wall time of `fn` over `runs` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare(candidates: list[Candidate], rounds: int = 25, warmup: int = 2,
            drop_after: int = 3, drop_factor: float = 10.0, budget_s: float = 10.0,
            min_rounds: int = 0) -> list[Candidate]:
    """Time `candidates` in interleaved rounds; returns them with `.times` filled.

    After `drop_after` rounds the candidates over `drop_factor` times the fastest are dropped
    and, if rounds remain, the others start their samples afresh: in the first rounds the slow
    ones (large temporaries) evict the caches before the fast ones' calls and inflate their
    times. The time budget ends the rounds only after the drop and `min_rounds` rounds after
    it (at least one)."""
    for c in candidates:
        for _ in range(warmup):
            c.fn()
    order = list(candidates)
    rng = random.Random(0)
    start = time.perf_counter()
    restarted_at = None
    for r in range(rounds):
        rng.shuffle(order)
        for c in order:
            if c.dropped:
                continue
            t0 = time.perf_counter()
            c.fn()
            c.times.append(time.perf_counter() - t0)
        if r + 1 == drop_after:
            best = min(c.median for c in candidates)
            for c in candidates:
                c.dropped = c.median > drop_factor * best
            if r + 1 < rounds:
                restarted_at = r + 1
                for c in candidates:
                    if not c.dropped:
                        c.times.clear()
        after = r + 1 - restarted_at if restarted_at is not None else r + 1
        if (time.perf_counter() - start > budget_s and r + 1 >= drop_after
                and after >= max(1, min_rounds)):
            break
    return candidates
