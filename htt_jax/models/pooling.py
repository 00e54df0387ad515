"""ResNet's stem max-pool (3x3, stride 2, padding 1), with a cheaper gradient for XLA:CPU.

`max_pool_3x3_s2_xla` is the plain `reduce_window`, whose gradient XLA lowers to select-and-scatter.
On CPU that gradient is far slower than the pooling itself, a noticeable part of a whole HTT
training step (docs/benchmarks.md, "CPU: per convolution, backbone, XLA flags"). So
`max_pool_3x3_s2` gives the same function a cheaper custom gradient written with
elementwise operations at the output's resolution: for each of the 9 window taps, the output
positions whose maximum came from that tap (the first tap in row-major order on ties, as PyTorch's
kernel picks) keep their gradient; the taps are then interleaved back onto the input grid (stride 2,
window 3: even input rows receive taps 0 and 2, odd rows tap 1; likewise columns). Values are
unchanged (the forward pass is the plain `reduce_window`); gradients equal select-and-scatter's
wherever a window has a unique maximum. The custom gradient is a CPU path: the backbone uses it only
when built with `cpu_kernels` (models/htt.py:build_model), and XLA's own gradient elsewhere.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_WINDOW, _STRIDE, _PAD = 3, 2, 1


def max_pool_3x3_s2_xla(x):
  """The plain max-pool (values of `nn.max_pool` with -inf padding), XLA's gradient."""
  # A concrete identity (numpy, not a traced jnp array) makes it JAX's differentiable max-pool.
  init = np.array(-np.inf, x.dtype)
  return lax.reduce_window(x, init, lax.max, (1, _WINDOW, _WINDOW, 1), (1, _STRIDE, _STRIDE, 1),
                           ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0)))


@jax.custom_vjp
def max_pool_3x3_s2(x):
  """(N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C): max over 3x3 windows, stride 2, -inf padding."""
  return max_pool_3x3_s2_xla(x)


def _forward(x):
  out = max_pool_3x3_s2_xla(x)
  return out, (x, out)


def _interleave(taps, axis, size):
  """Scatters the stride-2 contributions of window taps 0, 1, 2 along `axis` back onto the padded
  input grid of length `size`: padded index 2a + i receives tap i of output a. Even indices get
  taps 0 and 2 (of outputs a and a - 1), odd ones tap 1: no scatter, only adds and a reshape."""
  t0, t1, t2 = taps
  zeros = jnp.zeros_like(lax.slice_in_dim(t0, 0, 1, axis=axis))
  even = jnp.concatenate([t0, zeros], axis) + jnp.concatenate([zeros, t2], axis)  # a = 0 .. n
  odd = jnp.concatenate([t1, zeros], axis)
  both = jnp.stack([even, odd], axis + 1)
  shape = list(t0.shape)
  shape[axis] = 2 * (t0.shape[axis] + 1)
  both = both.reshape(shape)  # index 2a + parity
  if size <= shape[axis]:
    return lax.slice_in_dim(both, 0, size, axis=axis)
  pad = [(0, 0)] * both.ndim
  pad[axis] = (0, size - shape[axis])
  return jnp.pad(both, pad)


def _backward(residuals, g):
  x, out = residuals
  n, h, w, c = x.shape
  ho, wo = out.shape[1], out.shape[2]
  xp = jnp.pad(x, ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0)), constant_values=-jnp.inf)
  taken = jnp.zeros(out.shape, bool)
  zero = jnp.array(0, g.dtype)
  per_tap = {}
  for i in range(_WINDOW):
    for j in range(_WINDOW):
      tap = lax.slice(xp, (0, i, j, 0),
                      (n, i + _STRIDE * (ho - 1) + 1, j + _STRIDE * (wo - 1) + 1, c),
                      (1, _STRIDE, _STRIDE, 1))
      chosen = (tap == out) & ~taken  # The first maximal tap in row-major order.
      taken = taken | chosen
      per_tap[i, j] = jnp.where(chosen, g, zero)
  hp, wp = h + 2 * _PAD, w + 2 * _PAD
  rows = [_interleave([per_tap[i, j] for i in range(_WINDOW)], 1, hp) for j in range(_WINDOW)]
  grad = _interleave(rows, 2, wp)
  return (grad[:, _PAD:_PAD + h, _PAD:_PAD + w, :],)


max_pool_3x3_s2.defvjp(_forward, _backward)
