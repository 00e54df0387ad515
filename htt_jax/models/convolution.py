"""2-D convolution with `lax.conv_general_dilated`'s signature, fast on XLA:CPU for small maps.

XLA:CPU (jaxlib 0.12, 2 cores) is very slow on convolutions over tiny feature maps, and slowest
when a map is smaller than the kernel: a 3x3 convolution (padding 1) of 64 maps of 2x3x512 takes
1.3 s forward and as long again for the input gradient, where 3x3 maps take 40 ms. Images 64 px
high or less give layer4 maps of 2 rows, so the demo's train step at 64x96 took 8 s where 72x96
took 0.9 s. The input gradient of a stride-2 convolution hits the same case (it convolves the 2x3
output gradient). As a product of patches and kernel (im2col) the same convolution is a few slices,
one concatenation and one matrix product, whose gradients XLA:CPU computes fast: 2x3 maps 5 s ->
80 ms forward+backward (benchmarks/conv_layers.py). Where no map is smaller than the kernel, XLA's
convolution is as fast or faster inside the model (ResNet-18 at 72x96 with patches also for the
3x3 and 5x6 maps of layer3 and layer4: 1046 vs 975 ms). So `conv_general_dilated` computes
patches x kernel on CPU when the input or the output of a convolution is smaller than its kernel
in height or width, and calls `lax.conv_general_dilated` otherwise. Same values up to float
rounding (summation order).
"""

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _explicit_padding(padding, kernel_shape, in_shape, strides):
  if isinstance(padding, str):
    return lax.padtype_to_pads(in_shape, kernel_shape, strides, padding)
  return [tuple(p) for p in padding]


def use_patches(in_hw, kernel_hw, strides, padding) -> bool:
  """Whether `conv_general_dilated` takes the patches path on CPU for these (static) shapes."""
  if jax.default_backend() != "cpu" or kernel_hw[0] * kernel_hw[1] == 1:
    return False
  pads = _explicit_padding(padding, kernel_hw, in_hw, strides)
  out = [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_hw, kernel_hw, strides, pads)]
  # The input gradient convolves the output gradient (the output's size) with the kernel.
  return any(min(n, o) < k for n, o, k in zip(in_hw, out, kernel_hw))


def conv_patches(x, kernel, strides, padding, precision=None):
  """NHWC x HWIO convolution as (patches of x) @ (kernel as a matrix)."""
  kh, kw, cin, cout = kernel.shape
  (pt, pb), (pl, pr) = _explicit_padding(padding, (kh, kw), x.shape[1:3], strides)
  x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  sh, sw = strides
  ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  # Row (i * kw + j) * cin + c of the patch matrix is kernel[i, j, c]: HWIO reshaped in order.
  patches = jnp.concatenate(
      [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
       for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.einsum("nhwk,kf->nhwf", patches, kernel.reshape(kh * kw * cin, cout),
                    precision=precision)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         **kwargs):
  """`lax.conv_general_dilated`, computed as patches x kernel where XLA:CPU is slow (above)."""
  plain = (lhs.ndim == 4 and dimension_numbers is not None
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
           and feature_group_count == 1 and not kwargs
           and all(d in (None, 1) for d in (lhs_dilation or ()) + (rhs_dilation or ())))
  strides = tuple(window_strides)
  if plain and use_patches(lhs.shape[1:3], rhs.shape[:2], strides, padding):
    return conv_patches(lhs, rhs, strides, padding, precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, precision=precision,
                                  **kwargs)
