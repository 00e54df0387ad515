"""ResNet-18 alone: forward and forward+backward (parameter gradients), JAX against PyTorch.

Where does the training step's time go on a CPU? This times only the backbone (frozen, folded
BatchNorm as in the paper configs; PyTorch in eval mode) on N frames, so the step's gap to PyTorch
can be split into forward and backward. Each framework runs in its own process (PyTorch and
TensorFlow must not share one; JAX is imported without TF here anyway).

  python benchmarks/backbone_split.py --frames=64 --height=96 --width=160 --threads=2
"""

import os

import numpy as np

import side_by_side  # benchmarks/side_by_side.py, beside this script
from side_by_side import median_ms


def _jax(frames, height, width):
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top
  from htt_jax.models.resnet import ResNet18  # pylint: disable=g-import-not-at-top
  model = ResNet18()
  x = jax.numpy.asarray(np.random.default_rng(0).normal(size=(frames, height, width, 3)),
                        jax.numpy.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x[:1])

  def loss(params):
    return model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x).sum()

  forward, both = jax.jit(loss), jax.jit(jax.grad(loss))
  return {name: median_ms(lambda f=f: jax.block_until_ready(f(variables["params"])))
          for name, f in (("forward", forward), ("forward+backward", both))}


def _torch(frames, height, width, threads):
  import torch  # pylint: disable=g-import-not-at-top
  from htt_jax.baselines.torch_htt import ResNet18  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.set_flush_denormal(True)  # as XLA's CPU runtime does (see the benchmark's README notes)
  model = ResNet18().eval()
  x = torch.from_numpy(np.random.default_rng(0).normal(size=(frames, 3, height, width))
                       .astype(np.float32))

  def forward():
    with torch.no_grad():
      model(x)[0].sum()

  def both():
    model.zero_grad()
    model(x)[0].sum().backward()

  return {"forward": median_ms(forward), "forward+backward": median_ms(both)}


def main():
  args = side_by_side.parse_args(__doc__.splitlines()[0])
  if side_by_side.run_each_framework(__file__, args):
    return
  times = (_jax(args.frames, args.height, args.width) if args.framework == "jax" else
           _torch(args.frames, args.height, args.width, args.threads))
  backward = times["forward+backward"] - times["forward"]
  print(f"{args.framework:5s} {args.frames}x{args.height}x{args.width}, {args.threads} threads: "
        f"forward {times['forward']:.0f} ms, forward+backward {times['forward+backward']:.0f} ms "
        f"(backward {backward:.0f} ms)")


if __name__ == "__main__":
  main()
