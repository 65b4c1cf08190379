"""Benchmark apps: depthwise layers against PyTorch (`layers`), whole models against other
runtimes, each in its own process (`model`). The timer they share is sepconv.timing."""
