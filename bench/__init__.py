"""Benchmarks (not tests): each module is runnable as ``python -m bench.<name>`` and prints ratios
against baselines measured in the same run."""
