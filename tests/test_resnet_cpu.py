"""The CPU-only optimisation barrier on convolution inputs (models/resnet.py) changes no number."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from htt_jax.models import resnet


@pytest.mark.parametrize("batch_norm", ["frozen", "batch"])
def test_barrier_keeps_values_and_gradients(batch_norm, monkeypatch):
  images = jax.random.normal(jax.random.key(0), (2, 72, 128, 3))
  model = resnet.ResNet18(batch_norm=batch_norm)
  variables = model.init(jax.random.key(1), images)
  weights = jnp.cos(jnp.arange(2 * 512, dtype=jnp.float32)).reshape(2, 512)

  def loss(params):
    out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                      train=True, mutable=["batch_stats"])[0]
    return jnp.sum(out * weights)

  grad = jax.jit(jax.value_and_grad(loss))
  # The barrier is really there on the CPU (otherwise the speed-up is silently lost).
  assert "optimization_barrier" in grad.lower(variables["params"]).as_text()
  value, grads = grad(variables["params"])
  monkeypatch.setattr(resnet, "_materialized_on_cpu", lambda x: x)
  plain = jax.jit(jax.value_and_grad(loss))
  assert "optimization_barrier" not in plain.lower(variables["params"]).as_text()
  plain_value, plain_grads = plain(variables["params"])
  np.testing.assert_allclose(value, plain_value, rtol=1e-6)
  for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(plain_grads)):
    if batch_norm == "batch" and "conv1" in jax.tree_util.keystr(path) and len(path) == 2:
      # The stem's kernel gradient under batch statistics cancels almost to nothing: any change of
      # rounding moves it a lot (measured: eager against jit of the same code differ by 40%).
      continue
    scale = float(jnp.max(jnp.abs(p)))
    np.testing.assert_allclose(g, p, atol=1e-4 * scale + 1e-7, err_msg=jax.tree_util.keystr(path))
