"""htt-jax: HTT (Wen et al., CVPR 2023) in JAX/Flax.

Importing the package changes no environment variable: XLA's CPU flags are chosen by each entry
point before JAX starts (htt_jax/cpu_flags.py).
"""

__version__ = "0.1.0"
