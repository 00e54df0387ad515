"""htt-jax: HTT (Wen et al., CVPR 2023) in JAX/Flax."""

from htt_jax import cpu_flags as _cpu_flags

__version__ = "0.1.0"

# XLA:CPU's YNNPACK fusions off until a script knows its dtype (cpu_flags.py: bfloat16 NaNs).
_cpu_flags.set_import_default()
