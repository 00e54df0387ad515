"""ResNet-18 per frame, as the reference uses it (reference.md §1.1).

Differences from a textbook Flax ResNet, each needed to match the PyTorch checkpoints:
- explicit symmetric padding (Flax 'SAME' pads stride-2 convolutions asymmetrically on even sizes);
- max-pool padding is -inf (as Flax's `max_pool`, the reduction's identity; models/pooling.py);
- BatchNorm always normalises with its stored running statistics (the reference sets momentum 0 and
  keeps the model in eval mode even while training), while scale and bias stay trainable
  (`batch_norm='batch'` is an option of ours for training from random weights);
- features are the spatial mean of layer4; `fc` exists (it is in the checkpoints) but feeds nothing.

Speed: whenever BatchNorm uses its stored statistics (always in the reference's training) it is an
affine map per channel, so it is folded into the preceding convolution (`conv_bn`): one convolution
with kernel*s plus a bias, instead of a convolution and then a separate pass over its output. The
parameters and the gradients are the same (autodiff goes through the fold); the backward pass no
longer reduces over the convolution's output for the BatchNorm scale, and on GPUs the bias and ReLU
can join the convolution. `fold_batch_norm=False` computes the plain unfolded form.

XLA:CPU needs three workarounds, chosen by the `cpu_kernels` attribute (set by
models/htt.py:build_model for the backend the model is built for, never while tracing): every
convolution's input is kept as one array (`_materialized_on_cpu`), so that XLA does not recompute
it inside the transposes of the weight gradients; convolutions with small maps (layer3 and layer4
at low resolution) are computed as a sum over the kernel's taps (models/convolution.py); and the stem max-pool
has a cheaper gradient (models/pooling.py). Without `cpu_kernels` the backbone is plain XLA.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from htt_jax.models import convolution, initializers, pooling

ModuleDef = Any

_PAD1 = ((1, 1), (1, 1))


class _ConvKernel(nn.Module):
  """The `kernel` parameter of a bias-free `nn.Conv` (same name, shape and initialiser)."""
  shape: Sequence[int]

  @nn.compact
  def __call__(self):
    return self.param("kernel", initializers.torch_conv_kernel, tuple(self.shape), jnp.float32)


class _FrozenBatchNorm(nn.Module):
  """The variables of an `nn.BatchNorm` (params scale, bias; batch_stats mean, var), unapplied."""
  features: int

  @nn.compact
  def __call__(self):
    scale = self.param("scale", nn.initializers.ones, (self.features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,), jnp.float32)
    var = self.variable("batch_stats", "var", jnp.ones, (self.features,), jnp.float32)
    return scale, bias, mean.value, var.value


def _materialized_on_cpu(x):
  """`x` itself, kept by XLA:CPU as one array instead of recomputed inside the transposes that
  consume it.

  The weight gradient of a convolution needs its input with the batch as the minor dimension, so
  XLA:CPU transposes the input in the backward pass, and it fuses the input's producer (the
  previous block's bias, ReLU and shortcut add) into that transpose, recomputing it at strided
  reads, many times slower than a plain transpose. An optimisation barrier stops that fusion;
  values and gradients are unchanged, and the backbone's forward+backward gets faster on CPU
  (docs/benchmarks.md, the CPU sections). Only with `cpu_kernels`: on GPUs the convolutions take
  their inputs as they are (not measured there).
  """
  return lax.optimization_barrier(x)


def conv_bn(x, features, kernel_size, strides, padding, conv_name, bn_name, *, conv, norm,
            folded, dtype, cpu_kernels=False, epsilon=1e-5):
  """Bias-free convolution then BatchNorm, with the parameter tree of `nn.Conv` + `nn.BatchNorm`.

  Called from a compact module: `conv_name` and `bn_name` become that module's submodules, as if
  `conv` and `norm` were called there, so checkpoints are the same either way. `folded` (BatchNorm
  on its stored statistics): y = conv(x, k * s) + (b - mean * s), s = scale / sqrt(var + eps), the
  fold in float32, then cast to `dtype`. Otherwise `conv` then `norm`. `cpu_kernels`: XLA:CPU's
  workarounds (module docstring; `conv`, for the unfolded form, brings its own convolution).
  """
  if cpu_kernels:
    x = _materialized_on_cpu(x)
  if not folded:
    y = conv(features, (kernel_size, kernel_size), (strides, strides), padding=padding,
             name=conv_name)(x)
    return norm(name=bn_name)(y)
  kernel = _ConvKernel((kernel_size, kernel_size, x.shape[-1], features), name=conv_name)()
  scale, bias, mean, var = _FrozenBatchNorm(features, name=bn_name)()
  s = scale * lax.rsqrt(var + epsilon)
  conv_general_dilated = (convolution.conv_general_dilated if cpu_kernels
                          else lax.conv_general_dilated)
  y = conv_general_dilated(
      x.astype(dtype), (kernel * s).astype(dtype), (strides, strides),
      padding if isinstance(padding, str) else tuple(padding),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + (bias - mean * s).astype(dtype)


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: 3x3 (stride s) -> BN -> ReLU -> 3x3 -> BN, plus the shortcut."""
  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  fold: bool = False
  dtype: Any = jnp.float32
  cpu_kernels: bool = False

  @nn.compact
  def __call__(self, x):
    conv_bn_ = functools.partial(conv_bn, conv=self.conv, norm=self.norm, folded=self.fold,
                                 dtype=self.dtype, cpu_kernels=self.cpu_kernels)
    y = nn.relu(conv_bn_(x, self.features, 3, self.strides, _PAD1, "conv1", "bn1"))
    y = conv_bn_(y, self.features, 3, 1, _PAD1, "conv2", "bn2")
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = conv_bn_(x, self.features, 1, self.strides, "VALID", "downsample_conv",
                          "downsample_bn")
    return nn.relu(y + shortcut)


