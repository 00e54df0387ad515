"""The stem max-pool: its custom (CPU) gradient against XLA's and against a direct loop (ties
included); the plain one is nn.max_pool."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from htt_jax.models.pooling import max_pool_3x3_s2, max_pool_3x3_s2_xla


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
  # The plain pool (every backend but the CPU) is nn.max_pool, gradient included, also under jit.
  np.testing.assert_array_equal(max_pool_3x3_s2_xla(x), _plain(x))
  plain = jax.jit(jax.grad(lambda v: jnp.sum(weights * max_pool_3x3_s2_xla(v))))(x)
  np.testing.assert_array_equal(plain, jax.jit(jax.grad(lambda v: jnp.sum(weights * _plain(v))))(x))


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
