"""2-D convolution with `lax.conv_general_dilated`'s signature, fast on XLA:CPU for small maps.

XLA:CPU is very slow on convolutions over tiny feature maps, and slowest when a map is smaller
than the kernel: a 3x3 convolution (padding 1) of 2x3 maps costs tens of times one of 3x3 maps,
forward and input gradient alike. Images 64 px high or less give layer4 maps of 2 rows, which made
the whole train step several times slower; the input gradient of a stride-2 convolution hits the
same case (it convolves the 2x3 output gradient). Written as a sum over the kernel's taps, the same
convolution is a few matrix products: tap (i, j) multiplies the input shifted by (i, j) by
kernel[i, j], over the output positions where that shifted input is inside the map, not padding.
At such sizes much of a padded convolution is padding (at 2x3 with a 3x3 kernel, 26 of the 54
tap x position products), which the taps skip; their gradients are products and slices again,
which XLA:CPU computes fast. (An earlier version multiplied all patches, padding included, by the
kernel as one matrix (im2col): the taps take half its time at layer4's 2x3 maps; docs/benchmarks.md.)
Where no map is smaller than the kernel, XLA's own convolution is as fast or faster inside the
model. So `conv_general_dilated` sums taps when the input or the output of a convolution is
smaller than its kernel in height or width, and calls `lax.conv_general_dilated` otherwise. Same
values up to float rounding (summation order). The measurements are in docs/benchmarks.md (the CPU
sections); per convolution, run `scripts/benchmark.py --mode=conv_layers`.

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


def use_taps(in_hw, kernel_hw, strides, padding) -> bool:
  """Whether `conv_general_dilated` sums taps (`conv_taps`) for these (static) shapes."""
  if kernel_hw[0] * kernel_hw[1] == 1:
    return False
  pads = _explicit_padding(padding, kernel_hw, in_hw, strides)
  out = [(n + lo + hi - k) // s + 1 for n, k, s, (lo, hi) in zip(in_hw, kernel_hw, strides, pads)]
  # The input gradient convolves the output gradient (the output's size) with the kernel.
  return any(min(n, o) < k for n, o, k in zip(in_hw, out, kernel_hw))


def _inside(tap: int, stride: int, pad: int, size_in: int, size_out: int):
  """The outputs o (a range lo..hi-1) whose input index stride * o + tap - pad is in the map."""
  lo = max(0, -(-(pad - tap) // stride))
  hi = min(size_out, (size_in - 1 - tap + pad) // stride + 1)
  return lo, hi


def conv_taps(x, kernel, strides, padding, precision=None):
  """NHWC x HWIO convolution as a sum over the kernel's taps of (shifted x) @ kernel[i, j], each
  over the outputs where the shifted input is not padding; taps that only see padding are skipped."""
  kh, kw, _, _ = kernel.shape
  n, h, w, _ = x.shape
  (pt, pb), (pl, pr) = _explicit_padding(padding, (kh, kw), (h, w), strides)
  sh, sw = strides
  ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
  out = None
  for i in range(kh):
    r0, r1 = _inside(i, sh, pt, h, ho)
    for j in range(kw):
      c0, c1 = _inside(j, sw, pl, w, wo)
      if r1 <= r0 or c1 <= c0:
        continue
      rows = slice(sh * r0 + i - pt, sh * (r1 - 1) + i - pt + 1, sh)
      cols = slice(sw * c0 + j - pl, sw * (c1 - 1) + j - pl + 1, sw)
      y = jnp.einsum("nhwc,cf->nhwf", x[:, rows, cols, :], kernel[i, j], precision=precision)
      y = jnp.pad(y, ((0, 0), (r0, ho - r1), (c0, wo - c1), (0, 0)))
      out = y if out is None else out + y
  if out is None:  # Every tap on padding: the output is zeros.
    return jnp.zeros((n, ho, wo, kernel.shape[-1]), jnp.result_type(x, kernel))
  return out


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         **kwargs):
  """`lax.conv_general_dilated`, computed as a sum over taps where XLA:CPU is slow (above)."""
  plain = (lhs.ndim == 4 and dimension_numbers is not None
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
           and feature_group_count == 1 and not kwargs
           and all(d in (None, 1) for d in (lhs_dilation or ()) + (rhs_dilation or ())))
  strides = tuple(window_strides)
  if plain and use_taps(lhs.shape[1:3], rhs.shape[:2], strides, padding):
    return conv_taps(lhs, rhs, strides, padding, precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                  feature_group_count=feature_group_count, precision=precision,
                                  **kwargs)