class ResNet18(nn.Module):
  """ResNet-18 v1 returning mean-pooled layer4 features (N, 512) for images (N, H, W, 3)."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_filters: int = 64
  num_classes: int = 1000  # Only for the unused `fc`, kept so checkpoints round-trip.
  dtype: Any = jnp.float32
  remat: bool = False  # Recompute each block in the backward pass: less activation memory.
  # True only to (re)calibrate the frozen statistics (steps.calibrate_batch_norm): BatchNorm then
  # normalises with the batch's statistics and stores them (momentum 0) as the running ones.
  calibrate_batch_norm: bool = False
  # 'frozen' (the reference: running statistics always, never updated) or 'batch' (training from
  # scratch: `train=True` normalises with the batch's statistics, over `batch_norm_axis_name` too
  # under pmap, and updates the running ones with `batch_norm_momentum`; evaluation uses those).
  batch_norm: str = "frozen"
  batch_norm_momentum: float = 0.9
  batch_norm_axis_name: Optional[str] = None
  fold_batch_norm: bool = True  # Fold stored-statistics BatchNorm into the convolutions (above).
  # XLA:CPU's workarounds (above); False builds the plain backbone for every other backend.
  cpu_kernels: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=initializers.torch_conv_kernel,
                             conv_general_dilated=(convolution.conv_general_dilated
                                                   if self.cpu_kernels
                                                   else lax.conv_general_dilated))
    batch_statistics = self.calibrate_batch_norm or (train and self.batch_norm == "batch")
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not batch_statistics,
        momentum=0.0 if self.calibrate_batch_norm else self.batch_norm_momentum, epsilon=1e-5,
        dtype=self.dtype, axis_name=None if self.calibrate_batch_norm else self.batch_norm_axis_name)
    fold = self.fold_batch_norm and not batch_statistics
    block_cls: Callable[..., nn.Module] = nn.remat(BasicBlock) if self.remat else BasicBlock

    x = nn.relu(conv_bn(x, self.num_filters, 7, 2, ((3, 3), (3, 3)), "conv1", "bn1", conv=conv,
                        norm=norm, folded=fold, dtype=self.dtype, cpu_kernels=self.cpu_kernels))
    # nn.max_pool's values either way; the custom gradient is XLA:CPU's workaround (pooling.py).
    x = (pooling.max_pool_3x3_s2 if self.cpu_kernels else pooling.max_pool_3x3_s2_xla)(x)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(self.num_filters * 2**i, strides, conv=conv, norm=norm, fold=fold,
                      dtype=self.dtype, cpu_kernels=self.cpu_kernels, name=f"layer{i + 1}_{j}")(x)
    # Mean over the spatial grid, in float32 (the reference's AvgPool2d(7) module is never used).
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    # The ImageNet classifier is part of the reference checkpoints but never applied; calling it here
    # creates its parameters, and XLA removes the unused computation (its gradient is exactly zero).
    initializers.torch_dense(self.num_classes, features.shape[-1], name="fc")(features)
    return features
