"""Throughput of HTT: train step, forward pass, tf.data pipeline, or both together.

  python scripts/benchmark.py --config=configs/benchmark.py --mode=train \
      --output=runs/bench/train.json [--config.sweep='batch_size=1,2,4;dtype=float32,bfloat16'] \
      [--config.baseline=torch]

--mode: train (step with the Adam update, random batches), eval (forward pass), input (the
tf.data pipeline alone; needs --config.dataset.data_dir), end_to_end (pipeline + train step).
Writes F.json (one object per setting), F.md (a table) and F.png (frames/s against batch size).
"""

import os

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Benchmark config file.", lock_config=True)
flags.DEFINE_enum("mode", "train", ["train", "eval", "input", "end_to_end"], "What to time.")
flags.DEFINE_string("output", None, "Results file F.json (F.md and F.png are written beside it).")
flags.mark_flags_as_required(["config", "output"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.config.baseline == "torch":
    # JAX takes 75% of a GPU's memory when it starts unless told otherwise; the PyTorch baseline
    # runs on the same GPU in another process and needs room. Read when JAX starts (not yet).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  from htt_jax import cpu_flags  # pylint: disable=g-import-not-at-top
  from htt_jax.benchmark import runner, sweep  # pylint: disable=g-import-not-at-top
  # Before JAX starts: YNNPACK fusions only if every setting of the sweep profits (cpu_flags.py).
  cpu_flags.configure([sweep.apply(FLAGS.config, o) for o in sweep.settings(FLAGS.config.sweep)])
  rows = runner.run_benchmark(FLAGS.config, FLAGS.mode, FLAGS.output)
  for row in rows:
    print(f"{row['setting']}: {row['frames_per_second']:.1f} frames/s, median step "
          f"{row['step_time_ms_median']:.1f} ms")


if __name__ == "__main__":
  app.run(main)
