"""ResNet-18 per frame, as the reference uses it (facts 1.1).

Differences from a textbook Flax ResNet, each needed to match the PyTorch checkpoints:
- explicit symmetric padding (Flax 'SAME' pads stride-2 convolutions asymmetrically on even sizes);
- max-pool padding is -inf (as Flax's `max_pool`, the reduction's identity; models/pooling.py);
- BatchNorm always normalises with its stored running statistics (the reference sets momentum 0 and
  keeps the model in eval mode even while training), while scale and bias stay trainable
  (`batch_norm='batch'` is an option of ours for training from random weights);
- features are the spatial mean of layer4; `fc` exists (it is in the checkpoints) but feeds nothing.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import jax.numpy as jnp
from flax import linen as nn

from htt_jax.models import initializers
from htt_jax.models.pooling import max_pool_3x3_s2

ModuleDef = Any

_PAD1 = ((1, 1), (1, 1))


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: 3x3 (stride s) -> BN -> ReLU -> 3x3 -> BN, plus the shortcut."""
  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=_PAD1, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), padding=_PAD1, name="conv2")(y)
    y = self.norm(name="bn2")(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      shortcut = self.conv(self.features, (1, 1), (self.strides, self.strides), padding="VALID",
                           name="downsample_conv")(x)
      shortcut = self.norm(name="downsample_bn")(shortcut)
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

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=initializers.torch_conv_kernel)
    batch_statistics = self.calibrate_batch_norm or (train and self.batch_norm == "batch")
    norm = functools.partial(
        nn.BatchNorm, use_running_average=not batch_statistics,
        momentum=0.0 if self.calibrate_batch_norm else self.batch_norm_momentum, epsilon=1e-5,
        dtype=self.dtype, axis_name=None if self.calibrate_batch_norm else self.batch_norm_axis_name)
    block_cls: Callable[..., nn.Module] = nn.remat(BasicBlock) if self.remat else BasicBlock

    x = conv(self.num_filters, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    x = max_pool_3x3_s2(x)  # nn.max_pool's values, a cheaper gradient on CPU (pooling.py)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(self.num_filters * 2**i, strides, conv=conv, norm=norm,
                      name=f"layer{i + 1}_{j}")(x)
    # Mean over the spatial grid, in float32 (the reference's AvgPool2d(7) module is never used).
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    # The ImageNet classifier is part of the reference checkpoints but never applied; calling it here
    # creates its parameters, and XLA removes the unused computation (its gradient is exactly zero).
    initializers.torch_dense(self.num_classes, features.shape[-1], name="fc")(features)
    return features
