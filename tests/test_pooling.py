"""The stem max-pool's custom gradient against XLA's and against a direct loop (ties included)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from htt_jax.models.pooling import max_pool_3x3_s2, relu_max_pool_3x3_s2


def _plain(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


@pytest.mark.parametrize("shape", [(2, 48, 80, 3), (1, 135, 240, 2), (3, 7, 9, 4), (1, 2, 3, 1)])
def test_values_and_gradients_match_xla(shape):
  x = jax.random.normal(jax.random.key(sum(shape)), shape)  # continuous: unique maxima
  weights = jax.random.normal(jax.random.key(1), _plain(x).shape)
  np.testing.assert_array_equal(max_pool_3x3_s2(x), _plain(x))
  ours = jax.jit(jax.grad(lambda v: jnp.sum(weights * max_pool_3x3_s2(v))))(x)
  theirs = jax.grad(lambda v: jnp.sum(weights * _plain(v)))(x)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_ties_send_the_gradient_to_the_first_maximum_in_row_major_order():
  """PyTorch's kernel keeps the first maximum it meets scanning the window row by row."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 3, (1, 9, 10, 2)).astype(np.float32)  # many ties
  g = rng.normal(size=_plain(x).shape).astype(np.float32)
  expected = np.zeros_like(x)
  _, h, w, _ = x.shape
  for a in range(g.shape[1]):
    for b in range(g.shape[2]):
      for ch in range(x.shape[3]):
        best, where = -np.inf, None
        for r in range(2 * a - 1, 2 * a + 2):
          for c in range(2 * b - 1, 2 * b + 2):
            if 0 <= r < h and 0 <= c < w and x[0, r, c, ch] > best:
              best, where = x[0, r, c, ch], (r, c)
        expected[0, where[0], where[1], ch] += g[0, a, b, ch]
  _, vjp = jax.vjp(max_pool_3x3_s2, jnp.asarray(x))
  np.testing.assert_allclose(vjp(jnp.asarray(g))[0], expected, rtol=0, atol=1e-6)
  # Every output's gradient goes to exactly one input.
  np.testing.assert_allclose(vjp(jnp.asarray(g))[0].sum(), g.sum(), rtol=1e-5)


def test_relu_then_pool_is_pool_then_relu_values_and_gradients():
  """`relu_max_pool_3x3_s2` (ReLU on the pooled map) against ReLU then pool, written as a loop:
  integer inputs give ties, all-negative windows and exact zeros."""
  rng = np.random.default_rng(1)
  x = rng.integers(-3, 2, (2, 7, 8, 3)).astype(np.float32)
  g = rng.normal(size=_plain(x).shape).astype(np.float32)
  relu = np.maximum(x, 0)
  np.testing.assert_array_equal(relu_max_pool_3x3_s2(jnp.asarray(x)), _plain(relu))
  expected = np.zeros_like(x)
  _, h, w, _ = x.shape
  for n in range(x.shape[0]):
    for a in range(g.shape[1]):
      for b in range(g.shape[2]):
        for ch in range(x.shape[3]):
          best, where = -np.inf, None
          for r in range(2 * a - 1, 2 * a + 2):
            for c in range(2 * b - 1, 2 * b + 2):
              if 0 <= r < h and 0 <= c < w and relu[n, r, c, ch] > best:
                best, where = relu[n, r, c, ch], (r, c)
          if x[n, where[0], where[1], ch] > 0:  # ReLU's gradient is 0 at and below 0
            expected[n, where[0], where[1], ch] += g[n, a, b, ch]
  _, vjp = jax.vjp(relu_max_pool_3x3_s2, jnp.asarray(x))
  np.testing.assert_allclose(vjp(jnp.asarray(g))[0], expected, rtol=0, atol=1e-6)
  assert np.count_nonzero(expected) > 10 and np.count_nonzero(x <= 0) > x.size // 3
