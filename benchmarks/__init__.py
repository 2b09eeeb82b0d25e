"""The kit's benchmarks: `python -m benchmarks` runs benchmarks/bench.py."""
