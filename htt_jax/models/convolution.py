"""2-D convolution with `lax.conv_general_dilated`'s signature, fast on XLA:CPU for small maps.

XLA:CPU is very slow on convolutions over tiny feature maps, and slowest when a map is smaller
than the kernel: a 3x3 convolution (padding 1) of 2x3 maps costs tens of times one of 3x3 maps,
forward and input gradient alike. Images 64 px high or less give layer4 maps of 2 rows, which made
the whole train step several times slower; the input gradient of a stride-2 convolution hits the
same case (it convolves the 2x3 output gradient). As a product of patches and kernel (im2col) the
same convolution is a few slices, one concatenation and one matrix product, whose gradients
XLA:CPU computes fast. Where no map is smaller than the kernel, XLA's own convolution is as fast or
faster inside the model. So `conv_general_dilated` computes patches x kernel when the input or the
output of a convolution is smaller than its kernel in height or width, and calls
`lax.conv_general_dilated` otherwise. Same values up to float rounding (summation order). The
measurements are in docs/benchmarks.md (the CPU sections); per convolution, run
`scripts/benchmark.py --mode=conv_layers`.

This is a CPU path: the backbone calls it only when built with `cpu_kernels`
(models/htt.py:build_model), and `lax.conv_general_dilated` directly on every other backend.
"""

import jax.numpy as jnp
from jax import lax

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _explicit_padding(padding, kernel_shape, in_shape, strides):
  if isinstance(padding, str):
    return lax.padtype_to_pads(in_shape, kernel_shape, strides, padding)
  return [tuple(p) for p in padding]


def use_patches(in_hw, kernel_hw, strides, padding) -> bool:
  """Whether `conv_general_dilated` takes the patches path for these (static) shapes."""
  if kernel_hw[0] * kernel_hw[1] == 1:
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
