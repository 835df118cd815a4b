"""Benchmarks of the training core (run `python -m benchmarks.bench --help`)."""
