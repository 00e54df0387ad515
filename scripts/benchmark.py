"""Throughput of HTT: train step, forward pass, tf.data pipeline, or both together.

  python scripts/benchmark.py --config=configs/benchmark.py --mode=train \
      --output=runs/bench/train.json [--config.sweep='batch_size=1,2,4;dtype=float32,bfloat16'] \
      [--config.baseline=torch]

--mode: train (step with the Adam update, random batches), eval (forward pass), input (the
tf.data pipeline alone; needs --config.dataset.data_dir), end_to_end (pipeline + train step);
ResNet-18 alone on the frames of one batch (batch_size x T): backbone (forward, and forward +
backward) or conv_layers (each distinct convolution: forward, input and kernel gradients), e.g.

  python scripts/benchmark.py --config=configs/benchmark.py --mode=backbone \
      --output=runs/bench/backbone.json --config.baseline=torch --config.cpu_threads=2

video: predict_video on a generated mp4 (decode, model and overlay overlapped) against the
forward pass alone (docs/video.md); needs no dataset.

Writes F.json (one object per setting), F.md (a table) and F.png (frames/s against batch size;
for conv_layers each convolution's time). With --config.baseline=torch the PyTorch counterpart
runs in its own process on the same CPUs (htt_jax/baselines/).
"""

import os

from absl import flags
from ml_collections import config_flags

from htt_jax import cli

config_flags.DEFINE_config_file("config", None, "Benchmark config file.", lock_config=True)
# runner.MODES (not imported here: JAX must not start before cpu_flags.configure).
flags.DEFINE_enum("mode", "train", ["train", "eval", "input", "end_to_end", "backbone",
                                    "conv_layers", "video"], "What to time.")
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
  from htt_jax.benchmark import sweep  # pylint: disable=g-import-not-at-top
  # Before JAX starts: YNNPACK fusions only if every setting of the sweep profits (cpu_flags.py).
  cpu_flags.configure([sweep.apply(FLAGS.config, o) for o in sweep.settings(FLAGS.config.sweep)])
  from htt_jax.benchmark import report, runner  # pylint: disable=g-import-not-at-top
  rows = runner.run_benchmark(FLAGS.config, FLAGS.mode, FLAGS.output)
  for row in rows:
    print(report.summary(row))


if __name__ == "__main__":
  cli.run(main)
