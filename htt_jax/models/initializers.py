"""PyTorch's default initialisers, so that a freshly initialised model matches the reference.

reference.md §1.3, §1.5, §6.20: plain `nn.Linear` layers keep PyTorch's default U(+-1/sqrt(fan_in))
for both weight and bias; convolutions use kaiming_normal(fan_out, relu); the encoders re-initialise
every matrix with xavier_uniform and zero the attention biases.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

# U(-b, b) with b = sqrt(3 * scale / fan_in) = 1/sqrt(fan_in) for scale 1/3.
torch_linear_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# kaiming_normal(mode='fan_out', nonlinearity='relu'): std = sqrt(2 / fan_out), not truncated.
torch_conv_kernel = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
xavier_uniform = nn.initializers.xavier_uniform()


def torch_linear_bias(fan_in: int):
  """Bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in)) of `torch.nn.Linear` (needs the input width)."""
  bound = 1.0 / jnp.sqrt(float(fan_in))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features: int, fan_in: int, **kwargs) -> nn.Dense:
  """`nn.Dense` initialised like `torch.nn.Linear(fan_in, features)`.

  The bias bound depends on the input width, which Flax's `bias_init` signature does not see, so
  the caller states it.
  """
  kwargs.setdefault("kernel_init", torch_linear_kernel)
  return nn.Dense(features, bias_init=torch_linear_bias(fan_in), **kwargs)
