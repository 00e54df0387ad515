"""htt-jax: HTT (Wen et al., CVPR 2023) in JAX/Flax."""

import os

__version__ = "0.1.0"


def _disable_xla_cpu_ynn_fusion():
  """XLA:CPU's YNNPACK fusions return NaNs for bfloat16 ResNet convolutions (jax/jaxlib 0.12.0.1;
  float32 is unaffected and no slower without them). The flag only concerns the CPU backend and is
  read when JAX starts its backends, so it is set at import, unless the user set it already."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_experimental_ynn_fusion_type=".strip()


_disable_xla_cpu_ynn_fusion()
