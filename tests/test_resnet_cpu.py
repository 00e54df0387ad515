"""XLA:CPU's workarounds in the backbone (models/resnet.py): chosen once, by `build_model`, never
while tracing; absent from a model built for another backend; the optimisation barrier on
convolution inputs changes no number."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_config
from htt_jax.models import build_model, resnet


@pytest.mark.parametrize("batch_norm", ["frozen", "batch"])
def test_barrier_keeps_values_and_gradients(batch_norm, monkeypatch):
  images = jax.random.normal(jax.random.key(0), (2, 72, 128, 3))
  model = resnet.ResNet18(batch_norm=batch_norm, cpu_kernels=True)
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


def test_build_model_chooses_the_cpu_kernels_for_the_backend(monkeypatch):
  config = load_config("smoke")
  assert jax.default_backend() == "cpu" and build_model(config).cpu_kernels
  assert not build_model(config, cpu_kernels=False).cpu_kernels
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert not build_model(config).cpu_kernels
  assert build_model(config, cpu_kernels=True).cpu_kernels
  # Model code asks no backend while tracing: a model built for the GPU stays plain on the CPU.
  monkeypatch.setattr(jax, "default_backend", lambda: pytest.fail("backend asked while tracing"))
  model = resnet.ResNet18(cpu_kernels=True)
  x = jnp.zeros((1, 64, 96, 3))
  jax.make_jaxpr(lambda x: model.init_with_output(jax.random.key(0), x))(x)


def _programs(cpu_kernels):
  """(jaxpr of the forward pass, StableHLO of the input gradient) of a backbone at 64x96, where
  layer4's maps (2x3) are smaller than its kernels (the taps case of models/convolution.py)."""
  model = resnet.ResNet18(cpu_kernels=cpu_kernels)
  x = jnp.zeros((2, 64, 96, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  forward = str(jax.make_jaxpr(model.apply)(variables, x))
  grad = jax.jit(jax.grad(lambda v, x: jnp.sum(model.apply(v, x)), argnums=1))
  return forward, grad.lower(variables, x).as_text()


def test_cpu_paths_only_in_a_model_built_for_the_cpu():
  forward, grad = _programs(cpu_kernels=False)
  # Plain XLA: 20 convolutions, no barrier, the max-pool's own gradient (select-and-scatter).
  assert forward.count("conv_general_dilated[") == 20
  assert "optimization_barrier" not in grad and "custom_vjp" not in forward
  assert "select_and_scatter" in grad
  forward, grad = _programs(cpu_kernels=True)
  # The CPU paths: layer4's small convolutions as taps, barriers, the max-pool's custom gradient.
  assert 0 < forward.count("conv_general_dilated[") < 20
  assert "optimization_barrier" in grad and "custom_vjp" in forward
  assert "select_and_scatter" not in grad
