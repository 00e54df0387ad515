"""models/convolution.py: a sum over taps on CPU for small maps, the same numbers as XLA's
convolution (values and both gradients), taps on padding skipped, and XLA's convolution everywhere
else."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from htt_jax.models import convolution, resnet

_DN = ("NHWC", "HWIO", "NHWC")


def _primitives(fn, *args):
  return {eqn.primitive.name for eqn in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


def _data(hw, kernel_hw, cin=6, cout=5, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(3, *hw, cin)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(*kernel_hw, cin, cout)), jnp.float32)
  return x, k


@pytest.mark.parametrize("hw, kernel_hw, strides, padding", [
    ((2, 3), (3, 3), (1, 1), ((1, 1), (1, 1))),  # layer4 3x3 at 64x96: map smaller than kernel
    ((4, 6), (3, 3), (2, 2), ((1, 1), (1, 1))),  # layer4's strided 3x3 at 64x96
    ((1, 2), (3, 3), (1, 1), ((1, 1), (1, 1))),
    ((2, 6), (3, 3), (1, 1), "SAME"),
    ((5, 7), (3, 3), (2, 2), "VALID"),
    ((7, 9), (7, 7), (2, 2), ((3, 3), (3, 3))),  # the stem's shape of convolution, tiny image
    ((2, 4), (3, 2), (2, 1), ((2, 0), (1, 1))),  # asymmetric kernel, strides and padding
])
def test_taps_match_xla_convolution(hw, kernel_hw, strides, padding):
  x, k = _data(hw, kernel_hw)
  assert convolution.use_taps(hw, kernel_hw, strides, padding)

  def ours(x, k):
    return convolution.conv_general_dilated(x, k, strides, padding, dimension_numbers=_DN)

  def xla(x, k):
    return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=_DN)

  assert "conv_general_dilated" not in _primitives(ours, x, k)
  y, y_ref = ours(x, k), xla(x, k)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  # Gradients of a weighted sum: every output position carries a different weight.
  w = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), jnp.float32)
  grads = jax.grad(lambda x, k: jnp.sum(ours(x, k) * w), argnums=(0, 1))(x, k)
  grads_ref = jax.grad(lambda x, k: jnp.sum(xla(x, k) * w), argnums=(0, 1))(x, k)
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("hw, kernel_hw, strides", [
    ((20, 24), (3, 3), (1, 1)),
    ((9, 12), (3, 3), (1, 1)),
    ((3, 3), (3, 3), (1, 1)),  # layer4 at 72x96: no map smaller than the kernel
    ((5, 6), (3, 3), (2, 2)),  # layer4's strided 3x3 at 72x96: 3x3 outputs
    ((4, 6), (1, 1), (2, 2)),  # 1x1: a strided slice and a product either way
])
def test_large_maps_and_1x1_keep_xla_convolution(hw, kernel_hw, strides):
  x, k = _data(hw, kernel_hw)
  assert not convolution.use_taps(hw, kernel_hw, strides, "SAME")
  fn = lambda x, k: convolution.conv_general_dilated(x, k, strides, "SAME", dimension_numbers=_DN)
  assert "conv_general_dilated" in _primitives(fn, x, k)
  np.testing.assert_array_equal(
      fn(x, k), lax.conv_general_dilated(x, k, strides, "SAME", dimension_numbers=_DN))


def test_other_layouts_and_dilations_keep_xla_convolution():
  x, k = _data((2, 3), (3, 3))
  nchw = jnp.transpose(x, (0, 3, 1, 2))
  for fn, args in [
      (lambda x, k: convolution.conv_general_dilated(
          x, k, (1, 1), "SAME", dimension_numbers=("NCHW", "HWIO", "NCHW")), (nchw, k)),
      (lambda x, k: convolution.conv_general_dilated(
          x, k, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=_DN), (x, k)),
      (lambda x, k: convolution.conv_general_dilated(x, k, (1, 1), "SAME"),  # NCHW, OIHW
       (nchw, jnp.transpose(k, (3, 2, 0, 1)))),
  ]:
    assert "conv_general_dilated" in _primitives(fn, *args)


def test_flax_conv_same_parameters_and_values():
  x, _ = _data((2, 3), (3, 3), cin=4)
  plain = nn.Conv(7, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  ours = nn.Conv(7, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                 conv_general_dilated=convolution.conv_general_dilated)
  variables = plain.init(jax.random.key(0), x)
  assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(variables)
  assert "conv_general_dilated" not in _primitives(lambda x: ours.apply(variables, x), x)
  np.testing.assert_allclose(ours.apply(variables, x), plain.apply(variables, x), rtol=1e-5,
                             atol=1e-5)


@pytest.mark.parametrize("batch_norm", ["frozen", "batch"])
def test_resnet_at_64_px_high_same_features(batch_norm, monkeypatch):
  """At 64x96 layer4's maps are 2x3; the backbone gives the features of XLA's convolutions."""
  images = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
  model = resnet.ResNet18(batch_norm=batch_norm, cpu_kernels=True)
  variables = model.init(jax.random.key(1), images)
  apply = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0]
  features = apply(variables, images)
  monkeypatch.setattr(convolution, "use_taps", lambda *a: False)
  reference = apply(variables, images)
  scale = float(jnp.max(jnp.abs(reference)))
  np.testing.assert_allclose(features, reference, atol=1e-5 * scale)


@pytest.mark.parametrize("hw, strides, expected_taps", [
    ((2, 3), (1, 1), 9),  # every tap reaches some output inside the map
    ((1, 2), (1, 1), 3),  # one row: only the kernel's middle row; one of its columns per side
    ((1, 1), (1, 1), 1),  # one pixel: only the centre tap
    ((1, 1), (2, 2), 1),
])
def test_taps_on_padding_only_are_skipped(hw, strides, expected_taps):
  """Hand-counted taps of a 3x3 kernel, padding 1: a tap that only meets padding costs nothing."""
  x, k = _data(hw, (3, 3))
  fn = lambda x, k: convolution.conv_taps(x, k, strides, ((1, 1), (1, 1)))
  jaxpr = jax.make_jaxpr(fn)(x, k).jaxpr
  assert sum(eqn.primitive.name == "dot_general" for eqn in jaxpr.eqns) == expected_taps
  np.testing.assert_allclose(
      fn(x, k), lax.conv_general_dilated(x, k, strides, ((1, 1), (1, 1)), dimension_numbers=_DN),
      rtol=1e-5, atol=1e-5)
