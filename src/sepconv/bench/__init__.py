"""Benchmarks: a timing harness (interleaved rounds, medians, outputs checked) and runners."""

from .harness import Candidate, compare, median_seconds

__all__ = ["Candidate", "compare", "median_seconds"]
