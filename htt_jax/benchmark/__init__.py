"""Throughput benchmark: `runner.run_benchmark(config, mode, output)` (scripts/benchmark.py).

Modules: sweep (settings from `config.sweep`), measure (our JAX step, forward, tf.data pipeline),
backbone (ResNet-18 alone: --mode=backbone and --mode=conv_layers), baseline (the PyTorch
counterpart, in a subprocess: htt_jax/baselines/), flops (analytic model FLOPs), hardware (peak
rates, versions), timing (step statistics), report (JSON, markdown table, plot), runner.
Nothing is imported here: the PyTorch baseline process imports `timing` and must not load JAX or
TensorFlow through this package.
"""
