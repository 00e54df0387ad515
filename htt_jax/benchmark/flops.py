"""Analytic model FLOPs of HTT: ResNet-18 per frame, the pose block P, the heads, action block A.

Convention (the one MFU uses): a multiply-add is 2 FLOPs, and only convolutions and matrix products
count; BatchNorm, activations, softmax, LayerNorm and the optimizer update are left out (XLA's
`cost_analysis` counts them too, a few per cent more). The training step is the forward pass plus a
backward pass of twice its cost, except that the first convolution needs no gradient with respect
to its input (the images), so its backward is a weight gradient only. Rematerialisation recomputes
work but does not change these *model* FLOPs (XLA's count does grow).
"""

from typing import Dict, List, NamedTuple, Tuple


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
  return (size + 2 * padding - kernel) // stride + 1


def _taps(size: int, kernel: int, stride: int, padding: int, count_padding: bool) -> int:
  """Kernel taps summed over the output positions of one spatial axis."""
  out = conv_output_size(size, kernel, stride, padding)
  if count_padding:
    return out * kernel
  return sum(1 for o in range(out) for k in range(kernel) if 0 <= o * stride - padding + k < size)


def conv_flops(height: int, width: int, in_channels: int, out_channels: int, kernel: int,
               stride: int, padding: int, count_padding: bool = True) -> Tuple[int, int, int]:
  """(FLOPs, out height, out width) of one bias-free 2-D convolution on one image.

  count_padding=False leaves out the taps that fall on the zero padding, as XLA's cost analysis
  does; on small feature maps (the 3x4 layer4 of a 72x128 image) that is a large share.
  """
  out_h = conv_output_size(height, kernel, stride, padding)
  out_w = conv_output_size(width, kernel, stride, padding)
  taps = (_taps(height, kernel, stride, padding, count_padding)
          * _taps(width, kernel, stride, padding, count_padding))
  return 2 * taps * out_channels * in_channels, out_h, out_w


class ConvShape(NamedTuple):
  """One distinct convolution of ResNet-18 on one image, and how often the network applies it."""
  name: str
  height: int  # of its input
  width: int
  in_channels: int
  out_channels: int
  kernel: int
  stride: int
  padding: int
  count: int


def resnet18_convolutions(height: int, width: int) -> List[ConvShape]:
  """The distinct convolutions of the backbone on an H x W image, in network order.

  Spatial sizes follow the reference's explicit padding (models/resnet.py): 7x7/2 pad 3, max-pool
  3x3/2 pad 1, 3x3 pad 1, 1x1/2 shortcuts pad 0. Stage 1 keeps its size and width (four equal
  3x3 convolutions, no shortcut); each later stage opens with a strided 3x3 and its 1x1 shortcut,
  then runs three 3x3 at the new size. The unused ImageNet `fc` is never applied.
  """
  h, w = conv_output_size(height, 7, 2, 3), conv_output_size(width, 7, 2, 3)
  h, w = conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)  # max-pool
  shapes = [ConvShape("stem", height, width, 3, 64, 7, 2, 3, 1),
            ConvShape("layer1", h, w, 64, 64, 3, 1, 1, 4)]
  channels = 64
  for stage, features in ((2, 128), (3, 256), (4, 512)):
    shapes += [ConvShape(f"layer{stage} 3x3/2", h, w, channels, features, 3, 2, 1, 1),
               ConvShape(f"layer{stage} 1x1/2", h, w, channels, features, 1, 2, 0, 1)]
    h, w = conv_output_size(h, 3, 2, 1), conv_output_size(w, 3, 2, 1)
    shapes.append(ConvShape(f"layer{stage} 3x3", h, w, features, features, 3, 1, 1, 3))
    channels = features
  return shapes


def resnet18_flops(height: int, width: int, count_padding: bool = True) -> Dict[str, int]:
  """Per-image FLOPs of the backbone: {'conv1': stem convolution, 'rest': every other conv}."""
  per_shape = [(c.name, c.count * conv_flops(c.height, c.width, c.in_channels, c.out_channels,
                                             c.kernel, c.stride, c.padding, count_padding)[0])
               for c in resnet18_convolutions(height, width)]
  return {"conv1": per_shape[0][1], "rest": sum(f for _, f in per_shape[1:])}


def encoder_layer_flops(length: int, dim: int, mlp_dim: int) -> int:
  """One pre-norm encoder layer on one sequence: q/k/v (3 d^2) and output (d^2) projections,
  scores and weighted sum (2 L^2 d), the two MLP matrices (2 d m); times 2 per multiply-add."""
  return 2 * (4 * length * dim * dim + 2 * length * length * dim + 2 * length * dim * mlp_dim)


def htt_forward_flops(config, count_padding: bool = True) -> Dict[str, int]:
  """Forward FLOPs of one clip (T frames) by part, for a config's model and image size."""
  m = config.model
  height, width = config.dataset.image_size
  frames, window, d = m.num_frames, m.window, m.hidden_dim
  width_p = 512  # P runs at the backbone's width (models/htt.py).
  backbone = resnet18_flops(height, width, count_padding)
  joints, objects = m.num_joints, m.num_objects
  heads_per_frame = 2 * (
      width_p * d + d * d + d * 3 * joints  # pose MLP
      + width_p * d + d * objects  # object embedding and classifier
      + 2 * joints * d + objects * d + (width_p + 2 * d) * d)  # fusion into A's tokens
  return {
      "backbone_conv1": frames * backbone["conv1"],
      "backbone_rest": frames * backbone["rest"],
      "pose_block": (frames // window) * m.num_layers_pose
                    * encoder_layer_flops(window, width_p, m.mlp_dim),
      "heads": frames * heads_per_frame + 2 * d * m.num_actions,
      "action_block": m.num_layers_action * encoder_layer_flops(frames + 1, d, m.mlp_dim),
  }


def htt_flops_per_clip(config, train: bool, count_padding: bool = True) -> int:
  """Model FLOPs of one clip: forward only, or a training step (module docstring).

  count_padding=False counts as XLA does (see conv_flops): use it to cross-check `cost_analysis`.
  """
  parts = htt_forward_flops(config, count_padding)
  forward = sum(parts.values())
  if not train:
    return forward
  return 3 * forward - parts["backbone_conv1"]


def htt_flops_per_frame(config, train: bool, count_padding: bool = True) -> float:
  return htt_flops_per_clip(config, train, count_padding) / config.model.num_frames
