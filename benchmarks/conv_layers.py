"""ResNet-18's convolutions one at a time: forward, input gradient, weight gradient; JAX vs PyTorch.

Where inside the backbone's backward pass is XLA:CPU slower than PyTorch (oneDNN)? For each
distinct convolution shape of ResNet-18 at H x W (stem; layer1; each later stage's strided 3x3,
its 1x1 shortcut and its 3x3) this times, on N frames, the forward convolution, the gradient for
its input ("dgrad", not needed for the stem) and the gradient for its kernel ("wgrad"), each
compiled or called alone. Each framework runs in its own process. Where htt_jax computes a
convolution as patches x kernel instead (small maps on CPU, models/convolution.py), JAX has a
second row for it ('<layer> patches').

  python benchmarks/conv_layers.py --frames=64 --height=96 --width=160 --threads=2
"""

import os

import numpy as np

import side_by_side  # benchmarks/side_by_side.py, beside this script
from side_by_side import median_ms


def layer_shapes(height, width):
  """(name, input H, input W, in channels, out channels, kernel, stride, padding, count in
  ResNet-18) for each distinct convolution."""
  h, w = (height + 1) // 2, (width + 1) // 2  # after the stem
  h, w = (h + 1) // 2, (w + 1) // 2  # after the max-pool
  rows = [("stem", height, width, 3, 64, 7, 2, 3, 1), ("layer1", h, w, 64, 64, 3, 1, 1, 4)]
  channels = 64
  for stage, out in ((2, 128), (3, 256), (4, 512)):
    rows += [(f"layer{stage} 3x3/2", h, w, channels, out, 3, 2, 1, 1),
             (f"layer{stage} 1x1/2", h, w, channels, out, 1, 2, 0, 1)]
    h, w = (h + 1) // 2, (w + 1) // 2
    rows.append((f"layer{stage} 3x3", h, w, out, out, 3, 1, 1, 3))
    channels = out
  return rows


def _jax(frames, height, width):
  """Rows for `lax.conv_general_dilated`, and also for htt_jax's convolution where that computes
  patches x kernel instead (small maps on CPU, models/convolution.py), named '<layer> patches'."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from htt_jax.models import convolution  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for name, h, w, cin, cout, k, s, p, _ in layer_shapes(height, width):
    x = jax.numpy.asarray(rng.normal(size=(frames, h, w, cin)), jax.numpy.float32)
    kernel = jax.numpy.asarray(rng.normal(size=(k, k, cin, cout)), jax.numpy.float32)
    variants = [(name, lax.conv_general_dilated)]
    if convolution.use_patches((h, w), (k, k), (s, s), ((p, p), (p, p))):
      variants.append((f"{name} patches", convolution.conv_general_dilated))
    for row, conv_fn in variants:
      def conv(x, kernel, s=s, p=p, conv_fn=conv_fn):
        return conv_fn(x, kernel, (s, s), ((p, p), (p, p)),
                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      g = jax.numpy.asarray(rng.normal(size=conv(x, kernel).shape), jax.numpy.float32)
      forward = jax.jit(conv)
      dgrad = jax.jit(lambda x, kernel, g, conv=conv: jax.vjp(lambda a: conv(a, kernel), x)[1](g))
      wgrad = jax.jit(lambda x, kernel, g, conv=conv: jax.vjp(lambda b: conv(x, b), kernel)[1](g))
      yield row, [median_ms(lambda f=f: jax.block_until_ready(f(*args)))
                  for f, args in ((forward, (x, kernel)), (dgrad, (x, kernel, g)),
                                  (wgrad, (x, kernel, g)))]


def _torch(frames, height, width, threads):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.set_flush_denormal(True)  # as XLA's CPU runtime does
  rng = np.random.default_rng(0)
  for name, h, w, cin, cout, k, s, p, _ in layer_shapes(height, width):
    x = torch.from_numpy(rng.normal(size=(frames, cin, h, w)).astype(np.float32))
    kernel = torch.from_numpy(rng.normal(size=(cout, cin, k, k)).astype(np.float32))
    with torch.no_grad():
      g = torch.randn_like(torch.nn.functional.conv2d(x, kernel, stride=s, padding=p))

      def backward(mask, x=x, kernel=kernel, g=g, s=s, p=p):
        # The operator autograd calls for a convolution's backward, asked for one gradient.
        torch.ops.aten.convolution_backward(g, x, kernel, None, [s, s], [p, p], [1, 1], False,
                                            [0, 0], 1, mask)

      yield name, [median_ms(lambda: torch.nn.functional.conv2d(x, kernel, stride=s, padding=p)),
                   median_ms(lambda: backward([True, False, False])),
                   median_ms(lambda: backward([False, True, False]))]


def main():
  args = side_by_side.parse_args(__doc__.splitlines()[0])
  if side_by_side.run_each_framework(__file__, args):
    return
  rows = (_jax(args.frames, args.height, args.width) if args.framework == "jax" else
          _torch(args.frames, args.height, args.width, args.threads))
  print(f"{args.framework}: {args.frames} frames of {args.height}x{args.width}, {args.threads} "
        f"threads; ms per call (the stem needs no input gradient)")
  print(f"{'layer':22s} {'count':>5s} {'forward':>8s} {'dgrad':>8s} {'wgrad':>8s}")
  for name, (forward, dgrad, wgrad) in rows:
    count = next(r[-1] for r in layer_shapes(args.height, args.width)
                 if r[0] == name.removesuffix(" patches"))
    print(f"{name:22s} {count:5d} {forward:8.1f} {dgrad:8.1f} {wgrad:8.1f}", flush=True)


if __name__ == "__main__":
  main()
