"""Throughput benchmark: `runner.run_benchmark(config, mode, output)` (scripts/benchmark.py).

Modules: sweep (settings from `config.sweep`), measure (our JAX step, forward, tf.data pipeline),
baseline (the PyTorch reference in a subprocess), flops (analytic model FLOPs), hardware (peak
rates, versions), timing (step statistics), report (JSON, markdown table, plot), runner.
Nothing is imported here: the PyTorch baseline process imports `timing` and must not load JAX or
TensorFlow through this package.
"""
