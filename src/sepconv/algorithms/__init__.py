"""Depthwise convolution algorithms: the registry (what each serves, its error bound), the
built-in algorithms, dispatch (a named algorithm or "auto"), and the "auto" tuner.

Example:
    >>> from sepconv import algorithms
    >>> [a.name for a in algorithms.list_algorithms()][:2]
    ['reference', 'direct']
    >>> with algorithms.forced("reference"):
    ...     pass
"""

from . import builtin  # noqa: F401  (registers the built-in algorithms)
from .dispatch import forced, plan_call, resolve
from .registry import Algorithm, check_name, error_scale, get_algorithm, list_algorithms, register
from .tuner import Plan, cache_dir, explain, machine_fingerprint, tuner

__all__ = ["Algorithm", "Plan", "cache_dir", "check_name", "error_scale", "explain", "forced", "get_algorithm",
           "list_algorithms", "machine_fingerprint", "plan_call", "register", "resolve", "tuner"]
