"""What the JAX-vs-PyTorch scripts in benchmarks/ share: flags, one process per framework, timing.

PyTorch and TensorFlow must not share a process, and each framework must get the same CPUs, so a
script run with `--framework=both` starts itself once per framework; each child pins its CPUs
before its framework starts.
"""

import argparse
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SIZE_FLAGS = ("frames", "height", "width", "threads")


def parse_args(description: str) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--frames", type=int, default=64)
  parser.add_argument("--height", type=int, default=96)
  parser.add_argument("--width", type=int, default=160)
  parser.add_argument("--threads", type=int, default=2, help="CPUs each framework may use")
  parser.add_argument("--framework", choices=["both", "jax", "torch"], default="both")
  return parser.parse_args()


def run_each_framework(script: str, args: argparse.Namespace) -> bool:
  """With --framework=both runs `script` once per framework and returns True (nothing left to
  do); otherwise pins this process to `args.threads` CPUs and returns False."""
  if args.framework == "both":
    for framework in ("jax", "torch"):
      subprocess.run([sys.executable, script, f"--framework={framework}"] +
                     [f"--{k}={getattr(args, k)}" for k in _SIZE_FLAGS], check=True)
    return True
  sys.path.insert(0, ROOT)
  from htt_jax.benchmark import hardware  # pylint: disable=g-import-not-at-top
  hardware.pin_cpus(args.threads)  # before JAX starts: XLA sizes its thread pool from it
  return False


def median_ms(step) -> float:
  """Median of 5 timed calls after 2 warm-up calls; `step` must block until its work is done."""
  from htt_jax.benchmark import timing  # pylint: disable=g-import-not-at-top
  return 1000 * float(np.median(timing.time_steps(step, warmup=2, steps=5)))
