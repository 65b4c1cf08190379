"""Benchmarks: a timing harness (interleaved rounds, medians, outputs checked) and runners."""

from .harness import Candidate, compare

__all__ = ["Candidate", "compare"]
