"""Side-by-side benchmarks: ``python -m benchmarks [--quick] [--out DIR]``."""
